"""Frozen per-image work, done once: augmented views, CLIP image features and band statistics.

Augmentation draws are deterministic: view ``v`` of an image is seeded by (run seed, the file's
content hash, v), so a cached feature and a freshly computed one are the same tensor. When no
gradient needs to reach the image tower (CoOp + SpecPL), features are computed once per
(image, view) and reused across epochs; ``max_views`` caps how many views per image are kept.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from specpl.data import ImageItem, load_image


def content_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class AugmentedViews:
    """Loads an image as a preprocessed tensor: view ``None`` is the eval transform, view ``v`` a
    seeded draw of the train transform."""

    def __init__(self, preprocess_train: Callable, preprocess_eval: Callable, seed: int) -> None:
        self.preprocess_train = preprocess_train
        self.preprocess_eval = preprocess_eval
        self.seed = seed
        self._hashes: dict[Path, str] = {}

    @property
    def signature(self) -> str:
        """Identifies the preprocessing, so cached features are never reused across transforms."""
        return hashlib.sha256(f"{self.preprocess_train}|{self.preprocess_eval}|{self.seed}".encode()).hexdigest()[:16]

    def key(self, path: Path, view: int | None) -> str:
        if path not in self._hashes:
            self._hashes[path] = content_hash(path)
        return f"{self._hashes[path]}:{self.signature}:{'eval' if view is None else view}"

    def load(self, path: Path, view: int | None) -> torch.Tensor:
        image = load_image(path)
        if view is None:
            return self.preprocess_eval(image)
        draw_seed = int(hashlib.sha256(self.key(path, view).encode()).hexdigest()[:15], 16)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(draw_seed)
            return self.preprocess_train(image)


class BandFeaturizer(nn.Module):
    """Band statistics of CLIP-normalised images through a frozen decomposer."""

    def __init__(self, decomposer: nn.Module, normalization: tuple[tuple[float, ...], tuple[float, ...]], image_size: int) -> None:
        super().__init__()
        self.decomposer = decomposer
        mean, std = normalization
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.image_size = image_size

    def to_unit_range(self, images: torch.Tensor) -> torch.Tensor:
        """Undo CLIP's normalisation and resize to the decomposer's resolution (spec §1)."""
        images = (images.float() * self.std + self.mean).clamp(0, 1)
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False)
        return images

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bands = self.decomposer.decompose(self.to_unit_range(images))
        low, high = self.decomposer.band_statistics(bands)
        return low.float(), high.float()


class FeatureCache:
    """Per-(image, view) cache of frozen image features and band statistics, keyed by content hash
    and preprocessing signature."""

    def __init__(
        self,
        views: AugmentedViews,
        encode_image: Callable[[torch.Tensor], torch.Tensor] | None,
        band_featurizer: BandFeaturizer | None,
        device: torch.device,
        batch_size: int = 32,
        enabled: bool = True,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.views = views
        self.encode_image = encode_image
        self.band_featurizer = band_featurizer
        self.device = device
        self.batch_size = batch_size
        self.enabled = enabled
        self.on_progress = on_progress  # (done, total) while new features are being computed
        self._store: dict[str, dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self._store)

    def compute(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Frozen features of a batch of preprocessed images (no caching)."""
        images = images.to(self.device)
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            if self.encode_image is not None:
                out["image_features"] = self.encode_image(images).float()
            if self.band_featurizer is not None:
                out["low"], out["high"] = self.band_featurizer(images)
        return out

    def get(self, items: list[ImageItem], view: int | None) -> dict[str, torch.Tensor]:
        """Stacked features for `items` (in order); computes only what is missing."""
        if self.encode_image is None and self.band_featurizer is None:
            return {}
        if not self.enabled:
            return self._uncached(items, view)
        keys = [self.views.key(item.path, view) for item in items]
        missing = [i for i, key in enumerate(keys) if key not in self._store]
        for done, chunk in enumerate(_chunks(missing, self.batch_size)):
            computed = self.compute(torch.stack([self.views.load(items[i].path, view) for i in chunk]))
            for row, i in enumerate(chunk):
                self._store[keys[i]] = {name: value[row].cpu() for name, value in computed.items()}
            if self.on_progress is not None:
                self.on_progress(min((done + 1) * self.batch_size, len(missing)), len(missing))
        return {name: torch.stack([self._store[k][name] for k in keys]) for name in self._store[keys[0]]} if keys else {}

    def _uncached(self, items: list[ImageItem], view: int | None) -> dict[str, torch.Tensor]:
        parts = [self.compute(torch.stack([self.views.load(items[i].path, view) for i in chunk])) for chunk in _chunks(list(range(len(items))), self.batch_size)]
        return {name: torch.cat([p[name].cpu() for p in parts]) for name in parts[0]}


def _chunks(indices: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(indices), size):
        yield indices[start : start + size]
