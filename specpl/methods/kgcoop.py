"""KgCoOp (Yao et al., CVPR 2023): CoOp kept close to the hand-crafted prompt's knowledge.

L = CE + lambda * (1 - mean_c cos(g_c, g0_c)), lambda = 8, where g0_c is the frozen CLIP text
feature of the run's hand-crafted template for class c (the dataset's template when the data names
one; under the paper preset the released code's own where it differs: DTD's
"a photo of a {}, a type of texture." instead of "{} texture."), computed once per class set. The term reads the
host's raw prompted text, so
a booster's refinement (SpecPL) does not change what it regularises. Defaults: 4 context tokens
from "a photo of a", batch 128, SGD 0.002, 100 epochs. Inference costs what CoOp's does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from specpl.config import check_choice
from specpl.methods.adapter import ADAPTER_SOURCES, AdapterOptions
from specpl.methods.base import BuildContext, ForwardState
from specpl.methods.coop import ContextHost
from specpl.methods.registry import HOSTS
from specpl.methods.sourcing import context_sources, schedule_sources
from specpl.methods.templates import template_text_features


def knowledge_guidance_loss(text: torch.Tensor, frozen_text: torch.Tensor) -> torch.Tensor:
    """1 - mean_c cos(g_c, g0_c) for prompted text (C, D) and frozen template text (C, D)."""
    return 1 - F.cosine_similarity(text, frozen_text.to(text.dtype), dim=-1).mean()


KGCOOP_SCRIPT = "htyao89/KgCoOp scripts/base2new_train.sh"
KGCOOP_CONFIG = "htyao89/KgCoOp configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml"


@dataclass
class KgCoOpConfig(AdapterOptions):
    n_ctx: int = 4
    ctx_init: str = "a photo of a"
    init_std: float = 0.02
    ctx_from_template: bool = True  # start from the run's template words (see specpl.methods.coop)
    tail: str = "{}."  # the frozen text after the context, {} = the class name
    weight: float = 8.0  # lambda
    template: str | None = (
        None  # None: the run's (the dataset's) hand-crafted template, or the released code's (guidance_templates)
    )
    guidance_templates: str = (
        "run"  # "run": the run's template; "released": KgCoOp's own where it differs (DTD), the paper preset's
    )

    def __post_init__(self) -> None:
        check_choice("kgcoop.guidance_templates", self.guidance_templates, ("run", "released"))


# where the released KgCoOp's guidance template differs from the dataset's (KgCoOp/trainers/kgcoop.py:41)
RELEASED_TEMPLATES = {"dtd": "a photo of a {}, a type of texture."}


@HOSTS.register("kgcoop")
class KgCoOp(ContextHost):
    name = "kgcoop"
    title = "KgCoOp"
    description = "KgCoOp: CoOp plus a pull toward the hand-crafted prompt's frozen text feature (CVPR 2023)"
    config_class: ClassVar[type] = KgCoOpConfig
    training_defaults: ClassVar[dict[str, Any]] = {
        "epochs": 100,
        "batch_size": 128,
        "lr": 0.002,
        "optimizer": "sgd",
        "crop_scale": 0.08,
    }
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        "paper": {"kgcoop": {"ctx_from_template": False, "guidance_templates": "released", "linear_adapter": False}}
    }
    sources: ClassVar[dict[str, str]] = {
        **context_sources("htyao89/KgCoOp trainers/kgcoop.py"),
        **ADAPTER_SOURCES,
        **schedule_sources(KGCOOP_CONFIG, training_defaults),
        "n_ctx": f"{KGCOOP_SCRIPT} (NCTX=4)",
        "ctx_init": f"{KGCOOP_CONFIG} (CTX_INIT 'a photo of a')",
        "weight": f"{KGCOOP_SCRIPT} (WEIGHT=8.0)",
        "template": "htyao89/KgCoOp trainers/kgcoop.py:41 (CUSTOM_TEMPLATES, the dataset's hand-crafted prompt)",
        "guidance_templates": "htyao89/KgCoOp trainers/kgcoop.py:41 (DTD: 'a photo of a {}, a type of texture.')",
    }

    def __init__(self, config: KgCoOpConfig, context: BuildContext) -> None:
        super().__init__(config, context)
        self.backbone = [context.backbone]
        released = RELEASED_TEMPLATES.get(context.dataset or "") if config.guidance_templates == "released" else None
        self.template = config.template or released or context.template

    def set_classnames(self, classnames: list[str], novel: bool = False) -> None:
        super().set_classnames(classnames, novel)
        self.register_buffer(
            "frozen_text", template_text_features(self.backbone[0], self.template, classnames), persistent=False
        )

    def host_losses(self, state: ForwardState) -> dict[str, torch.Tensor]:
        losses = super().host_losses(state)
        losses["kg"] = self.config.weight * knowledge_guidance_loss(state.raw_text, self.frozen_text)
        return losses
