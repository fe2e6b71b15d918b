"""The default preset's model selection: validation held out of the training images, zero-shot and
the initial state scored before training, the kept epoch restored exactly, the verdict sentence,
and a resumed run that keeps the settings it started with."""

from __future__ import annotations

import json

import pytest
import torch

from specpl.config import BackboneConfig, DataConfig, DecomposerConfig, MethodConfig, RunConfig, TrainConfig
from specpl.data import ImageItem
from specpl.events import read_events
from specpl.inference import Predictor
from specpl.selection import SAME_AS_ZERO_SHOT, ZERO_SHOT, Selection, noise_margin, verdict
from specpl.trainer import Trainer
from specpl.training_plan import hold_out_validation, validation_size


def tiny_default(root, epochs=3, **train) -> RunConfig:
    """The default preset (it selects on validation) on the tiny backbone, with a short fixed budget."""
    return RunConfig(
        backbone=BackboneConfig(name="specpl-tiny", pretrained=None),
        decomposer=DecomposerConfig(name="fft", image_size=32),
        method=MethodConfig(host="coop"),
        data=DataConfig(root=str(root), shots=4),
        train=TrainConfig(epochs=epochs, batch_size=4, **train),
    )


def test_validation_size_rule():
    assert [validation_size(n) for n in (0, 1, 2, 3, 4, 7, 8, 16, 100)] == [0, 0, 1, 1, 1, 1, 2, 4, 4]


def test_validation_is_held_out_of_the_training_images_per_class(tmp_path):
    train = [ImageItem(tmp_path / f"{label}-{i}.png", label) for label in range(3) for i in range(8)] + [
        ImageItem(tmp_path / "u.png", -1)
    ]
    kept, held = hold_out_validation(train, seed=1)
    assert sorted(kept + held, key=str) == sorted(train, key=str) and not set(kept) & set(held)
    assert [sum(item.label == label for item in held) for label in range(3)] == [2, 2, 2]  # 8 images: 2 each
    assert ImageItem(tmp_path / "u.png", -1) in kept  # an unlabeled image is never validation
    assert hold_out_validation(train, seed=1) == (kept, held) and hold_out_validation(train, seed=2) != (kept, held)


def test_accuracy_then_cross_entropy_decide_and_exact_ties_go_to_the_later_epoch():
    selection = Selection(val_images=10, zero_shot=50.0)
    state = lambda value: {"w": torch.tensor([value])}  # noqa: E731
    assert selection.offer(0, 40.0, state(0.0), loss=1.0)
    assert selection.offer(1, 60.0, state(1.0), loss=0.8) and selection.offer(
        2, 60.0, state(2.0), loss=0.8
    )  # an exact tie: the later epoch
    assert not selection.offer(3, 60.0, state(3.0), loss=0.9)  # the same accuracy, less sure of the right class
    assert not selection.offer(4, 55.0, state(4.0), loss=0.1)
    assert (selection.best_epoch, float(selection.best_state["w"])) == (2, 2.0)
    restored = Selection.from_record(json.loads(json.dumps(selection.to_record())), selection.best_state)
    assert (restored.best_epoch, restored.scores, restored.losses, restored.zero_shot) == (
        2,
        selection.scores,
        selection.losses,
        50.0,
    )


def test_the_noise_margin_is_one_standard_error_of_the_validation_accuracy():
    assert noise_margin(15 / 18 * 100, 18) == pytest.approx(100 * (0.8 * 0.2 / 18) ** 0.5)  # rate (15 + 1) / (18 + 2)
    assert noise_margin(100.0, 16) == 100 / 16  # a perfect score keeps a margin, and one image never counts as evidence
    assert noise_margin(80.0, 1000) == pytest.approx(100 * ((801 / 1002) * (201 / 1002) / 1000) ** 0.5)


def scored(
    scores: dict[int, float],
    losses: dict[int, float] | None = None,
    images: int = 10,
    zero_shot: float = 50.0,
    zero_shot_loss: float | None = None,
) -> Selection:
    selection = Selection(images, zero_shot=zero_shot, zero_shot_loss=zero_shot_loss)
    for epoch, accuracy in scores.items():
        selection.offer(epoch, accuracy, {"w": torch.tensor([float(epoch)])}, (losses or {}).get(epoch, 1.0))
    return selection


