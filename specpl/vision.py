"""CLIP's image tower driven by the library: the image twin of `specpl.text`.

The loop follows open_clip's ``VisionTransformer`` (patch embedding, [CLS] + positional embedding,
``ln_pre``, the blocks, pooling, ``ln_post``, projection) one block at a time, so that prompt
groups (`specpl.slots`) can be inserted or overwritten before any block and a hook can see every
layer. With no groups and no hook it computes exactly what ``model.encode_image`` computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from specpl.slots import LayerHook, PromptGroup, SlotState


@dataclass
class VisionOutput:
    """The projected pooled feature (B, D), the last block's hidden states (B, T, W) before
    ``ln_post``, and where each named prompt group ended up in them."""

    pooled: torch.Tensor
    tokens: torch.Tensor
    slots: SlotState

    def group_tokens(self, name: str) -> torch.Tensor:
        """The final hidden states (B, n, W) of the named prompt group."""
        return self.tokens[:, self.slots.position(name)]


class PromptImageEncoder(nn.Module):
    """Wraps (does not copy) the image tower of an open_clip ``CLIP`` model."""

    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        visual = clip_model.visual
        supported = (
            hasattr(visual, "conv1")
            and getattr(visual, "attn_pool", None) is None
            and getattr(visual, "pool_type", "tok") == "tok"
            and not getattr(visual, "final_ln_after_pool", False)
        )
        if not supported:
            raise ValueError(
                "prompting the image tower needs an open_clip VisionTransformer with class-token pooling "
                f"(no attention pooling); {type(visual).__name__} is not supported"
            )
        self.clip = [clip_model]  # a list keeps the frozen model out of this module's state_dict

    @property
    def visual(self) -> nn.Module:
        return self.clip[0].visual

    @property
    def width(self) -> int:
        return int(self.visual.class_embedding.shape[-1])

    @property
    def depth(self) -> int:
        return len(self.visual.transformer.resblocks)

    def forward(
        self, images: torch.Tensor, groups: Sequence[PromptGroup] = (), hook: LayerHook | None = None
    ) -> VisionOutput:
        visual = self.visual
        slots = SlotState(groups, self.depth)
        x = visual.conv1(images)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        x = torch.cat([visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1), x], dim=1)
        x = x + visual.positional_embedding.to(x.dtype)
        x = visual.patch_dropout(x)
        if not slots.empty:
            x = slots.apply(x, 0)  # layer-0 prompts enter before ln_pre, as in the MaPLe/IVLP reference
        x = visual.ln_pre(x)
        for layer, block in enumerate(visual.transformer.resblocks):
            if layer and not slots.empty:
                x = slots.apply(x, layer)
            if hook is not None:
                x = hook(layer, x)
            x = block(x)
        pooled = visual.ln_post(x[:, 0])
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return VisionOutput(pooled, x, slots)

    def project_tokens(self, tokens: torch.Tensor, projection: torch.Tensor | None = None) -> torch.Tensor:
        """``ln_post`` and a projection (the tower's own, or another such as MMRL's ``proj_rep``)."""
        projection = self.visual.proj if projection is None else projection
        return self.visual.ln_post(tokens) @ projection
