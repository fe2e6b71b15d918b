"""Deep prompting hosts: IVLP, MaPLe and PromptSRC (docs/methods/ivlp.md, maple.md, promptsrc.md), on the towers'
prompt slots.

All three learn text context after [SOS] (layer 0, initialised from a phrase) and, for layers
1..J-1, text prompts that overwrite those positions; and vision prompts appended after the patch
tokens at layer 0 (before ``ln_pre``), overwritten at layers 1..J-1. J (`depth`) is cut to the
towers' depth for small backbones.
- IVLP: independent text and vision prompts, N(0, 0.02) except the phrase-initialised context;
  under ``default`` also PromptSRC's two L1 terms (ours; `IVLP`).
- MaPLe: vision prompts are linear maps of the text prompts, one 512 -> 768 map per layer.
- PromptSRC: IVLP plus self-regularisation: L1 of the normalised prompted text to the frozen
  CLIP's template-averaged text, L1 of the normalised image feature to the frozen image feature,
  and a KL from the zero-shot logits; then Gaussian prompt aggregation (GPA) over epochs.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from torch import nn

from specpl.config import check_choice
from specpl.frozen import CLIP_IMAGE, ClipImageFeatures
from specpl.methods.base import CONTEXT_TOKENS, DEEP_TEXT_PROMPTS, PROMPTS_IMAGE_TOWER, BuildContext, ForwardState
from specpl.methods.coop import ContextHost
from specpl.methods.registry import HOSTS
from specpl.methods.sourcing import context_sources, schedule_sources
from specpl.slots import END, PromptGroup
from specpl.vision import PromptImageEncoder

# the IVLP layout's published schedule (PromptSRC's and SpecPL's IVLP configs, PromptSRC, CasPL phase 1)
IVLP_SCHEDULE: dict[str, Any] = {"epochs": 20, "batch_size": 4, "lr": 0.0025, "optimizer": "sgd", "crop_scale": 0.08}


def deep_sources(
    config: str,
    code: str,
    clip_model: str,
    n_ctx: int,
    n_ctx_vision: int | None,
    depth: int,
    training: dict[str, Any],
) -> dict[str, str]:
    """Sources of the options and schedule (`training`) the deep hosts share, from their released
    `config` (yaml), `code` (the trainer) and `clip_model` (the per-layer prompt replacement)."""
    sources = {
        **context_sources(code),
        **schedule_sources(config, training),
        "n_ctx": f"{config} (N_CTX_TEXT {n_ctx})",
        "ctx_init": f"{config} (CTX_INIT 'a photo of a')",
        "depth": f"{config} (PROMPT_DEPTH {depth})",
        "deep_text_init": f"{clip_model} (deeper text prompts nn.init.normal_(std=0.02))",
    }
    if n_ctx_vision is not None:
        sources["n_ctx_vision"] = f"{config} (N_CTX_VISION {n_ctx_vision})"
    return sources


PROMPTSRC_REPO = "muzairkhattak/PromptSRC"
MAPLE_REPO = "muzairkhattak/multimodal-prompt-learning"


@dataclass
class DeepPromptConfig:
    n_ctx: int = 4  # text tokens per layer (set by ctx_init when given)
    n_ctx_vision: int = 4
    depth: int = 9  # J: prompted layers in each tower
    ctx_init: str = "a photo of a"
    init_std: float = 0.02
    ctx_from_template: bool = True  # start from the run's template words (see specpl.methods.coop)
    tail: str = "{}."  # the frozen text after the context, {} = the class name
    deep_text_init: str = (
        "template"  # "template": the frozen tower's own states (text starts at zero-shot); "normal": N(0, init_std)
    )


DEEP_TEXT_INITS = ("template", "normal")


def _normal(rows: int, width: int, std: float, device: torch.device) -> nn.Parameter:
    return nn.Parameter(torch.randn(rows, width, device=device) * std)


class DeepPromptHost(ContextHost):
    """Phrase-initialised text context plus deep text prompts for layers 1..J-1; subclasses say
    what goes into the image tower."""

    capabilities: ClassVar[frozenset[str]] = frozenset({CONTEXT_TOKENS, DEEP_TEXT_PROMPTS, PROMPTS_IMAGE_TOWER})

    def __init__(self, config: Any, context: BuildContext) -> None:
        super().__init__(config, context)
        vision = PromptImageEncoder(context.backbone.model)  # validates the tower; holds no state
        self.vision_width = vision.width
        self.depth = max(1, min(config.depth, self.text_encoder.depth, vision.depth))
        device = self.prompt_learner.device
        n_text, width = self.prompt_learner.n_ctx, self.text_encoder.width
        check_choice(f"{self.name}.deep_text_init", config.deep_text_init, DEEP_TEXT_INITS)
        if config.deep_text_init == "template":
            states = self.prompt_learner.context_states(self.depth)
            self.deep_text = nn.ParameterList([nn.Parameter(state) for state in states])
        else:
            self.deep_text = nn.ParameterList(
                [_normal(n_text, width, config.init_std, device) for _ in range(self.depth - 1)]
            )

    def own_text_prompts(self) -> list[PromptGroup]:
        if not len(self.deep_text):
            return []
        return [PromptGroup(list(self.deep_text), first_layer=1, insert=False, name=f"{self.name}.text")]

    def vision_tokens(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def image_prompts(self) -> list[PromptGroup]:
        return [PromptGroup(self.vision_tokens(), first_layer=0, at=END, name=f"{self.name}.vision")]


class IndependentPromptHost(DeepPromptHost):
    """Text and vision prompts learned independently (IVLP's layout; PromptSRC's backbone)."""

    def __init__(self, config: DeepPromptConfig, context: BuildContext) -> None:
        super().__init__(config, context)
        device = self.prompt_learner.device
        self.vision = nn.ParameterList(
            [_normal(config.n_ctx_vision, self.vision_width, config.init_std, device) for _ in range(self.depth)]
        )

    def vision_tokens(self) -> list[torch.Tensor]:
        return list(self.vision)


def self_regulating_losses(
    text: torch.Tensor,
    frozen_text: torch.Tensor,
    image: torch.Tensor,
    frozen_image: torch.Tensor,
    logits: torch.Tensor,
    scale: float,
) -> dict[str, torch.Tensor]:
    """PromptSRC's three terms, unweighted: L1(norm text, g0), L1(norm image, norm f0), and
    KL(zero-shot || prompted) summed over the logits and divided by their number (T = 1)."""
    text, image = F.normalize(text, dim=-1), F.normalize(image, dim=-1)
    frozen_image = F.normalize(frozen_image.to(image.dtype), dim=-1)
    frozen_text = frozen_text.to(text.dtype)
    zero_shot = scale * frozen_image @ frozen_text.t()
    kl = (
        F.kl_div(F.log_softmax(logits, dim=-1), F.log_softmax(zero_shot, dim=-1), reduction="sum", log_target=True)
        / logits.numel()
    )
    return {"text_l1": F.l1_loss(text, frozen_text), "image_l1": F.l1_loss(image, frozen_image), "kl": kl}


@dataclass
class SelfRegulationOptions:
    """PromptSRC's agreement with frozen CLIP (`self_regulating_losses`); a weight of 0 turns a term off."""

    text_l1_weight: float = 25.0  # lambda_t
    image_l1_weight: float = 10.0  # lambda_v
    kl_weight: float = 1.0
    frozen_templates: str = "promptsrc-60"  # "promptsrc-60", "openai-imagenet" (all 80) or "run" (the run's template)
    # "normalised": each template's feature normalised, then averaged (CLIP's ensembling); "raw": raw
    # features averaged, then normalised once (the released code)
    frozen_text_average: str = "normalised"

    def check_choices(self, host: str) -> None:
        """Refuse an unknown template set or average, naming `host`'s option."""
        check_choice(f"{host}.frozen_templates", self.frozen_templates, tuple(FROZEN_TEMPLATES))
        check_choice(f"{host}.frozen_text_average", self.frozen_text_average, FROZEN_TEXT_AVERAGES)

    @property
    def regulated(self) -> bool:
        return any((self.text_l1_weight, self.image_l1_weight, self.kl_weight))


