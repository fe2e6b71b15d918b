"""Counterfactual predictions and band images on a trained tiny model."""
import pytest
import torch
from PIL import Image

from specpl.bands import build_decomposer
from specpl.config import DecomposerConfig, MethodConfig
from specpl.counterfactual import A, A_WITH_B, B, B_WITH_A, counterfactual
from specpl.inference import Predictor
from specpl.methods import build_method
from specpl.visualize import band_images


@pytest.fixture(scope="module")
def decomposer():
    return build_decomposer(DecomposerConfig(name="fft"))


@pytest.fixture(scope="module")
def pair(cifar_root):
    return Image.open(cifar_root / "test" / "cat" / "0000.jpg"), Image.open(cifar_root / "test" / "ship" / "0000.jpg")


def test_counterfactual_views(trained_run, decomposer, pair):
    result = counterfactual(Predictor(trained_run.model), *pair, decomposer, top_k=3, size=32)
    for view in (result.image_path, result.embedding_path):
        assert set(view) == {A, B, A_WITH_B, B_WITH_A}
        for ranked in view.values():
            probs = [p for _, p in ranked]
            assert len(ranked) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert set(result.swapped_images) == {A_WITH_B, B_WITH_A} and result.swapped_images[A_WITH_B].size == (32, 32)
    assert result.embedding_path[A][0][0] in result.summary


def test_swapping_an_image_with_itself_changes_nothing(trained_run, decomposer, pair):
    image = pair[0]
    result = counterfactual(Predictor(trained_run.model), image, image, decomposer, size=32)
    assert result.embedding_path[A_WITH_B] == result.embedding_path[A]
    assert result.image_path[A_WITH_B][0][0] == result.image_path[A][0][0]
    assert "still" in result.summary


def test_embedding_path_needs_specpl(tiny_backbone, decomposer, pair):
    model = build_method(MethodConfig(host="coop", options={"coop": {"n_ctx": 2}}), tiny_backbone, ["cat", "ship"])
    result = counterfactual(Predictor(model), *pair, decomposer, size=32)
    assert result.embedding_path is None and result.image_path[A][0][0] in ("cat", "ship")


def test_band_images(decomposer, pair):
    images = band_images(decomposer, pair[0], 64)
    assert images["original"].size == images["low"].size == images["high"].size == (64, 64)
    assert images["high"].mode == "RGB" and images["seconds"] >= 0
    # fft's low band is the blurred image: close to the original's mean colour, far from noise
    original = torch.tensor(list(images["original"].getdata()), dtype=torch.float32)
    low = torch.tensor(list(images["low"].getdata()), dtype=torch.float32)
    assert (original.mean(0) - low.mean(0)).abs().max() < 8
