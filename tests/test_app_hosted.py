"""Hosted mode (a Space, or SPECPL_MULTI_USER=1): runs belong to the visitor who started them.

Refusals are checked on the server, through the named API with two `gradio_client` sessions, and
in a real browser with two contexts (two visitors). The same browser test checks what a visitor
sees of their own run: the loss chart draws lines while it trains, a reload keeps the dataset and
the run, "Stopping…" does not outlive the run, and a rejected upload clears the active dataset."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
import zipfile
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
    offline_world,
    poll_until,
)

from app.runtime.identity import COOKIE, owner_key
from app.runtime.settings import AppSettings
from app.ui import build_demo, launch_options

LONG_EPOCHS = 3000  # trains until stopped


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


def test_browser_two_visitors_chart_reload_and_a_rejected_upload(hosted, cifar_zip, tmp_path):  # noqa: F811
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM}")
    playwright_api = pytest.importorskip("playwright.sync_api")
    expect = playwright_api.expect
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    demo, _ = hosted
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        alice = browser.new_context(viewport={"width": 1400, "height": 1100})
        page = alice.new_page()
        page.goto(demo.local_url)
        page.locator("#dataset-zip input[type=file]").set_input_files(str(cifar_zip))
        expect(page.locator("#dataset-summary")).to_contain_text("10 classes", timeout=60_000)
        page.locator("#backbone input").fill("specpl-tiny")
        page.keyboard.press("Enter")
        expect(page.locator("#backbone input")).to_have_value(re.compile("^specpl-tiny"))
        page.locator("#shots input").fill("2")
        page.locator("#epochs input").fill(str(LONG_EPOCHS))
        page.locator("#epochs input").press("Tab")
        page.locator("#start").click()
        expect(page.locator("#run-status")).to_contain_text("Running: step", timeout=120_000)
        run_id = page.locator("#run-id textarea").input_value()
        assert run_id and any(c.get("name") == COOKIE and c.get("httpOnly") for c in alice.cookies())

        # Item 4: the chart draws in the normal flow, without a reload.
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

        # Item 7: a reload keeps the dataset, the form and the run.
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

        # The Runs tab: picking the run draws its curve too, and clears an earlier message.
        page.get_by_role("tab", name="Runs").click()
        page.get_by_role("button", name="Download bundle").click()
        expect(page.locator("#runs-message")).to_contain_text("choose a run to download")
        page.locator("#runs-pick input").fill(run_id)
        page.keyboard.press("Enter")
        expect(page.locator("#runs-status")).to_contain_text("Cancelled", timeout=30_000)
        expect(page.locator("#runs-message")).not_to_contain_text("choose a run")
        page.wait_for_function(
            "(s) => document.querySelector(s + ' g.mark-line path')", arg="#runs-curve", timeout=30_000
        )
        assert plot_has_lines(page, "#runs-curve"), "the Runs tab's chart drew no lines"
        page.get_by_role("tab", name="Data & Train").click()

        # Item 3: a rejected upload clears the active dataset; Start then refuses.
        page.locator("#dataset-zip input[type=file]").set_input_files(str(zip_slip(tmp_path / "slip.zip")))
        expect(page.locator("#data-message")).to_contain_text("climbs out of the archive", timeout=30_000)
        expect(page.locator("#dataset-summary")).not_to_contain_text("10 classes")
        page.locator("#start").click()
        expect(page.locator("#train-message")).to_contain_text("upload a dataset (.zip) or build one before starting")
        page.reload()  # and the cleared dataset stays cleared
        expect(page.locator("#run-id textarea")).to_have_value(run_id, timeout=30_000)
        assert "10 classes" not in page.locator("#dataset-summary").inner_text()
        browser.close()
