"""The reference data path: per-epoch schedule, fresh augmentation views, inputs from the same view,
preparation batches, and the default decomposer's choice recorded by the run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from specpl.bands import build_decomposer
from specpl.config import BackboneConfig, DataConfig, DecomposerConfig, MethodConfig, RunConfig, TrainConfig
from specpl.data import read_fewshot_folder
from specpl.features import AugmentedViews, FeatureCache, train_transform
from specpl.frozen import BandStatistics
from specpl.methods.specpl import SpecPL
from specpl.trainer import Trainer, _lr_schedule
from specpl.training_plan import resolved_training, step_budget


def test_per_epoch_schedule_gives_the_reference_rates_at_epoch_boundaries():
    """Dassl: a constant warm-up epoch at 1e-5, then CosineAnnealingLR(T_max=E) stepped after
    each epoch, so epoch e >= 1 trains at 0.002 * (1 + cos(pi (e - 1) / 4)) / 2 for E = 4."""
    train = {"epochs": 4, "warmup_epochs": 1, "warmup_lr": 1e-5, "lr": 0.002, "schedule": "epoch"}
    lr_at = _lr_schedule(train, steps_per_epoch=3, total_steps=12)
    by_hand = [1e-5, 0.002, 0.002 * (1 + math.cos(math.pi / 4)) / 2, 0.001]
    for epoch, expected in enumerate(by_hand):
        for step in range(epoch * 3, epoch * 3 + 3):  # constant inside an epoch
            assert lr_at(step, epoch) == pytest.approx(expected, rel=1e-12)


def test_per_step_schedule_still_available():
    train = {"epochs": 2, "warmup_epochs": 1, "warmup_lr": 1e-5, "lr": 0.002, "schedule": "step"}
    lr_at = _lr_schedule(train, steps_per_epoch=2, total_steps=4)
    assert [lr_at(s, s // 2) for s in range(4)] == pytest.approx([1e-5, 1e-5, 0.002, 0.001])


def test_the_paper_preset_is_the_reference_data_path():
    paper = MethodConfig(host="mmrl", preset="paper")
    train = resolved_training(RunConfig(method=paper))
    assert (
        train["augment"],
        train["schedule"],
        train["drop_last"],
        train["crop_scale"],
        train["max_cached_views"],
    ) == ("dassl", "epoch", True, 0.5, None)
    assert (train["epochs"], train["batch_size"], train["select"]) == (
        10,
        4,
        "last",
    )  # MMRL's published schedule, the last epoch
    assert resolved_training(RunConfig(method=MethodConfig(preset="paper")))["crop_scale"] == 0.08


def test_the_default_preset_derives_its_budget_from_the_training_images():
    train = resolved_training(RunConfig(), train_images=54)  # CoOp: batch 32 cut to 54 // 4 = 13, 4 steps an epoch
    assert (train["augment"], train["schedule"], train["select"], train["batch_size"], train["epochs"]) == (
        "clip",
        "step",
        "val",
        13,
        75,
    )
    assert resolved_training(RunConfig())["epochs"] == "auto"  # no data yet: the form shows it as derived
    assert step_budget(10_000, 32) == (5, 32)  # 312 steps an epoch: the 5-epoch floor
    assert step_budget(6, 128) == (50, 1)  # 6 images: batch 1, 6 steps an epoch
    assert step_budget(2, 128) == (100, 1)  # 2 images: 150 epochs would be needed, the 100-epoch ceiling
    assert step_budget(72, 1) == (5, 1)  # CoCoOp's batch 1 stays
    explicit = RunConfig(train=TrainConfig(epochs=3, batch_size=2))
    assert (resolved_training(explicit, 54)["epochs"], resolved_training(explicit, 54)["batch_size"]) == (
        3,
        2,
    )  # given values win
    assert resolved_training(RunConfig(train=TrainConfig(epochs=3)), 54)["batch_size"] == 13
    assert TrainConfig(augment=False).augment == "none" and TrainConfig(augment=True).augment == "clip"  # older configs


class Pixels:
    """A frozen input that returns the view itself, to see what the other inputs were computed on."""

    name, signature, needs_items = "pixels", "identity", False

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images.clone()


def test_reference_views_change_every_epoch_and_every_input_sees_the_same_view(cifar_root, tiny_backbone, monkeypatch):
    data = read_fewshot_folder(cifar_root, shots=1)
    item = data.train[0]
    views = AugmentedViews(train_transform("dassl", tiny_backbone, 0.08), tiny_backbone.preprocess_eval, seed=1)
    assert not torch.equal(views.load(item.path, 0), views.load(item.path, 1))  # a fresh crop/flip per epoch
    assert torch.equal(views.load(item.path, 3), views.load(item.path, 3))  # each draw is seeded
    before, reseeded = torch.random.get_rng_state(), []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeded.append)
    views.load(item.path, 4)
    # the global generator is left as it was, and the device's generators are not reseeded per view
    assert torch.equal(torch.random.get_rng_state(), before) and reseeded == []
    bands = BandStatistics(build_decomposer(DecomposerConfig(name="fft")), tiny_backbone.normalization, 32)
    cache = FeatureCache(views, [Pixels(), bands], torch.device("cpu"))
    for view in (0, 1):
        got = cache.get([item], view)
        torch.testing.assert_close(got["pixels"][0], views.load(item.path, view))
        torch.testing.assert_close(got["bands"], bands(views.load(item.path, view).unsqueeze(0)))


def tiny_run(root, **train) -> RunConfig:
    return RunConfig(
        backbone=BackboneConfig(name="specpl-tiny", pretrained=None),
        decomposer=DecomposerConfig(name="fft", image_size=32),
        method=MethodConfig(
            host="coop", boosters=["specpl"], options={"coop": {"n_ctx": 4}, "specpl": {"bank_init_batches": 5}}
        ),
        data=DataConfig(root=str(root), shots=2),
        train=TrainConfig(epochs=1, batch_size=8, **{"select": "last", **train}),
    )


def test_the_bank_gets_every_batch_it_asks_for(tmp_path, cifar_root, tiny_backbone, monkeypatch):
    """5 preparation batches from a 20-image set (3 batches an epoch): the count is not capped, the
    later batches come from the next epoch's views."""
    seen = []
    monkeypatch.setattr(SpecPL, "prepare", lambda self, batches: seen.append([b.labels.shape[0] for b in batches]))
    Trainer(tiny_run(cifar_root), tmp_path / "run", backbone=tiny_backbone, progress_bar=False).fit()
    assert seen == [[8, 8, 4, 8, 8]]


