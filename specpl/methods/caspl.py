"""CasPL: Cascade Prompt Learning (ECCV 2024), in two phases (docs/methods/caspl.md; §8 of its spec, the
released code, overrides the paper where they differ).

Phase 1, the host ``caspl-boost``: deep boosting prompts in IVLP's layout (8 text + 8 vision
tokens per layer, depth 12 cut to the towers, N(0, 0.02) init; SGD 0.0025, batch 4, 20 epochs;
batch 128 on ImageNet)
learned by distilling a larger frozen teacher CLIP's zero-shot logits on unlabeled images:
L = T^2 * KL(softmax(f_T / T) || softmax(f_S / T)), summed over classes and averaged over the
batch (``batchmean``), T = 1. Labels are never read.
- Teacher: any open_clip model, vanilla, with one hand-crafted template (the run's template:
  the dataset's own for a registered benchmark, as in the spec). By default OpenAI's ViT-L-14;
  for the embedded world CLIP student, the embedded larger world CLIP
  (``assets/world-clip-large``), so the method runs offline. The teacher is loaded only to train
  (never at inference or when a bundle is loaded), and its logits are a named frozen input
  (``caspl_teacher``), so the feature cache computes them once per image view.
- Unlabeled images: the run's training images, labels unused. The paper (and the released code)
  uses every training image of *all* classes with all class names: that is transductive toward the
  new classes of a base-to-new split (their images and names are seen in phase 1). For a
  base-classes-only phase 1, use the data config's ``subsample="base"``. The full training set,
  as the paper uses, is ``shots=None``.
- One phase-1 bundle serves every host: it is the ``boost_bundle`` input of phase 2.

Phase 2, the booster ``caspl``: the frozen boosting prompts of a phase-1 bundle (buffers, never
trained; they are saved in the phase-2 bundle, which is therefore self-contained) cascaded with
the host's learnable prompts, on CoOp, CoCoOp, MaPLe and PromptSRC. In both towers the boosting
group is inserted at layer 0 and overwritten with its own frozen tokens at every later layer it
has. The hosts keep their own losses; PromptSRC's frozen reference stays vanilla CLIP (the
released code's ``zero_shot_model``), since its regularisers read the bare backbone.

Phase-2 host settings: the ``paper`` preset runs each host with the configuration the released
scripts train the CasPL student with (`CasPL.host_presets`): 8 random context tokens on CoOp
(50 epochs) and CoCoOp, 8 tokens at depth 12 on MaPLe and 8 + 8 at depth 12 on PromptSRC, each
with its host's published schedule. The ``default`` preset keeps the host's own options.

Choices and deviations (written down as the spec asks):
- Text order: ``[SOS][adapt][boost][class]`` on every host, as in the paper and the released code:
  the boosting group is anchored at the end of the text prefix (``at="end"``), after the host's
  context and right before the class tokens.
- Text positions (`text_positions`): ``"sequence"``, in both presets, is the released code's
  layout, one token sequence with CLIP's positional embedding added along it: the layer-0
  boosting tokens take the positions after the host's context and the class tokens shift by L
  (`specpl.slots.PromptGroup.in_sequence`). ``"phase-one"`` is the layout this module used first:
  the boosting tokens carry positions 1..L, where they sat in phase 1, and the class keeps the
  host's positions. No measurement favoured it (the text features differ, cosine about 0.993), so
  the default follows the released code; a phase-2 bundle written before the option existed
  was trained with it and is rebuilt with it (`CasPL.settle_options`).
- Vision order: the boosting tokens follow the host's (``[..., adapt, boost]``, not the paper's
  ``[..., boost, adapt]``). Prompt tokens carry no positional embedding and attention is
  permutation-equivariant, so the order changes no feature (beyond float summation order).
- The teacher sees the student's augmented view, resampled to its own resolution and
  normalisation when they differ.
- A user's folder of unlabeled images is an input too: ``DataConfig.unlabeled_root`` (CLI
  ``--unlabeled DIR``) trains phase 1 on it, with the dataset's class names for the teacher.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from specpl.backbone import EMBEDDED_TAG, Backbone, load_backbone
from specpl.config import BackboneConfig, check_choice
from specpl.methods.base import Booster, BuildContext, ForwardState
from specpl.methods.deep import IVLP_SCHEDULE, IndependentPromptHost
from specpl.methods.registry import BOOSTERS, HOSTS
from specpl.methods.zeroshot import template_text_features
from specpl.slots import END, PromptGroup
from specpl.vision import PromptImageEncoder

# what other modules (the benchmarks, the app) may import from this booster
__all__ = [
    "PHASE_ONE",
    "CasPL",
    "CasPLBoost",
    "CasPLBoostConfig",
    "CasPLConfig",
    "distillation_loss",
    "load_teacher",
    "read_boosting_prompts",
    "resolve_teacher",
]

TEACHER_LOGITS = "caspl_teacher"
DEFAULT_TEACHER = ("ViT-L-14", "openai")
PHASE_ONE = "caspl-boost"
RANDOM_INIT = ""  # teacher_pretrained value for a randomly initialised teacher (tests only)
SEQUENCE, PHASE_ONE_POSITIONS = "sequence", "phase-one"  # CasPLConfig.text_positions
RELEASED = "Martinser/CasPL"  # the authors' released code, where the sources below point
# the configuration files its base-to-new scripts train with (train_script/*/train_base_to_new.py:22-24;
# the ImageNet one on line 23)
BOOST_CONFIG = f"{RELEASED} configs/trainers/CasPL/vit_b16_c2_ep20_batch4_8+8ctx_l12.yaml"
BOOST_IMAGENET_CONFIG = f"{RELEASED} configs/trainers/CasPL/vit_b16_c2_ep20_batch128_lr0025_8+8ctx_l12.yaml"
COOP_CONFIG = f"{RELEASED} configs/trainers/CasPL_CoOp/vit_b16_ep50.yaml"
COCOOP_CONFIG = f"{RELEASED} configs/trainers/CasPL_CoCoOp/vit_b16_c8_ep10_batch1.yaml"
MAPLE_CONFIG = f"{RELEASED} configs/trainers/CasPL_MaPLe/vit_b16_c8_ep5_batch4_8ctx_l12.yaml"
PROMPTSRC_CONFIG = f"{RELEASED} configs/trainers/CasPL_PromptSRC/vit_b16_c2_ep20_batch4_8+8ctx_l12.yaml"
ONLY_FOUR = "(the released learners use CTX_INIT only up to 4 tokens; 8 start random)"


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), summed over classes and averaged over the
    batch (``batchmean``), or (1/B) sum_i w_i KL_i with per-sample weights (as `weighted_cross_entropy`)."""
    log_student = F.log_softmax(student / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher.to(student.dtype) / temperature, dim=-1)
    per_sample = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=-1)
    if weights is None:
        return per_sample.mean() * temperature**2
    return (per_sample * weights).mean() * temperature**2


