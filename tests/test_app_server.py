"""The app launched on localhost, driven through its API (gradio_client) and through a real
browser (Playwright driving Debian's chromium). Tiny backbone on real CIFAR-10 photos, and the
offline default: the SpectralWorld CLIP on the demo set (both stand-ins: random init, 4 classes)."""

from __future__ import annotations

import csv
import html
import json
import re
import shutil
import time
import zipfile
from pathlib import Path
from typing import NamedTuple

import open_clip
import pytest
import torch
from gradio_client import Client, handle_file
from safetensors.torch import save_file

from app.runtime import backbones
from app.runtime.settings import AppSettings
from app.tabs.bands import CHOOSE_RUN_NOTE
from app.tabs.counterfactual import CounterfactualTab
from app.tabs.runs import RunsTab
from app.ui import build_demo, launch_options
from app.views.analysis import NO_VIEW_NOTE
from specpl import defaults
from specpl.backbone import EMBEDDED_WEIGHTS
from specpl.bands import DECOMPOSERS
from specpl.config import DataConfig
from specpl.methods.dapt import DAPTConfig
from specpl.world.generator import world_classnames, write_fewshot_folder
from specpl.world.zeroshot import WORLD_TEMPLATE

TINY = "specpl-tiny/none"
WORLD_CLASSES = world_classnames()[:4]
CHROMIUM = Path("/usr/bin/chromium")
# what a person waits for a page to answer on a loaded 2-core machine (Playwright's default is 5 s)
EXPECT_TIMEOUT_MS = 20_000
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


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
        patch.setitem(EMBEDDED_WEIGHTS, defaults.WORLD_MODEL, weights)
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


def api_config(
    backbone_key: str,
    host: str = "coop",
    boosters: list[str] | None = None,
    shots: int = 2,
    epochs: int = 1,
    decomposer: str = "fft",
    **train,
) -> dict:
    """A run config as an API caller sends it to /start_training (the preset file's format); the
    app fills in the rest (and evaluates every epoch)."""
    backbone = backbones.resolve_backbone(backbone_key)
    return {
        "backbone": {"name": backbone.name, "pretrained": backbone.pretrained},
        "method": {"host": host, "boosters": boosters or []},
        "decomposer": {"name": decomposer},
        "data": {"shots": shots},
        "train": {"epochs": epochs, **train},
    }


def poll_until(client: Client, run_id: str, statuses: set[str], timeout_s: float = 180) -> dict:
    import time

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        details = client.predict(run_id, api_name="/run_status")[4]
        if details.get("status") in statuses:
            return details
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} did not reach {statuses}; last: {details}")


