"""CoOp (Zhou et al., IJCV 2022): learned context words in front of the class name; CE loss.

Defaults follow the SpecPL variant of CoOp (16 random context vectors, SGD 0.002, batch 32,
cosine schedule with one warm-up epoch), see ``shared/methods/HOSTS.md`` and ``SPECPL.md`` §5.
Only the class token at the end is supported: it is the published default, and it lets the
shared ``[SOS] + context`` prefix be encoded once for all classes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from specpl.backbone import Backbone
from specpl.methods.base import Host
from specpl.methods.prompt import PromptLearner
from specpl.methods.registry import HOSTS
from specpl.text import PromptTextEncoder


@dataclass
class CoOpConfig:
    n_ctx: int = 16
    ctx_init: str = ""  # e.g. "a photo of a"; sets n_ctx to its token count
    class_specific: bool = False  # CSC: one context per class (cannot transfer to new classes)
    init_std: float = 0.02
    shared_prefix: bool = True  # encode [SOS]+context once for all classes (exact; faster)


@HOSTS.register("coop")
class CoOp(Host):
    name = "coop"
    config_class: ClassVar[type] = CoOpConfig
    training_defaults: ClassVar[dict[str, Any]] = {"epochs": 100, "batch_size": 32, "lr": 0.002, "optimizer": "sgd"}

    def __init__(self, backbone: Backbone, config: CoOpConfig) -> None:
        super().__init__(backbone)
        self.config = config
        self.prompt_learner = PromptLearner(
            PromptTextEncoder(backbone.model),
            backbone.tokenizer,
            n_ctx=config.n_ctx,
            ctx_init=config.ctx_init,
            class_specific=config.class_specific,
            init_std=config.init_std,
            shared_prefix=config.shared_prefix,
        )

    @property
    def classnames(self) -> list[str]:
        return self.prompt_learner.classnames

    def set_classnames(self, classnames: list[str]) -> None:
        self.prompt_learner.set_classnames(classnames)

    def encode_text(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.prompt_learner()