def test_the_last_epoch_is_kept_unless_validation_shows_it_worse_by_more_than_two_standard_errors():
    # 10 images: 70 % has a standard error of 14.9 points (rate 8 / 12), so the last may be 29.8 below
    within = scored({0: 40, 1: 70, 2: 50})  # 20 points below: more than one standard error, less than two
    assert within.last_epoch_margin == pytest.approx(2 * noise_margin(70.0, 10)) == pytest.approx(29.81, abs=0.01)
    assert within.settle(2) is None and within.kept_epoch == 2 and within.best_epoch == 1
    below = scored({0: 50, 1: 70, 2: 40})  # 30 points below
    assert float(below.settle(2)["w"]) == 1.0 and below.kept_epoch == 1
    assert below.summary(2)["last_epoch_margin"] == pytest.approx(29.81, abs=0.01)


def test_the_initial_state_is_epoch_0_and_is_kept_when_it_misses_at_most_one_image():
    # level with the initial state, or one image under it, is noise: the last epoch is kept (rule 2)
    same = scored({0: 60, 1: 60, 2: 60}, losses={0: 0.5, 1: 0.6, 2: 0.7})
    assert same.settle(2) is None and same.kept_epoch == 2
    under = scored({0: 60, 1: 50, 2: 50})
    assert under.settle(2) is None and under.kept_epoch == 2
    # clearly under it (more than two standard errors, 29.8 points at 60 % of 10): the initial state
    clear = scored({0: 60, 1: 40, 2: 20})
    assert float(clear.settle(2)["w"]) == 0.0 and clear.kept_epoch == 0
    perfect = scored({0: 100, 1: 100, 2: 100}, losses={0: 0.05, 1: 0.02, 2: 0.01})  # nothing left to be seen improving
    assert float(perfect.settle(2)["w"]) == 0.0 and perfect.kept_epoch == 0
    # the demo set's case: the initial state misses one of 16, training fixes it; one image is no evidence
    near = scored({0: 15 / 16 * 100, 1: 100.0, 2: 100.0}, images=16)
    assert float(near.settle(2)["w"]) == 0.0 and near.kept_epoch == 0
    two = scored({0: 14 / 16 * 100, 1: 100.0, 2: 100.0}, images=16)  # two fixed: kept
    assert two.settle(2) is None and two.kept_epoch == 2


def against_zero_shot(
    scores: dict[int, float], losses: dict[int, float], zero_shot: float, zero_shot_loss: float | None
) -> Selection:
    """A settled selection of 10 validation images that weighs zero-shot CLIP too (rule 4)."""
    selection = scored(scores, losses, zero_shot=zero_shot, zero_shot_loss=zero_shot_loss)
    selection.settle(max(scores))
    return selection


def test_zero_shot_clip_is_exported_when_the_run_cannot_be_seen_to_beat_it():
    # a deep host with no cast: zero-shot misses nothing; the initial state (not zero-shot: another
    # cross-entropy) and the epochs score as well, which is no evidence that training helped
    deep = against_zero_shot({0: 100, 1: 100, 2: 100}, {0: 0.12, 1: 0.05, 2: 0.04}, 100.0, 0.10)
    assert deep.kept_zero_shot and deep.kept_epoch == ZERO_SHOT and deep.kept_accuracy == 100.0
    assert deep.run_epoch == 0  # rule 3 kept the initial state, which rule 4 then weighed
    assert deep.summary(2)["kept_zero_shot"] and deep.summary(2)["kept_val"] == 100.0
    assert verdict(deep, 2, "val") == (
        "The exported model is zero-shot CLIP: it misses at most one validation image (100.0%), "
        "so training (100.0% at its initial state) cannot be seen to improve on it."
    )
    # zero-shot misses 4 of 10: rule 2's margin is two standard errors, 31.2 points (rate 7 / 12), so
    # three images below it are noise and four are not
    assert 2 * noise_margin(60.0, 10) == pytest.approx(31.2, abs=0.05)
    close = against_zero_shot({0: 20, 1: 30, 2: 30}, {0: 1.2, 1: 1.0, 2: 0.9}, 60.0, 1.1)
    assert close.settle(2) is None and close.kept_epoch == 2 and not close.kept_zero_shot
    worse = against_zero_shot({0: 10, 1: 20, 2: 20}, {0: 1.2, 1: 1.0, 2: 0.9}, 60.0, 1.1)
    assert worse.kept_zero_shot and worse.run_epoch == 2
    assert verdict(worse, 2, "val") == (
        "The exported model is zero-shot CLIP: training ends below it on validation by more than chance "
        "(20.0% at epoch 2 of 2, against 60.0%)."
    )