def test_api_upload_train_classify_bands_counterfactual_and_bundle_round_trip(server, two_runs, cifar_root):
    demo, settings = server
    client, run_id = two_runs.client, two_runs.first

    summary, gallery, message = two_runs.upload
    assert "**10 classes**, 80 training and 80 test images" in summary and "Dataset ready" in message
    assert len(gallery) == 30  # 3 thumbnails per class
    assert any(settings.gradio_cache_dir.rglob("cifar-train.zip"))  # Gradio's upload landed in the data dir

    (started, _, message), (again, _, repeated) = two_runs.starts
    assert started == run_id and message.startswith(f"Started run {run_id}")
    # a double click: the same request again within 2 s starts no second run
    assert again == run_id and repeated == f"Started run {run_id}."
    assert sum(r.name == "two epochs" for r in demo.studio.jobs.list()) == 1
    details = client.predict(run_id, api_name="/run_status")[4]
    assert details["status"] == "finished", details
    assert details["step"] == details["total_steps"] > 0 and 0 <= details["metrics"]["accuracy"] <= 100

    test_images = [sorted((cifar_root / "test" / name).iterdir())[0] for name in ("cat", "ship", "truck")]
    _, table, csv_file, top, message = client.predict(
        "run", run_id, "", TINY, "a photo of a {}.", [handle_file(p) for p in test_images], 3, api_name="/classify"
    )
    with open(csv_file, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert message.startswith("Classified 3 image(s) with the int8 image tower.") and len(rows) == 9
    assert [row[3] for row in table["metadata"]["display_value"]] == [
        f"{float(r['probability']):.1%}" for r in rows
    ]  # the tab shows 85.7%; the table's data and the CSV keep the probability
    near_chance = details["metrics"]["accuracy"] <= 10 + 5  # 10 classes: the message must say so, and why
    assert (
        "within 5 points of chance (10% for 10 classes)" in message and "randomly initialised" in message
    ) == near_chance
    assert {r["image"] for r in rows} == {p.name for p in test_images}
    classes = {p.name for p in (cifar_root / "train").iterdir()}
    assert {r["label"] for r in rows} <= classes and top["label"] in classes

    *band_maps, saliency, mask, mask_note, timing = client.predict(
        handle_file(test_images[0]), "fft", 64, run_id, api_name="/bands"
    )
    assert all(Path(path).stat().st_size > 0 for path in band_maps) and timing.startswith("fft at 64 px:")
    assert (saliency, mask, mask_note) == (None, None, NO_VIEW_NOTE)  # a CoOp + SpecPL run

    *outputs, summary = client.predict(
        run_id, handle_file(test_images[0]), handle_file(test_images[1]), 3, api_name="/counterfactual"
    )
    labels, swaps, modulation = outputs[:8], outputs[8:10], outputs[10]
    assert all(len(label["confidences"]) == 3 for label in labels)  # granule path and image-space swap, 4 each
    assert re.fullmatch(
        r"\*\*Modulation cosine\*\* \(image feature before vs\. after FiLM, 1 = not moved\): "
        r"(.+: -?[01]\.\d{4}; ){3}.+: -?[01]\.\d{4}\.",
        modulation,
    ), modulation
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
    _, _, message = client.predict(api_config(TINY, boosters=[], shots=2, epochs=1), "", api_name="/start_training")
    assert message == "⚠️ upload a dataset (.zip) or build one before starting"


def component(demo, elem_id: str):
    return next(block for block in demo.blocks.values() if getattr(block, "elem_id", None) == elem_id)


def test_offline_the_world_clip_is_the_default_and_both_tabs_say_so(server):
    demo, _ = server
    assert (
        backbones.default_backbone_key()
        == component(demo, "backbone").value
        == component(demo, "zs-backbone").value
        == backbones.WORLD_KEY
    )
    note = component(demo, "fallback-note")
    assert note.visible and note.value == (
        "No pretrained CLIP can be loaded here (offline), so the embedded SpectralWorld CLIP is selected; "
        "it knows only SpectralWorld images — try the demo set."
    )
    assert component(demo, "zs-note").value.endswith(
        "only SpectralWorld images — type SpectralWorld class names, e.g. solid circle, striped circle, barred square."
    )
    assert component(demo, "use-demo").variant == "primary"
    bands_decomposers = component(demo, "band-decomposer").choices
    assert [name for _, name in bands_decomposers] == DECOMPOSERS.names()  # the values the API takes
    unusable = "can't load here"  # offline with an empty cache, only the weight-free fft loads
    assert dict(bands_decomposers) == {
        f"{name} — {'ready' if name == 'fft' else unusable}": name for name in DECOMPOSERS.names()
    }
    assert "(HF_HUB_OFFLINE)" in backbones.unavailable_message("ViT-B-32/openai")  # and the UI refuses it up front


def test_api_demo_set_trains_on_the_world_clip_and_every_tab_answers(server, world_run, offline_world, tmp_path):
    demo, _ = server
    client = Client(demo.local_url, verbose=False, download_files=str(tmp_path))

    summary, gallery, message = client.predict(0.5, api_name="/use_demo_set")
    assert "**4 classes**, 8 training and 8 test images" in summary and all(
        f"| {name} | 2 | 2 |" in summary for name in WORLD_CLASSES
    )
    assert message == "Demo set ready: 4 SpectralWorld classes, which the embedded SpectralWorld CLIP knows."
    assert sorted(item["caption"] for item in gallery) == sorted(WORLD_CLASSES * 2)

    run_id = world_run
    details = client.predict(run_id, api_name="/run_status")[4]
    assert details["status"] == "finished", details
    assert details["step"] == details["total_steps"] > 0 and 0 <= details["metrics"]["accuracy"] <= 100

    (tmp_path / "images").mkdir()
    images = [
        Path(shutil.copy(offline_world / "test" / name / "0000.png", tmp_path / "images" / f"{name}.png"))
        for name in WORLD_CLASSES
    ]
    # zero-shot CLIP's image tower is quantised; IVLP's carries prompts, so it stays in float32
    for source, run, tower in (("zero-shot", None, "int8"), ("run", run_id, "float32")):
        _, _, csv_file, top, message = client.predict(
            source,
            run,
            ", ".join(WORLD_CLASSES),
            backbones.WORLD_KEY,
            WORLD_TEMPLATE,
            [handle_file(p) for p in images],
            3,
            api_name="/classify",
        )
        with open(csv_file, newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert message.startswith(f"Classified 4 image(s) with the {tower} image tower.") and len(rows) == 12, (
            source,
            message,
        )
        assert (
            "knows only SpectralWorld images" in message
        )  # zero-shot: the note; the run: near chance (random stand-in) or the note
        assert {r["image"] for r in rows} == {p.name for p in images}
        assert {r["label"] for r in rows} <= set(WORLD_CLASSES) and top["label"] in WORLD_CLASSES
        for image in images:
            probabilities = [float(r["probability"]) for r in rows if r["image"] == image.name]
            assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-6

    *band_maps, saliency, mask, mask_note, timing = client.predict(
        handle_file(images[0]), "fft", 64, None, api_name="/bands"
    )
    assert all(Path(path).stat().st_size > 0 for path in band_maps) and timing.startswith("fft at 64 px:")
    assert (saliency, mask, mask_note) == (None, None, CHOOSE_RUN_NOTE)

    *outputs, summary = client.predict(
        run_id, handle_file(images[0]), handle_file(images[1]), 3, api_name="/counterfactual"
    )
    predicted = [
        [c["label"] for c in label["confidences"]] for label in outputs[:8]
    ]  # embedding path and image-space swap
    assert all(len(names) == 3 and set(names) <= set(WORLD_CLASSES) for names in predicted)
    assert all(Path(path).stat().st_size > 0 for path in outputs[8:10]) and summary.startswith("With B's high band, A")


class FakeHfApi:
    """Stands in for huggingface_hub.HfApi (no network): records the push."""

    calls: list = []

    def __init__(self, token: str) -> None:
        self.token = token

    def create_repo(self, repo_id: str, repo_type: str, private: bool, exist_ok: bool) -> str:
        FakeHfApi.calls.append(("create_repo", repo_id, private, self.token))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, folder_path: str, repo_id: str, **kwargs) -> None:
        FakeHfApi.calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))


