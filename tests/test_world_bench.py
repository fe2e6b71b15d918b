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
