"""Hosted mode (a Space, or SPECPL_MULTI_USER=1): runs belong to the visitor who started them.

Refusals are checked on the server, through the named API with two `gradio_client` sessions, and
in a real browser with two contexts (two visitors). The same browser test is the app's journey in
Chromium, as a visitor of a Space sees it: the training plan, live curves, reload, Stop, Resume, a
double click, the end-of-run report, every tab, the compare view and a rejected upload."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
import zipfile
from itertools import pairwise
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from test_app_server import (  # noqa: F401  (cifar_zip and offline_world are fixtures)
    CHROMIUM,
    CHROMIUM_ARGS,
    EXPECT_TIMEOUT_MS,
    TINY,
    api_config,
    cifar_zip,
    component,
    offline_world,
    pick,
    poll_until,
)

from app.runtime.identity import COOKIE, owner_key
from app.runtime.settings import AppSettings
from app.ui import build_demo, launch_options
from specpl.events import read_events

LONG_EPOCHS = 3000  # trains until stopped
TABS = {
    "Data & Train": "Start training",
    "Bands": "Compute bands",
    "Counterfactual": "Run counterfactual",
    "Classify": "Classify",
    "Runs": "Refresh",
}  # tab: a button on it


@pytest.fixture(scope="module")
def hosted(tmp_path_factory, offline_world):  # noqa: F811
    settings = AppSettings(data_dir=tmp_path_factory.mktemp("hosted-data").resolve(), stop_grace_s=15, multi_user=True)
    demo = build_demo(settings)
    demo.queue().launch(prevent_thread_lock=True, quiet=True, **launch_options(settings))
    yield demo, settings
    demo.studio.jobs.close(terminate_workers=True)
    demo.close()


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_settings_turn_hosted_mode_on_for_a_space_or_by_flag(tmp_path):
    assert not AppSettings.from_env({"SPECPL_DATA_DIR": str(tmp_path)}).multi_user  # local: runs are shared
    space = AppSettings.from_env({"SPECPL_DATA_DIR": str(tmp_path), "SPACE_ID": "me/studio"})
    assert space.multi_user and space.on_space and not space.oauth
    assert AppSettings.from_env({"SPACE_ID": "me/studio", "OAUTH_CLIENT_ID": "x"}).oauth
    assert (
        AppSettings.from_env({"SPECPL_MULTI_USER": "1"}).multi_user
        and not AppSettings.from_env({"SPACE_ID": "a/b", "SPECPL_MULTI_USER": "0"}).multi_user
    )
    assert owner_key("alice", "browser-token", "session") == "hf:alice"  # signed in: the run follows the user
    assert owner_key(None, "browser-token", "s").startswith("browser:") and "browser-token" not in owner_key(
        None, "browser-token", "s"
    )
    assert owner_key(None, None, "s1") != owner_key(None, None, "s2")


def test_api_a_second_visitor_can_neither_see_nor_control_the_first_ones_run(hosted, cifar_zip, tmp_path):  # noqa: F811
    demo, settings = hosted
    owner = Client(demo.local_url, verbose=False, download_files=str(tmp_path / "a"))
    other = Client(demo.local_url, verbose=False, download_files=str(tmp_path / "b"))
    owner.predict(handle_file(cifar_zip), 0.5, api_name="/upload_dataset")
    run_id, _, message = owner.predict(
        api_config(TINY, boosters=[], shots=2, epochs=LONG_EPOCHS), "mine", api_name="/start_training"
    )
    assert message.startswith(f"Started run {run_id}")
    poll_until(owner, run_id, {"running"})

    refused = f"⚠️ there is no run {run_id!r}"
    assert other.predict(run_id, api_name="/stop_training") == refused
    status, *_, details, _, _, _ = other.predict(run_id, api_name="/run_status")
    assert details == {} and f"Run {run_id} no longer exists." in status
    assert other.predict(run_id, "someone/model", "hf_token", True, api_name="/push_to_hub") == refused
    assert other.predict(run_id, handle_file(cifar_zip), api_name="/evaluate_run")[-1] == refused
    *_, ranking = other.predict([run_id], api_name="/compare_runs")
    assert ranking["data"] == []  # another visitor's run is compared as if it had not been picked
    assert other.predict(run_id, api_name="/export_bundle")[-1] == refused
    assert other.predict(run_id, api_name="/resume_run") == refused
    assert other.predict(run_id, api_name="/delete_run")[-1] == refused
    *_, message = other.predict("run", run_id, "", TINY, "a photo of a {}.", [], 3, api_name="/classify")
    assert message == refused
    assert (
        other.predict(api_config(TINY, boosters=[], shots=2, epochs=1), "", api_name="/start_training")[-1]
        == "⚠️ upload a dataset (.zip) or build one before starting"
    )
    local_source = {**api_config(TINY), "decomposer": {"name": "taef2", "source": "/etc"}}
    assert owner.predict(local_source, "", api_name="/start_training")[-1].startswith(
        "⚠️ decomposer.source = /etc: a local folder or file cannot be used on a shared server"
    )
    path_option = {
        **api_config(TINY),
        "method": {"host": "ivlp", "boosters": ["dapt"], "options": {"dapt": {"mask_dir": "/etc/masks"}}},
    }
    assert owner.predict(path_option, "", api_name="/start_training")[-1].startswith(
        "⚠️ dapt.mask_dir = /etc/masks: a local folder or file cannot be used"
    )
    foreign_backbone = {**api_config(TINY), "backbone": {"name": "ViT-B-32", "pretrained": "/etc/passwd"}}
    assert owner.predict(foreign_backbone, "", api_name="/start_training")[-1].startswith(
        "⚠️ backbone ViT-B-32 (/etc/passwd) is not one this app offers"
    )
    assert (
        other.predict(run_id, "cat", api_name="/search_run_images")[-1] == ""
    )  # another visitor's run has no images to search
    assert demo.studio.jobs.get(run_id).status == "running"  # untouched by all of that

    record = demo.studio.jobs.get(run_id)
    assert record.owner.startswith(
        "browser:"
    )  # gradio_client keeps the identity cookie it was given, as a browser does
    job_file = settings.runs_dir / run_id / "job.json"
    assert status_of(f"{demo.local_url}gradio_api/file={job_file}") == 403  # no file in the data dir by path

    assert owner.predict(run_id, api_name="/stop_training").startswith("Stopping")
    assert poll_until(owner, run_id, {"cancelled", "failed", "finished"})["status"] == "cancelled"
    assert other.predict(run_id, api_name="/resume_run") == refused
    assert other.predict(run_id, api_name="/delete_run")[-1] == refused and job_file.is_file()
    assert owner.predict(run_id, api_name="/delete_run")[-1] == f"Deleted run {run_id} and its bundle."


def plot_has_lines(page, selector: str) -> bool:
    """Lines drawn in the plot: a Vega line mark with a real path and a stroke colour (a broken
    colour scale leaves the paths there but unstroked, so invisible), or saturated (series-coloured)
    pixels on a canvas; axis labels and grid lines are grey and count for nothing."""
    return page.evaluate(
        """(selector) => {
            const root = document.querySelector(selector);
            if (!root) return false;
            const paths = [...root.querySelectorAll('g.mark-line path, path[aria-roledescription="line mark"]')];
            const stroked = (p) => {
                const c = p.getAttribute('stroke') || getComputedStyle(p).stroke;
                return c && c !== 'none' && c !== 'transparent' && !c.startsWith('rgba(0, 0, 0, 0');
            };
            if (paths.some(p => (p.getAttribute('d') || '').length > 20 && stroked(p))) return true;
            for (const canvas of root.querySelectorAll('canvas')) {
                const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
                let coloured = 0;
                for (let i = 0; i < data.length; i += 4) {
                    const [r, g, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
                    if (a > 200 && Math.max(r, g, b) - Math.min(r, g, b) > 80) coloured++;
                }
                if (coloured > 50) return true;
            }
            return false;
        }""",
        selector,
    )


def zip_slip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("cat/0.png", b"x")
        archive.writestr("../evil.png", b"x")
    return path


def test_browser_a_visitors_journey_and_a_second_visitor_who_sees_none_of_it(hosted, cifar_zip, tmp_path):  # noqa: F811
    """One visitor, as a person in Chromium: upload, the training plan, a long run with live
    curves, a reload, Stop, the Runs tab, Resume with live progress, a double-clicked short run and
    its report, every tab, the compare view, then a rejected upload. A second visitor meanwhile
    sees none of the first one's runs."""
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM}")
    playwright_api = pytest.importorskip("playwright.sync_api")
    expect = playwright_api.expect
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    demo, settings = hosted
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        alice = browser.new_context(viewport={"width": 1400, "height": 1100})
        page = alice.new_page()
        page.goto(demo.local_url)
        page.locator("#dataset-zip input[type=file]").set_input_files(str(cifar_zip))
        expect(page.locator("#dataset-summary")).to_contain_text("10 classes", timeout=60_000)
        pick(page, "backbone", "specpl-tiny")
        expect(page.locator("#epochs input")).to_have_value("0")  # auto: the preset's budget, as the plan says
        page.locator("#shots input").fill("2")
        page.locator("#shots input").press("Tab")
        # 8 training images of each class (split 0.5), 2 shots, 1 held out: 10 images; batch min(32, 10 // 4) = 2,
        # 5 steps an epoch
        expect(page.locator("#training-plan")).to_contain_text(
            "Training plan: 60 epochs of batch 2 (300 steps) from 10 training images; "
            "1 per class held out for validation; epoch kept by validation."
        )
        page.locator("#epochs input").fill(str(LONG_EPOCHS))
        page.locator("#epochs input").press("Tab")
        expect(page.locator("#training-plan")).to_contain_text(
            f"Training plan: {LONG_EPOCHS} epochs of batch 2 ({LONG_EPOCHS * 5} steps) from 10 training images"
        )  # typed wins
        expect(page.locator("#stop")).to_be_disabled()  # nothing to stop yet
        page.locator("#start").click()
        expect(page.locator("#run-status")).to_contain_text("Running: step", timeout=120_000)
        run_id = page.locator("#run-id textarea").input_value()
        assert run_id and any(c.get("name") == COOKIE and c.get("httpOnly") for c in alice.cookies())
        expect(page.locator("#stop")).to_be_enabled()

        # The chart draws in the normal flow, without a reload.
        deadline = time.time() + 30
        while not plot_has_lines(page, "#loss-curve") and time.time() < deadline:
            page.wait_for_timeout(500)
        assert plot_has_lines(page, "#loss-curve"), "the loss chart drew no lines while the run trained"

        # Isolation: a second visitor is not attached to the run, does not list it, cannot stop it.
        bob = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
        bob.goto(demo.local_url)
        # the first page of a second browser, while the first one's run trains on the same 2 cores
        expect(bob.locator("#start")).to_be_visible(timeout=60_000)
        bob.wait_for_timeout(2000)  # the page-load events have run
        assert bob.locator("#run-id textarea").input_value() == ""
        bob.get_by_role("tab", name="Runs").click()
        expect(bob.get_by_role("button", name="Refresh", exact=True)).to_be_visible(
            timeout=60_000
        )  # the tab loads when opened
        bob.get_by_role("button", name="Refresh", exact=True).click()
        bob.wait_for_timeout(1000)
        assert run_id not in bob.locator("#runs-table").inner_text()
        bob.get_by_role("tab", name="Data & Train").click()
        expect(bob.locator("#stop")).to_be_disabled()  # bob watches no run (the API refuses his stop: above)
        assert demo.studio.jobs.get(run_id).status == "running"

        # A reload (or another tab) keeps the dataset, the form and the run.
        page.reload()
        expect(page.locator("#dataset-summary")).to_contain_text("10 classes", timeout=30_000)
        expect(page.locator("#run-id textarea")).to_have_value(run_id, timeout=30_000)
        expect(page.locator("#epochs input")).to_have_value(str(LONG_EPOCHS))
        expect(page.locator("#backbone input")).to_have_value(re.compile("^specpl-tiny"))

        # "Stopping…" gives way to the final state. (On a loaded machine the worker can save its
        # checkpoint and exit before the click's answer is drawn, so the transient text is not
        # waited for here; the API test above checks that Stop answers "Stopping".)
        page.locator("#stop").click()
        expect(page.locator("#run-status")).to_contain_text("Cancelled: stopped by request", timeout=60_000)
        expect(page.locator("#train-message")).not_to_contain_text("Stopping", timeout=10_000)
        expect(page.locator("#stop")).to_be_disabled()

        # The Runs tab: picking the run draws its curve too, and clears an earlier message.
        page.get_by_role("tab", name="Runs").click()
        page.get_by_role("button", name="Download bundle").click()
        expect(page.locator("#runs-message")).to_contain_text("choose a run to download")
        pick(page, "runs-pick", run_id)
        expect(page.locator("#runs-status")).to_contain_text("Cancelled", timeout=30_000)
        expect(page.locator("#runs-message")).not_to_contain_text("choose a run")
        page.wait_for_function(
            "(s) => document.querySelector(s + ' g.mark-line path')", arg="#runs-curve", timeout=30_000
        )
        assert plot_has_lines(page, "#runs-curve"), "the Runs tab's chart drew no lines"

        # Resume: this tab no longer says "Cancelled", and Data & Train watches the resumed run, live.
        page.get_by_role("button", name="Resume", exact=True).click()
        expect(page.locator("#runs-message")).to_contain_text(f"Run {run_id} is queued again")
        expect(page.locator("#runs-status")).not_to_contain_text("Cancelled")
        page.get_by_role("tab", name="Data & Train").click()
        expect(page.locator("#run-id textarea")).to_have_value(run_id)
        expect(page.locator("#run-status")).to_contain_text("Running: step", timeout=120_000)
        shown = shown_step(page)
        deadline = time.time() + 60
        while shown_step(page) <= shown and time.time() < deadline:
            page.wait_for_timeout(250)
        assert shown_step(page) > shown, "the resumed run's progress did not move"
        assert shown >= stopped_at(demo, run_id), "the resumed run started over instead of continuing"
        page.locator("#stop").click()
        expect(page.locator("#run-status")).to_contain_text("Cancelled: stopped by request", timeout=60_000)

        # A double click on Start starts one run, and the stopped run's result goes at the click.
        page.locator("#epochs input").fill("1")
        page.locator("#epochs input").press("Tab")
        expect(page.locator("#training-plan")).to_contain_text("Training plan: 1 epoch of batch 2 (5 steps)")
        runs_before = len(demo.studio.jobs.list())
        page.locator("#start").dblclick()
        expect(page.locator("#run-status")).to_contain_text("Starting a new run")
        expect(page.locator("#loss-curve")).to_be_hidden()
        expect(page.locator("#run-status")).to_contain_text("Finished: test accuracy", timeout=120_000)
        finished = page.locator("#run-id textarea").input_value()
        assert finished != run_id and len(demo.studio.jobs.list()) == runs_before + 1

        # Its report: the confusion table inside its half-width column with every class's full name on
        # hover, per-class bars on a 0-100 axis, and whole steps and epochs under the curves.
        classes = list(json.loads((settings.runs_dir / finished / "metrics.json").read_text())["per_class"])
        table, column = page.locator("#train-confusion table"), page.locator("#train-confusion")
        expect(table).to_be_visible()
        assert right_edge(table) <= right_edge(column), "the confusion table overflows its column"
        titles = table.locator("th[title]").evaluate_all("cells => cells.map(cell => cell.title)")
        assert titles == classes * 2  # column heads, then row heads
        for plot in ("#train-per-class", "#loss-curve", "#val-curve"):
            page.wait_for_function("(plot) => document.querySelector(plot + ' g.role-axis')", arg=plot)
        assert "values from 0 to 100" in axis_title(page, "#train-per-class", "Y")
        assert component(demo, "train-per-class").y_lim == component(demo, "runs-per-class").y_lim == [0, 100]
        for plot in ("#loss-curve", "#val-curve"):
            labels = axis_labels(page, plot, "X")
            assert labels and all(re.fullmatch(r"\d+", label["text"]) for label in labels), (plot, labels)
            assert all(a["right"] < b["left"] for a, b in pairwise(labels)), (plot, labels)  # none overlap

        for tab, button in TABS.items():
            page.get_by_role("tab", name=tab).click()
            expect(page.get_by_role("button", name=button, exact=True)).to_be_visible()  # loads when first opened
            if tab == "Runs":
                expect(page.locator("#runs-table")).to_contain_text(finished)
            shot = tmp_path / f"tab-{tab.split()[0].lower()}.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000

        # Compare (the Runs tab is open): each run picked is drawn, the one added later too.
        for count, picked in enumerate((run_id, finished), 1):
            page.locator("#compare-pick input").fill(picked)
            page.keyboard.press("Enter")
            for plot in ("#compare-loss", "#compare-val"):
                page.wait_for_function(
                    "([plot, count]) => document.querySelectorAll(plot + ' g.role-legend-label text').length === count",
                    arg=[plot, count],
                    timeout=EXPECT_TIMEOUT_MS,
                )  # one legend entry (and line) per run picked

        # A rejected upload clears the active dataset; Start then refuses.
        page.get_by_role("tab", name="Data & Train").click()
        page.locator("#dataset-zip input[type=file]").set_input_files(str(zip_slip(tmp_path / "slip.zip")))
        expect(page.locator("#data-message")).to_contain_text("climbs out of the archive", timeout=30_000)
        expect(page.locator("#dataset-summary")).not_to_contain_text("10 classes")
        page.locator("#start").click()
        expect(page.locator("#train-message")).to_contain_text("upload a dataset (.zip) or build one before starting")
        page.reload()  # and the cleared dataset stays cleared
        expect(page.locator("#run-id textarea")).to_have_value(finished, timeout=30_000)
        assert "10 classes" not in page.locator("#dataset-summary").inner_text()
        browser.close()