class TwoRuns(NamedTuple):
    client: Client
    first: str
    second: str
    upload: tuple  # what /upload_dataset answered: summary, gallery, message
    starts: list[tuple]  # what each of the first run's two /start_training requests answered


@pytest.fixture(scope="module")
def two_runs(server, cifar_zip, tmp_path_factory) -> TwoRuns:
    """One client session with the CIFAR upload and two finished runs: CoOp+SpecPL for 2 epochs and
    CoOp for 1 (both evaluated after every epoch, as every app run is). The first is asked for twice
    within 2 s, as a double click does."""
    demo, _ = server
    client = Client(demo.local_url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))
    upload = client.predict(handle_file(cifar_zip), 0.5, api_name="/upload_dataset")
    request = api_config(TINY, boosters=["specpl"], epochs=2, batch_size=8)
    starts = [client.predict(request, "two epochs", api_name="/start_training") for _ in range(2)]
    second, *_ = client.predict(api_config(TINY, epochs=1, batch_size=8), "one epoch", api_name="/start_training")
    first = starts[0][0]
    for run_id in (first, second):
        assert poll_until(client, run_id, {"finished", "failed", "cancelled"}, timeout_s=300)["status"] == "finished"
    return TwoRuns(client, first, second, upload, starts)


def test_api_a_finished_run_has_validation_and_lr_curves_a_confusion_matrix_per_class_bars_and_its_mistakes(
    server, two_runs
):
    demo, settings = server
    client, first = two_runs.client, two_runs.first
    status, loss, val, lr, details, confusion, per_class, mistakes = client.predict(first, api_name="/run_status")
    metrics = json.loads((settings.runs_dir / first / "metrics.json").read_text())
    assert val["value"]["columns"] == ["epoch", "step", "accuracy", "series"]
    rows = val["value"]["data"]
    assert [row[0] for row in rows if row[3] == "validation"] == [
        0,
        1,
        2,
    ]  # epoch 0: the initial prompts, before training
    assert [row[2] for row in rows if row[3] == "validation"] == pytest.approx(
        [metrics["selection"]["initial_val"], *metrics["selection"]["per_epoch_val"]]
    )
    assert [(row[0], row[2]) for row in rows if row[3] == "zero-shot"] == [
        (epoch, pytest.approx(metrics["selection"]["zero_shot_val"])) for epoch in (0, 1, 2)
    ]
    assert all(0 <= row[2] <= 100 for row in rows)
    assert (
        details["metrics"]["verdict"] == metrics["verdict"] and html.escape(metrics["verdict"]) in status
    )  # the status line ends with the verdict
    assert (
        f"(zero-shot CLIP {metrics['zero_shot']['accuracy']:.1f}%, {metrics['gain_over_zero_shot']:+.1f} points)"
        in status
    )
    assert (
        "<b>Result</b>: test accuracy" in confusion["value"] and html.escape(metrics["verdict"]) in confusion["value"]
    )
    steps = [row[0] for row in lr["value"]["data"]]
    assert steps == list(range(1, details["total_steps"] + 1))  # logged every step on a CPU
    assert "Band decomposer: fft (fft, as the config names it.)" in status and details["decomposer"]["name"] == "fft"
    confusion, mistakes = confusion["value"], mistakes["value"]  # updates: shown with a value once the run has finished
    assert confusion.count("<tr>") == 11 and "rows: true class" in confusion  # header + 10 classes
    assert {row[0]: row[1] for row in per_class["value"]["data"]} == pytest.approx(metrics["per_class"])
    wrong = [m for m in metrics["misclassified"]]
    assert len(mistakes) == len(wrong) and all(" → " in item["caption"] for item in mistakes)
    assert [item["caption"] for item in mistakes][
        0
    ] == f"{wrong[0]['label']} → {wrong[0]['predicted']} ({wrong[0]['probability']:.0%})"


