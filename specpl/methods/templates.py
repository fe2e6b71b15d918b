"""Frozen CLIP text of a hand-crafted template, which several methods read: zero-shot's class text,
KgCoOp's and MMRL's regularisation targets, CasPL's teacher logits and ISP's probe. Kept apart
from every host so that a booster never imports a host's module for it."""

from __future__ import annotations

import torch

from specpl.backbone import Backbone


def template_text_features(backbone: Backbone, template: str, classnames: list[str]) -> torch.Tensor:
    """Frozen CLIP text features (C, D) of ``template.format(name)`` for each class."""
    if "{}" not in template:
        raise ValueError(f"template {template!r} needs a '{{}}' where the class name goes")
    device = backbone.model.token_embedding.weight.device
    with torch.no_grad():
        return backbone.model.encode_text(
            backbone.tokenizer([template.format(c) for c in classnames]).to(device)
        ).float()
