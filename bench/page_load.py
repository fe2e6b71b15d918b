"""Time from navigation to an interactive page (the Start button visible) in headless chromium.

    python bench/page_load.py

Launches the app on localhost with a fresh data dir and, several times, opens the page in a fresh
browser profile (a first visit: nothing cached) and then opens it again in that profile (a later
visit or a reload), with Debian's chromium through Playwright. Prints the median of each.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from app.runtime.settings import AppSettings
from app.ui import build_demo, launch_options

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def main(loads: int = 6) -> None:
    settings = AppSettings(data_dir=Path(tempfile.mkdtemp()))
    demo = build_demo(settings)
    demo.queue().launch(prevent_thread_lock=True, quiet=True, **launch_options(settings))
    first_visits: list[float] = []
    later_visits: list[float] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
            for _ in range(loads):
                context = browser.new_context()
                page = context.new_page()
                for times in (first_visits, later_visits):
                    start = time.perf_counter()
                    page.goto(demo.local_url, wait_until="load")
                    page.locator("#start").wait_for(state="visible")
                    times.append(time.perf_counter() - start)
                context.close()
            browser.close()
    finally:
        demo.studio.jobs.close()
        demo.close()
    print(
        f"page load to interactive, median of {loads}: first visit {statistics.median(first_visits):.2f} s "
        f"(all: {', '.join(f'{t:.2f}' for t in first_visits)}), later visit {statistics.median(later_visits):.2f} s"
    )


if __name__ == "__main__":
    main()