def test_a_run_that_starts_as_zero_shot_clip_exports_itself():
    # the text-only hosts and the boosters: the initial state scores as zero-shot does (its
    # cross-entropy within SAME_AS_ZERO_SHOT), so keeping it keeps zero-shot's predictions
    same = against_zero_shot({0: 100, 1: 100}, {0: 0.1 + SAME_AS_ZERO_SHOT / 2, 1: 0.3}, 100.0, 0.1)
    assert float(same.settle(1)["w"]) == 0.0 and same.kept_epoch == 0 and not same.kept_zero_shot
    # zero-shot CLIP is no candidate without its cross-entropy (CasPL's phase 1, or an older checkpoint)
    phase_one = against_zero_shot({0: 100, 1: 100}, {0: 0.12, 1: 0.05}, 100.0, None)
    assert phase_one.kept_epoch == 0 and not phase_one.kept_zero_shot
    record = json.loads(json.dumps(phase_one.to_record()))
    assert Selection.from_record(record, {}).zero_shot_loss is None
    assert Selection.from_record({**record, "zero_shot_loss": 0.1}, {}).zero_shot_loss == 0.1
    del record["zero_shot_loss"]  # a checkpoint written before zero-shot CLIP was a candidate
    assert Selection.from_record(record, {}).zero_shot_loss is None


def test_the_verdict_says_plainly_how_the_kept_model_compares_with_zero_shot():
    def selection(scores: dict[int, float], zero_shot: float) -> Selection:
        chosen = Selection(10, zero_shot)
        for epoch, accuracy in scores.items():
            chosen.offer(epoch, accuracy, {"w": torch.zeros(1)})
        chosen.settle(max(scores))
        return chosen

    assert (
        verdict(selection({0: 50, 1: 70, 2: 40}, 55), 2, "val")
        == "The kept model (epoch 1 of 2) scores 70.0% on validation, +15.0 points over zero-shot CLIP (55.0%)."
    )
    assert (
        verdict(selection({0: 40, 1: 45}, 55), 1, "val")
        == "The kept model (epoch 1 of 1) ends below zero-shot CLIP on validation: 45.0% against 55.0%."
    )
    assert verdict(selection({0: 90, 1: 100}, 55), 1, "val").startswith(
        "Training was not seen to improve on the initial prompts on validation (90.0%; zero-shot CLIP 55.0%)"
    )
    assert (
        verdict(None, 3, "last", 50.0, 40.0)
        == "The last epoch is kept (paper preset); it is below zero-shot CLIP on validation (40.0% against 50.0%)."
    )
    assert "fewer than 2 training images" in verdict(None, 3, "val")


def test_the_best_epoch_is_restored_with_its_exact_logits(tmp_path, cifar_root, tiny_backbone, monkeypatch):
    """Validation scores are scripted (zero-shot, initial, epochs 1-3): epoch 1 is the best and the
    last is below it by more than the margin rule 2 allows, so the exported model is epoch 1's state, and
    the bundle's logits are that state's."""
    scripted = iter([30.0, 20.0, 70.0, 60.0, 30.0])
    monkeypatch.setattr(Trainer, "_validate", lambda self, predictor, data, accelerator: (next(scripted), 1.0))
    states: dict[int, dict[str, torch.Tensor]] = {}
    offer = Selection.offer

    def recording_offer(self, epoch, accuracy, state, loss=0.0):
        states[epoch] = {k: v.detach().clone() for k, v in state.items()}
        return offer(self, epoch, accuracy, state, loss)

    monkeypatch.setattr(Selection, "offer", recording_offer)
    result = Trainer(tiny_default(cifar_root), tmp_path / "run", backbone=tiny_backbone, progress_bar=False).fit()
    assert sorted(states) == [0, 1, 2, 3]
    for key, value in states[1].items():
        assert torch.equal(result.model.learned_state_dict()[key], value), key
    assert any(not torch.equal(states[1][k], states[3][k]) for k in states[1])  # training moved on after epoch 1

    images = sorted((cifar_root / "test" / "cat").iterdir())[:4]
    chosen = Predictor(result.model)
    reloaded = Predictor.from_bundle(tmp_path / "run" / "model", backbone=tiny_backbone)
    torch.testing.assert_close(
        reloaded.logits(chosen.preprocess(images)), chosen.logits(chosen.preprocess(images)), rtol=0, atol=0
    )

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["selection"]["best_epoch"] == 1 and metrics["selection"]["per_epoch_val"] == [70.0, 60.0, 30.0]
    assert metrics["selection"]["kept_epoch"] == 1
    assert metrics["selection"]["zero_shot_val"] == 30.0 and metrics["selection"]["initial_val"] == 20.0
    assert (
        metrics["verdict"]
        == "The kept model (epoch 1 of 3) scores 70.0% on validation, +40.0 points over zero-shot CLIP (30.0%)."
    )
    assert metrics["gain_over_zero_shot"] == pytest.approx(metrics["accuracy"] - metrics["zero_shot"]["accuracy"])
    events = read_events(tmp_path / "run" / "events.jsonl")
    assert [e["epoch"] for e in events if e["type"] == "selected"] == [1]
    assert all(e["split"] == "val" for e in events if e["type"] == "val")  # never the test split
    bundle = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert bundle["method"]["preset"] == "default" and bundle["metrics"]["verdict"] == metrics["verdict"]


