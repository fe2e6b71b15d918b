"""DAPT's loss terms as plain functions of tensors, so each can be checked by hand: the triplet
phase's pull-push and the alignment phase's foreground and background terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def triplet_pull_push(
    full: torch.Tensor, foreground: torch.Tensor, background: torch.Tensor, margin: float
) -> torch.Tensor:
    """mean max(|z_I - sg z_f| - |z_I - sg z_b| + margin, 0) on unit vectors (PyTorch's triplet loss, p = 2)."""
    full = F.normalize(full, dim=-1)
    positive, negative = F.normalize(foreground.detach(), dim=-1), F.normalize(background.detach(), dim=-1)
    return F.triplet_margin_loss(full, positive.to(full.dtype), negative.to(full.dtype), margin=margin, p=2)


def foreground_alignment(
    foreground: torch.Tensor, class_text: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor | float
) -> torch.Tensor:
    """CE(s sg(z_f) T_fg, y): the image is detached, so only the text and prompt side learns.
    `class_text` is (C, D), or (B, C, D) for image-conditioned hosts."""
    image = F.normalize(foreground.detach(), dim=-1).to(class_text.dtype)
    text = F.normalize(class_text, dim=-1)
    logits = torch.einsum("bd,bcd->bc", image, text) if text.dim() == 3 else image @ text.t()
    return F.cross_entropy(scale * logits, labels)


def background_alignment(
    background: torch.Tensor, background_text: torch.Tensor, scale: torch.Tensor | float
) -> torch.Tensor:
    """CE(s z_b T_bg, argmax z_b T_bg): both the image and the text branch learn."""
    similarity = F.normalize(background, dim=-1).to(background_text.dtype) @ F.normalize(background_text, dim=-1).t()
    return F.cross_entropy(scale * similarity, similarity.argmax(dim=-1).detach())
