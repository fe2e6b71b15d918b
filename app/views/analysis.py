"""Bands and Counterfactual tabs: thin calls into `specpl.visualize`, `specpl.counterfactual` and
the components' image views (`Component.inspect` with an `ImageQuery`), drawn whatever component gives them."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from app.messages import first_sentence
from app.runtime import decomposers
from app.runtime.models import ModelCache
from specpl.bands import AUTO, BandDecomposer, DecomposerUnavailable
from specpl.config import DecomposerConfig, from_dict
from specpl.counterfactual import A_WITH_B, B_WITH_A, A, B, counterfactual
from specpl.data import load_image
from specpl.methods import ImageQuery, ImageView
from specpl.visualize import band_images, heatmap

PAIRS = (A, B, A_WITH_B, B_WITH_A)
BAND_VIEWS = ("original", "low", "high", "latents")
CPU_DECOMPOSER = "fft"  # weight-free: the fast default on CPU
MASK_IMAGES = ("saliency", "mask")
MIN_DISPLAY_PX = 224  # smaller mask pictures (a 64 px world image) are enlarged by a whole factor to reach it
NO_VIEW_NOTE = (
    "This run has no booster that shows an image view (DAPT shows its foreground masks), so there is nothing to show."
)


class FeatureUnavailable(RuntimeError):
    """A decomposer (or the model part a view needs) can't be had; one sentence for the UI."""


def decomposer_choices(hosted: bool) -> list[tuple[str, str]]:
    """The Bands tab's decomposers as (label, name), each marked whether it can load here, as Data &
    Train marks them; "auto" is left out, since the tab shows what one named decomposer does."""
    return [choice for choice in decomposers.dropdown_choices(None, hosted) if choice[1] != AUTO]


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
    model_label: str  # the exported model in words ("CoOp + SpecPL"; "Zero-shot CLIP" when selection exported it)


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
        predictor.model.label(),
    )


@dataclass
class MaskView:
    """A run's image view (`Component.inspect`; DAPT's foreground mask), drawn for the Bands tab:
    its heat map and region as arrays and pictures, and the note that says whose view it is."""

    saliency: np.ndarray | None  # the heat map in [0, 1] at the model's input size; None when the view has none
    mask: np.ndarray | None  # bool, True on the kept region
    images: dict[str, Image.Image | None]  # MASK_IMAGES -> picture (None when there is nothing to show)
    note: str  # whose view this is and how it was made, or why there is none


def image_view(
    cache: ModelCache, model_dir: Path, image_path: Path, class_name: str | None = None, read_mask_files: bool = True
) -> MaskView:
    """The first image view a component of the run's model gives of `image_path` (`class_name`: the
    image's class in the dataset, when known), drawn: a float map as a heat map over the image, a
    bool map as the region kept. Without `read_mask_files` (a shared server) no component opens a
    file its options name. A run none of whose components has a view gets a note instead."""
    model = cache.bundle_predictor(model_dir).model
    query = ImageQuery(image_path, class_name, read_mask_files)
    for component in model.components:
        view = component.inspect(model, query)
        if isinstance(view, ImageView):
            return drawn(view)
    return no_masks(NO_VIEW_NOTE)


def drawn(view: ImageView) -> MaskView:
    """`view`'s maps as pictures, in the tab's slots by name."""
    if view.image is None:
        return no_masks(view.note)
    seen = Image.fromarray(view.image)
    pictures = {
        name: _foreground(seen, values)
        if values.dtype == bool
        else _enlarged(Image.blend(seen, heatmap(torch.from_numpy(values)[None]), 0.6))
        for name, values in view.maps.items()
    }
    return MaskView(
        view.maps.get("saliency"), view.maps.get("mask"), {name: pictures.get(name) for name in MASK_IMAGES}, view.note
    )


def no_masks(note: str) -> MaskView:
    """A mask view with nothing to show but why."""
    return MaskView(None, None, dict.fromkeys(MASK_IMAGES), note)


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
