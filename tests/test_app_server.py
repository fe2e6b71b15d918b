"""The app launched on localhost, driven through its API (gradio_client) and through a real
browser (Playwright driving Debian's chromium). Tiny backbone on real CIFAR-10 photos, and the
offline default: the SpectralWorld CLIP on the demo set (both stand-ins: random init, 4 classes)."""
from __future__ import annotations

import csv
import re
import shutil
import zipfile
from pathlib import Path

import open_clip
import pytest
import torch
from gradio_client import Client, handle_file
from safetensors.torch import save_file

from app import backbones
from app.settings import AppSettings
from app.ui import build_demo, launch_options
from specpl import defaults
from specpl.world.generator import world_classnames, write_fewshot_folder
from specpl.world.zeroshot import WORLD_TEMPLATE

TINY = "specpl-tiny/none"
WORLD_CLASSES = world_classnames()[:4]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
TABS = {"Data & Train": "Start training", "Bands": "Compute bands", "Counterfactual": "Run counterfactual", "Classify": "Classify", "Runs": "Refresh"}  # tab: a button on it


@pytest.fixture(scope="module")
def offline_world(tmp_path_factory) -> Path:
    """Offline with an empty Hugging Face cache, the world CLIP's weights replaced by a random-init
    stand-in and the demo zip by 4 classes x (2 train + 2 test) images; returns the demo folder."""
    from huggingface_hub import constants

    root = tmp_path_factory.mktemp("world")
    weights = root / "world-clip" / "open_clip_model.safetensors"
    weights.parent.mkdir()
    torch.manual_seed(0)
    save_file(open_clip.create_model(defaults.WORLD_MODEL).state_dict(), str(weights))
    demo_dir = write_fewshot_folder(root / "world-demo", shots=2, test_per_class=2, seed=0, classnames=WORLD_CLASSES)
    demo_zip = Path(shutil.make_archive(str(root / "world-demo"), "zip", demo_dir))
    hub_cache = root / "hf-home" / "hub"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_HOME", str(hub_cache.parent))
        patch.setenv("HF_HUB_CACHE", str(hub_cache))
        patch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))  # huggingface_hub reads the variable at import
        patch.setattr(defaults, "WORLD_WEIGHTS", weights)
        patch.setenv("SPECPL_WORLD_WEIGHTS", str(weights))  # the training worker is another process
        patch.setattr(defaults, "DEMO_ZIP", demo_zip)
        yield demo_dir


@pytest.fixture(scope="module")
def server(tmp_path_factory, offline_world):
    settings = AppSettings(data_dir=tmp_path_factory.mktemp("specpl-data").resolve(), stop_grace_s=15)
    demo = build_demo(settings)
    demo.queue().launch(prevent_thread_lock=True, quiet=True, **launch_options(settings))
    yield demo, settings
    demo.studio.jobs.close(terminate_workers=True)
    demo.close()


@pytest.fixture(scope="module")
def cifar_zip(cifar_root, tmp_path_factory) -> Path:
    """``train/<class>/*.jpg`` zipped with its folder, as a user would zip it."""
    path = tmp_path_factory.mktemp("upload") / "cifar-train.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for image in sorted((cifar_root / "train").rglob("*.jpg")):
            archive.write(image, image.relative_to(cifar_root).as_posix())
    return path


def poll_until(client: Client, run_id: str, statuses: set[str], timeout_s: float = 180) -> dict:
    import time

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        _, _, details = client.predict(run_id, api_name="/run_status")
        if details.get("status") in statuses:
            return details
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} did not reach {statuses}; last: {details}")


