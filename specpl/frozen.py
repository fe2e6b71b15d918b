"""Named frozen inputs: per-image outputs of frozen models that a method needs during training.

A component lists what it needs (`Component.frozen_inputs`); the feature cache computes each once
per (image, view) and the batch carries them by name (`Batch.frozen`). Each input is a callable
on a batch of CLIP-normalised images returning a tensor (B, ...) or a dict of them (stored as
``name.key``), with a `signature` saying how it is computed, so two components asking for the
same name must mean the same thing.

Zero-shot logits are not an input of their own: they are ``s * cos(clip_image, g0)`` for the
frozen template text g0, which a host computes from the cached `clip_image` feature exactly and
for nothing, and which changes with the class set while the image feature does not.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from specpl.backbone import Backbone

CLIP_IMAGE = "clip_image"
BANDS = "bands"


class ViewSource(Protocol):
    """How the feature cache draws the views of an image (`specpl.features.AugmentedViews`): what a
    frozen input that needs the batch's items is given, to follow a view's geometry."""

    preprocess_train: Callable
    preprocess_eval: Callable

    def draw_seed(self, path: Path, view: int) -> int: ...


class FrozenInput(Protocol):
    """A per-image output of a frozen model. `needs_items`: it is also called with the batch's
    items, the view number and the `ViewSource` (DAPT's mask files follow each view's crop)."""

    name: str
    signature: str
    needs_items: bool

    def __call__(self, images: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]: ...


def flatten(name: str, value: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A frozen input's output under its batch names."""
    if isinstance(value, dict):
        return {f"{name}.{key}": tensor for key, tensor in value.items()}
    return {name: value}


class ClipImageFeatures:
    """f0: the frozen CLIP's own image feature of the same view (PromptSRC's and MMRL's
    regularisers, and the zero-shot logits derived from it)."""

    name = CLIP_IMAGE
    needs_items = False

    def __init__(self, backbone: Backbone) -> None:
        self.model = backbone.model
        self.signature = f"{backbone.config.name}:{backbone.config.pretrained}"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images).float()


class BandStatistics(nn.Module):
    """SpecPL's band statistics of CLIP-normalised images through a frozen decomposer, stacked as
    (B, 2, stat_dim): row 0 the low band, row 1 the high band."""

    name = BANDS
    needs_items = False

    def __init__(
        self, decomposer: nn.Module, normalization: tuple[tuple[float, ...], tuple[float, ...]], image_size: int
    ) -> None:
        super().__init__()
        self.decomposer = decomposer
        mean, std = normalization
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.image_size = image_size
        self.signature = f"{getattr(decomposer, 'name', type(decomposer).__name__)}@{image_size}"

    def to_unit_range(self, images: torch.Tensor) -> torch.Tensor:
        """Undo CLIP's normalisation and resize to the decomposer's resolution (spec §1)."""
        images = (images.float() * self.std.to(images.device) + self.mean.to(images.device)).clamp(0, 1)
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(
                images, size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False
            )
        return images

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        bands = self.decomposer.decompose(self.to_unit_range(images))
        low, high = self.decomposer.band_statistics(bands)
        return torch.stack([low.float(), high.float()], dim=1).to(images.device)


@contextmanager
def seeded_cpu_rng(seed: int) -> Iterator[None]:
    """Run a CPU-side random transform under `seed`, leaving the global generator as it was. Only
    the CPU generator is seeded: `torch.manual_seed` would also reseed the device's generators to
    the last image's seed on a GPU, and before CUDA is initialised it defers that call with a
    captured stack, each time (4 s of a default demo run that took 37 s under cProfile)."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        yield