def test_auto_decomposer_offline_is_fft_and_the_run_says_why(tmp_path, cifar_root, tiny_backbone, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    config = tiny_run(cifar_root)
    config.decomposer = DecomposerConfig(name="auto", image_size=32)
    Trainer(config, tmp_path / "run", backbone=tiny_backbone, progress_bar=False).fit()
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["decomposer"]["name"] == "fft" and "offline" in record["decomposer_reason"]
    bundle = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert bundle["decomposer"]["name"] == "fft" and bundle["decomposer_reason"] == record["decomposer_reason"]


def test_a_method_without_bands_records_no_decomposer(tmp_path, cifar_root, tiny_backbone):
    config = tiny_run(cifar_root)
    config.method = MethodConfig(host="coop", options={"coop": {"n_ctx": 4}})
    Trainer(config, tmp_path / "run", backbone=tiny_backbone, progress_bar=False).fit()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["decomposer"] is None


class Counting:
    """A frozen input that counts the images it computes; its signature can be changed."""

    def __init__(self, name: str) -> None:
        self.name, self.signature, self.calls = name, "v1", 0
        self.needs_items = False

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += images.shape[0]
        return images.mean(dim=(1, 2, 3))


def test_an_input_whose_signature_changes_is_recomputed_alone(cifar_root, tiny_backbone):
    """What a per-epoch input (masks from the current model) relies on; the others stay cached."""
    items = read_fewshot_folder(cifar_root, shots=1).train[:3]
    steady, refreshed = Counting("steady"), Counting("refreshed")
    views = AugmentedViews(train_transform("dassl", tiny_backbone, 0.08), tiny_backbone.preprocess_eval, seed=1)
    cache = FeatureCache(views, [steady, refreshed], torch.device("cpu"))
    first = cache.get(items, 0)
    refreshed.signature = "v2"
    second = cache.get(items, 0)
    assert (steady.calls, refreshed.calls) == (3, 6)
    torch.testing.assert_close(first["steady"], second["steady"])


def test_worker_decoding_gives_the_same_inputs(cifar_root, tiny_backbone):
    items = read_fewshot_folder(cifar_root, shots=2).train[:6]
    views = AugmentedViews(train_transform("dassl", tiny_backbone, 0.08), tiny_backbone.preprocess_eval, seed=1)
    serial = FeatureCache(views, [Pixels()], torch.device("cpu"), batch_size=4).get(items, 2)
    parallel = FeatureCache(views, [Pixels()], torch.device("cpu"), batch_size=4, workers=2).get(items, 2)
    torch.testing.assert_close(parallel["pixels"], serial["pixels"], rtol=0, atol=0)
