"""Bands and Counterfactual tabs: thin calls into `specpl.visualize`, `specpl.counterfactual` and
DAPT's public mask functions (`specpl.methods.dapt`)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from app.messages import first_sentence
from app.models import ModelCache
from specpl.bands import DECOMPOSERS, BandDecomposer, DecomposerUnavailable
from specpl.config import DecomposerConfig, from_dict
from specpl.counterfactual import A_WITH_B, B_WITH_A, A, B, counterfactual
from specpl.data import DataError, load_image
from specpl.inference import Predictor
from specpl.methods.dapt import DAPTConfig, MaskFolder, saliency_maps
from specpl.visualize import band_images, heatmap, to_pil

PAIRS = (A, B, A_WITH_B, B_WITH_A)
BAND_VIEWS = ("original", "low", "high", "latents")
CPU_DECOMPOSER = "fft"  # weight-free: the fast default on CPU
DAPT = "dapt"  # the DAPT booster's registered name
MASK_IMAGES = ("saliency", "mask")
MIN_DISPLAY_PX = 224  # smaller mask pictures (a 64 px world image) are enlarged by a whole factor to reach it
NO_DAPT_NOTE = "This run has no DAPT booster: it trains without foreground masks, so there are none to show."
NO_MASK_FILES_NOTE = (
    "This run's DAPT reads its masks from a folder of files (`dapt.masks=folder`), which a shared server does not open."
)


class FeatureUnavailable(RuntimeError):
    """A decomposer (or the model part a view needs) can't be had; one sentence for the UI."""


def decomposer_names() -> list[str]:
    return DECOMPOSERS.names()


def _decomposer(cache: ModelCache, config: DecomposerConfig) -> BandDecomposer:
    try:
        return cache.decomposer(config)
    except DecomposerUnavailable as exc:
        raise FeatureUnavailable(f"The {config.name} decomposer can't be loaded: {first_sentence(str(exc))}") from None


@dataclass
class BandView:
    images: dict[str, Image.Image]  # BAND_VIEWS -> picture
    compute_s: float
    load_s: float


def band_view(cache: ModelCache, image_path: Path, decomposer: str, size: int) -> BandView:
    image = load_image(image_path)
    started = time.perf_counter()
    model = _decomposer(cache, DecomposerConfig(name=decomposer, image_size=size))
    load_s = time.perf_counter() - started
    maps = band_images(model, image, size)
    return BandView({name: maps[name] for name in BAND_VIEWS}, float(maps["seconds"]), load_s)


@dataclass
class CounterfactualView:
    embedding: dict[str, dict[str, float]] | None  # granule path: pair -> {label: probability}; None without SpecPL
    modulation_cosine: dict[str, float] | None  # pair -> cos(feature before, after FiLM)
    image_space: dict[str, dict[str, float]]
    swaps: dict[str, Image.Image]  # decoded image-space swaps, by pair name
    summary: str


def counterfactual_view(
    cache: ModelCache, model_dir: Path, image_a: Path, image_b: Path, top_k: int
) -> CounterfactualView:
    """Predictions for A, B and their band swaps through the run's model and its own decomposer
    (at the resolution it was trained with, so the band statistics match training)."""
    predictor = cache.bundle_predictor(model_dir)
    config = from_dict(DecomposerConfig, predictor.config.get("decomposer") or {"name": CPU_DECOMPOSER})
    decomposer = _decomposer(cache, config)
    result = counterfactual(
        predictor, load_image(image_a), load_image(image_b), decomposer, top_k=top_k, size=config.image_size
    )
    granule = result.granule_path
    embedding = {pair: dict(granule.rows[pair]) for pair in PAIRS} if granule is not None else None
    cosines = dict(granule.modulation_cosine) if granule is not None else None
    return CounterfactualView(
        embedding,
        cosines,
        {pair: dict(result.image_path[pair]) for pair in PAIRS},
        result.swapped_images,
        result.summary,
    )


@dataclass
class MaskView:
    """The foreground mask DAPT would train with on one image, and the map it is cut from."""

    saliency: np.ndarray | None  # (S, S) in [0, 1] at the model's input size; None for mask files
    mask: np.ndarray | None  # bool, True on the foreground: the thresholded map, or the mask file
    images: dict[str, Image.Image | None]  # MASK_IMAGES -> picture (None when there is nothing to show)
    note: str  # whose mask this is and how it was made, or why there is none