def shown_step(page) -> int:
    """The step the run status line shows ("Running: step 12/15000, ..."); -1 when it shows none."""
    match = re.search(r"Running: step (\d+)/", page.locator("#run-status").inner_text())
    return int(match.group(1)) if match else -1


def stopped_at(demo, run_id: str) -> int:
    """The step the run's first stop saved its checkpoint at."""
    events = read_events(demo.studio.jobs.run_dir(run_id) / "events.jsonl")
    return next(e["step"] for e in events if e["type"] == "status" and e["status"] == "cancelled")


def right_edge(locator) -> float:
    box = locator.bounding_box()
    return box["x"] + box["width"]


def axis_title(page, plot: str, axis: str) -> str:
    """Vega's description of a plot's axis ("X" or "Y"), e.g. "Y-axis titled 'accuracy' for a linear
    scale with values from 0 to 100"."""
    return page.locator(f"{plot} g.role-axis[aria-label^='{axis}-axis']").get_attribute("aria-label")


def axis_labels(page, plot: str, axis: str) -> list[dict]:
    """The tick labels Vega shows on a plot's axis, left to right: text and left and right edge (px);
    labels it hides so as not to overlap (opacity 0) are left out."""
    return page.evaluate(
        """([plot, axis]) => [...document.querySelectorAll(
                `${plot} g.role-axis[aria-label^="${axis}-axis"] g.role-axis-label text`)]
            .filter(text => text.getAttribute('opacity') !== '0')
            .map(text => {
                const box = text.getBoundingClientRect();
                return {text: text.textContent, left: box.left, right: box.right};
            })
            .sort((a, b) => a.left - b.left)""",
        [plot, axis],
    )