def resolve_teacher(student: BackboneConfig, teacher: str | None, pretrained: str | None) -> tuple[str, str]:
    """(model, pretrained) of the teacher: the options given, else ViT-L-14 ``openai``, or the
    embedded larger world CLIP when the student is the embedded world CLIP."""
    from specpl import defaults

    if teacher is None:
        teacher, default_pretrained = (
            (defaults.WORLD_TEACHER_MODEL, EMBEDDED_TAG) if student.name == defaults.WORLD_MODEL else DEFAULT_TEACHER
        )
        return teacher, default_pretrained if pretrained is None else pretrained
    if pretrained is None:
        pretrained = EMBEDDED_TAG if teacher == defaults.WORLD_TEACHER_MODEL else "openai"
    return teacher, pretrained


def load_teacher(name: str, pretrained: str, device: torch.device) -> Backbone:
    """The frozen teacher CLIP; `pretrained` is an open_clip tag, a local file, ``embedded`` (the
    world teacher shipped in assets/) or ``""`` (random init). Unavailable weights raise
    `specpl.backbone.BackboneUnavailable` saying where we looked and how to pass a local file."""
    from specpl import defaults

    if pretrained == EMBEDDED_TAG:
        if name != defaults.WORLD_TEACHER_MODEL:
            raise ValueError(
                f"caspl-boost: only {defaults.WORLD_TEACHER_MODEL} has embedded teacher weights, not {name}"
            )
        config = defaults.world_teacher_config()
    else:
        config = BackboneConfig(name=name, pretrained=pretrained or None)
    return load_backbone(config, device=device)