@dataclass
class IVLPConfig(SelfRegulationOptions, DeepPromptConfig):
    """IVLP's options: the deep prompts, and under ``default`` PromptSRC's two L1 terms (ours)."""

    kl_weight: float = 0.0

    def __post_init__(self) -> None:
        self.check_choices("ivlp")


@dataclass
class PromptSRCConfig(SelfRegulationOptions, DeepPromptConfig):
    gpa_mean: float | None = None  # None: 0.75 of the epochs (15 of 20, the paper's)
    gpa_std: float = 1.0

    def __post_init__(self) -> None:
        self.check_choices("promptsrc")


# g0's template sets: the released code's 60 (the first 60 of the 80, as sets), all 80, or the run's own
FROZEN_TEMPLATES: dict[str, list] = {
    "promptsrc-60": list(OPENAI_IMAGENET_TEMPLATES[:60]),
    "openai-imagenet": list(OPENAI_IMAGENET_TEMPLATES),
    "run": [],
}
FROZEN_TEXT_AVERAGES = ("normalised", "raw")


class SelfRegulatedHost(IndependentPromptHost):
    """IVLP's layout learning with PromptSRC's agreement terms to frozen CLIP (`self_regulating_losses`):
    the prompted text near g0, the frozen model's text averaged over `frozen_templates`, the
    prompted image feature near the frozen one, the logits near zero-shot's. With every weight 0
    it is plain IVLP and computes no frozen feature."""

    def __init__(self, config: Any, context: BuildContext) -> None:
        super().__init__(config, context)
        self.backbone = [context.backbone]
        self.templates = FROZEN_TEMPLATES[config.frozen_templates] or [context.template.format]

    def set_classnames(self, classnames: list[str], novel: bool = False) -> None:
        super().set_classnames(classnames, novel)
        if not self.config.regulated:
            return
        model, tokenizer = self.backbone[0].model, self.backbone[0].tokenizer
        device = model.token_embedding.weight.device
        with torch.no_grad():
            per_template = torch.stack(
                [model.encode_text(tokenizer([t(c) for c in classnames]).to(device)).float() for t in self.templates]
            )
        if self.config.frozen_text_average == "normalised":
            per_template = F.normalize(per_template, dim=-1)
        self.register_buffer("frozen_text", F.normalize(per_template.mean(0), dim=-1), persistent=False)

    def frozen_inputs(self) -> list:
        return [ClipImageFeatures(self.backbone[0])] if self.config.regulated else []

    def host_losses(self, state: ForwardState) -> dict[str, torch.Tensor]:
        losses = super().host_losses(state)
        if not self.config.regulated:
            return losses
        terms = self_regulating_losses(
            state.raw_text,
            self.frozen_text,
            state.image_features,
            state.batch.require(CLIP_IMAGE, self.title),
            state.logits,
            state.logit_scale,
        )
        c = self.config
        weights = {"text_l1": c.text_l1_weight, "image_l1": c.image_l1_weight, "kl": c.kl_weight}
        losses.update({name: weight * terms[name] for name, weight in weights.items() if weight})
        return losses


