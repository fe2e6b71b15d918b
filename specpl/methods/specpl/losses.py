"""SpecPL's loss terms as plain functions of tensors, so each can be checked by hand (spec §3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def semantic_anchor_loss(logits: torch.Tensor, raw_text: torch.Tensor, low_embedding: torch.Tensor) -> torch.Tensor:
    """L_sem = mean_i (1 - cos(e_i, t_low_i)), e_i = normalise(sum_c p_ic t_c/|t_c|), p = softmax(logits)
    detached. Gradients reach the prompts through the raw text only."""
    probs = torch.softmax(logits.detach(), dim=-1)
    text = F.normalize(raw_text, dim=-1)
    mixed = torch.einsum("bc,bcd->bd", probs, text) if text.dim() == 3 else probs @ text
    return (1 - F.cosine_similarity(mixed, low_embedding, dim=-1)).mean()


def granule_logits(modulated_image: torch.Tensor, refined_text: torch.Tensor, scale: float) -> torch.Tensor:
    """s * v' . t~ for unit-norm v' (B, D) and text (C, D) or per-image text (B, C, D)."""
    text = F.normalize(refined_text, dim=-1)
    if text.dim() == 3:
        return scale * torch.einsum("bd,bcd->bc", modulated_image, text)
    return scale * modulated_image @ text.t()


def counterfactual_permutation(batch_size: int, device: torch.device | None = None) -> torch.Tensor:
    """pi, a uniform random permutation of the batch (spec §3.7; fixed points are allowed and give
    the factual case). Drawn on the batch's device as the argsort of uniform noise: no host round
    trip, and an op that compiles into a CUDA graph."""
    return torch.rand(batch_size, device=device).argsort()
