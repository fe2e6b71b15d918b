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

from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from specpl.backbone import Backbone

if TYPE_CHECKING:
    from specpl.methods.base import PromptModel

CLIP_IMAGE = "clip_image"
BANDS = "bands"


class FrozenInput(Protocol):
    name: str
    signature: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]: ...


def flatten(name: str, value: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A frozen input's output under its batch names."""
    if isinstance(value, dict):
        return {f"{name}.{key}": tensor for key, tensor in value.items()}
    return {name: value}


class ImageOutputs:
    """The method's own image outputs when no trainable tensor is in the image path (CoOp, KgCoOp,
    CoCoOp): computed once per view instead of every step."""

    name = "image"

    def __init__(self, model: "PromptModel") -> None:
        self.model = model
        self.signature = f"image path of {model.name}"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v.float() for k, v in self.model.encode_image(images).items()}


class ClipImageFeatures:
    """f0: the frozen CLIP's own image feature of the same view (PromptSRC's and MMRL's
    regularisers, and the zero-shot logits derived from it)."""

    name = CLIP_IMAGE

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
