"""Smaller parts of the app: ZeroGPU safety, backbone availability and the offline default, progress, failure causes."""

from __future__ import annotations

import json
import socket

import pytest
import torch

from app.runtime import backbones
from app.runtime.jobs import RunRecord
from app.runtime.settings import AppSettings
from app.runtime.worker import describe_failure
from app.tabs.shared import markdown_text
from app.views.progress import MAX_CURVE_POINTS, loss_frame, read_progress, status_line
from specpl import defaults
from specpl.backbone import EMBEDDED_WEIGHTS, BackboneUnavailable
from specpl.config import BackboneConfig
from specpl.data import DataError


def test_building_the_app_touches_no_cuda(tmp_path, monkeypatch):
    from app.ui import build_demo

    def no_cuda(*args, **kwargs):
        raise AssertionError("CUDA touched while building the app")

    for name in ("_lazy_init", "is_available", "device_count", "init"):
        monkeypatch.setattr(torch.cuda, name, no_cuda)
    demo = build_demo(AppSettings(data_dir=tmp_path / "data"))
    demo.studio.jobs.close()
    assert {p.name for p in (tmp_path / "data").iterdir()} == {"runs", "gradio-cache", ".secret"}


def test_the_first_page_load_asks_only_for_the_data_and_train_form(tmp_path):
    """Gradio fetches the front-end code of every visible component on the first visit, so the
    inactive tabs and the empty outputs (gallery, status, curve) start hidden."""
    import gradio as gr

    from app.ui import build_demo

    demo = build_demo(AppSettings(data_dir=tmp_path / "data"))
    demo.studio.jobs.close()
    config = demo.get_config_file()
    visible = {c["type"] for c in config["components"] if c["props"].get("visible", True) is not False}
    assert visible == {
        "accordion",
        "browserstate",
        "button",
        "checkboxgroup",
        "column",
        "dropdown",
        "file",
        "form",
        "group",
        "markdown",
        "number",
        "row",
        "slider",
        "state",
        "tabitem",
        "tabs",
        "textbox",
        "timer",
    }
    later_tabs = [
        block for block in demo.blocks.values() if isinstance(block, gr.Tab) and block.label != "Data & Train"
    ]
    assert [tab.label for tab in later_tabs] == ["Bands", "Counterfactual", "Classify", "Runs"]

    def leaves(block):
        for child in getattr(block, "children", []):
            yield from leaves(child) if hasattr(child, "children") else [child]

    for tab in later_tabs:
        components = list(leaves(tab))
        assert components and not any(c.visible for c in components), tab.label
        reveal = [
            d for d in config["dependencies"] if [tab._id, "select"] in [list(t) for t in d["targets"]] and d["outputs"]
        ]
        shown_by_select = set().union(*(d["outputs"] for d in reveal))
        on_demand = {
            c._id for c in components if c._id not in shown_by_select
        }  # a run's report: shown by the event that fills it
        later = set().union(
            *(
                d["outputs"]
                for d in config["dependencies"]
                if [tab._id, "select"] not in [list(t) for t in d["targets"]]
            )
        )
        assert on_demand <= later and len(on_demand) < len(components) / 2, tab.label


def test_an_offline_backbone_is_explained_in_one_sentence_with_what_is_available(monkeypatch, tmp_path):
    monkeypatch.setattr(backbones, "_hub_cached", lambda config: False)
    monkeypatch.setitem(EMBEDDED_WEIGHTS, defaults.WORLD_MODEL, tmp_path / "open_clip_model.safetensors")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    EMBEDDED_WEIGHTS[defaults.WORLD_MODEL].write_bytes(
        b""
    )  # availability only looks for the file; loading is tested with the app
    assert backbones.unavailable_message("ViT-B-32/openai") == (
        "ViT-B-32 (openai) can't be loaded because its weights are not in the Hugging Face cache "
        "and the app is offline (HF_HUB_OFFLINE); available now: world-clip (embedded), SpectralWorld images only; "
        "specpl-tiny (random init), tiny test model, untrained."
    )
    assert (
        backbones.default_backbone_key() == backbones.WORLD_KEY
        and backbones.unavailable_message(backbones.WORLD_KEY) is None
    )
    assert backbones.fallback_note().startswith(
        "No pretrained CLIP can be loaded here (offline), so the embedded SpectralWorld CLIP is selected"
    )
    assert backbones.resolve_backbone(backbones.WORLD_KEY) == BackboneConfig("world-clip", "embedded", quick_gelu=False)

    EMBEDDED_WEIGHTS[
        defaults.WORLD_MODEL
    ].unlink()  # a broken install: still never the untrained model by default, and no fallback claim
    assert backbones.default_backbone_key() == backbones.WORLD_KEY and backbones.fallback_note() is None
    assert backbones.unavailable_message(backbones.WORLD_KEY) == (
        f"world-clip (embedded), SpectralWorld images only can't be loaded because its weights file "
        f"{EMBEDDED_WEIGHTS[defaults.WORLD_MODEL]} is missing from this installation; "
        "available now: specpl-tiny (random init), tiny test model, untrained."
    )

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(backbones, "hub_reachable", lambda: False)
    assert backbones.availability("ViT-B-32/openai") == backbones.Availability(
        "offline", "its weights are not in the Hugging Face cache and the Hugging Face hub can't be reached"
    )
    monkeypatch.setattr(backbones, "hub_reachable", lambda: True)
    assert backbones.availability("ViT-B-32/openai").status == "downloadable"
    assert backbones.default_backbone_key() == "ViT-B-32/openai" and backbones.fallback_note() is None
    assert backbones.resolve_backbone("ViT-B-16/openai").name == "ViT-B-16"
    with pytest.raises(ValueError, match="unknown backbone choice 'ViT-Z'"):
        backbones.resolve_backbone("ViT-Z")


