"""The trainer end to end on the tiny backbone and real CIFAR-10 photos."""

import json

import pytest
import torch

from specpl.bundle import read_bundle
from specpl.config import BackboneConfig, DataConfig, DecomposerConfig, MethodConfig, RunConfig, TrainConfig
from specpl.events import read_events
from specpl.factory import build_method
from specpl.inference import Predictor
from specpl.registry import UnknownNameError
from specpl.trainer import Trainer


def tiny_config(root, boosters=("specpl",), epochs=2, **train) -> RunConfig:
    return RunConfig(
        backbone=BackboneConfig(name="specpl-tiny", pretrained=None),
        decomposer=DecomposerConfig(name="fft", image_size=32),
        method=MethodConfig(host="coop", boosters=list(boosters), options={"coop": {"n_ctx": 4}}),
        data=DataConfig(root=str(root), shots=2),
        # the last epoch, no validation hold-out: these tests count the steps of every training image
        train=TrainConfig(epochs=epochs, batch_size=8, **{"select": "last", **train}),
    )


def learned(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.learned_state_dict().items()}


def test_train_save_reload_gives_identical_logits(trained_run, cifar_root):
    result = trained_run
    assert result.status == "finished"
    bundle = result.run_dir / "model"
    tensors, config = read_bundle(bundle)
    assert not any(k.startswith("frozen_clip") for k in tensors)
    assert config["classnames"][0] == "airplane" and config["backbone"]["quick_gelu"] is True
    assert config["method"]["options"]["specpl"]["lambda_gcf"] == 0.1
    assert {"torch", "open_clip", "specpl"} <= set(config["versions"])
    assert (bundle / "README.md").read_text().startswith("# SpecPL Studio model: coop + specpl")

    images = sorted((cifar_root / "test" / "cat").iterdir())[:4]
    live = Predictor(result.model)
    reloaded = Predictor.from_bundle(bundle)  # rebuilds the (seeded) tiny backbone from config.json
    batch = live.preprocess(images)
    torch.testing.assert_close(reloaded.logits(batch), live.logits(batch), rtol=0, atol=0)
    assert reloaded.predict(images, top_k=3)[0][0][0] in config["classnames"]


def test_events_log_progress(tmp_path, cifar_root, tiny_backbone):
    seen = []
    Trainer(
        tiny_config(cifar_root, epochs=1),
        tmp_path / "run",
        callback=seen.append,
        backbone=tiny_backbone,
        progress_bar=False,
    ).fit()
    events = read_events(tmp_path / "run" / "events.jsonl")
    assert [e["type"] for e in events] == [e["type"] for e in seen]
    steps = [e for e in events if e["type"] == "step"]
    assert len(steps) == 2  # 20 images / batch 8, the last partial batch dropped (the reference data path)
    # CoOp + SpecPL: the host's cross-entropy and SpecPL's three terms (no raw-text term on CoOp by default)
    assert set(steps[0]["losses"]) == {"cls", "sem", "granule", "counterfactual"}
    assert {"lr", "images_per_s", "eta_s", "epoch", "total_steps"} <= set(steps[0])
    assert events[-1] == {**events[-1], "type": "status", "status": "finished"}
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test_images"] == 200


def test_cached_and_uncached_training_agree(tmp_path, cifar_root, tiny_backbone):
    runs = []
    for cache in (True, False):
        result = Trainer(
            tiny_config(cifar_root, cache_features=cache),
            tmp_path / f"run{cache}",
            backbone=tiny_backbone,
            progress_bar=False,
        ).fit()
        runs.append(learned(result.model))
    for key in runs[0]:
        torch.testing.assert_close(runs[0][key], runs[1][key], rtol=0, atol=1e-6)


def test_compiled_training_matches_eager(tmp_path, cifar_root, tiny_backbone):
    """train.compile='on' (inductor here; CUDA graphs on a GPU) learns the same prompts. 20 images
    in batches of 10 keep one shape, so it compiles once (about a minute on 2 cores)."""
    from torch._dynamo.utils import counters

    runs = []
    counters.clear()
    for mode in ("off", "on"):
        config = tiny_config(cifar_root, boosters=(), epochs=1, compile=mode)
        config.train.batch_size = 10
        result = Trainer(config, tmp_path / mode, backbone=tiny_backbone, progress_bar=False).fit()
        runs.append(learned(result.model))
        assert (counters["stats"]["unique_graphs"] > 0) == (mode == "on")  # it really was compiled, and only when asked
    for key in runs[0]:
        torch.testing.assert_close(runs[1][key], runs[0][key], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="train.compile must be 'auto', 'off' or 'on', got 'max'"):
        TrainConfig(compile="max")