@pytest.mark.parametrize(
    ("host", "boosters", "exported"),
    [("ivlp", ["specpl"], "zeroshot"), ("caspl-boost", [], "caspl-boost")],
)
def test_a_run_that_cannot_beat_zero_shot_exports_zero_shot_clip(
    tmp_path, cifar_root, tiny_backbone, monkeypatch, host, boosters, exported
):
    """Scripted validation (zero-shot, initial, epochs): zero-shot misses nothing and the run's
    states score as well. IVLP + SpecPL exports zero-shot CLIP, with the run's band decomposer and
    zero-shot's exact logits; CasPL's phase 1, whose bundle phase 2 reads, exports itself."""
    scripted = iter([(100.0, 0.1), (100.0, 0.2), (100.0, 0.05)])
    monkeypatch.setattr(Trainer, "_validate", lambda self, predictor, data, accelerator: next(scripted))
    config = tiny_default(cifar_root, epochs=1)
    config.method = MethodConfig(host=host, boosters=boosters)
    if host == "caspl-boost":
        config.method.options = {host: {"teacher": "specpl-tiny", "teacher_pretrained": ""}}
    result = Trainer(config, tmp_path / "run", backbone=tiny_backbone, progress_bar=False).fit()
    bundle = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert bundle["method"]["host"] == exported and result.model.host.name == exported
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["selection"]["kept_zero_shot"] == (exported == "zeroshot")
    if exported != "zeroshot":
        assert metrics["selection"]["kept_epoch"] == 0 and "trained_method" not in bundle
        return
    assert bundle["method"]["boosters"] == [] and bundle["decomposer"]["name"] == "fft"  # the run's decomposer
    assert bundle["trained_method"] == "IVLP + SpecPL (unpublished combination)"
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert f"model selection exported it in place of the {bundle['trained_method']} run, which validation" in card
    assert metrics["gain_over_zero_shot"] == 0.0 and metrics["zero_shot"]["accuracy"] == metrics["accuracy"]
    assert metrics["verdict"].startswith("The exported model is zero-shot CLIP: it misses at most one")
    selected = [e for e in read_events(tmp_path / "run" / "events.jsonl") if e["type"] == "selected"]
    assert [(e["epoch"], e["zero_shot"]) for e in selected] == [(ZERO_SHOT, True)]
    images = sorted((cifar_root / "test" / "cat").iterdir())[:4]
    reference = Predictor.zero_shot(tiny_backbone, result.model.classnames, bundle["template"])
    reloaded = Predictor.from_bundle(tmp_path / "run" / "model", backbone=tiny_backbone)
    torch.testing.assert_close(
        reloaded.logits(reference.preprocess(images)), reference.logits(reference.preprocess(images)), rtol=0, atol=0
    )


