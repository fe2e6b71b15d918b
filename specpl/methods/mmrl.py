"""MMRL (Guo et al., CVPR 2025): a shared representation space projected into both towers.

Documented in docs/methods/mmrl.md (the released code): R (K x d_r, N(0, 0.02^2)) is mapped per
layer by aligners Linear(d_r -> vision width) and Linear(d_r -> text width), all copies of one
initial Linear; the K tokens are inserted right after [CLS] / [SOS] before the first representation
layer and overwritten before each later one (blocks 6-12 of ViT-B/16: the last `rep_layers`
blocks, cut to the tower's depth), with no positional embedding. The text is the fixed template.
- Two image outputs: f_c = ln_post([CLS]) @ proj (the class branch) and f_r = mean of
  ln_post(rep tokens) @ proj_rep (the representation branch; proj_rep random, std 768^-0.5).
- Logits at a fixed scale 100: alpha * cos(f_c, g) + (1 - alpha) * cos(f_r, g) for trained
  classes; classes marked novel go through the class branch alone.
- Loss: alpha CE(class) + (1 - alpha) CE(rep) + lambda (1 - mean cos(f_c, f0)) + lambda (1 - mean
  cos(g, g0)), f0 the frozen image feature of the same view, g0 the frozen template text; lambda
  per dataset (`REG_WEIGHTS`), d_r 2048 on EuroSAT.
With SpecPL (the released MMRL + SpecPL code): refined text feeds the representation branch only, the regulariser and
the class branch keep raw text, L_sem reads the class branch's logits, FiLM acts on f_c, and the
bank starts from 10 batches in both presets (the released code's ATTR_INIT_BATCHES for MMRL).
Choice (an ambiguity of the released code): the frozen f0 and g0 come from a pass through the same frozen towers with no
representation tokens, which replaces the reference's second model copy exactly.

The default preset starts MMRL near zero-shot CLIP, where the released init starts it far away
(on the demo set two of 64 test images flip before any step on some seeds): R is drawn at std 1e-4
and the aligners' biases start at zero, so the inserted tokens are nearly zero and every block's
LayerNorm turns them into the same fixed token. And the representation branch is a residual on the
class branch (ours, `rep_branch="residual"`): f_r = f_c + mean ln_post(rep tokens) @ proj_rep with
proj_rep starting at zero, so at step 0 the fused logits are the class branch's, not 30 % of a
classifier that has learned nothing, and the rep tokens learn what the class feature lacks rather
than a second classifier from scratch (measured in docs/defaults.md, round 10: overcast +0.7 -> +13.5
HM over zero-shot, no cast -23.3 -> -3.7). `proj_rep` gets its gradient from the first step, R and
the aligners through it from the second (through the class branch from the first). The `paper`
preset keeps the released init and branch (std 0.02, PyTorch's Linear init, a separate branch with
a random `proj_rep`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Sequence, get_args

import torch
import torch.nn.functional as F
from torch import nn

from specpl.config import check_choice
from specpl.frozen import CLIP_IMAGE, ClipImageFeatures
from specpl.methods.base import FEATURES, PROMPTS_IMAGE_TOWER, BuildContext, ForwardState, Host, cosine_logits
from specpl.methods.registry import HOSTS
from specpl.methods.sourcing import schedule_sources
from specpl.methods.templates import template_text_features
from specpl.slots import PromptGroup
from specpl.text import TextHook
from specpl.vision import PromptImageEncoder, VisionOutput

REP = "rep"
SCALE = 100.0
# lambda per dataset (the released trainers/config.py; CoOp's dataset names, see specpl.datasets); others use
# `reg_weight`
REG_WEIGHTS = {
    "stanford_cars": 7.0,
    "fgvc_aircraft": 6.0,
    "sun397": 6.0,
    "dtd": 6.0,
    "food101": 5.0,
    "oxford_flowers": 4.0,
    "ucf101": 3.0,
    "imagenet": 0.5,
    "caltech101": 0.5,
    "oxford_pets": 0.2,
    "eurosat": 0.01,
}
WIDE_REP_DATASETS = {"eurosat": 2048}
AlignerBiasInit = Literal["zero", "pytorch"]  # Literals, so forms offer the choices
ProjRepInit = Literal["zero", "clip", "normal"]
RepBranch = Literal["residual", "separate"]
ALIGNER_BIAS_INITS: tuple[str, ...] = get_args(AlignerBiasInit)
PROJ_REP_INITS: tuple[str, ...] = get_args(ProjRepInit)
REP_BRANCHES: tuple[str, ...] = get_args(RepBranch)


@dataclass
class MMRLConfig:
    n_rep_tokens: int = 5  # K
    rep_dim: int | None = None  # d_r; None: 512, or 2048 on EuroSAT
    rep_layers: int = 7  # the last blocks that carry the tokens (6-12 of 12)
    alpha: float = 0.7
    reg_weight: float | None = None  # lambda; None: the dataset's (REG_WEIGHTS), else reg_weight_fallback
    reg_weight_fallback: float = (
        0.5  # lambda for a dataset outside REG_WEIGHTS (the paper preset: the released yaml's 1.0)
    )
    init_std: float = 1e-4  # std of R; the paper preset: the released 0.02
    aligner_bias_init: AlignerBiasInit = "zero"  # "zero": tokens start near zero; "pytorch": Linear's init (released)
    # "residual": f_r = f_c + mean ln_post(rep tokens) @ proj_rep; "separate": f_r without f_c (released)
    rep_branch: RepBranch = "residual"
    # "zero": f_r starts as f_c (residual only); "clip": a copy of CLIP's projection; "normal": std width^-0.5
    proj_rep_init: ProjRepInit = "zero"
    template: str | None = None  # None: the run's (the dataset's) hand-crafted template


def mmrl_logits(
    class_features: torch.Tensor,
    rep_features: torch.Tensor,
    raw_text: torch.Tensor,
    refined_text: torch.Tensor,
    alpha: float,
) -> torch.Tensor:
    """alpha * 100 cos(f_c, g) + (1 - alpha) * 100 cos(f_r, g~) (g~ = g without a booster)."""
    return alpha * cosine_logits(class_features, raw_text, SCALE) + (1 - alpha) * cosine_logits(
        rep_features, refined_text, SCALE
    )


def mmrl_regulariser(
    class_features: torch.Tensor, frozen_image: torch.Tensor, text: torch.Tensor, frozen_text: torch.Tensor
) -> torch.Tensor:
    """(1 - mean_b cos(f_c, f0)) + (1 - mean_c cos(g_c, g0_c)), before the shared weight lambda."""
    image_term = 1 - F.cosine_similarity(class_features, frozen_image.to(class_features.dtype), dim=-1).mean()
    text_term = 1 - F.cosine_similarity(text, frozen_text.to(text.dtype), dim=-1).mean()
    return image_term + text_term


def _rep_projection(init: str, vision: PromptImageEncoder, embed_dim: int, device: torch.device) -> torch.Tensor:
    """`proj_rep`'s initial value: zero, a copy of the image tower's own projection (the identity for
    a tower without one), or the released random draw."""
    if init == "zero":
        return torch.zeros(vision.width, embed_dim, device=device)
    if init == "normal":
        return torch.randn(vision.width, embed_dim, device=device) * vision.width**-0.5
    if vision.visual.proj is None:
        return torch.eye(vision.width, embed_dim, device=device)
    return vision.visual.proj.detach().clone()


MMRL_CONFIG = "yunncheng/MMRL configs/trainers/MMRL/vit_b16.yaml"


@HOSTS.register("mmrl")
class MMRL(Host):
    name = "mmrl"
    title = "MMRL"
    description = "MMRL: a shared representation space in both towers, class and representation branches (CVPR 2025)"
    config_class: ClassVar[type] = MMRLConfig
    capabilities: ClassVar[frozenset[str]] = frozenset({PROMPTS_IMAGE_TOWER})
    fixed_logit_scale: ClassVar[float | None] = SCALE
    training_defaults: ClassVar[dict[str, Any]] = {
        "epochs": 10,
        "batch_size": 4,
        "lr": 1e-3,
        "optimizer": "adamw",
        "crop_scale": 0.5,
    }
    # the released config (configs/trainers/MMRL/vit_b16.yaml) sets REG_WEIGHT 1.0; the per-dataset table overrides it
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        "paper": {
            "mmrl": {
                "reg_weight_fallback": 1.0,
                "init_std": 0.02,
                "aligner_bias_init": "pytorch",
                "rep_branch": "separate",
                "proj_rep_init": "normal",
            },
            "train@imagenet": {"batch_size": 32, "epochs": 5},
        },
    }
    sources: ClassVar[dict[str, str]] = {
        "n_rep_tokens": f"{MMRL_CONFIG} (N_REP_TOKENS 5)",
        "rep_dim": "yunncheng/MMRL trainers/config.py (REP_DIM 512; EuroSAT 2048)",
        "rep_layers": f"{MMRL_CONFIG} (REP_LAYERS 6-12)",
        "alpha": f"{MMRL_CONFIG} (ALPHA 0.7)",
        "reg_weight": "yunncheng/MMRL trainers/config.py (the per-dataset REG_WEIGHT table)",
        "reg_weight_fallback": f"{MMRL_CONFIG} (REG_WEIGHT 1.0, for a dataset outside the table)",
        "init_std": "yunncheng/MMRL trainers/mmrl.py (nn.init.normal_(std=0.02) of the representation tokens)",
        "aligner_bias_init": "yunncheng/MMRL trainers/mmrl.py (the aligners are nn.Linear with PyTorch's init)",
        "rep_branch": "yunncheng/MMRL clip/model_mmrl.py (f_r from the representation tokens alone)",
        "proj_rep_init": "yunncheng/MMRL clip/model_mmrl.py (proj_rep drawn at random, std width^-0.5)",
        "template": "yunncheng/MMRL trainers/mmrl.py (the dataset's hand-crafted template)",
        **schedule_sources(MMRL_CONFIG, training_defaults, crop=f"{MMRL_CONFIG} (RRCROP_SCALE (0.5, 1.0))"),
        "train@imagenet.batch_size": "yunncheng/MMRL configs/trainers/MMRL/vit_b16_imagenet.yaml (BATCH_SIZE 32)",
        "train@imagenet.epochs": "yunncheng/MMRL configs/trainers/MMRL/vit_b16_imagenet.yaml (MAX_EPOCH 5)",
    }

    def __init__(self, config: MMRLConfig, context: BuildContext) -> None:
        if config.rep_dim is None:
            config.rep_dim = WIDE_REP_DATASETS.get(context.dataset or "", 512)
        if config.reg_weight is None:
            config.reg_weight = REG_WEIGHTS.get(context.dataset or "", config.reg_weight_fallback)
        check_choice("mmrl.aligner_bias_init", config.aligner_bias_init, ALIGNER_BIAS_INITS)
        check_choice("mmrl.proj_rep_init", config.proj_rep_init, PROJ_REP_INITS)
        check_choice("mmrl.rep_branch", config.rep_branch, REP_BRANCHES)
        if config.proj_rep_init == "zero" and config.rep_branch == "separate":
            raise ValueError(
                "mmrl.proj_rep_init 'zero' needs mmrl.rep_branch 'residual': "
                "a separate representation branch with a zero projection has no feature to classify with; "
                "with mmrl.rep_branch 'separate' set mmrl.proj_rep_init to 'clip' or 'normal'"
            )
        super().__init__(config, context)
        self.backbone = [context.backbone]
        self.template = config.template or context.template
        vision = PromptImageEncoder(context.backbone.model)
        layers = max(1, min(config.rep_layers, vision.depth, self.text_encoder.depth))
        self.first_vision_layer, self.first_text_layer = vision.depth - layers, self.text_encoder.depth - layers
        device = context.backbone.model.token_embedding.weight.device
        self.representation = nn.Parameter(
            torch.randn(config.n_rep_tokens, config.rep_dim, device=device) * config.init_std
        )
        vision_aligner = nn.Linear(config.rep_dim, vision.width, device=device)
        text_aligner = nn.Linear(config.rep_dim, self.text_encoder.width, device=device)
        if config.aligner_bias_init == "zero":
            nn.init.zeros_(vision_aligner.bias)
            nn.init.zeros_(text_aligner.bias)
        self.vision_aligners = nn.ModuleList(
            [copy.deepcopy(vision_aligner) for _ in range(layers)]
        )  # identical at init, as released
        self.text_aligners = nn.ModuleList([copy.deepcopy(text_aligner) for _ in range(layers)])
        self.proj_rep = nn.Parameter(_rep_projection(config.proj_rep_init, vision, context.embed_dim, device))
        self.image_encoder = [vision]

    def image_prompts(self) -> list[PromptGroup]:
        tokens = [aligner(self.representation) for aligner in self.vision_aligners]
        return [PromptGroup(tokens, first_layer=self.first_vision_layer, name=REP)]

    def own_text_prompts(self) -> list[PromptGroup]:
        tokens = [aligner(self.representation) for aligner in self.text_aligners]
        return [PromptGroup(tokens, first_layer=self.first_text_layer, name=REP)]

    def image_outputs(self, output: VisionOutput) -> dict[str, torch.Tensor]:
        rep = self.image_encoder[0].project_tokens(output.group_tokens(REP), self.proj_rep).mean(dim=1)
        if self.config.rep_branch == "residual":
            rep = output.pooled + rep
        return {FEATURES: output.pooled, REP: rep}

    def set_classnames(self, classnames: list[str], novel: bool = False) -> None:
        tokens = self.backbone[0].tokenizer([self.template.format(c) for c in classnames])
        prefix, suffix, eot = self.text_encoder.split_tokens(tokens)
        self.register_buffer("text_prefix", prefix.float(), persistent=False)
        self.register_buffer("text_suffix", suffix.float(), persistent=False)
        self.register_buffer("text_eot", eot, persistent=False)
        self.register_buffer(
            "frozen_text", template_text_features(self.backbone[0], self.template, classnames), persistent=False
        )
        self.classnames, self.novel = list(classnames), novel

    def encode_text(
        self,
        image_features: torch.Tensor | None = None,
        groups: Sequence[PromptGroup] = (),
        hooks: Sequence[TextHook] = (),
    ) -> torch.Tensor:
        groups = [*self.own_text_prompts(), *groups]
        return self.text_encoder.forward_shared_prefix(
            self.text_prefix, self.text_suffix, self.text_eot, groups, hooks
        )[0]

    def logits(
        self, image: dict[str, torch.Tensor], raw_text: torch.Tensor, refined_text: torch.Tensor, scale: float
    ) -> torch.Tensor:
        if self.novel:
            return cosine_logits(image[FEATURES], raw_text, SCALE)
        return mmrl_logits(image[FEATURES], image[REP], raw_text, refined_text, self.config.alpha)

    def anchor_logits(self, image: dict[str, torch.Tensor], raw_text: torch.Tensor, scale: float) -> torch.Tensor:
        return cosine_logits(image[FEATURES], raw_text, SCALE)

    def frozen_inputs(self) -> list:
        return [ClipImageFeatures(self.backbone[0])]

    def host_losses(self, state: ForwardState) -> dict[str, torch.Tensor]:
        from specpl.methods.base import weighted_cross_entropy

        labels, weights, alpha = state.batch.labels, state.sample_weights, self.config.alpha
        class_logits = cosine_logits(state.image[FEATURES], state.raw_text, SCALE)
        rep_logits = cosine_logits(state.image[REP], state.refined_text, SCALE)
        regulariser = mmrl_regulariser(
            state.image[FEATURES], state.batch.require(CLIP_IMAGE, "MMRL"), state.raw_text, self.frozen_text
        )
        return {
            "cls": alpha * weighted_cross_entropy(class_logits, labels, weights),
            "rep": (1 - alpha) * weighted_cross_entropy(rep_logits, labels, weights),
            "reg": self.config.reg_weight * regulariser,
        }
