"""The pieces every method composes: a host (how prompts produce text and image features) and any
number of boosters (plug-ins that refine text and add losses). `PromptModel` wires them together;
the trainer only ever talks to `PromptModel`, so a new host or booster never touches it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from specpl.backbone import Backbone


@dataclass
class Batch:
    """One training batch. Either `images` (CLIP-normalised) or cached `image_features` is set.

    `band_stats` holds the frozen (low, high) band statistics when a booster needs them.
    """

    labels: torch.Tensor
    images: torch.Tensor | None = None
    image_features: torch.Tensor | None = None
    band_stats: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass
class ForwardState:
    """What a booster's losses may look at; filled in by `PromptModel.forward`."""

    batch: Batch
    image_features: torch.Tensor  # (B, D) raw
    raw_text: torch.Tensor  # (C, D) or (B, C, D) raw prompted text features
    refined_text: torch.Tensor  # same shape, after every booster's refinement
    logits: torch.Tensor  # (B, C) host logits on refined text
    logit_scale: float
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class BoosterContext:
    """What a booster may need to know about the run it is built into."""

    embed_dim: int
    host_name: str
    band_stat_dim: int | None = None


class Host(nn.Module):
    """A prompt-learning host. Subclasses set `name`, `config_class`, `training_defaults`."""

    name: ClassVar[str]
    needs_image_grad: ClassVar[bool] = False  # True when prompts enter the image tower
    conditions_text_on_image: ClassVar[bool] = False  # True when text depends on each image (CoCoOp)
    training_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.clip = [backbone.model]  # frozen; kept out of the state dict

    def set_classnames(self, classnames: list[str]) -> None:
        raise NotImplementedError

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Raw image features (B, D) with any image-side prompts applied."""
        return self.clip[0].encode_image(images)

    def encode_text(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """Raw prompted text features: (C, D), or (B, C, D) for image-conditioned hosts."""
        raise NotImplementedError

    def host_losses(self, state: ForwardState) -> dict[str, torch.Tensor]:
        """The host's own loss terms (already weighted). Default: cross-entropy."""
        return {"cls": F.cross_entropy(state.logits, state.batch.labels)}


class Booster(nn.Module):
    """A plug-in that may refine text features and add loss terms to any host."""

    name: ClassVar[str]
    needs_bands: ClassVar[bool] = False

    def refine_text(self, text: torch.Tensor) -> torch.Tensor:
        return text

    def losses(self, state: ForwardState) -> dict[str, torch.Tensor]:
        return {}

    def prepare(self, band_stats: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Called once before training with the first batches' band statistics."""


def cosine_logits(image_features: torch.Tensor, text_features: torch.Tensor, scale: float) -> torch.Tensor:
    """s * cos(image, text) for text (C, D) or per-image text (B, C, D)."""
    image = F.normalize(image_features, dim=-1)
    text = F.normalize(text_features, dim=-1)
    if text.dim() == 3:
        return scale * torch.einsum("bd,bcd->bc", image, text)
    return scale * image @ text.t()


class PromptModel(nn.Module):
    """Host + boosters over one frozen CLIP. ``forward(batch)`` returns the weighted loss terms."""

    def __init__(self, backbone: Backbone, host: Host, boosters: list[Booster]) -> None:
        super().__init__()
        self.backbone = backbone
        self.frozen_clip = backbone.model  # registered so .to(device) moves it; excluded from checkpoints
        self.host = host
        self.boosters = nn.ModuleDict({b.name: b for b in boosters})
        self.logit_scale = backbone.logit_scale

    @property
    def needs_image_grad(self) -> bool:
        return self.host.needs_image_grad

    @property
    def needs_bands(self) -> bool:
        return any(b.needs_bands for b in self.boosters.values())

    @property
    def classnames(self) -> list[str]:
        return self.host.classnames

    def set_classnames(self, classnames: list[str]) -> None:
        self.host.set_classnames(classnames)

    def text_features(self, image_features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw, refined) text features; refinement applies every booster in order."""
        raw = self.host.encode_text(image_features)
        refined = raw
        for booster in self.boosters.values():
            refined = booster.refine_text(refined)
        return raw, refined

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        image_features = batch.image_features if batch.image_features is not None else self.host.encode_image(batch.images)
        raw, refined = self.text_features(image_features)
        logits = cosine_logits(image_features, refined, self.logit_scale)
        state = ForwardState(batch, image_features, raw, refined, logits, self.logit_scale)
        losses = self.host.host_losses(state)
        for booster in self.boosters.values():
            losses.update(booster.losses(state))
        return losses

    def learned_state_dict(self) -> dict[str, torch.Tensor]:
        """The method's own tensors (prompts, bank, refiner, fusion, ...), never the frozen CLIP."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("frozen_clip.")}

    def load_learned_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load tensors saved by `learned_state_dict`; any mismatch is an error."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("frozen_clip.")]
        if missing or unexpected:
            raise ValueError(f"checkpoint does not match the method: missing {missing[:5]}, unexpected {unexpected[:5]}")
