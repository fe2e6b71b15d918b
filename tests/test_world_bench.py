"""SpectralWorld benchmark pieces: the granularity probe and the band linear probe."""

import pytest

from specpl.bands import build_decomposer
from specpl.config import DecomposerConfig
from specpl.inference import Predictor
from specpl.world.benchmark import band_linear_probe, granularity_probe, probe_pairs
from specpl.world.generator import split_classname, world_classnames
from specpl.world.zeroshot import WORLD_TEMPLATE


@pytest.fixture(scope="module")
def fft():
    return build_decomposer(DecomposerConfig(name="fft", image_size=64))


def test_probe_pairs_differ_in_texture_and_shape():
    pairs = probe_pairs(50, seed=1)
    assert len(pairs) == 50 and pairs == probe_pairs(50, seed=1)
    for low_class, high_class in pairs:
        (texture_a, shape_a), (texture_b, shape_b) = split_classname(low_class), split_classname(high_class)
        assert texture_a != texture_b and shape_a != shape_b


def test_granularity_probe_returns_fractions(fft):
    from specpl.backbone import load_backbone
    from specpl.config import BackboneConfig

    backbone = load_backbone(BackboneConfig("world-clip", None))
    predictor = Predictor.zero_shot(backbone, world_classnames()[:3], WORLD_TEMPLATE)
    result = granularity_probe(predictor, fft, pairs=12, seed=1)
    assert set(result) == {"texture", "shape"}
    assert all(0.0 <= value <= 1.0 for value in result.values())
    assert predictor.classnames == world_classnames()  # scored over the full class set


def test_band_probe_puts_texture_in_the_high_band(fft):
    result = band_linear_probe(fft, embed_dim=32, train=300, test=150)
    assert all(0.0 <= v <= 1.0 for band in result.values() for v in band.values())
    assert result["high"]["texture"] > result["low"]["texture"] + 0.3
    assert result["low"]["colour"] > result["high"]["colour"] + 0.1


def test_short_coop_run_on_base_classes_beats_zero_shot_under_an_unseen_camera(tmp_path):
    """In the pretraining domain zero-shot world-CLIP is at the ceiling of its image features (a
    linear probe with 200 shots per class stays below it, see bench/WORLD.md), so the few-shot task
    is the downstream case prompt learning exists for: the same base classes seen through the
    "sepia" camera, which pretraining never saw. Measured: 46.9% zero-shot, 57.2% CoOp."""
    from specpl.backbone import load_backbone
    from specpl.config import DataConfig, MethodConfig, RunConfig, TrainConfig
    from specpl.data import read_fewshot_folder
    from specpl.defaults import world_backbone_config
    from specpl.trainer import Trainer
    from specpl.world.generator import write_fewshot_folder

    backbone = load_backbone(world_backbone_config())
    root = write_fewshot_folder(tmp_path / "data", shots=4, test_per_class=20, seed=1, camera="sepia")
    base = read_fewshot_folder(root, shots=4, seed=1, subsample="base")
    zero_shot = Predictor.zero_shot(backbone, base.classnames, WORLD_TEMPLATE).evaluate(base.test).accuracy
    run = RunConfig(
        backbone=backbone.config, method=MethodConfig(host="coop", options={"coop": {"n_ctx": 4}}), template=WORLD_TEMPLATE,
        data=DataConfig(root=str(root), shots=4, subsample="base", seed=1),
        train=TrainConfig(epochs=10, batch_size=16, seed=1, augment=False, max_cached_views=1),
    )
    trained = Trainer(run, tmp_path / "run", backbone=backbone, progress_bar=False).fit()
    coop = Predictor(trained.model).evaluate(base.test).accuracy
    assert len(base.classnames) == 18 and zero_shot > 100 / 18 * 3  # far above chance even so
    assert coop >= zero_shot + 5.0, f"CoOp {coop:.1f}% vs zero-shot {zero_shot:.1f}%"


def test_feature_ceiling_reports_probe_and_zero_shot_on_the_same_images():
    from specpl.backbone import load_backbone
    from specpl.defaults import world_backbone_config
    from specpl.world.benchmark import WorldBenchConfig, feature_ceiling

    backbone = load_backbone(world_backbone_config())
    result = feature_ceiling(backbone, WorldBenchConfig(test_per_class=4, camera="sepia"), shots=6)
    assert result["shots"] == 6 and 0.0 <= result["linear_probe"] <= 100.0
    assert 100 / 18 < result["zero_shot"] <= 100.0  # above chance over the 18 base classes