class TeacherLogits:
    """The frozen teacher's zero-shot logits (B, C) of each view: its own logit scale times the
    cosine of its image feature with its template text of every class."""

    name = TEACHER_LOGITS
    needs_items = False

    def __init__(self, teacher: Backbone, student: Backbone, classnames: list[str], template: str, label: str) -> None:
        self.teacher, self.student = teacher, student
        self.text = F.normalize(template_text_features(teacher, template, classnames), dim=-1)
        digest = hashlib.sha256(json.dumps([template, classnames]).encode()).hexdigest()[:16]
        self.signature = f"{label}|{digest}"

    def to_teacher_input(self, images: torch.Tensor) -> torch.Tensor:
        """The student's preprocessed view as the teacher's preprocessing would give it."""
        same_norm = self.teacher.normalization == self.student.normalization
        if same_norm and self.teacher.image_size == images.shape[-1] == images.shape[-2]:
            return images
        mean, std = (torch.tensor(v, device=images.device).view(1, 3, 1, 1) for v in self.student.normalization)
        pixels = (images.float() * std + mean).clamp(0, 1)
        size = self.teacher.image_size
        if pixels.shape[-2:] != (size, size):
            pixels = F.interpolate(
                pixels, size=(size, size), mode="bicubic", antialias=True, align_corners=False
            ).clamp(0, 1)
        mean, std = (torch.tensor(v, device=images.device).view(1, 3, 1, 1) for v in self.teacher.normalization)
        return ((pixels - mean) / std).to(images.dtype)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        model = self.teacher.model
        features = model.encode_image(self.to_teacher_input(images).to(model.logit_scale.device))
        logits = (
            model.logit_scale.exp().float() * F.normalize(features.float(), dim=-1) @ self.text.to(features.device).t()
        )
        return logits.to(images.device)


@dataclass
class CasPLBoostConfig:
    n_ctx: int = 8  # L text tokens per layer
    n_ctx_vision: int = 8
    depth: int = 12  # cut to the towers' depth
    ctx_init: str = ""  # "": N(0, init_std), as the released code
    init_std: float = 0.02
    ctx_from_template: bool = False  # phase 1 learns boosting prompts from random, as the released code
    tail: str = "{}."
    deep_text_init: str = "normal"  # random deep prompts too (specpl.methods.deep.DeepPromptConfig)
    teacher: str | None = None  # None: ViT-L-14 (openai), or world-clip-large for the world CLIP student
    teacher_pretrained: str | None = None  # a tag, a local file, "embedded"; None: the teacher's default
    teacher_template: str | None = None  # None: the run's (the dataset's) template
    temperature: float = 1.0