def test_specpl_training_step_traces_as_one_graph(tmp_path, cifar_root, tiny_backbone, monkeypatch):
    """CUDA-graph capture ("reduce-overhead") needs the whole step in one graph: the SpecPL booster's
    in-batch permutation and refined bank included. Traced with dynamo's eager backend and
    fullgraph=True, so any graph break raises instead of silently splitting the step."""
    from torch._dynamo.utils import counters

    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, mode: compile_(module, backend="eager", fullgraph=True))
    counters.clear()
    config = tiny_config(cifar_root, epochs=1, compile="on")
    config.train.batch_size = 10
    assert Trainer(config, tmp_path / "run", backbone=tiny_backbone, progress_bar=False).fit().status == "finished"
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]


def test_cancel_saves_checkpoint_and_resume_matches_uninterrupted(tmp_path, cifar_root, tiny_backbone):
    straight = Trainer(
        tiny_config(cifar_root, epochs=2), tmp_path / "straight", backbone=tiny_backbone, progress_bar=False
    ).fit()

    steps = []
    cancelled = Trainer(
        tiny_config(cifar_root, epochs=2),
        tmp_path / "run",
        callback=steps.append,
        backbone=tiny_backbone,
        progress_bar=False,
        should_stop=lambda: sum(e["type"] == "step" for e in steps) >= 3,
    ).fit()
    assert cancelled.status == "cancelled"
    assert (tmp_path / "run" / "checkpoint" / "state.safetensors").exists()
    assert not (tmp_path / "run" / "model").exists()

    resumed = Trainer(
        tiny_config(cifar_root, epochs=2), tmp_path / "run", backbone=tiny_backbone, progress_bar=False
    ).fit(resume=True)
    assert resumed.status == "finished"
    events = read_events(tmp_path / "run" / "events.jsonl")
    assert [e["step"] for e in events if e["type"] == "step"] == [1, 2, 3, 4]
    expected, got = learned(straight.model), learned(resumed.model)
    for key in expected:  # bit for bit: the frozen CLIP computes the same whenever it runs
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)


def test_the_frozen_clip_stays_in_eval_mode_while_the_method_trains(tiny_backbone):
    """Its outputs must not depend on the mode: eval-mode attention takes a fused path that rounds
    differently, and a cached feature computed before training (eval) against one computed after a
    resume (train) made a resumed run drift from an uninterrupted one."""
    method = MethodConfig(host="maple", boosters=["specpl"])
    model = build_method(method, tiny_backbone, ["cat", "dog"], decomposer=DecomposerConfig(name="fft", image_size=32))
    model.train()
    assert model.host.training and model.boosters["specpl"].training
    assert not any(module.training for module in model.frozen_clip.modules())
    model.eval().train()
    assert not any(module.training for module in model.frozen_clip.modules())


def test_stop_file_cancels_from_another_process(tmp_path, cifar_root, tiny_backbone):
    run = tmp_path / "run"

    def stop_after_first_step(event):
        if event["type"] == "step":
            (run / "STOP").touch()

    result = Trainer(
        tiny_config(cifar_root), run, callback=stop_after_first_step, backbone=tiny_backbone, progress_bar=False
    ).fit()
    assert result.status == "cancelled"


def test_base_to_new_protocol_reports_hm(tmp_path, cifar_root, tiny_backbone):
    config = tiny_config(cifar_root, boosters=(), epochs=1)
    config.data.subsample = "base"
    metrics = Trainer(config, tmp_path / "run", backbone=tiny_backbone, progress_bar=False).fit().metrics
    assert metrics["hm"] == pytest.approx(2 * metrics["base"] * metrics["new"] / (metrics["base"] + metrics["new"]))


@pytest.mark.parametrize(
    "change, error, message",
    [
        (
            lambda c: setattr(c.method, "host", "coopp"),
            UnknownNameError,
            "unknown host method 'coopp'; available: "
            "caspl-boost, cocoop, coop, ivlp, kgcoop, maple, mmrl, promptsrc, zeroshot",
        ),
        (lambda c: setattr(c.method, "boosters", ["specpl", "magic"]), UnknownNameError, "unknown booster 'magic'"),
        (lambda c: setattr(c.data, "root", "/nonexistent/data"), ValueError, "/nonexistent/data does not exist"),
        (lambda c: setattr(c.backbone, "name", "ViT-Q-99"), UnknownNameError, "unknown backbone 'ViT-Q-99'"),
        (
            lambda c: c.method.options.update(coop={"n_ctxx": 3}),
            ValueError,
            "unknown option\\(s\\) for coop: n_ctxx; coop's options are: class_specific, ctx_from_template, ctx_init",
        ),
    ],
)
def test_bad_config_fails_before_writing_anything(tmp_path, cifar_root, change, error, message):
    config = tiny_config(cifar_root)
    change(config)
    with pytest.raises(error, match=message):
        Trainer(config, tmp_path / "run", progress_bar=False).fit()
    assert not (tmp_path / "run").exists()


