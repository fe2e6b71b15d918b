"""CoOp (Zhou et al., IJCV 2022): learned context words in front of the class name; CE loss.

Only the class token at the end is supported: it is the published default, and it lets the shared
``[SOS] + context`` prefix be encoded once for all classes.

Context init, the one place where the presets differ:
- ``default`` (`ctx_from_template=True`, unless the user sets `n_ctx` or `ctx_init`, whose context
  then wins): the context starts as the words of the run's template
  before the class name and the words after it stay frozen text ("a photo of a {}, a type of pet."
  learns "a photo of a" and keeps ", a type of pet."), so step 0 is zero-shot CLIP with that
  template and training can only move away from it when the training loss says so. A template with
  no words before the class ("{} texture.") starts the context from `ctx_init`, or "a photo of a"
  when that is empty, and keeps the template's words after the class.
- ``paper``: the CoOp repository's ``vit_b16_ctxv1``, the configuration behind the CoOp row every
  base-to-new table reuses (82.69 / 63.22, first in the CoCoOp paper): 4 context tokens from
  "a photo of a", class name then ".", 200 epochs (50 on ImageNet).
- ``paper-specpl``: the CoOp that SpecPL's paper trains and boosts (16 random context vectors,
  100 epochs, 10 on ImageNet); it has no published plain-CoOp row of its own. SpecPL applies it as
  its per-host rule, so ``coop+specpl`` under ``paper`` runs it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch

from specpl.methods.adapter import ADAPTER_SOURCES, AdapterOptions, LinearAdapter
from specpl.methods.base import CONTEXT_TOKENS, FEATURES, BuildContext, Host, cosine_logits
from specpl.methods.prompt import PromptLearner
from specpl.methods.registry import HOSTS
from specpl.methods.sourcing import context_sources, schedule_sources
from specpl.slots import PromptGroup
from specpl.text import TextHook

FALLBACK_CONTEXT = "a photo of a"  # the context of a template with no words before the class name


def template_context(template: str, fallback: str = "") -> tuple[str, str]:
    """Split a template at its class slot: (context words, frozen tail with the slot).
    ``"a photo of a {}, a type of pet."`` -> ``("a photo of a", "{}, a type of pet.")``; a template
    with nothing before the slot takes `fallback` (else "a photo of a") as its context."""
    if "{}" not in template:
        raise ValueError(f"template {template!r} needs a '{{}}' where the class name goes")
    head, tail = template.split("{}", 1)
    return head.strip() or fallback or FALLBACK_CONTEXT, "{}" + tail.rstrip()


# The CoOp repository's vit_b16_ctxv1 (the published CoOp row) and SpecPL's CoOp; see the module doc.
CTXV1_CONFIG = "KaiyangZhou/CoOp configs/trainers/CoOp/vit_b16_ctxv1.yaml"
SPECPL_COOP: dict[str, dict[str, Any]] = {
    "coop": {"n_ctx": 16, "ctx_init": "", "ctx_from_template": False, "linear_adapter": False},
    "train": {"epochs": 100},
    "train@imagenet": {"epochs": 10},
}
SPECPL_COOP_SOURCES = {
    "coop.n_ctx": "Mlrac1e/SpecPL-Prompt-Learning@eba735b scripts/coop (NCTX=16, random init)",
    "coop.ctx_init": "Mlrac1e/SpecPL-Prompt-Learning@eba735b configs/trainers/CoOp (no CTX_INIT)",
    "coop.ctx_from_template": "ours: off, the released context is random",
    "coop.linear_adapter": ADAPTER_SOURCES["linear_adapter"],
    "train.epochs": "Mlrac1e/SpecPL-Prompt-Learning@eba735b scripts/coop (100 epochs)",
    "train.batch_size": "Mlrac1e/SpecPL-Prompt-Learning@eba735b configs/trainers/CoOp (BATCH_SIZE 32)",
    "train.lr": "Mlrac1e/SpecPL-Prompt-Learning@eba735b configs/trainers/CoOp (LR 0.002)",
    "train@imagenet.epochs": "Mlrac1e/SpecPL-Prompt-Learning@eba735b scripts/coop (ImageNet: 10 epochs)",
}


@dataclass
class CoOpConfig(AdapterOptions):
    n_ctx: int = 16
    ctx_init: str = ""  # e.g. "a photo of a"; sets n_ctx to its token count
    class_specific: bool = False  # CSC: one context per class (cannot transfer to new classes)
    init_std: float = 0.02
    shared_prefix: bool = True  # encode [SOS]+context once for all classes (exact; faster)
    ctx_from_template: bool = (
        True  # the template's words before the class are the context, the rest stays (see the module doc)
    )
    tail: str = (
        "{}."  # the frozen text after the context, {} = the class name (set from the template by ctx_from_template)
    )


class ContextHost(Host):
    """A host whose text is ``[SOS] context <class name>.`` through one `PromptLearner`; CoOp,
    CoCoOp, KgCoOp and the deep hosts build on it."""

    capabilities: ClassVar[frozenset[str]] = frozenset({CONTEXT_TOKENS})

    def __init__(self, config: Any, context: BuildContext) -> None:
        super().__init__(config, context)
        ctx_init, tail = config.ctx_init, config.tail
        if config.ctx_from_template:
            ctx_init, tail = template_context(context.template, config.ctx_init)
        self.prompt_learner = PromptLearner(
            self.text_encoder,
            context.backbone.tokenizer,
            n_ctx=config.n_ctx,
            ctx_init=ctx_init,
            init_std=config.init_std,
            tail=tail,
            **self.context_layout(config),
        )
        # the text-only hosts' shared image-feature map (specpl.methods.adapter); None elsewhere
        use_adapter = isinstance(config, AdapterOptions) and config.linear_adapter
        self.adapter = LinearAdapter(context.embed_dim) if use_adapter else None

    def resolved_options(self) -> dict[str, Any]:
        """The context as built: a template-derived context is written out (words, token count and
        tail), so a bundle rebuilds the same prompt whatever template it is later evaluated with."""
        options = super().resolved_options()
        if options["ctx_from_template"]:
            learner = self.prompt_learner
            options.update(ctx_from_template=False, ctx_init=learner.ctx_init, n_ctx=learner.n_ctx, tail=learner.tail)
        return options

    @classmethod
    def settle_options(cls, options: Any, given: set[str]) -> None:
        """A context the user sets (`n_ctx` or `ctx_init`) is the one trained: it turns
        `ctx_from_template` off unless that is given too."""
        if given & {"n_ctx", "ctx_init"} and "ctx_from_template" not in given:
            options.ctx_from_template = False

    def context_layout(self, config: Any) -> dict[str, bool]:
        """`PromptLearner` layout switches this host's options set (CoOp's CSC and shared prefix)."""
        return {}

    def logits(
        self, image: dict[str, torch.Tensor], raw_text: torch.Tensor, refined_text: torch.Tensor, scale: float
    ) -> torch.Tensor:
        """s*cos(image, refined text), the image feature through the linear adapter when there is one."""
        features = image[FEATURES] if self.adapter is None else self.adapter(image[FEATURES])
        return cosine_logits(features, refined_text, scale)

    def set_classnames(self, classnames: list[str], novel: bool = False) -> None:
        self.prompt_learner.set_classnames(classnames)
        self.classnames, self.novel = list(classnames), novel

    def encode_text(
        self,
        image_features: torch.Tensor | None = None,
        groups: Sequence[PromptGroup] = (),
        hooks: Sequence[TextHook] = (),
    ) -> torch.Tensor:
        return self.prompt_learner(None, [*self.own_text_prompts(), *groups], hooks=hooks)


@HOSTS.register("coop")
class CoOp(ContextHost):
    name = "coop"
    title = "CoOp"
    description = "CoOp: learned context words before the class name, cross-entropy (IJCV 2022)"
    config_class: ClassVar[type] = CoOpConfig
    training_defaults: ClassVar[dict[str, Any]] = {
        "epochs": 200,
        "batch_size": 32,
        "lr": 0.002,
        "optimizer": "sgd",
        "crop_scale": 0.08,
    }
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        "paper": {
            "coop": {"n_ctx": 4, "ctx_init": "a photo of a", "ctx_from_template": False, "linear_adapter": False},
            "train@imagenet": {"epochs": 50},
        },
        "paper-specpl": SPECPL_COOP,  # what SpecPL's paper trains as CoOp
    }
    sources: ClassVar[dict[str, str]] = {
        **context_sources("KaiyangZhou/CoOp trainers/coop.py"),
        **ADAPTER_SOURCES,
        **schedule_sources(CTXV1_CONFIG, training_defaults),
        "n_ctx": f"{CTXV1_CONFIG} (4 tokens, from CTX_INIT)",
        "ctx_init": f"{CTXV1_CONFIG} (CTX_INIT 'a photo of a')",
        "class_specific": "KaiyangZhou/CoOp scripts/coop/base2new_train.sh (CSC=False)",
        "shared_prefix": "ours: encodes [SOS]+context once for all classes; exact, changes no result",
        "train@imagenet.epochs": "KaiyangZhou/CoOp configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml (MAX_EPOCH 50)",
    }
    preset_notes: ClassVar[dict[str, str]] = {
        "paper": "CoOp's vit_b16_ctxv1: 4 tokens from 'a photo of a', 200 epochs (the CoCoOp paper's CoOp row)",
        "paper-specpl": "SpecPL's CoOp: 16 random tokens, 100 epochs (no published plain-CoOp row)",
    }
    # sources of the paper-specpl variant's values, keyed as in `Booster.host_sources`
    variant_sources: ClassVar[dict[str, dict[str, str]]] = {"paper-specpl": SPECPL_COOP_SOURCES}

    def context_layout(self, config: CoOpConfig) -> dict[str, bool]:
        return {"class_specific": config.class_specific, "shared_prefix": config.shared_prefix}
