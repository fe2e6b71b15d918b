"""Zero-shot CLIP as a host with nothing to learn: class text is the hand-crafted template.

It gives the zero-shot baseline through the same evaluation path as every trained method, and
lets the app classify with class names typed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch

from specpl.config import MethodConfig
from specpl.methods.base import BuildContext, Host
from specpl.methods.registry import HOSTS
from specpl.methods.templates import template_text_features
from specpl.slots import PromptGroup
from specpl.text import TextHook


@dataclass
class ZeroShotConfig:
    template: str | None = None  # None: the run's template


def zero_shot_method(template: str) -> MethodConfig:
    """Zero-shot CLIP with `template`, as a method to build (`specpl.factory.build_method`)."""
    return MethodConfig(host=ZeroShot.name, options={ZeroShot.name: {"template": template}})


@HOSTS.register("zeroshot")
class ZeroShot(Host):
    name = "zeroshot"
    title = "Zero-shot CLIP"
    description = "Zero-shot CLIP: the hand-crafted template, nothing learned (the baseline)"
    config_class: ClassVar[type] = ZeroShotConfig
    training_defaults: ClassVar[dict[str, Any]] = {"epochs": 0, "batch_size": 32, "lr": 0.0, "optimizer": "sgd"}
    sources: ClassVar[dict[str, str]] = {
        "template": "CLIP paper (Radford et al., ICML 2021) §3.1.4; the per-dataset templates of KaiyangZhou/CoOp "
        "trainers/zsclip.py (CUSTOM_TEMPLATES)",
        **{f"train.{key}": "ours: zero-shot trains nothing" for key in ("epochs", "batch_size", "lr", "optimizer")},
    }

    def __init__(self, config: ZeroShotConfig, context: BuildContext) -> None:
        super().__init__(config, context)
        self.backbone = context.backbone
        self.template = config.template or context.template

    def set_classnames(self, classnames: list[str], novel: bool = False) -> None:
        self.register_buffer("text", template_text_features(self.backbone, self.template, classnames), persistent=False)
        self.classnames, self.novel = list(classnames), novel

    def encode_text(
        self,
        image_features: torch.Tensor | None = None,
        groups: Sequence[PromptGroup] = (),
        hooks: Sequence[TextHook] = (),
    ) -> torch.Tensor:
        if groups or hooks:
            return self.text_encoder.encode_tokens(
                self.backbone.tokenizer([self.template.format(c) for c in self.classnames]), groups, hooks
            )
        return self.text
