"""Bands and Counterfactual tabs: thin calls into `specpl.visualize` and `specpl.counterfactual`."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from app.messages import first_sentence
from app.models import ModelCache
from specpl.bands import DECOMPOSERS, BandDecomposer, DecomposerUnavailable
from specpl.config import DecomposerConfig, from_dict
from specpl.counterfactual import A, A_WITH_B, B, B_WITH_A, counterfactual
from specpl.data import load_image
from specpl.visualize import band_images

PAIRS = (A, B, A_WITH_B, B_WITH_A)
BAND_VIEWS = ("original", "low", "high", "latents")
CPU_DECOMPOSER = "fft"  # weight-free: the fast default on CPU


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


def counterfactual_view(cache: ModelCache, model_dir: Path, image_a: Path, image_b: Path, top_k: int) -> CounterfactualView:
    """Predictions for A, B and their band swaps through the run's model and its own decomposer
    (at the resolution it was trained with, so the band statistics match training)."""
    predictor = cache.bundle_predictor(model_dir)
    config = from_dict(DecomposerConfig, predictor.config.get("decomposer") or {"name": CPU_DECOMPOSER})
    decomposer = _decomposer(cache, config)
    result = counterfactual(predictor, load_image(image_a), load_image(image_b), decomposer, top_k=top_k, size=config.image_size)
    granule = result.granule_path
    embedding = {pair: dict(granule.rows[pair]) for pair in PAIRS} if granule is not None else None
    cosines = dict(granule.modulation_cosine) if granule is not None else None
    return CounterfactualView(embedding, cosines, {pair: dict(result.image_path[pair]) for pair in PAIRS}, result.swapped_images, result.summary)