def test_validation_never_touches_the_test_split_and_the_held_out_images_are_not_trained_on(
    tmp_path, cifar_root, tiny_backbone, monkeypatch
):
    seen: list[list[str]] = []
    monkeypatch.setattr(
        Trainer,
        "_validate",
        lambda self, predictor, data, accelerator: seen.append([str(i.path) for i in data.val]) or (50.0, 1.0),
    )
    Trainer(tiny_default(cifar_root, epochs=1), tmp_path / "run", backbone=tiny_backbone, progress_bar=False).fit()
    held = set(seen[0])
    assert len(held) == 10  # 4 shots: 1 of each of the 10 classes
    assert not any("/test/" in path for path in held)
    steps = [e for e in read_events(tmp_path / "run" / "events.jsonl") if e["type"] == "step"]
    assert steps[0]["total_steps"] == 7  # 30 training images left, batch 4, the last partial batch dropped


def test_a_paper_run_keeps_the_last_epoch_and_holds_nothing_out(tmp_path, cifar_root, tiny_backbone):
    config = tiny_default(cifar_root, epochs=1)
    config.method.preset = "paper"
    metrics = Trainer(config, tmp_path / "run", backbone=tiny_backbone, progress_bar=False).fit().metrics
    assert metrics["selection"] is None and "zero_shot" not in metrics
    assert (
        metrics["verdict"]
        == "The last epoch is kept (paper preset); there is no validation split to compare it with zero-shot CLIP."
    )
    steps = [e for e in read_events(tmp_path / "run" / "events.jsonl") if e["type"] == "step"]
    assert steps[0]["total_steps"] == 10  # all 40 images, batch 4


def test_a_resumed_run_keeps_the_settings_it_started_with(tmp_path, cifar_root, tiny_backbone):
    straight = Trainer(
        tiny_default(cifar_root), tmp_path / "straight", backbone=tiny_backbone, progress_bar=False
    ).fit()
    steps = []
    cancelled = Trainer(
        tiny_default(cifar_root),
        tmp_path / "run",
        callback=steps.append,
        backbone=tiny_backbone,
        progress_bar=False,
        should_stop=lambda: sum(e["type"] == "step" for e in steps) >= 9,
    ).fit()
    assert cancelled.status == "cancelled"
    # resumed with other settings (another preset, epochs, lr and context): the recorded ones win
    changed = tiny_default(cifar_root, epochs=7, lr=0.5)
    changed.method = MethodConfig(host="coop", preset="paper", options={"coop": {"n_ctx": 2}})
    resumed = Trainer(changed, tmp_path / "run", backbone=tiny_backbone, progress_bar=False).fit(resume=True)
    assert resumed.status == "finished"
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    original = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert record["resolved_train"] == original["resolved_train"] and record["preset"] == "default"
    assert record["resolved_method_options"] == original["resolved_method_options"]
    assert resumed.metrics["selection"] == straight.metrics["selection"]
    for key, value in straight.model.learned_state_dict().items():
        torch.testing.assert_close(resumed.model.learned_state_dict()[key], value, rtol=0, atol=0)


def test_a_default_run_on_the_demo_set_does_not_end_below_zero_shot(tmp_path):
    """What a new user gets with no flags (the app's first run, CoOp + SpecPL): the demo set, the world CLIP."""
    from specpl.defaults import demo_data_dir, world_backbone_config

    config = RunConfig(
        backbone=world_backbone_config(),
        method=MethodConfig(host="coop", boosters=["specpl"]),
        data=DataConfig(root=str(demo_data_dir(tmp_path / "demo"))),
    )
    config.decomposer.name = "fft"
    metrics = Trainer(config, tmp_path / "run", progress_bar=False).fit().metrics
    assert metrics["selection"]["best_val"] >= metrics["selection"]["zero_shot_val"]
    assert metrics["accuracy"] >= metrics["zero_shot"]["accuracy"]


def test_a_base_to_new_run_compares_every_split_with_zero_shot_and_says_selection_sees_only_base_classes(
    tmp_path, cifar_root, tiny_backbone
):
    config = tiny_default(cifar_root, epochs=1)
    config.data.subsample = "base"
    metrics = Trainer(config, tmp_path / "run", backbone=tiny_backbone, progress_bar=False).fit().metrics
    assert set(metrics["zero_shot"]) == {"accuracy", "base", "new", "hm"}
    assert metrics["gain_over_zero_shot"] == pytest.approx(metrics["hm"] - metrics["zero_shot"]["hm"])
    assert metrics["validation_note"] == (
        "Validation holds only the training (base) classes, "
        "so choosing the kept epoch on it cannot protect new-class accuracy."
    )
    assert (
        "Validation holds" not in metrics["verdict"]
    )  # the app and the model card add the note once, beside the verdict