def dapt_mask_view(
    cache: ModelCache, model_dir: Path, image_path: Path, class_name: str | None = None, read_mask_files: bool = True
) -> MaskView:
    """DAPT's mask of `image_path` under the run's own DAPT options: its mask file (``masks="folder"``),
    else the DAPT-G map of the run's model thresholded as in training. The gradient maps target
    `class_name` (the image's dataset class) when the run knows it, else the predicted class. A run
    without DAPT, or an image without a mask file, gets a note instead of pictures. Without
    `read_mask_files` (a shared server) a run's mask folder, a path on the server, is never read."""
    predictor = cache.bundle_predictor(model_dir)
    if DAPT not in predictor.model.boosters:
        return no_masks(NO_DAPT_NOTE)
    config: DAPTConfig = predictor.model.boosters[DAPT].config
    if config.masks == "folder":
        return _mask_file_view(config, image_path) if read_mask_files else no_masks(NO_MASK_FILES_NOTE)
    return _saliency_view(predictor, config, image_path, class_name)


def no_masks(note: str) -> MaskView:
    """A mask view with nothing to show but why."""
    return MaskView(None, None, dict.fromkeys(MASK_IMAGES), note)


def _saliency_view(predictor: Predictor, config: DAPTConfig, image_path: Path, class_name: str | None) -> MaskView:
    """The DAPT-G map and mask on the image as the model sees it (its evaluation crop)."""
    pixels = predictor.preprocess([image_path]).to(predictor.device)
    label, target = _target_class(predictor, pixels, class_name)
    labels = torch.tensor([label], device=predictor.device)
    maps = saliency_maps(
        predictor.model, pixels, labels, config.gradcam_normalise, config.cam, config.gradcam_align_corners
    )
    saliency = maps[0, 0].cpu()
    mask = saliency >= config.gradcam_threshold  # exactly `saliency_masks`, as DAPT trains with
    mean, std = (torch.tensor(values).view(3, 1, 1) for values in predictor.backbone.normalization)
    seen = to_pil(pixels[0].cpu() * std + mean)
    images = {
        "saliency": _enlarged(Image.blend(seen, heatmap(saliency[None]), 0.6)),
        "mask": _foreground(seen, mask.numpy()),
    }
    covered = float(mask.float().mean()) * 100
    note = (
        f"**DAPT-G mask**: the `{config.cam}` map (`dapt.cam`) of this run's model, divided by its maximum and "
        f"thresholded at {config.gradcam_threshold:g}; it marks {covered:.0f}% of the image as foreground. "
        f"A gradient map targets {target}."
    )
    return MaskView(saliency.numpy(), mask.numpy(), images, note)


def _target_class(predictor: Predictor, pixels: torch.Tensor, class_name: str | None) -> tuple[int, str]:
    """The class a gradient map targets, and how it was chosen: the image's dataset class when the
    run has it, else the class the model predicts (as Classify answers)."""
    classnames = predictor.classnames
    if class_name in classnames:
        return classnames.index(class_name), f"{class_name!r} (the image's class in the dataset)"
    label = int(predictor.logits(pixels).argmax(dim=-1)[0])
    unknown = f"; its dataset class {class_name!r} is not one of the run's classes" if class_name else ""
    return label, f"{classnames[label]!r} (predicted{unknown})"


def _mask_file_view(config: DAPTConfig, image_path: Path) -> MaskView:
    """The user's mask file for the image, binarised as DAPT reads it, over the whole image."""
    try:
        folder = MaskFolder(config.mask_dir, config.mask_ignore_value)
        mask = np.asarray(folder.read(image_path)) > 0
        found = folder.find(image_path)
    except DataError as exc:
        return no_masks(
            f"This run's DAPT reads its masks from files (`dapt.masks=folder`), and there is none to show here: {exc}."
        )
    note = (
        f"**DAPT mask file** `{found.relative_to(folder.root).as_posix()}` from `{folder.root}`, "
        "binarised as DAPT reads it; "
        f"it marks {mask.mean() * 100:.0f}% of the image as foreground (training gives it each view's crop and flip)."
    )
    return MaskView(None, mask, {"saliency": None, "mask": _foreground(load_image(image_path), mask)}, note)


def _foreground(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """`image` with what lies outside `mask` darkened to a quarter: the foreground DAPT keeps."""
    darkened = Image.blend(Image.new("RGB", image.size), image, 0.25)
    return _enlarged(Image.composite(image, darkened, Image.fromarray(mask.astype(np.uint8) * 255)))


def _enlarged(picture: Image.Image) -> Image.Image:
    """`picture` enlarged by the whole factor that brings its shorter side to `MIN_DISPLAY_PX`, each
    pixel a square block (the browser shows a small picture at its own size)."""
    factor = math.ceil(MIN_DISPLAY_PX / min(picture.size))
    return (
        picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST)
        if factor > 1
        else picture
    )