def test_api_compare_overlays_the_runs_and_ranks_them_by_accuracy(server, two_runs):
    demo, settings = server
    client, first, second = two_runs.client, two_runs.first, two_runs.second
    loss, val, ranking = client.predict([first, second], api_name="/compare_runs")
    accuracy = {
        run_id: json.loads((settings.runs_dir / run_id / "metrics.json").read_text())["accuracy"]
        for run_id in (first, second)
    }
    expected = sorted((first, second), key=lambda run_id: -accuracy[run_id])
    assert [row[1] for row in ranking["data"]] == expected and [row[0] for row in ranking["data"]] == [1, 2]
    assert ranking["headers"][4:7] == ["test accuracy", "zero-shot", "gain"]
    for row in ranking["data"]:
        metrics = json.loads((settings.runs_dir / row[1] / "metrics.json").read_text())
        assert row[5:7] == [f"{metrics['zero_shot']['accuracy']:.1f}%", f"{metrics['gain_over_zero_shot']:+.1f}"]
    table = RunsTab(demo.studio, []).runs_table(owner="local").set_index("run")  # the Runs table: the same baseline
    for run_id in (first, second):
        metrics = json.loads((settings.runs_dir / run_id / "metrics.json").read_text())
        assert list(table.loc[run_id, ["accuracy", "zero-shot", "gain"]]) == [
            f"{metrics['accuracy']:.1f}%",
            f"{metrics['zero_shot']['accuracy']:.1f}%",
            f"{metrics['gain_over_zero_shot']:+.1f}",
        ]
    assert {row[1] for row in loss["value"]["data"]} == {f"two epochs ({first[-6:]})", f"one epoch ({second[-6:]})"}
    assert sorted(row[0] for row in val["value"]["data"]) == [
        0,
        0,
        1,
        1,
        2,
    ]  # epochs (0: before training): two from the first run, one from the second


