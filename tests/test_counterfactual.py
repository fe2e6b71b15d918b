"""Counterfactual predictions and band images on a trained tiny model."""

import pytest
import torch
from PIL import Image

from specpl.bands import build_decomposer
from specpl.config import DecomposerConfig, MethodConfig
from specpl.counterfactual import A_WITH_B, B_WITH_A, A, B, counterfactual
from specpl.factory import build_method
from specpl.inference import Predictor
from specpl.visualize import band_images


@pytest.fixture(scope="module")
def decomposer():
    return build_decomposer(DecomposerConfig(name="fft"))


@pytest.fixture(scope="module")
def pair(cifar_root):
    return Image.open(cifar_root / "test" / "cat" / "0000.jpg"), Image.open(cifar_root / "test" / "ship" / "0000.jpg")


def test_counterfactual_views(trained_run, decomposer, pair):
    result = counterfactual(Predictor(trained_run.model), *pair, decomposer, top_k=3, size=32)
    for view in (result.image_path, result.granule_path.rows):
        assert set(view) == {A, B, A_WITH_B, B_WITH_A}
        for ranked in view.values():
            probs = [p for _, p in ranked]
            assert len(ranked) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert set(result.swapped_images) == {A_WITH_B, B_WITH_A} and result.swapped_images[A_WITH_B].size == (32, 32)
    granule = result.granule_path
    assert granule.booster == "specpl" and set(granule.modulation_cosine) == {A, B, A_WITH_B, B_WITH_A}
    assert all(-1 <= c <= 1 for c in granule.modulation_cosine.values())
    # the verdict is built from the rows it summarises: A's and the swap's top label, and the target
    assert granule.rows[A][0][0] in result.summary and granule.rows[A_WITH_B][0][0] in result.summary
    assert f"B's '{granule.targets[A_WITH_B]}'" in result.summary
    missed = granule.rows[A_WITH_B][0][0] != granule.targets[A_WITH_B]
    assert ("does not reach" in result.summary) == missed and ("and reaches" in result.summary) == (not missed)
    # the target of the swap is the model's prediction for B, the granularity donor
    assert granule.targets[A_WITH_B] == result.image_path[B][0][0]


def test_swapping_an_image_with_itself_changes_nothing(trained_run, decomposer, pair):
    image = pair[0]
    result = counterfactual(Predictor(trained_run.model), image, image, decomposer, size=32)
    assert result.granule_path.rows[A_WITH_B] == result.granule_path.rows[A]
    assert result.image_path[A_WITH_B][0][0] == result.image_path[A][0][0]
    assert "stays" in result.summary and "still" in result.summary


def test_embedding_path_needs_specpl(tiny_backbone, decomposer, pair):
    model = build_method(MethodConfig(host="coop", options={"coop": {"n_ctx": 2}}), tiny_backbone, ["cat", "ship"])
    result = counterfactual(Predictor(model), *pair, decomposer, size=32)
    assert result.granule_path is None and result.image_path[A][0][0] in ("cat", "ship")


def test_a_run_that_exported_zero_shot_clip_keeps_its_decomposer_and_names_its_model(
    tmp_path, tiny_backbone, cifar_root
):
    """A default run that selection replaced by zero-shot CLIP (`specpl.selection`, rule 4) exports
    the zeroshot host with the run's decomposer: the app's counterfactual view decodes the swaps
    with it and names the exported model, since there is no granule path to show."""
    from app.runtime.models import ModelCache
    from app.views.analysis import counterfactual_view
    from specpl.methods.zeroshot import zero_shot_method

    template = "a photo of a {}."
    decomposer = DecomposerConfig(name="fft", image_size=32)
    model_dir = build_method(
        zero_shot_method(template), tiny_backbone, ["cat", "ship"], template, decomposer
    ).save_bundle(tmp_path / "model")
    images = [cifar_root / "test" / name / "0000.jpg" for name in ("cat", "ship")]
    view = counterfactual_view(ModelCache(int8=False), model_dir, *images, top_k=2)
    assert view.model_label == "Zero-shot CLIP" and view.embedding is None and view.modulation_cosine is None
    assert set(view.swaps) == {A_WITH_B, B_WITH_A} and view.swaps[A_WITH_B].size == (32, 32)  # the run's 32 px fft
    assert set(view.image_space[A]) == {"cat", "ship"}


def test_band_images(decomposer, pair):
    images = band_images(decomposer, pair[0], 64)
    assert images["original"].size == images["low"].size == images["high"].size == (64, 64)
    assert images["high"].mode == "RGB" and images["seconds"] >= 0
    # fft's low band is the blurred image: close to the original's mean colour, far from noise
    original = torch.tensor(list(images["original"].getdata()), dtype=torch.float32)
    low = torch.tensor(list(images["low"].getdata()), dtype=torch.float32)
    assert (original.mean(0) - low.mean(0)).abs().max() < 8
