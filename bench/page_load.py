"""Time from navigation to an interactive page (the Start button visible) in headless chromium.

    python bench/page_load.py

Launches the app on localhost with a fresh data dir, loads the page several times with Debian's
chromium through Playwright, and prints the first and the median of the rest.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from app.settings import AppSettings
from app.ui import build_demo, launch_options

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]


def main(loads: int = 6) -> None:
    settings = AppSettings(data_dir=Path(tempfile.mkdtemp()))
    demo = build_demo(settings)
    demo.queue().launch(prevent_thread_lock=True, quiet=True, **launch_options(settings))
    times = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
            for _ in range(loads):
                page = browser.new_page()
                start = time.perf_counter()
                page.goto(demo.local_url, wait_until="load")
                page.locator("#start").wait_for(state="visible")
                times.append(time.perf_counter() - start)
                page.close()
            browser.close()
    finally:
        demo.studio.jobs.close()
        demo.close()
    print(f"page load to interactive: first {times[0]:.2f} s, median of the next {loads - 1}: {statistics.median(times[1:]):.2f} s")


if __name__ == "__main__":
    main()
