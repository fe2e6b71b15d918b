"""ISP's sample probing (spec §3): per-sample weights for the host's loss from each sample's
difficulty under frozen zero-shot CLIP. Kept apart from the booster so the weights can be checked
by hand.

p0_i = softmax(s0 cos(f0_i, g0))_{y_i}, f0 the frozen CLIP feature of the same augmented view (the
cached frozen input "clip_image"), g0 the frozen text of the run's template (the dataset's CoOp
template), s0 CLIP's own logit scale; d_i = 1 - p0_i, w_i = (1 + d_i) / mean_batch(1 + d), detached.
Options: `difficulty="joint"` uses d_i = 1 - p0_i p_i with the prompted model's p_i;
`weighting="focal"` uses w_i = d_i^gamma; `probe_templates` picks the frozen text;
`normalise_weights=False` keeps the raw 1 + d_i (spec §7's alternative). The host's weighted loss
is (1/B) sum_i w_i CE_i, so the mean-normalised weights keep the loss scale unchanged. Weights
apply at training only; evaluation has no loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from specpl.backbone import Backbone
from specpl.methods.isp.config import IMAGENET_TEMPLATES, JOINT, LINEAR, RUN_TEMPLATE, ZERO_SHOT, at_least_fp32
from specpl.methods.templates import template_text_features


def probe_text_features(backbone: Backbone, templates: str, run_template: str, classnames: list[str]) -> torch.Tensor:
    """Unit-norm frozen text g0 (C, D) of the probing templates (see `ISPConfig.probe_templates`)."""
    if templates == IMAGENET_TEMPLATES:
        per_template = [
            F.normalize(template_text_features(backbone, t("{}"), classnames), dim=-1)
            for t in OPENAI_IMAGENET_TEMPLATES
        ]
        return F.normalize(torch.stack(per_template).mean(0), dim=-1)
    return F.normalize(
        template_text_features(backbone, run_template if templates == RUN_TEMPLATE else templates, classnames), dim=-1
    )


def probing_weights(
    zero_shot_logits: torch.Tensor,
    labels: torch.Tensor,
    difficulty: str = ZERO_SHOT,
    weighting: str = LINEAR,
    focal_gamma: float = 2.0,
    prompted_logits: torch.Tensor | None = None,
    normalise: bool = True,
) -> torch.Tensor:
    """Per-sample loss coefficients (B,), detached: harder samples under frozen CLIP weigh more
    (spec §3). ``linear``: (1 + d) / mean(1 + d); ``focal``: d ** gamma / mean(d ** gamma);
    `normalise=False` leaves out the division by the batch mean."""
    rows = torch.arange(labels.shape[0], device=labels.device)
    confidence = at_least_fp32(zero_shot_logits.detach()).softmax(dim=-1)[rows, labels]
    if difficulty == JOINT:
        if prompted_logits is None:
            raise ValueError("isp.difficulty='joint' needs the prompted model's logits")
        confidence = confidence * at_least_fp32(prompted_logits.detach()).softmax(dim=-1)[rows, labels]
    hardness = 1 - confidence
    weights = 1 + hardness if weighting == LINEAR else hardness.pow(focal_gamma)
    return weights / weights.mean().clamp_min(1e-12) if normalise else weights