def test_api_evaluate_a_run_on_a_new_test_set_as_the_library_scores_it(server, two_runs, cifar_root, tmp_path):
    from specpl.datasets import read_dataset
    from specpl.inference import Predictor

    demo, settings = server
    client, first = two_runs.client, two_runs.first
    classes = tmp_path / "new-test"
    shutil.copytree(cifar_root / "test", classes)
    archive = Path(shutil.make_archive(str(tmp_path / "new-test"), "zip", classes))
    per_class, message = client.predict(first, handle_file(archive), api_name="/evaluate_run")
    data = read_dataset(DataConfig(root=str(classes), shots=None))
    expected = Predictor.from_bundle(settings.runs_dir / first / "model").evaluate([*data.train, *data.val, *data.test])
    assert (
        message.startswith(
            f"Accuracy {expected.accuracy:.1f}% on {expected.count} images of 10 classes (new-test.zip)."
        )
        and expected.count == 200
    )
    assert {row[0]: row[1] for row in per_class["value"]["data"]} == pytest.approx(expected.per_class)
    assert not [p for p in settings.sessions_dir.rglob("testsets/*") if p.is_dir()]  # the unpacked test set is removed
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("cat/0.png", b"\0" * (20 * 1024 * 1024))
    _, message = client.predict(first, handle_file(bomb), api_name="/evaluate_run")
    assert (
        message.startswith("⚠️ bomb.zip was rejected: entry 'cat/0.png' would expand") and "zip bomb" in message
    )  # checked like any upload


def test_api_a_stopped_run_exports_and_pushes_its_checkpoint_and_delete_removes_its_zip(server, two_runs, monkeypatch):
    import huggingface_hub

    demo, settings = server
    client = two_runs.client
    run_id, *_ = client.predict(api_config(TINY, epochs=3000, batch_size=8), "long", api_name="/start_training")
    poll_until(client, run_id, {"running"}, timeout_s=300)
    deadline = time.time() + 120
    while client.predict(run_id, api_name="/run_status")[4]["step"] < 3 and time.time() < deadline:
        time.sleep(0.5)
    assert client.predict(run_id, api_name="/stop_training").startswith("Stopping")
    assert poll_until(client, run_id, {"cancelled", "failed", "finished"})["status"] == "cancelled"

    bundle, message = client.predict(run_id, api_name="/export_bundle")
    assert re.fullmatch(
        rf"Bundle ready: specpl-{run_id}\.zip \(model\.safetensors, config\.json, README\.md\), "
        r"from its last checkpoint \(epoch \d+, step \d+\), not a finished training\.",
        message,
    ), message
    with zipfile.ZipFile(bundle) as archive:
        assert sorted(archive.namelist()) == ["model/README.md", "model/config.json", "model/model.safetensors"]
    imported = client.predict(handle_file(bundle), api_name="/import_bundle")
    assert imported.startswith("Imported") and "(10 classes, coop)" in imported  # it loads like any bundle

    FakeHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    message = client.predict(run_id, "alice/cats", "hf_secret", True, api_name="/push_to_hub")
    assert (
        message.startswith(
            f"Pushed run {run_id} to https://huggingface.co/alice/cats (private), from its last checkpoint"
        )
        and "hf_secret" not in message
    )
    assert FakeHfApi.calls == [
        ("create_repo", "alice/cats", True, "hf_secret"),
        ("upload_folder", "alice/cats", ["README.md", "config.json", "model.safetensors"]),
    ]
    assert client.predict(run_id, "alice/cats", "", True, api_name="/push_to_hub").startswith(
        "⚠️ give a Hugging Face access token"
    )

    zip_name = f"specpl-{run_id}.zip"
    assert (settings.exports_dir / zip_name).is_file() and any(settings.gradio_cache_dir.rglob(zip_name))
    assert client.predict(run_id, api_name="/delete_run")[-1] == f"Deleted run {run_id} and its bundle."
    assert not (settings.exports_dir / zip_name).exists() and not any(settings.gradio_cache_dir.rglob(zip_name))
    assert not (settings.runs_dir / run_id).exists()