# the paper values of the agreement options, for a host that has them
SELF_REGULATION_SOURCES = {
    "text_l1_weight": f"{PROMPTSRC_REPO} configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml "
    "(TEXT_LOSS_WEIGHT 25)",
    "image_l1_weight": f"{PROMPTSRC_REPO} configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml "
    "(IMAGE_LOSS_WEIGHT 10)",
    "kl_weight": f"{PROMPTSRC_REPO} trainers/promptsrc.py (the KL term enters with weight 1)",
    "frozen_templates": f"{PROMPTSRC_REPO} trainers/imagenet_templates.py (IMAGENET_TEMPLATES, 60 templates)",
    "frozen_text_average": f"{PROMPTSRC_REPO} trainers/promptsrc.py (raw features stacked, mean, then normalised)",
}


@HOSTS.register("ivlp")
class IVLP(SelfRegulatedHost):
    """IVLP with the PromptSRC/SpecPL repos' config: 4 + 4 tokens, J = 9, SGD 0.0025, batch 4, 20 epochs.

    Under ``default`` it also learns with PromptSRC's two L1 terms (weights 25 and 10, no KL; ours):
    without them IVLP traded new-class accuracy for base under a mild camera cast and ended level with
    zero-shot CLIP (bench/DEFAULTS.md, round 9). ``paper`` sets every weight to 0: the published IVLP."""

    name = "ivlp"
    title = "IVLP"
    description = "IVLP: independent deep prompts in both towers (the MaPLe paper's baseline)"
    config_class: ClassVar[type] = IVLPConfig
    training_defaults: ClassVar[dict[str, Any]] = IVLP_SCHEDULE
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        "paper": {
            "ivlp": {
                "ctx_from_template": False,
                "deep_text_init": "normal",
                "text_l1_weight": 0.0,
                "image_l1_weight": 0.0,
                "kl_weight": 0.0,
            }
        }
    }
    sources: ClassVar[dict[str, str]] = {
        **deep_sources(
            f"{PROMPTSRC_REPO} configs/trainers/IVLP/vit_b16_c2_ep20_batch4_4+4ctx.yaml",
            f"{PROMPTSRC_REPO} trainers/independentVL.py",
            f"{PROMPTSRC_REPO} clip/model.py",
            4,
            4,
            9,
            training_defaults,
        ),
        **{
            option: f"{PROMPTSRC_REPO} trainers/independentVL.py (no regularisation; ours: PromptSRC's L1 terms "
            "under default)"
            for option in ("text_l1_weight", "image_l1_weight", "kl_weight")
        },
        "frozen_templates": SELF_REGULATION_SOURCES["frozen_templates"],
        "frozen_text_average": SELF_REGULATION_SOURCES["frozen_text_average"],
    }