def test_a_missing_demo_set_is_one_plain_sentence(monkeypatch, tmp_path):
    from app.studio import Studio
    from app.tabs.train import TrainTab

    monkeypatch.setattr(defaults, "DEMO_ZIP", tmp_path / "world-demo.zip")
    studio = Studio(AppSettings(data_dir=tmp_path / "data"))
    try:
        *_, message = TrainTab(studio).use_demo_set(0.5, None)
    finally:
        studio.jobs.close()
    assert (
        message == f"⚠️ the demo set {markdown_text(str(tmp_path / 'world-demo.zip'))} is missing from this installation"
    )


def test_an_error_message_shows_its_placeholders_and_file_names_as_written():
    """A Markdown output read "(expected <class>/<image>)" as two HTML tags and cut the message at
    "(expected"."""
    message = "a.zip has no images in class folders: x/y/z.png is nested too deep (expected <class>/<image>)"
    assert markdown_text(message).endswith("(expected &lt;class&gt;/&lt;image&gt;)")
    assert markdown_text("my_cats & dogs") == "my_cats &amp; dogs"


def test_the_hub_probe_tells_a_closed_port_from_a_listening_one(monkeypatch):
    from huggingface_hub import constants

    for name in backbones.PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(backbones, "_hub_probes", {})
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{listening.getsockname()[1]}")
        assert backbones.hub_reachable()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed.getsockname()[1]}")
        assert not backbones.hub_reachable()


@pytest.mark.parametrize(
    "error, cause",
    [
        (
            torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
            "out of GPU memory: CUDA out of memory. Tried to allocate 2.00 GiB",
        ),
        (MemoryError(), "out of memory: the machine ran out of RAM"),
        (BackboneUnavailable("could not load X. Reason: offline."), "backbone unavailable: could not load X."),
        (
            DataError("data folder /x has one class (cat); classification needs at least 2"),
            "data folder /x has one class (cat); classification needs at least 2",
        ),
        (RuntimeError("boom\nsecond line"), "RuntimeError: boom second line"),
    ],
)
def test_worker_failures_become_one_line_causes(error, cause):
    assert describe_failure(error) == cause


def write_events(path, events, torn_tail: bool = False):
    text = "".join(json.dumps(e) + "\n" for e in events) + ('{"type": "st' if torn_tail else "")
    path.write_text(text)


def step(n: int, total: int = 10) -> dict:
    return {
        "type": "step",
        "step": n,
        "total_steps": total,
        "epoch": 1,
        "epochs": 1,
        "loss": 2.0 / n,
        "losses": {"cls": 1.0 / n, "sem": 1.0 / n},
        "eta_s": 75.0,
        "images_per_s": 40.0,
    }


def test_progress_follows_the_event_log(tmp_path):
    write_events(tmp_path / "events.jsonl", [{"type": "status", "status": "running"}, step(1), step(2)], torn_tail=True)
    progress = read_progress(tmp_path)
    assert (progress.step, progress.total_steps, progress.fraction) == (2, 10, 0.2)
    assert set(loss_frame(progress)["term"]) == {"total", "cls", "sem"} and len(loss_frame(progress)) == 6
    running = RunRecord("r", "demo", "running", created=0)
    assert status_line(running, progress, None) == "Running: step 2/10, epoch 1/1, ETA 1:15, 40 images/s."
    assert status_line(RunRecord("r", "demo", "queued", created=0), progress, 2).startswith(
        "Queued: position 2 in line"
    )
    failed = RunRecord("r", "demo", "failed", created=0, cause="killed by signal 9 (SIGKILL)")
    assert status_line(failed, progress, None) == "Failed: killed by signal 9 (SIGKILL)"

    write_events(
        tmp_path / "events.jsonl",
        [step(n, 5000) for n in range(1, 5001)] + [{"type": "eval", "accuracy": 55.0, "test_images": 80}],
    )
    long_run = read_progress(tmp_path)
    assert long_run.metrics == {"accuracy": 55.0, "test_images": 80}
    steps = loss_frame(long_run)["step"].unique()
    assert len(steps) <= MAX_CURVE_POINTS + 1 and steps[-1] == 5000