def test_api_image_search_finds_every_match_in_the_dataset_and_in_a_run(server, two_runs):
    demo, _ = server
    client, first = two_runs.client, two_runs.first
    _, found = client.predict("cat", api_name="/search_dataset_images")
    assert found == "16 of 160 images match 'cat'."
    *_, found = client.predict(first, "truck", api_name="/search_run_images")
    assert found == "16 of 160 images match 'truck'."
    picker, _ = (
        CounterfactualTab(demo.studio).run_images(first, "truck 00", None)[0],
        None,
    )  # the listed choices (not part of the API value)
    assert picker["choices"] and all("truck" in label and "00" in label for label, _ in picker["choices"])


def test_api_a_preset_saved_from_the_form_loads_back_into_it(server, tmp_path):
    from app.views import advanced
    from app.views.form import shown_value

    demo, _ = server
    client = Client(demo.local_url, verbose=False, download_files=str(tmp_path))
    values = advanced.effective_values("ivlp", [], "paper")
    values.update(
        {
            "method.host": "ivlp",
            "method.boosters": [],
            "method.preset": "paper",
            "decomposer.name": "fft",
            "data.shots": 4,
            "train.epochs": 2,
            "train.lr": 0,
            "data.split_ratio": 0.5,
            "train.batch_size": 2,
            advanced.OPTIONS_KEY: {"ivlp.depth": 3},
        }
    )
    fields = {field.key: field for field in advanced.setting_fields()}
    args = [shown_value(fields[key], values[key]) if key in fields else values[key] for key in advanced.form_keys()]
    preset, message = client.predict(TINY, *args, api_name="/save_preset")
    assert message == "Preset saved: ivlp, preset paper."
    saved = json.loads(Path(preset).read_text())
    assert (
        saved["method"] == {"host": "ivlp", "boosters": [], "options": {"ivlp": {"depth": 3}}, "preset": "paper"}
        and saved["train"]["batch_size"] == 2
    )
    backbone, *form, message = client.predict(handle_file(preset), api_name="/load_preset")
    loaded = dict(zip(advanced.form_keys(), form, strict=True))
    assert backbone == TINY and message == "Preset loaded: specpl-preset.json."
    assert (
        loaded["method.host"],
        loaded["method.preset"],
        loaded[advanced.OPTIONS_KEY],
        loaded["train.batch_size"],
        loaded["data.shots"],
    ) == ("ivlp", "paper", {"ivlp.depth": 3}, 2, 4)
    config, line = client.predict(TINY, *args, api_name="/run_config")
    assert config == saved and line.startswith(
        "specpl train --data DATASET_FOLDER --out runs/my-run --backbone specpl-tiny --pretrained none "
        "--host ivlp --preset paper --option ivlp.depth=3"
    )
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"method": {"host": "nosuch"}}))
    *_, message = client.predict(handle_file(bad), api_name="/load_preset")
    assert message.startswith("⚠️ bad.json is not a usable preset: unknown host method 'nosuch'; available: ")