@HOSTS.register(PHASE_ONE)
class CasPLBoost(IndependentPromptHost):
    """CasPL phase 1: IVLP-layout boosting prompts distilled from a frozen teacher (see the module
    docstring). Its bundle is phase 2's ``boost_bundle``; used alone it is a zero-shot model."""

    name = PHASE_ONE
    title = "CasPL phase 1"
    description = (
        "CasPL phase 1: deep boosting prompts distilled from a larger frozen CLIP on unlabeled images (ECCV 2024)"
    )
    config_class: ClassVar[type] = CasPLBoostConfig
    accepts_boosters = False
    learns_from_labels = False
    training_defaults: ClassVar[dict[str, Any]] = IVLP_SCHEDULE
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {"paper": {"train@imagenet": {"batch_size": 128}}}
    sources: ClassVar[dict[str, str]] = {
        "n_ctx": f"{BOOST_CONFIG}:35",
        "n_ctx_vision": f"{BOOST_CONFIG}:34",
        "depth": f"{BOOST_CONFIG}:38-39",
        "ctx_init": f"{RELEASED} trainers/caspl.py:107-120 {ONLY_FOUR}",
        "init_std": f"{RELEASED} trainers/caspl.py:119",
        "ctx_from_template": f"{RELEASED} trainers/caspl.py:107-120 (random context, no template words)",
        "tail": f"{RELEASED} trainers/caspl.py:129",
        "deep_text_init": f"{RELEASED} clip/model.py:234-235",
        "teacher": f"{RELEASED} train.py:145 (ViT-L/14)",
        "teacher_pretrained": f"{RELEASED} trainers/caspl.py:42-45 (OpenAI weights through clip._download)",
        "teacher_template": f"{RELEASED} trainers/caspl.py:150 (CUSTOM_TEMPLATES, the dataset's template)",
        "temperature": f"{RELEASED} train.py:146",
        "train.epochs": f"{BOOST_CONFIG}:19",
        "train.batch_size": f"{BOOST_CONFIG}:4",
        "train.lr": f"{BOOST_CONFIG}:18",
        "train.optimizer": f"{BOOST_CONFIG}:17",
        "train.crop_scale": f"{BOOST_CONFIG}:14 (Dassl's random_resized_crop, scale 0.08-1)",
        "train@imagenet.batch_size": f"{BOOST_IMAGENET_CONFIG}:4",
    }

    def __init__(self, config: CasPLBoostConfig, context: BuildContext) -> None:
        super().__init__(config, context)
        self.context = [context]  # a list keeps it out of the module tree
        self.teacher_name, self.teacher_pretrained = resolve_teacher(
            context.backbone.config, config.teacher, config.teacher_pretrained
        )
        self.teacher_template = config.teacher_template or context.template
        self._teacher: list[Backbone] = []  # loaded on first use: inference never needs it

    def resolved_options(self) -> dict[str, Any]:
        options = super().resolved_options()
        options.update(teacher=self.teacher_name, teacher_pretrained=self.teacher_pretrained)
        return options

    def teacher(self) -> Backbone:
        if not self._teacher:
            device = self.context[0].backbone.model.token_embedding.weight.device
            self._teacher.append(
                load_teacher(
                    self.teacher_name, self.teacher_pretrained, torch.device("cpu") if device.type == "meta" else device
                )
            )
        return self._teacher[0]

    def frozen_inputs(self) -> list:
        label = f"{self.teacher_name}:{self.teacher_pretrained}"
        return [TeacherLogits(self.teacher(), self.context[0].backbone, self.classnames, self.teacher_template, label)]

    def host_losses(self, state: ForwardState) -> dict[str, torch.Tensor]:
        teacher = state.batch.require(TEACHER_LOGITS, "caspl-boost")
        return {"kd": distillation_loss(state.logits, teacher, self.config.temperature, state.sample_weights)}


@dataclass
class CasPLConfig:
    boost_bundle: str | None = None  # folder of a caspl-boost (phase 1) bundle
    # recorded at build time, so a phase-2 bundle (which holds the boosting prompts) loads without
    # the phase-1 folder: [layers, tokens, width] of each tower's boosting prompts
    boost_text_shape: list[int] | None = None
    boost_vision_shape: list[int] | None = None
    # "sequence": the released layout (boosting tokens at the positions after the host's context,
    # the class shifted by L); "phase-one": the boosting tokens at positions 1..L, the class at the host's
    text_positions: str = SEQUENCE

    def __post_init__(self) -> None:
        check_choice("caspl.text_positions", self.text_positions, (SEQUENCE, PHASE_ONE_POSITIONS))


def read_boosting_prompts(folder: str | Path, backbone: Backbone) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(text, vision) boosting prompts per layer from a caspl-boost bundle, checked against the
    run's backbone."""
    from specpl.bundle import read_bundle

    tensors, config = read_bundle(Path(folder))
    where = Path(folder) / "config.json"
    if config["method"].get("host") != PHASE_ONE:
        raise ValueError(
            f"{where}: caspl.boost_bundle must be a {PHASE_ONE} (phase 1) bundle, this one is "
            f"{config['method'].get('host')!r}"
        )
    trained_on = (config["backbone"].get("name"), config["backbone"].get("pretrained"))
    if trained_on != (backbone.config.name, backbone.config.pretrained):
        raise ValueError(
            f"{where}: the boosting prompts were learned on {trained_on[0]} ({trained_on[1]}), this run's backbone is "
            f"{backbone.describe()}"
        )
    prefix = "host."
    text = [tensors[f"{prefix}prompt_learner.ctx"]]
    text += [tensors[f"{prefix}deep_text.{i}"] for i in range(len(tensors)) if f"{prefix}deep_text.{i}" in tensors]
    vision = [tensors[f"{prefix}vision.{i}"] for i in range(len(tensors)) if f"{prefix}vision.{i}" in tensors]
    return text, vision