def test_settings_read_the_environment_and_int8_can_be_turned_off(tmp_path):
    settings = AppSettings.from_env(
        {"SPECPL_DATA_DIR": str(tmp_path), "SPECPL_MAX_UPLOAD_MB": "1.5", "SPECPL_CPU_INT8": "0"}
    )
    assert settings.data_dir == tmp_path.resolve() and settings.limits.max_upload_bytes == int(1.5 * 1024 * 1024)
    assert settings.cpu_int8 is False and AppSettings.from_env({}).cpu_int8 is True
    assert settings.runs_dir.parent == settings.gradio_cache_dir.parent == tmp_path.resolve()


def test_resume_clears_the_old_eta_and_near_chance_accuracy_is_flagged_with_its_reason(tmp_path):
    from app.views.progress import chance_note, series_colours

    write_events(
        tmp_path / "events.jsonl",
        [{"type": "data", "classes": 10}, step(1), step(2), {"type": "resumed", "global_step": 2}],
    )
    progress = read_progress(tmp_path)
    assert progress.eta_s is None and progress.classes == 10  # no stale ETA while the resumed run warms up
    assert (
        status_line(RunRecord("r", "demo", "running", created=0), progress, None)
        == "Running: step 2/10, epoch 1/1, ETA: measuring…"
    )

    progress.metrics = {"accuracy": 11.0}
    world = {"name": defaults.WORLD_MODEL, "pretrained": "embedded"}
    line = status_line(RunRecord("r", "demo", "finished", created=0), progress, None, world)
    assert line.startswith("Finished: test accuracy 11.0%. ⚠️ This is within 5 points of chance (10% for 10 classes)")
    assert "knows only SpectralWorld images" in line
    assert chance_note(16.0, 10, world) == "" and chance_note(30.0, 4, None).startswith(
        " ⚠️ This is within 5 points of chance (25% for 4 classes)"
    )
    assert "randomly initialised" in chance_note(10.0, 10, {"name": "specpl-tiny", "pretrained": None})

    verdict = "The kept model (epoch 3 of 8) scores 91.0% on validation, +2.0 points over zero-shot CLIP (89.0%)."
    progress.metrics = {
        "accuracy": 91.5,
        "zero_shot": {"accuracy": 88.25},
        "gain_over_zero_shot": 3.25,
        "verdict": verdict,
    }
    finished = RunRecord("r", "demo", "finished", created=0)
    assert (
        status_line(finished, progress, None)
        == f"Finished: test accuracy 91.5% (zero-shot CLIP 88.2%, +3.2 points). {verdict}"
    )
    progress.metrics = {
        "accuracy": 90.0,
        "base": 90.0,
        "new": 50.0,
        "hm": 64.3,
        "zero_shot": {"accuracy": 80.0, "base": 80.0, "new": 70.0, "hm": 74.7},
        "gain_over_zero_shot": -10.4,
        "verdict": verdict,
    }
    assert status_line(finished, progress, None) == (
        "Finished: base 90.0%, new 50.0%, HM 64.3% on the test split "
        "(zero-shot CLIP: base 80.0%, new 70.0%, HM 74.7%; HM -10.4 points). "
        f"{verdict} Validation holds only the training (base) classes, "
        "so choosing the kept epoch on it cannot protect new-class accuracy."
    )
    paper = "The last epoch is kept (paper preset); there is no validation split to compare it with zero-shot CLIP."
    progress.metrics = {"accuracy": 91.5, "verdict": paper}  # the paper preset scores no zero-shot
    assert status_line(finished, progress, None) == f"Finished: test accuracy 91.5%. {paper}"

    frame = loss_frame(read_progress(tmp_path))
    assert str(frame["step"].dtype) == "int64" and str(frame["loss"].dtype) == "float64"
    assert (
        str(loss_frame(type(progress)())["loss"].dtype) == "float64"
    )  # typed even when empty: the plot keeps numeric axes
    assert list(series_colours(frame)) == ["total", "cls", "sem"]


def test_classify_reads_the_model_choice_of_its_own_tab(tmp_path):
    """/classify's first input is the Classify tab's "Model" radio: when one function laid out every
    tab, a later variable of the same name handed it the Advanced form's decomposer.source box, so
    choosing zero-shot CLIP in the page changed nothing."""
    from app.ui import build_demo

    demo = build_demo(AppSettings(data_dir=tmp_path / "data"))
    demo.studio.jobs.close()
    model = demo.get_api_info()["named_endpoints"]["/classify"]["parameters"][0]
    assert (model["parameter_name"], model["component"], model["label"]) == ("source", "Radio", "Model")