def test_api_upload_train_classify_bands_counterfactual_and_bundle_round_trip(server, cifar_zip, cifar_root, tmp_path):
    demo, settings = server
    client = Client(demo.local_url, verbose=False, download_files=str(tmp_path))

    summary, gallery, message = client.predict(handle_file(cifar_zip), 0.5, api_name="/upload_dataset")
    assert "**10 classes**, 80 training and 80 test images" in summary and "Dataset ready" in message
    assert len(gallery) == 30  # 3 thumbnails per class
    assert any(settings.gradio_cache_dir.rglob("cifar-train.zip"))  # Gradio's upload landed in the data dir

    run_id, _, message = client.predict(TINY, "coop", ["specpl"], "fft", 2, 1, 0, "api run", api_name="/start_training")
    assert message.startswith(f"Started run {run_id}")
    details = poll_until(client, run_id, {"finished", "failed", "cancelled"})
    assert details["status"] == "finished", details
    assert details["step"] == details["total_steps"] > 0 and 0 <= details["metrics"]["accuracy"] <= 100

    test_images = [sorted((cifar_root / "test" / name).iterdir())[0] for name in ("cat", "ship", "truck")]
    _, table, csv_file, top, message = client.predict(
        "run", run_id, "", TINY, "a photo of a {}.", [handle_file(p) for p in test_images], 3, api_name="/classify"
    )
    with open(csv_file, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert message.startswith("Classified 3 image(s) with the int8 image tower.") and len(rows) == 9
    near_chance = details["metrics"]["accuracy"] <= 10 + 5  # 10 classes: the message must say so, and why
    assert ("within 5 points of chance (10% for 10 classes)" in message and "randomly initialised" in message) == near_chance
    assert {r["image"] for r in rows} == {p.name for p in test_images}
    classes = {p.name for p in (cifar_root / "train").iterdir()}
    assert {r["label"] for r in rows} <= classes and top["label"] in classes

    *band_maps, timing = client.predict(handle_file(test_images[0]), "fft", 64, api_name="/bands")
    assert all(Path(path).stat().st_size > 0 for path in band_maps) and timing.startswith("fft at 64 px:")

    *outputs, summary = client.predict(run_id, handle_file(test_images[0]), handle_file(test_images[1]), 3, api_name="/counterfactual")
    labels, swaps = outputs[:8], outputs[8:]
    assert all(len(label["confidences"]) == 3 for label in labels)  # embedding path and image-space swap, 4 each
    assert all(Path(path).stat().st_size > 0 for path in swaps)
    assert summary.startswith("With B's high band, A")

    bundle, message = client.predict(run_id, api_name="/export_bundle")
    with zipfile.ZipFile(bundle) as archive:
        assert sorted(archive.namelist()) == ["model/README.md", "model/config.json", "model/model.safetensors"]
    message = client.predict(handle_file(bundle), api_name="/import_bundle")
    imported_id = message.split(" as run ")[1].split(" ")[0]
    _, imported_table, *_ = client.predict(
        "run", imported_id, "", TINY, "a photo of a {}.", [handle_file(p) for p in test_images], 3, api_name="/classify"
    )
    assert imported_table == table  # the re-imported bundle predicts exactly as the trained run


def test_api_reports_bad_input_in_one_line(server, tmp_path):
    demo, _ = server
    client = Client(demo.local_url, verbose=False, download_files=str(tmp_path))
    not_zip = tmp_path / "photos.zip"
    not_zip.write_text("just text")
    *_, message = client.predict(handle_file(not_zip), 0.5, api_name="/upload_dataset")
    assert message == "⚠️ photos.zip is not a zip archive"
    _, _, message = client.predict(TINY, "coop", [], "fft", 2, 1, 0, "", api_name="/start_training")
    assert message == "⚠️ upload a dataset (.zip) or build one before starting"


def component(demo, elem_id: str):
    return next(block for block in demo.blocks.values() if getattr(block, "elem_id", None) == elem_id)


def test_offline_the_world_clip_is_the_default_and_both_tabs_say_so(server):
    demo, _ = server
    assert backbones.default_backbone_key() == component(demo, "backbone").value == component(demo, "zs-backbone").value == backbones.WORLD_KEY
    note = component(demo, "fallback-note")
    assert note.visible and note.value == (
        "No pretrained CLIP can be loaded here (offline), so the embedded SpectralWorld CLIP is selected; "
        "it knows only SpectralWorld images — try the demo set."
    )
    assert component(demo, "zs-note").value.endswith("only SpectralWorld images — type SpectralWorld class names, e.g. solid circle, striped circle, barred square.")
    assert component(demo, "use-demo").variant == "primary"
    assert "(HF_HUB_OFFLINE)" in backbones.unavailable_message("ViT-B-32/openai")  # and the UI refuses it up front


def test_api_demo_set_trains_on_the_world_clip_and_every_tab_answers(server, offline_world, tmp_path):
    demo, _ = server
    client = Client(demo.local_url, verbose=False, download_files=str(tmp_path))

    summary, gallery, message = client.predict(0.5, api_name="/use_demo_set")
    assert "**4 classes**, 8 training and 8 test images" in summary and all(f"| {name} | 2 | 2 |" in summary for name in WORLD_CLASSES)
    assert message == "Demo set ready: 4 SpectralWorld classes, which the embedded SpectralWorld CLIP knows."
    assert sorted(item["caption"] for item in gallery) == sorted(WORLD_CLASSES * 2)

    run_id, _, message = client.predict(backbones.WORLD_KEY, "coop", ["specpl"], "fft", 2, 1, 0, "world run", api_name="/start_training")
    assert message.startswith(f"Started run {run_id}")
    details = poll_until(client, run_id, {"finished", "failed", "cancelled"})
    assert details["status"] == "finished", details
    assert details["step"] == details["total_steps"] > 0 and 0 <= details["metrics"]["accuracy"] <= 100

    (tmp_path / "images").mkdir()
    images = [Path(shutil.copy(offline_world / "test" / name / "0000.png", tmp_path / "images" / f"{name}.png")) for name in WORLD_CLASSES]
    for source, run in (("zero-shot", None), ("run", run_id)):
        _, _, csv_file, top, message = client.predict(
            source, run, ", ".join(WORLD_CLASSES), backbones.WORLD_KEY, WORLD_TEMPLATE, [handle_file(p) for p in images], 3, api_name="/classify"
        )
        with open(csv_file, newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert message.startswith("Classified 4 image(s) with the int8 image tower.") and len(rows) == 12, (source, message)
        assert "knows only SpectralWorld images" in message  # zero-shot: the note; the run: near chance (random stand-in) or the note
        assert {r["image"] for r in rows} == {p.name for p in images}
        assert {r["label"] for r in rows} <= set(WORLD_CLASSES) and top["label"] in WORLD_CLASSES
        for image in images:
            probabilities = [float(r["probability"]) for r in rows if r["image"] == image.name]
            assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-6

    *band_maps, timing = client.predict(handle_file(images[0]), "fft", 64, api_name="/bands")
    assert all(Path(path).stat().st_size > 0 for path in band_maps) and timing.startswith("fft at 64 px:")

    *outputs, summary = client.predict(run_id, handle_file(images[0]), handle_file(images[1]), 3, api_name="/counterfactual")
    predicted = [[c["label"] for c in label["confidences"]] for label in outputs[:8]]  # embedding path and image-space swap
    assert all(len(names) == 3 and set(names) <= set(WORLD_CLASSES) for names in predicted)
    assert all(Path(path).stat().st_size > 0 for path in outputs[8:]) and summary.startswith("With B's high band, A")


def test_browser_upload_train_progress_stop_reattach_and_screenshots(server, cifar_zip, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (.ci/run installs it)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    expect = pytest.importorskip("playwright.sync_api").expect
    demo, _ = server
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1100})
        page = context.new_page()
        page.goto(demo.local_url)
        page.locator("#dataset-zip input[type=file]").set_input_files(str(cifar_zip))
        expect(page.locator("#dataset-summary")).to_contain_text("10 classes", timeout=60_000)
        page.locator("#backbone input").fill("specpl-tiny")  # filter the dropdown, take the match
        page.keyboard.press("Enter")
        expect(page.locator("#backbone input")).to_have_value(re.compile("^specpl-tiny"))
        page.locator("#shots input").fill("2")
        page.locator("#epochs input").fill("3000")
        page.locator("#start").click()
        expect(page.locator("#run-status")).to_contain_text("Running: step", timeout=120_000)
        run_id = page.locator("#run-id textarea").input_value()
        assert run_id

        second_tab = context.new_page()  # a new tab (or a reload) reattaches to the running job
        second_tab.goto(demo.local_url)
        expect(second_tab.locator("#run-id textarea")).to_have_value(run_id, timeout=30_000)
        second_tab.close()

        page.locator("#stop").click()
        expect(page.locator("#run-status")).to_contain_text("Cancelled: stopped by request", timeout=60_000)
        for tab, button in TABS.items():
            page.get_by_role("tab", name=tab).click()
            expect(page.get_by_role("button", name=button, exact=True)).to_be_visible()  # later tabs load when first opened
            if tab == "Runs":  # the list filled while the tab's components were still hidden
                expect(page.locator("#runs-table")).to_contain_text(run_id)
            shot = tmp_path / f"tab-{tab.split()[0].lower()}.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        browser.close()