@BOOSTERS.register("caspl")
class CasPL(Booster):
    """CasPL phase 2: a phase-1 bundle's boosting prompts, frozen, cascaded with the host's
    learnable prompts (see the module docstring for the layout)."""

    name = "caspl"
    title = "CasPL"
    description = (
        "CasPL phase 2: frozen boosting prompts from a caspl-boost bundle cascaded with the host's prompts (ECCV 2024)"
    )
    config_class: ClassVar[type] = CasPLConfig
    supported_hosts: ClassVar[tuple[str, ...] | None] = ("coop", "cocoop", "maple", "promptsrc")
    published_hosts: ClassVar[tuple[str, ...]] = supported_hosts  # every one is in the paper's main table
    # the host configurations the released base-to-new scripts train the phase-2 student with
    # (8 random context tokens: the released learners use CTX_INIT only up to 4 tokens)
    host_presets: ClassVar[dict[str, dict[str, dict[str, dict[str, Any]]]]] = {
        "paper": {
            "coop": {"coop": {"n_ctx": 8, "ctx_init": ""}, "train": {"epochs": 50, "batch_size": 32, "lr": 0.002}},
            "cocoop": {"cocoop": {"n_ctx": 8, "ctx_init": ""}, "train": {"epochs": 10, "batch_size": 1, "lr": 0.002}},
            "maple": {
                "maple": {"n_ctx": 8, "ctx_init": "", "tail": "{}.", "depth": 12},
                "train": {"epochs": 5, "batch_size": 4, "lr": 0.0035},
            },
            "promptsrc": {
                "promptsrc": {"n_ctx": 8, "n_ctx_vision": 8, "ctx_init": "", "depth": 12},
                "train": {"epochs": 20, "batch_size": 4, "lr": 0.0025},
            },
        },
    }
    sources: ClassVar[dict[str, str]] = {
        "boost_bundle": f"{RELEASED} scripts/caspl/coop/main_student.sh:31-34 (phase 2 loads phase 1's epoch 20)",
        "boost_text_shape": "ours: recorded at build so a phase-2 bundle loads without the phase-1 folder",
        "boost_vision_shape": "ours: recorded at build so a phase-2 bundle loads without the phase-1 folder",
        "text_positions": f"{RELEASED} trainers/caspl_coop.py:52,160-172 (one sequence, positions added along it)",
    }
    host_sources: ClassVar[dict[str, dict[str, str]]] = {
        "coop": {
            "coop.n_ctx": f"{COOP_CONFIG}:33",
            "coop.ctx_init": f"{COOP_CONFIG}:34 and trainers/caspl_coop.py:101-116",
            "train.epochs": f"{COOP_CONFIG}:18",
            "train.batch_size": f"{COOP_CONFIG}:3",
            "train.lr": f"{COOP_CONFIG}:17",
        },
        "cocoop": {
            "cocoop.n_ctx": f"{COCOOP_CONFIG}:33",
            "cocoop.ctx_init": f"{COCOOP_CONFIG}:34 and trainers/caspl_cocoop.py:92-96",
            "train.epochs": f"{COCOOP_CONFIG}:18",
            "train.batch_size": f"{COCOOP_CONFIG}:3",
            "train.lr": f"{COCOOP_CONFIG}:17",
        },
        "maple": {
            "maple.n_ctx": f"{MAPLE_CONFIG}:33",
            "maple.ctx_init": f"{RELEASED} trainers/caspl_maple.py:89-103 {ONLY_FOUR}",
            "maple.tail": f"{RELEASED} trainers/caspl_maple.py:130 (the class name and '.' after the context)",
            "maple.depth": f"{MAPLE_CONFIG}:36",
            "train.epochs": f"{MAPLE_CONFIG}:18",
            "train.batch_size": f"{MAPLE_CONFIG}:3",
            "train.lr": f"{MAPLE_CONFIG}:17",
        },
        "promptsrc": {
            "promptsrc.n_ctx": f"{PROMPTSRC_CONFIG}:35",
            "promptsrc.n_ctx_vision": f"{PROMPTSRC_CONFIG}:34",
            "promptsrc.ctx_init": f"{RELEASED} trainers/caspl_promptsrc.py:100-114 {ONLY_FOUR}",
            "promptsrc.depth": f"{PROMPTSRC_CONFIG}:38-39",
            "train.epochs": f"{PROMPTSRC_CONFIG}:19",
            "train.batch_size": f"{PROMPTSRC_CONFIG}:4",
            "train.lr": f"{PROMPTSRC_CONFIG}:18",
        },
    }

    def __init__(self, config: CasPLConfig, context: BuildContext) -> None:
        super().__init__(config, context)
        text_width = int(context.backbone.model.token_embedding.weight.shape[1])
        vision = PromptImageEncoder(context.backbone.model)
        device = context.backbone.model.token_embedding.weight.device
        found = config.boost_bundle is not None and (Path(config.boost_bundle) / "config.json").is_file()
        if found:
            text, vision_tokens = read_boosting_prompts(config.boost_bundle, context.backbone)
        elif config.boost_text_shape and config.boost_vision_shape:  # rebuilt from a phase-2 bundle
            text = [torch.zeros(config.boost_text_shape[1:]) for _ in range(config.boost_text_shape[0])]
            vision_tokens = [torch.zeros(config.boost_vision_shape[1:]) for _ in range(config.boost_vision_shape[0])]
        elif config.boost_bundle is None:
            raise ValueError(
                "caspl needs boost_bundle: the folder of a caspl-boost (phase 1) bundle; train one with host "
                "'caspl-boost'"
            )
        else:
            raise FileNotFoundError(
                f"caspl.boost_bundle {config.boost_bundle}: no bundle there "
                f"({Path(config.boost_bundle) / 'config.json'} is missing)"
            )
        self._check(text, text_width, len(context.backbone.model.transformer.resblocks), "text")
        self._check(vision_tokens, vision.width, vision.depth, "vision")
        self.awaiting_state = not found  # placeholders until a phase-2 bundle's tensors are loaded
        for i, tokens in enumerate(text):
            self.register_buffer(f"boost_text_{i}", tokens.float().to(device).clone())
        for i, tokens in enumerate(vision_tokens):
            self.register_buffer(f"boost_vision_{i}", tokens.float().to(device).clone())
        self.text_layers, self.vision_layers = len(text), len(vision_tokens)
        config.boost_text_shape = [len(text), *text[0].shape]
        config.boost_vision_shape = [len(vision_tokens), *vision_tokens[0].shape]
        self.in_sequence = config.text_positions == SEQUENCE  # the text encoder then places them
        if not self.in_sequence:
            positions = context.backbone.model.positional_embedding[1 : 1 + text[0].shape[0]].detach()
            self.register_buffer("phase_one_positions", positions.float().clone(), persistent=False)
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "awaiting_state", False))

    @classmethod
    def settle_options(cls, options: CasPLConfig, given: set[str]) -> None:
        """A bundle records every option; one that records the boosting shapes but no
        `text_positions` was written before the option existed, with the phase-one layout."""
        if "boost_text_shape" in given and "text_positions" not in given:
            options.text_positions = PHASE_ONE_POSITIONS

    @staticmethod
    def _check(layers: list[torch.Tensor], width: int, depth: int, tower: str) -> None:
        if not layers or layers[0].shape[-1] != width or len(layers) > depth:
            shape = [len(layers), *layers[0].shape] if layers else []
            raise ValueError(
                f"caspl: the {tower} boosting prompts {shape} do not fit this backbone ({tower} width {width}, depth "
                f"{depth})"
            )

    def _layers(self, kind: str, count: int) -> list[torch.Tensor]:
        return [self.get_buffer(f"boost_{kind}_{i}") for i in range(count)]

    def text_prompts(self) -> list[PromptGroup]:
        if self.awaiting_state:  # every logit goes through the text: checked once here
            raise RuntimeError(
                f"caspl's boosting prompts were neither read from boost_bundle ({self.config.boost_bundle}) nor "
                "loaded from a phase-2 bundle"
            )
        layers = self._layers("text", self.text_layers)
        if not self.in_sequence:
            layers[0] = layers[0] + self.phase_one_positions.to(layers[0].dtype)
        return [PromptGroup(layers, first_layer=0, at=END, name="caspl.text", in_sequence=self.in_sequence)]

    def image_prompts(self) -> list[PromptGroup]:
        return [PromptGroup(self._layers("vision", self.vision_layers), first_layer=0, at=END, name="caspl.vision")]