COUPLING_INITS = ("independent", "shared")


@dataclass
class MaPLeConfig:
    n_ctx: int = 2  # set by ctx_init: "a photo" (the first 2 tokens of "a photo of a")
    depth: int = 9
    ctx_init: str = "a photo"
    init_std: float = 0.02
    ctx_from_template: bool = True  # start from the run's template words (see specpl.methods.coop)
    tail: str = "{}."  # the frozen text after the context, {} = the class name
    deep_text_init: str = "template"  # see DeepPromptConfig
    # "independent": each layer's map drawn on its own; "shared": layers 1..J-1 start as copies of one
    coupling_init: str = "independent"

    def __post_init__(self) -> None:
        check_choice("maple.coupling_init", self.coupling_init, COUPLING_INITS)


@HOSTS.register("maple")
class MaPLe(DeepPromptHost):
    """MaPLe: vision prompt of layer l = F_l(text prompt of layer l), F_l: text width -> vision
    width (layer 0 maps the context itself). Defaults: 2 tokens from "a photo", J = 9, SGD
    0.0035, batch 4, 5 epochs."""

    name = "maple"
    title = "MaPLe"
    description = "MaPLe: coupled deep prompts, vision prompts mapped from text prompts per layer (CVPR 2023)"
    config_class: ClassVar[type] = MaPLeConfig
    training_defaults: ClassVar[dict[str, Any]] = {
        "epochs": 5,
        "batch_size": 4,
        "lr": 0.0035,
        "optimizer": "sgd",
        "crop_scale": 0.08,
    }
    # the released code learns "a photo" of "a photo of a" and keeps "of a" as frozen words
    # (trainers/maple.py: the prompt is ctx_init + class, the suffix taken from position 1 + n_ctx)
    # the released code's deeper maps are deep copies of one Linear (trainers/maple.py, _get_clones), so they
    # start equal
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        "paper": {
            "maple": {
                "ctx_from_template": False,
                "tail": "of a {}.",
                "deep_text_init": "normal",
                "coupling_init": "shared",
            }
        },
    }
    sources: ClassVar[dict[str, str]] = {
        **deep_sources(
            f"{MAPLE_REPO} configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml",
            f"{MAPLE_REPO} trainers/maple.py",
            f"{MAPLE_REPO} trainers/maple.py",
            2,
            None,
            9,
            training_defaults,
        ),
        "ctx_init": f"{MAPLE_REPO} configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml (CTX_INIT 'a photo of a', "
        "of which N_CTX 2 tokens are learned)",
        "tail": f"{MAPLE_REPO} trainers/maple.py (prompt_prefix = ctx_init; suffix from position 1 + n_ctx keeps 'of "
        "a')",
        "coupling_init": f"{MAPLE_REPO} trainers/maple.py (compound_prompt_projections = _get_clones(single_layer))",
    }

    def __init__(self, config: MaPLeConfig, context: BuildContext) -> None:
        super().__init__(config, context)
        device = self.prompt_learner.device
        linear = lambda: nn.Linear(self.text_encoder.width, self.vision_width, device=device)  # noqa: E731
        if config.coupling_init == "shared":  # layer 0's map on its own, the deeper ones copies of one
            first, deeper = linear(), linear()
            self.couplings = nn.ModuleList([first, *(copy.deepcopy(deeper) for _ in range(self.depth - 1))])
        else:
            self.couplings = nn.ModuleList([linear() for _ in range(self.depth)])

    def vision_tokens(self) -> list[torch.Tensor]:
        text = [self.prompt_learner.ctx, *self.deep_text]
        return [coupling(prompt) for coupling, prompt in zip(self.couplings, text, strict=True)]


