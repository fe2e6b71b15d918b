"""CasPL phase 1's teacher: which larger frozen CLIP it is, loading it, its zero-shot logits as a
named frozen input (``caspl_teacher``, computed once per image view by the feature cache), and the
distillation loss that pulls the student's logits toward them.

The teacher is any open_clip model, vanilla, with one hand-crafted template (the run's template:
the dataset's own for a registered benchmark, as in the spec). By default OpenAI's ViT-L-14; for
the embedded world CLIP student, the embedded larger world CLIP (``assets/world-clip-large``), so
the method runs offline. It is loaded only to train (never at inference or when a bundle is
loaded). It sees the student's augmented view, resampled to its own resolution and normalisation
when they differ.
"""

from __future__ import annotations

import hashlib
import json

import torch
import torch.nn.functional as F

from specpl.backbone import EMBEDDED_TAG, Backbone, load_backbone
from specpl.config import BackboneConfig
from specpl.methods.templates import template_text_features

TEACHER_LOGITS = "caspl_teacher"
DEFAULT_TEACHER = ("ViT-L-14", "openai")


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
