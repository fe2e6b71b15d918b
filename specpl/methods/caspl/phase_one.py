"""CasPL phase 1, the host ``caspl-boost``, and reading the bundle it writes (`read_boosting_prompts`,
phase 2's input). A host of its own: it trains alone, takes no boosters and reads no labels.

Deep boosting prompts in IVLP's layout (8 text + 8 vision tokens per layer, depth 12 cut to the
towers; SGD 0.0025, batch 4, 20 epochs; batch 128 on ImageNet) learned by
distilling a larger frozen teacher CLIP's zero-shot logits on unlabeled images
(`specpl.methods.caspl.teacher`): L = T^2 * KL(softmax(f_T / T) || softmax(f_S / T)), summed over
classes and averaged over the batch (``batchmean``), T = 1.
- Unlabeled images: the run's training images, labels unused. The paper (and the released code)
  uses every training image of *all* classes with all class names: that is transductive toward the
  new classes of a base-to-new split (their images and names are seen in phase 1). For a
  base-classes-only phase 1, use the data config's ``subsample="base"``. The full training set,
  as the paper uses, is ``shots=None``. A user's folder of unlabeled images is an input too:
  ``DataConfig.unlabeled_root`` (CLI ``--unlabeled DIR``), with the dataset's class names for the
  teacher.
- One phase-1 bundle serves every host: it is the ``boost_bundle`` input of phase 2.
- Init, the one place where the presets differ: ``paper`` starts every prompt at N(0, 0.02), as
  the released code; ``default`` starts the text as IVLP's default does, from the template's words
  with the deeper text prompts at the frozen tower's own states (so the text is zero-shot's at step
  0; the vision tokens stay N(0, 0.02)). Phase 1 only ever sees the run's classes, and a random
  start costs the classes it never sees: on SpectralWorld under the underwater camera, phase 1
  alone kept HM 59.0 from a random start and 67.5 from the template (3 seeds; docs/defaults.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from specpl.backbone import Backbone
from specpl.methods.base import BuildContext, ForwardState
from specpl.methods.caspl.config import ONLY_FOUR, PHASE_ONE, RELEASED, CasPLBoostConfig
from specpl.methods.caspl.teacher import TEACHER_LOGITS, TeacherLogits, distillation_loss, load_teacher, resolve_teacher
from specpl.methods.deep import IVLP_SCHEDULE, IndependentPromptHost
from specpl.methods.registry import HOSTS

# the configuration files its base-to-new scripts train with (train_script/*/train_base_to_new.py:22-24;
# the ImageNet one on line 23)
BOOST_CONFIG = f"{RELEASED} configs/trainers/CasPL/vit_b16_c2_ep20_batch4_8+8ctx_l12.yaml"
BOOST_IMAGENET_CONFIG = f"{RELEASED} configs/trainers/CasPL/vit_b16_c2_ep20_batch128_lr0025_8+8ctx_l12.yaml"


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
    replaceable_by_zero_shot = False  # phase 2 reads this host's prompts from its bundle
    training_defaults: ClassVar[dict[str, Any]] = IVLP_SCHEDULE
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        "paper": {
            PHASE_ONE: {"ctx_from_template": False, "deep_text_init": "normal"},
            "train@imagenet": {"batch_size": 128},
        }
    }
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
