"""The Bands tab's DAPT masks (`app.views.analysis.image_view`): the map and the mask a run's DAPT
would train with, under the run's own options, on a short tiny-backbone run; mask files; a run
without DAPT; and on the pretrained world CLIP, how well the mask shown covers the object."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.runtime.models import ModelCache
from app.tabs.bands import shown_pick
from app.views.analysis import NO_VIEW_NOTE, image_view
from specpl.config import MethodConfig
from specpl.factory import build_method
from specpl.methods.dapt import NO_MASK_FILES_NOTE, saliency_masks

THRESHOLD = 0.3  # not DAPT's default (0.5): the view must use the run's own


@pytest.fixture(scope="module")
def dapt_run(tmp_path_factory, cifar_root, tiny_backbone) -> Path:
    """The model folder of one short IVLP + DAPT run (GradCAM maps, threshold 0.3) on CIFAR-10 photos."""
    from specpl.config import BackboneConfig, DataConfig, DecomposerConfig, RunConfig, TrainConfig
    from specpl.trainer import Trainer

    options = {"dapt": {"cam": "gradcam", "gradcam_threshold": THRESHOLD}}
    config = RunConfig(
        backbone=BackboneConfig(name="specpl-tiny", pretrained=None),
        decomposer=DecomposerConfig(name="fft", image_size=32),
        method=MethodConfig(host="ivlp", boosters=["dapt"], options=options),
        data=DataConfig(root=str(cifar_root), shots=1),
        train=TrainConfig(epochs=1, batch_size=8),
    )
    return (
        Trainer(config, tmp_path_factory.mktemp("dapt") / "run", backbone=tiny_backbone, progress_bar=False)
        .fit()
        .run_dir
        / "model"
    )


@pytest.fixture(scope="module")
def cache() -> ModelCache:
    return ModelCache()


def test_the_mask_shown_is_the_runs_threshold_of_the_map_and_what_dapt_trains_with(dapt_run, cache, cifar_root):
    image = sorted((cifar_root / "test" / "cat").iterdir())[0]
    view = image_view(cache, dapt_run, image, "cat")
    assert view.saliency.shape == view.mask.shape == (32, 32) and view.mask.dtype == bool  # the tiny tower's input size
    assert view.saliency.min() >= 0 and view.saliency.max() == pytest.approx(1.0)
    assert 0 < view.mask.sum() < view.mask.size
    np.testing.assert_array_equal(view.mask, view.saliency >= THRESHOLD)
    assert (view.mask != (view.saliency >= 0.5)).any()  # the default threshold would have cut another mask
    predictor = cache.bundle_predictor(dapt_run)
    cat = torch.tensor([predictor.classnames.index("cat")])
    trained_with = saliency_masks(predictor.model, predictor.preprocess([image]), cat, THRESHOLD, "image", "gradcam")[
        0, 0
    ]
    np.testing.assert_array_equal(view.mask, trained_with.numpy())
    assert {name: picture.size for name, picture in view.images.items()} == {
        "saliency": (224, 224),
        "mask": (224, 224),
    }  # 7x, for the browser
    assert view.note.startswith(
        "**DAPT-G mask**: the `gradcam` map (`dapt.cam`) of this run's model, "
        "divided by its maximum and thresholded at 0.3;"
    )
    assert view.note.endswith("A gradient map targets 'cat' (the image's class in the dataset).")


def test_without_its_dataset_class_the_map_targets_the_predicted_class(dapt_run, cache, cifar_root):
    image = sorted((cifar_root / "test" / "cat").iterdir())[0]
    predicted = cache.bundle_predictor(dapt_run).predict([image], top_k=1)[0][0][0]
    other = next(name for name in ("cat", "dog") if name != predicted)
    unlabelled = image_view(cache, dapt_run, image)
    assert unlabelled.note.endswith(f"A gradient map targets {predicted!r} (predicted).")
    assert not np.array_equal(
        image_view(cache, dapt_run, image, other).saliency, unlabelled.saliency
    )  # GradCAM follows the class
    foreign = image_view(cache, dapt_run, image, "golden retriever")
    assert foreign.note.endswith(
        f"A gradient map targets {predicted!r} "
        "(predicted; its dataset class 'golden retriever' is not one of the run's classes)."
    )
    np.testing.assert_array_equal(foreign.saliency, unlabelled.saliency)


def test_a_run_without_dapt_gets_a_note_not_an_error(trained_run, cache, cifar_root):
    view = image_view(cache, trained_run.run_dir / "model", sorted((cifar_root / "test" / "cat").iterdir())[0])
    assert (view.saliency, view.mask, view.images, view.note) == (
        None,
        None,
        {"saliency": None, "mask": None},
        NO_VIEW_NOTE,
    )


def test_a_mask_folder_run_shows_the_images_own_mask_file_or_says_why_not(tmp_path, tiny_backbone, cache):
    """The file binarised as DAPT reads it (values 0/1, as a segmenter writes), over the whole image."""
    image = tmp_path / "data" / "cat" / "000.png"
    unmasked = tmp_path / "data" / "dog" / "007.png"
    truth = np.zeros((40, 48), dtype=bool)
    truth[10:30, 5:20] = True
    for path in (image, unmasked, tmp_path / "masks" / "cat" / "000.png"):
        path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (48, 40), (200, 120, 40)).save(image)
    Image.new("RGB", (48, 40)).save(unmasked)
    Image.fromarray(truth.astype(np.uint8)).save(tmp_path / "masks" / "cat" / "000.png")
    options = {"dapt": {"masks": "folder", "mask_dir": str(tmp_path / "masks")}}
    model_dir = build_method(
        MethodConfig(host="ivlp", boosters=["dapt"], options=options), copy.deepcopy(tiny_backbone), ["cat", "dog"]
    ).save_bundle(tmp_path / "model")

    view = image_view(cache, model_dir, image, "cat")
    np.testing.assert_array_equal(view.mask, truth)
    assert view.saliency is None and view.images["saliency"] is None
    shown = np.asarray(view.images["mask"])
    assert shown.shape == (240, 288, 3)  # 6x, for the browser
    shown = shown[::6, ::6]
    assert (shown[truth] == (200, 120, 40)).all() and (shown[~truth] == (50, 30, 10)).all()  # outside: a quarter
    assert (
        view.note.startswith(f"**DAPT mask file** `cat/000.png` from `{tmp_path / 'masks'}`")
        and "it marks 16% of the image" in view.note
    )

    missing = image_view(cache, model_dir, unmasked, "dog")
    assert missing.mask is None and missing.images == {"saliency": None, "mask": None}
    assert missing.note.startswith(
        "This run's DAPT reads its masks from files (`dapt.masks=folder`), and there is none to show here: no mask for"
    )
    assert "looked for dog/007.* and 007.*" in missing.note
    assert (
        image_view(cache, model_dir, image, "cat", read_mask_files=False).note == NO_MASK_FILES_NOTE
    )  # a shared server


def test_on_the_world_clip_the_mask_shown_covers_the_object(tmp_path, cache):
    """DAPT's default map (`DAPTConfig().cam`) of an IVLP + DAPT model at init on the pretrained world
    CLIP, over 18 world images (one per second class): mean IoU with the analytic object masks >= 0.5."""
    from specpl.backbone import load_backbone
    from specpl.defaults import world_backbone_config
    from specpl.world.generator import class_of, render, sample_class, shape_mask, world_classnames

    classes = world_classnames()
    model_dir = build_method(
        MethodConfig(host="ivlp", boosters=["dapt"]), load_backbone(world_backbone_config()), classes
    ).save_bundle(tmp_path / "model")
    rng = np.random.default_rng(0)
    overlaps = []
    for sample in (sample_class(rng, name, 1)[0] for name in classes[::2]):
        path = tmp_path / "data" / class_of(sample) / "0000.png"
        path.parent.mkdir(parents=True)
        render(sample).save(path)
        view = image_view(cache, model_dir, path, class_of(sample))
        truth = shape_mask(sample)
        assert view.mask.shape == truth.shape  # the world images are the tower's input size: no crop
        overlaps.append((view.mask & truth).sum() / (view.mask | truth).sum())
    assert np.mean(overlaps) >= 0.5, overlaps


def test_a_picked_image_gives_its_dataset_place_only_while_it_is_the_one_shown(tmp_path):
    """The Bands handler gets Gradio's copy of the image: the pick counts for an identical copy,
    not for an image uploaded after it (even one with the same name), nor once the file is gone."""
    picked = tmp_path / "data" / "cat" / "000.png"
    picked.parent.mkdir(parents=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(picked)
    (tmp_path / "copy").mkdir()
    (tmp_path / "upload").mkdir()
    shown = Path(shutil.copy(picked, tmp_path / "copy"))
    uploaded = tmp_path / "upload" / "000.png"
    Image.new("RGB", (8, 8), (10, 20, 31)).save(uploaded)
    assert shown_pick(shown, str(picked)) == picked
    assert shown_pick(uploaded, str(picked)) is None
    assert shown_pick(shown, None) is None
    picked.unlink()
    assert shown_pick(shown, str(picked)) is None