def test_gradient_accumulation_matches_the_larger_batch(tmp_path, cifar_root, tiny_backbone):
    """Two accumulated micro-batches of 5 make the same SGD update as one batch of 10 (CoOp's loss
    is a per-sample mean, so the averaged gradients are equal)."""
    whole = tiny_config(cifar_root, boosters=(), epochs=2)
    whole.train.batch_size = 10
    split = tiny_config(cifar_root, boosters=(), epochs=2, grad_accum_steps=2)
    split.train.batch_size = 5
    results = [
        Trainer(c, tmp_path / name, backbone=tiny_backbone, progress_bar=False).fit()
        for name, c in (("whole", whole), ("split", split))
    ]
    steps = [
        [e["step"] for e in read_events(tmp_path / name / "events.jsonl") if e["type"] == "step"]
        for name in ("whole", "split")
    ]
    assert steps[0] == steps[1] == [1, 2, 3, 4]
    torch.testing.assert_close(
        learned(results[1].model)["host.prompt_learner.ctx"],
        learned(results[0].model)["host.prompt_learner.ctx"],
        rtol=0,
        atol=1e-6,
    )


def test_stop_requested_before_the_first_step_is_honoured(tmp_path, cifar_root, tiny_backbone):
    run = tmp_path / "run"
    run.mkdir()
    (run / "STOP").touch()  # e.g. Stop pressed while the worker was still loading
    result = Trainer(tiny_config(cifar_root), run, backbone=tiny_backbone, progress_bar=False).fit()
    assert result.status == "cancelled"
    assert not (run / "STOP").exists()  # consumed, so a later resume is not stopped by it
    assert not [e for e in read_events(run / "events.jsonl") if e["type"] == "step"]
    resumed = Trainer(tiny_config(cifar_root), run, backbone=tiny_backbone, progress_bar=False).fit(resume=True)
    assert resumed.status == "finished"


def test_incremental_event_reading(tmp_path):
    from specpl.events import EventLog, read_new_events

    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.emit("a")
    events, offset = read_new_events(path, 0)
    assert [e["type"] for e in events] == ["a"]
    with open(path, "a") as handle:
        handle.write('{"type": "torn"')  # a line still being written
    log_events, offset_after = read_new_events(path, offset)
    assert log_events == [] and offset_after == offset
    with open(path, "a") as handle:
        handle.write("}\n")
    log.emit("b")
    events, _ = read_new_events(path, offset)
    assert [e["type"] for e in events] == ["torn", "b"]


def test_what_a_run_recorded_is_what_the_one_resolver_says(trained_run):
    """The trainer, the app's form, the sweep's dry run and the benchmarks share `resolve_run`: a
    run's recorded training settings and template are exactly what it returns for that config."""
    from specpl.config import RunConfig
    from specpl.datasets import read_dataset
    from specpl.resolve import resolve_run

    record = json.loads((trained_run.run_dir / "config.json").read_text(encoding="utf-8"))
    config = RunConfig.from_dict({k: record[k] for k in ("method", "data", "train")})
    resolved = resolve_run(config, read_dataset(config.data))
    assert resolved.training == record["resolved_train"] and resolved.template == record["template"]
    assert resolved.sources == record["sources"] == {}  # the default preset is ours: no paper sources
    assert len(resolved.data.train) + len(resolved.data.val) == len(read_dataset(config.data).train)


def test_a_run_recorded_before_the_linear_adapter_resumes_without_it(trained_run):
    """A run record from before `linear_adapter` existed (no such key in its coop options) resumes
    as it was built, without the adapter; a record that has the key keeps its value."""
    from specpl.trainer import with_recorded_settings

    record = json.loads((trained_run.run_dir / "config.json").read_text(encoding="utf-8"))
    config = RunConfig.from_dict({k: record[k] for k in ("method", "data", "train")})
    assert with_recorded_settings(config, record).method.options["coop"]["linear_adapter"] is True
    del record["resolved_method_options"]["coop"]["linear_adapter"]
    assert with_recorded_settings(config, record).method.options["coop"]["linear_adapter"] is False
