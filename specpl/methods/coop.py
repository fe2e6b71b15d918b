"""CoOp (Zhou et al., IJCV 2022): learned context words in front of the class name; CE loss.

Defaults follow the SpecPL variant of CoOp (16 random context vectors, SGD 0.002, batch 32, 100
epochs, a constant warm-up epoch then per-epoch cosine), see ``shared/methods/HOSTS.md`` and
``SPECPL.md`` §5. Only the class token at the end is supported: it is the published default, and it
lets the shared ``[SOS] + context`` prefix be encoded once for all classes.

Presets: ``reference`` is the released SpecPL code (its bank starts random: 0 init batches);
``default`` is ours, the same except that SpecPL's bank is initialised from 10 batches of low bands,
as the spec recommends (SPECPL.md §9) and as a measured -2.5 HM for the random bank supports (§11).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch

from specpl.methods.base import CONTEXT_TOKENS, BuildContext, Host
from specpl.methods.prompt import PromptLearner
from specpl.methods.registry import HOSTS
from specpl.slots import PromptGroup
from specpl.text import TextHook

REFERENCE_SCHEDULE = {"augment": "reference", "schedule": "epoch", "drop_last": True}


def standard_presets(reference_bank_init: int) -> dict[str, dict[str, dict[str, Any]]]:
    """A host's two presets: ``reference`` reproduces the released code (its SpecPL bank init
    count), ``default`` is ours: the same, with the bank initialised from 10 low-band batches."""
    return {
        "default": {"specpl": {"bank_init_batches": 10}, "train": REFERENCE_SCHEDULE},
        "reference": {"specpl": {"bank_init_batches": reference_bank_init}, "train": REFERENCE_SCHEDULE},
    }


@dataclass
class CoOpConfig:
    n_ctx: int = 16
    ctx_init: str = ""  # e.g. "a photo of a"; sets n_ctx to its token count
    class_specific: bool = False  # CSC: one context per class (cannot transfer to new classes)
    init_std: float = 0.02
    shared_prefix: bool = True  # encode [SOS]+context once for all classes (exact; faster)


class ContextHost(Host):
    """A host whose text is ``[SOS] context <class name>.`` through one `PromptLearner`; CoOp,
    CoCoOp, KgCoOp and the deep hosts build on it."""

    capabilities: ClassVar[frozenset[str]] = frozenset({CONTEXT_TOKENS})

    def __init__(self, config: Any, context: BuildContext) -> None:
        super().__init__(config, context)
        self.prompt_learner = PromptLearner(
            self.text_encoder,
            context.backbone.tokenizer,
            n_ctx=config.n_ctx,
            ctx_init=config.ctx_init,
            class_specific=getattr(config, "class_specific", False),
            init_std=config.init_std,
            shared_prefix=getattr(config, "shared_prefix", True),
        )

    def set_classnames(self, classnames: list[str], novel: bool = False) -> None:
        self.prompt_learner.set_classnames(classnames)
        self.classnames, self.novel = list(classnames), novel

    def deep_text_prompts(self) -> list[PromptGroup]:
        """The host's own text slots beyond layer 0 (deep hosts)."""
        return []

    def encode_text(
        self, image_features: torch.Tensor | None = None, groups: Sequence[PromptGroup] = (), hooks: Sequence[TextHook] = ()
    ) -> torch.Tensor:
        return self.prompt_learner(None, [*self.deep_text_prompts(), *groups], hooks=hooks)


@HOSTS.register("coop")
class CoOp(ContextHost):
    name = "coop"
    description = "CoOp: learned context words before the class name, cross-entropy (IJCV 2022)"
    config_class: ClassVar[type] = CoOpConfig
    training_defaults: ClassVar[dict[str, Any]] = {"epochs": 100, "batch_size": 32, "lr": 0.002, "optimizer": "sgd", "crop_scale": 0.08}
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = standard_presets(reference_bank_init=0)