@pytest.fixture(scope="module")
def world_run(server, tmp_path_factory) -> str:
    """A finished IVLP + DAPT + SpecPL run on the demo set (the world CLIP's random stand-in), trained
    through the API: DAPT's mask for the Bands tab, SpecPL's granule path for the Counterfactual tab."""
    demo, _ = server
    client = Client(demo.local_url, verbose=False, download_files=str(tmp_path_factory.mktemp("world-client")))
    client.predict(0.5, api_name="/use_demo_set")
    run_id, _, message = client.predict(
        api_config(backbones.WORLD_KEY, host="ivlp", boosters=["dapt", "specpl"], shots=2, epochs=1),
        "world run",
        api_name="/start_training",
    )
    assert message.startswith(f"Started run {run_id}")
    assert poll_until(client, run_id, {"finished", "failed", "cancelled"})["status"] == "finished"
    return run_id


def test_api_bands_show_a_dapt_runs_mask(server, world_run, offline_world, tmp_path):
    """An image the API sends has no dataset class: the map targets the predicted class."""
    demo, _ = server
    client = Client(demo.local_url, verbose=False, download_files=str(tmp_path))
    image = offline_world / "test" / WORLD_CLASSES[1] / "0000.png"
    *band_maps, saliency, mask, mask_note, timing = client.predict(
        handle_file(image), "fft", 64, world_run, api_name="/bands"
    )
    assert all(Path(path).stat().st_size > 0 for path in [*band_maps, saliency, mask]) and timing.startswith(
        "fft at 64 px:"
    )
    assert mask_note.startswith(
        f"**DAPT-G mask**: the `{DAPTConfig().cam}` map (`dapt.cam`) of this run's model, "
        "divided by its maximum and thresholded at 0.5;"
    )
    assert re.search(r"A gradient map targets '[^']+' \(predicted\)\.$", mask_note), mask_note