def gpa_weights(epochs: int, mean: float, std: float) -> list[float]:
    """Gaussian prompt aggregation weights w_e ∝ N(e; mean, std) for epochs 1..E, summing to 1."""
    raw = [math.exp(-0.5 * ((e - mean) / std) ** 2) for e in range(1, epochs + 1)]
    total = sum(raw)
    return [w / total for w in raw] if total > 0 else [1.0 / epochs] * epochs


@HOSTS.register("promptsrc")
class PromptSRC(SelfRegulatedHost):
    """PromptSRC (ICCV 2023) on IVLP 4 + 4, J = 9; SGD 0.0025, batch 4, 20 epochs.

    Choices: the frozen text g0 averages the released code's 60 ImageNet templates
    (`frozen_templates="promptsrc-60"`: the first 60 of open_clip's 80 OpenAI templates, the same
    set in another order, which the average ignores); "openai-imagenet" averages all 80 and "run"
    uses the run's template alone. The average is CLIP's prompt ensembling by default (each
    template's feature normalised, averaged, normalised again); the paper preset averages the raw
    features and normalises once, as the released code does (`frozen_text_average="raw"`). GPA aggregates
    the host's own prompts only (a booster's tensors keep their last values), and for a run of E
    epochs its mean defaults to 0.75 E, the paper's 15 of 20."""

    name = "promptsrc"
    title = "PromptSRC"
    description = (
        "PromptSRC: IVLP with L1/KL self-regularisation to frozen CLIP and Gaussian prompt aggregation (ICCV 2023)"
    )
    config_class: ClassVar[type] = PromptSRCConfig
    training_defaults: ClassVar[dict[str, Any]] = IVLP_SCHEDULE
    # the released code averages the templates' raw text features and normalises once
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        "paper": {"promptsrc": {"ctx_from_template": False, "deep_text_init": "normal", "frozen_text_average": "raw"}},
    }
    sources: ClassVar[dict[str, str]] = {
        **deep_sources(
            f"{PROMPTSRC_REPO} configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml",
            f"{PROMPTSRC_REPO} trainers/promptsrc.py",
            f"{PROMPTSRC_REPO} clip/model.py",
            4,
            4,
            9,
            training_defaults,
        ),
        **SELF_REGULATION_SOURCES,
        "gpa_mean": f"{PROMPTSRC_REPO} configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml (GPA_MEAN 15 of "
        "20 epochs; ours: None scales it to 0.75 of the run's epochs)",
        "gpa_std": f"{PROMPTSRC_REPO} configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml (GPA_STD 1)",
    }

    def __init__(self, config: PromptSRCConfig, context: BuildContext) -> None:
        super().__init__(config, context)
        self._aggregated = [name for name, p in self.named_parameters() if p.requires_grad]
        for name in self._aggregated:
            self.register_buffer(_gpa_name(name), torch.zeros_like(self.get_parameter(name)))

    @torch.no_grad()
    def on_epoch_end(self, epoch: int, epochs: int) -> None:
        mean = self.config.gpa_mean if self.config.gpa_mean is not None else 0.75 * epochs
        weight = gpa_weights(epochs, mean, self.config.gpa_std)[epoch - 1]
        for name in self._aggregated:
            self.get_buffer(_gpa_name(name)).add_(self.get_parameter(name).detach(), alpha=weight)

    @torch.no_grad()
    def finalise(self) -> None:
        """The final prompts are the Gaussian-weighted aggregate of every epoch's."""
        for name in self._aggregated:
            self.get_parameter(name).copy_(self.get_buffer(_gpa_name(name)))


def _gpa_name(parameter: str) -> str:
    return "gpa_" + parameter.replace(".", "__")