def test_browser_bands_mask_counterfactual_search_and_the_advanced_form(server, world_run):
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (.ci/run installs it)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    expect = pytest.importorskip("playwright.sync_api").expect
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    demo, _ = server
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
        page.goto(demo.local_url)
        page.locator("#use-demo").click()
        expect(page.locator("#dataset-summary")).to_contain_text("4 classes", timeout=60_000)
        page.get_by_role("tab", name="Bands").click()
        expect(page.locator("#band-found")).to_contain_text("16 images.")  # the pick list follows the dataset
        pick(page, "band-pick", f"test/{WORLD_CLASSES[1]}/0000.png")
        expect(page.locator("#band-image img")).to_be_visible(timeout=30_000)  # the pick's image, before the next pick
        pick(page, "band-run", world_run)
        expect(page.locator("#band-image img")).to_be_visible()
        assert page.locator("#band-image img").bounding_box()["height"] >= 200  # a 64 px image, not a thumbnail
        page.get_by_role("button", name="Compute bands", exact=True).click()
        expect(page.locator("#band-mask img")).to_be_visible(timeout=60_000)
        expect(page.locator("#band-saliency img")).to_be_visible()
        expect(page.locator("#band-mask-note")).to_contain_text(
            f"A gradient map targets '{WORLD_CLASSES[1]}' (the image's class in the dataset)."
        )

        # Counterfactual: searching the run's images for B keeps the A already picked.
        page.get_by_role("tab", name="Counterfactual").click()
        pick(page, "cf-run", world_run)
        expect(page.locator("#cf-found")).to_contain_text("16 images.")
        pick(page, "cf-pick-a", f"test/{WORLD_CLASSES[0]}/0000.png")
        expect(page.locator("#cf-a img")).to_be_visible()
        page.locator("#cf-search textarea").fill(WORLD_CLASSES[2])
        page.keyboard.press("Enter")
        expect(page.locator("#cf-found")).to_contain_text(f"4 of 16 images match '{WORLD_CLASSES[2]}'.")
        pick(page, "cf-pick-b", f"test/{WORLD_CLASSES[2]}/0001.png")
        expect(page.locator("#cf-b img")).to_be_visible()
        expect(page.locator("#cf-a img")).to_be_visible()

        # The Advanced form follows the host and the preset, and the CLI line follows the form.
        page = browser.new_context(viewport={"width": 1400, "height": 1400}).new_page()  # a fresh visit
        page.goto(demo.local_url)
        expect(page.locator("#start")).to_be_visible()
        assert not page.locator("#opt-coop-n-ctx").is_visible()  # nothing of the accordion is loaded before it opens
        page.locator("#advanced").get_by_text("Advanced").first.click()
        expect(page.locator("#opt-coop-n-ctx input")).to_have_value("16")  # CoOp's own default
        for unset in ("#opt-specpl-tau textarea", "#opt-train-batch-size input"):  # an option, a setting
            expect(page.locator(unset)).to_have_value("")  # no value (the library derives it), not Gradio's 0
            expect(page.locator(unset)).to_have_attribute("placeholder", "auto")
        page.locator("#shots input").fill("4")
        page.locator("#shots input").press("Tab")
        expect(page.locator("#cli-command textarea")).to_have_value(re.compile(r"--shots 4"))
        expect(page.locator("#cli-command textarea")).not_to_have_value(
            re.compile(r"--config|--batch-size")
        )  # the unset settings are sent unset, not as 0
        expect(page.locator("#opt-specpl-lambda-sem input")).to_be_visible()
        expect(page.locator("#opt-ivlp-depth")).to_be_hidden()
        expect(page.locator("#cli-command textarea")).to_have_value(re.compile(r"^specpl train .*--booster specpl"))

        pick(page, "host", "IVLP")
        expect(page.locator("#opt-ivlp-depth input")).to_be_visible()
        expect(page.locator("#opt-coop-n-ctx")).to_be_hidden()
        expect(page.locator("#opt-train-batch-size input")).to_have_value(
            ""
        )  # the default preset derives it from the data
        expect(page.locator("#opt-train-batch-size")).to_contain_text("default: 'auto'")
        expect(page.locator("#cli-command textarea")).to_have_value(re.compile(r"--host ivlp"))
        expect(page.locator("#cli-command textarea")).not_to_have_value(
            re.compile(r"--epochs|--batch-size")
        )  # auto: no flag
        pick(page, "preset", "paper")
        expect(page.locator("#opt-train-batch-size input")).to_have_value(
            "4"
        )  # IVLP's published batch size under the paper preset
        expect(page.locator("#cli-command textarea")).to_have_value(re.compile(r"--host ivlp --preset paper"))
        page.locator("#opt-ivlp-depth input").fill("3")
        page.locator("#opt-ivlp-depth input").press("Tab")
        expect(page.locator("#cli-command textarea")).to_have_value(re.compile(r"--option ivlp\.depth=3"))
        expect(page.locator("#run-config")).to_contain_text('"depth": 3')

        page.get_by_role("tab", name="Counterfactual").click()
        expect(page.get_by_text("SpecPL's granule path (as trained)")).to_be_visible()
        expect(page.get_by_text("In the model's embedding path")).to_have_count(0)
        browser.close()


def pick(page, elem_id: str, choice: str) -> None:
    """Choose `choice` in a dropdown as a person does: type to filter it, wait for it to be listed, then Enter.

    Waiting for the option matters: Enter on a filter that lists nothing yet (the choices still loading)
    picks nothing, and the test would fail later on a missing image instead of here. A pick closes the
    list and leaves the field; the field holds the typed text whether or not anything was picked, so the
    check is that it lost focus. If it did not, an update of the dropdown's choices (a tab's first
    display) emptied the typed filter meanwhile, and the choice is typed once more, as a person would.
    Enter, not a click on the option: the dropdown signals a click as an input twice (on the pick and
    again on leaving the field), and in one fresh-clone CI run with clicks an option typed right after
    the preset was picked was replaced by the preset's defaults."""
    expect = pytest.importorskip("playwright.sync_api").expect
    field = page.locator(f"#{elem_id} input")
    for attempt in range(2):
        field.fill(choice)
        expect(page.get_by_role("option").filter(has_text=choice).first).to_be_visible()
        page.keyboard.press("Enter")
        try:
            expect(field).not_to_be_focused(timeout=5_000)
            break
        except AssertionError:
            if attempt:
                raise AssertionError(f"{elem_id}: Enter picked nothing from the list, twice") from None
    expect(field, f"{elem_id}: the pick did not hold").to_have_value(re.compile(re.escape(choice)))
