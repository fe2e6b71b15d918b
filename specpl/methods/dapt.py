"""DAPT booster (Decouple before Align: Visual Disentanglement Enhances Prompt Tuning, TPAMI 2025).

Documented in docs/methods/dapt.md. Each training image is split by a foreground mask m into
x_f = x * m and x_b = x * (1 - m) (in CLIP-normalised pixel space); the three views go through the
same prompted image path and are L2-normalised (z_I, z_f, z_b). Two phases, switching at the
epoch index `switch_epoch` (0-based):
- triplet phase (e < switch): 0.8 * triplet(z_I, sg z_f, sg z_b; p = 2, margin 1.5);
- alignment phase (e >= switch): 0.1 * CE(s sg(z_f) T_fg, y) + 0.5 * CE(s z_b T_bg, argmax z_b T_bg),
  T_fg the run's class text, T_bg the background prompts ("a clean origami {}.", 32 words; the
  paper preset: the last 25, as the released code trains with).
The host's own loss is untouched; DAPT adds nothing at test time (no prompts, no refinement).

Hosts: only those with image-tower prompts (`requires`). On a host whose image path has nothing to
learn (CoOp, CoCoOp, KgCoOp, zero-shot) z_I, z_f and z_b are fixed features: the triplet and the
background terms carry no gradient and only the foreground term, a second text loss, is left
(measured on the world benchmark: 0.0-0.2 points of effect), so the combination is refused.

Masks (a frozen input, named ``dapt``, cached per (image, view) by the feature cache):
- ``gradcam`` (DAPT-G): a saliency map of the *current* prompted model on the same augmented view,
  over the patch grid -> bilinear to the image size -> divided by the maximum -> thresholded. Its
  signature carries the model's epoch, so the cache recomputes it once per epoch (before training
  and after every epoch), and the forward pass really uses it. `cam` picks the map; the gradient
  maps target the label's logit and read the patch tokens only (never [CLS] or prompt slots):
  - ``"head-gradcam"`` (default): GradCAM per attention head on the last block's values,
    sum_h |w_h . (v_hj - mean_k v_hk)|, w_h the head's gradient averaged over the patches.
  - ``"gradcam"`` (the paper preset): the released code's GradCAM (Selvaraju et al., ICCV 2017) on
    the last image block's ``ln_1`` output; channel weights = gradients averaged over the patch
    tokens; ReLU of the weighted channel sum.
  - ``"grad-attention"``: the gradient-weighted attention of Chefer, Gur and Wolf (ICCV 2021,
    "Generic Attention-model Explainability"), E_h[(dy/dA_h * A_h)^+], on the last block's
    class-token row.
  - ``"rollout"``: attention rollout (Abnar and Zuidema, ACL 2020), the class-token row of
    prod_l (0.5 E_h A_l + 0.5 I) over all blocks; no backward pass, and it ignores the label.
  Measured on the pretrained world CLIP (2 heads, 4 blocks, 8x8 patches; 18 world images, one per
  second class; threshold 0.5, maps normalised per image; mean IoU with the analytic object mask,
  which covers 18% of the image; CoOp "a photo of a", i.e. the frozen tower's own map / MaPLe /
  IVLP at init): head-gradcam 0.67 / 0.66 / 0.66, rollout 0.62 / 0.61 / 0.61, gradcam
  0.22 / 0.23 / 0.09, grad-attention 0.16 / 0.17 / 0.13. At the last block, measured from the
  average patch, the ``ln_1`` GradCAM is the heads' value GradCAMs summed with their signs, up to
  the keys of [CLS] and the prompts (the patches' key gradients nearly cancel, as softmax ignores
  a shift of all scores; measured: within 1% / 2% of the map's peak). It fails for three reasons,
  each measured by undoing one step of head-gradcam (CoOp / MaPLe / IVLP):
  (1) a ViT token has no zero "nothing here" level, unlike a CNN's post-ReLU channel: every token
  carries a large shared part, so w . v_j is mostly a constant; measuring from the average patch
  is the decisive step (uncentred: 0.31 / 0.31 / 0.32);
  (2) the patches reach the class token only through its attention, and which sign marks the
  object changes from image to image (ReLU instead of |.|: 0.43 / 0.46 / 0.43);
  (3) the heads' signed maps cancel (|signed sum over heads|, i.e. centred |.| of ``ln_1``:
  0.57 / 0.53 / 0.54).
  Rejected by the first measurement (CoOp / MaPLe, not rerun since): earlier blocks (0.20-0.37
  each), maps averaged over the blocks (0.51 / 0.50), a contrastive target (the logit minus the
  classes' mean: 0.63 / 0.64; minus their logsumexp: 0.65 / 0.62), each token's own gradient
  instead of the patch average (HiResCAM: 0.47 / 0.46); counting [CLS] and prompt tokens in the
  weights and the reference changes nothing (0.67 / 0.66). On 36 held-out images (the other 18
  classes) head-gradcam gave 0.63 / 0.68 against the rollout's 0.62 / 0.62, and after 60 steps of
  prompt training 0.63-0.66 against 0.61-0.62. It is the default because it covers the object
  best, and because it is what DAPT-G asks for: a map of the *current* prompted model for the
  image's class. The rollout ignores the text side, and on an untrained tower, whose attention is
  near uniform, it is flat and masks everything. Its price: one backward pass per view and epoch.
  The paper preset's combination (``gradcam``, the batch maximum) masks almost nothing: over the 18
  world images in one batch the largest map leaves 16 of them with an empty mask (MaPLe / IVLP at
  init; mean IoU 0.00).
- ``folder`` (DAPT-S or any segmenter): one mask file per training image under `mask_dir`, found by
  the longest matching tail of the image's path (``<class>/<stem>``, then ``<stem>``); binarised as
  the reference does (first channel, `mask_ignore_value` -> 0, any other value >= 1 -> 1). It gets
  the image's own crop and flip: the geometric part of the train transform is replayed under the
  view's seed (`ViewSource.draw_seed`, the feature cache's) on the same-size mask, with nearest interpolation.

Deviations and choices (spec §9), all behind options; the paper preset (`DAPT.presets`, sources in
`DAPT.sources`) restores the released code wherever an option can:
- Classification covers the C classes only: DAPT never adds columns to the host's logits, in
  training or at test (the reference appends 7 background prompts in training and on the base
  test split, and all 32 on the novel split). No legacy-slice flag: a booster cannot widen the
  host's logits. T_bg is the clean set of all 32 background prompts (`background_words`; the
  reference's set is the last 25, which the paper preset gives).
- The switch defaults to floor(0.7 E) instead of the reference's fixed 7 (``e > 6``), so short
  runs (5-epoch base-to-novel) reach the alignment phase; `switch_epoch=7` (paper) reproduces it.
- DAPT-G's map defaults to the per-head GradCAM on the last block's values, not the released
  GradCAM on its ``ln_1`` (`cam="gradcam"`): see above. Maps are normalised per image
  (`gradcam_normalise="batch"` is the reference's maximum over the batch the maps are computed
  in: its mask loader's 50 images, here the feature cache's chunk) and upsampled with
  `align_corners=False` (`gradcam_align_corners=True` is the reference's). Not reproduced: the
  reference adds 1e-6 to the maximum of a map whose scale depends on its 32 leaked columns.
  Unlike the reference, the masks are what the forward pass uses.
- The background prompts keep the template's fixed token embeddings at layer 0 and get the host's
  deep text slots (MMRL: its representation tokens) and every booster's text slots from their
  first layer, as MaPLe does in the reference; a host with more pre-placed context positions than
  the template has words before the background word gets placeholder "X" tokens in front, so the
  word itself is never overwritten.
- T_fg is the text the host classifies with (after any booster's refinement).
- Without item labels (a frozen input called on images alone) the gradient maps target the predicted class.
"""

from __future__ import annotations

import copy
import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.transform import MaybeConvertMode, MaybeToTensor, _convert_to_rgb
from PIL import Image
from torch import nn
from torchvision import transforms

from specpl.config import check_choice
from specpl.data import IMAGE_SUFFIXES, DataError, ImageItem, load_image
from specpl.frozen import ViewSource
from specpl.methods.base import (
    FEATURES,
    PROMPTS_IMAGE_TOWER,
    Booster,
    BuildContext,
    ForwardState,
    ImageView,
    compose_hooks,
)
from specpl.methods.prompt import PLACEHOLDER
from specpl.methods.registry import BOOSTERS
from specpl.slots import START, PromptGroup
from specpl.vision import PromptImageEncoder, VisionOutput

if TYPE_CHECKING:  # the composite this booster is attached to; it imports the contracts, not this
    from specpl.model import PromptModel

# what other modules (the benchmarks, the app) may import from this booster
__all__ = [
    "BACKGROUND_WORDS",
    "NO_MASK_FILES_NOTE",
    "REFERENCE_BACKGROUND_WORDS",
    "DAPT",
    "DAPTConfig",
    "MaskFolder",
    "saliency_maps",
    "saliency_masks",
]

DAPT_INPUT = "dapt"  # the frozen input's name; the batch carries dapt.mask
NO_MASK_FILES_NOTE = (
    "This run's DAPT reads its masks from a folder of files (`dapt.masks=folder`), which a shared server does not open."
)
MASK = "mask"
MASK_SOURCES = ("gradcam", "folder")
CAMS = ("head-gradcam", "rollout", "gradcam", "grad-attention")  # DAPT-G's maps (module docstring)
CAM_NAMES = {
    "head-gradcam": "per-head GradCAM",
    "rollout": "attention rollout",
    "grad-attention": "gradient-weighted attention",
}
NORMALISATIONS = ("image", "batch")  # a map's maximum: its own, or the batch's (the reference's)
GENERAL_BACKGROUNDS = (
    "ground",
    "land",
    "grass",
    "tree",
    "building",
    "wall",
    "sky",
    "lake",
    "water",
    "river",
    "sea",
    "railway",
    "railroad",
    "keyboard",
    "helmet",
    "cloud",
    "house",
    "mountain",
    "ocean",
    "road",
    "rock",
    "street",
    "valley",
    "bridge",
    "sign",
)
FOOD_BACKGROUNDS = ("table", "forks", "tablecloth", "hands", "spoon", "glasses", "dishes")
BACKGROUND_WORDS = (*GENERAL_BACKGROUNDS, *FOOD_BACKGROUNDS)
# the reference trains with the last 25 only: its first 7 fall into the class slice of its logits
REFERENCE_BACKGROUND_WORDS = BACKGROUND_WORDS[-25:]
DAPT_REPO = "Ferenas/DAPT@e556f17"


@dataclass
class DAPTConfig:
    masks: str = "gradcam"  # "gradcam" (DAPT-G, from the current model) or "folder" (mask files in mask_dir)
    cam: str = "head-gradcam"  # DAPT-G's map, one of CAMS; chosen by measurement (module docstring)
    mask_dir: str = ""  # the mask folder for masks="folder"
    mask_ignore_value: int | None = 255  # a mask value read as background (SEEM's ignore label)
    gradcam_threshold: float = 0.5
    gradcam_normalise: str = "image"  # "image" (per-image maximum) or "batch" (the reference's batch maximum)
    gradcam_align_corners: bool = False  # upsample the patch grid with align_corners (the reference's: True)
    switch_epoch: int | None = None  # first epoch index (0-based) of the alignment phase; None: floor(0.7 E)
    triplet_weight: float = 0.8
    triplet_margin: float = 1.5
    foreground_weight: float = 0.1
    background_weight: float = 0.5
    background_template: str = "a clean origami {}."
    background_words: list[str] = field(default_factory=lambda: list(BACKGROUND_WORDS))

    def __post_init__(self) -> None:
        check_choice("dapt.masks", self.masks, MASK_SOURCES)
        check_choice("dapt.cam", self.cam, CAMS)
        check_choice("dapt.gradcam_normalise", self.gradcam_normalise, NORMALISATIONS)


def switch_epoch(config: DAPTConfig, epochs: int) -> int:
    """The first epoch index of the alignment phase."""
    return config.switch_epoch if config.switch_epoch is not None else math.floor(0.7 * epochs)


def triplet_pull_push(
    full: torch.Tensor, foreground: torch.Tensor, background: torch.Tensor, margin: float
) -> torch.Tensor:
    """mean max(|z_I - sg z_f| - |z_I - sg z_b| + margin, 0) on unit vectors (PyTorch's triplet loss, p = 2)."""
    full = F.normalize(full, dim=-1)
    positive, negative = F.normalize(foreground.detach(), dim=-1), F.normalize(background.detach(), dim=-1)
    return F.triplet_margin_loss(full, positive.to(full.dtype), negative.to(full.dtype), margin=margin, p=2)


def foreground_alignment(
    foreground: torch.Tensor, class_text: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor | float
) -> torch.Tensor:
    """CE(s sg(z_f) T_fg, y): the image is detached, so only the text and prompt side learns.
    `class_text` is (C, D), or (B, C, D) for image-conditioned hosts."""
    image = F.normalize(foreground.detach(), dim=-1).to(class_text.dtype)
    text = F.normalize(class_text, dim=-1)
    logits = torch.einsum("bd,bcd->bc", image, text) if text.dim() == 3 else image @ text.t()
    return F.cross_entropy(scale * logits, labels)


def background_alignment(
    background: torch.Tensor, background_text: torch.Tensor, scale: torch.Tensor | float
) -> torch.Tensor:
    """CE(s z_b T_bg, argmax z_b T_bg): both the image and the text branch learn."""
    similarity = F.normalize(background, dim=-1).to(background_text.dtype) @ F.normalize(background_text, dim=-1).t()
    return F.cross_entropy(scale * similarity, similarity.argmax(dim=-1).detach())


# --- saliency maps (DAPT-G) --------------------------------------------------------------------
def _patch_positions(groups: Sequence[PromptGroup], starts: Sequence[int | None], tokens: int) -> torch.Tensor:
    """Indices of the patch tokens among `tokens` final positions: all but [CLS] and the prompt slots."""
    taken = torch.zeros(tokens, dtype=torch.bool)
    taken[0] = True
    for group, start in zip(groups, starts, strict=True):
        if start is not None:
            taken[start : start + group.length] = True
    return (~taken).nonzero().flatten()


def _patches(output: VisionOutput) -> torch.Tensor:
    return _patch_positions(output.slots.groups, output.slots.starts, output.tokens.shape[1]).to(output.tokens.device)


class AttentionRecord(NamedTuple):
    """One image block's attention probabilities (B, heads, T, T) and values (B, heads, T, W / heads)."""

    probabilities: torch.Tensor
    values: torch.Tensor


def _explicit_self_attention(
    module: nn.Module, args: tuple, kwargs: dict, store: list[AttentionRecord]
) -> tuple[torch.Tensor, None]:
    """What `module` (an ``nn.MultiheadAttention`` called as self-attention) computes, with its
    probabilities and per-head values formed explicitly and appended to `store`, so that a
    gradient can reach them (PyTorch's fused kernel never forms them). CLIP's attention has no dropout."""
    query, key, value = (args[i] if i < len(args) else kwargs[name] for i, name in enumerate(("query", "key", "value")))
    plain = query is key is value and kwargs.get("attn_mask") is None and kwargs.get("key_padding_mask") is None
    if not plain or module.in_proj_weight is None or module.bias_k is not None:
        raise ValueError(
            "DAPT's attention maps need plain self-attention (no masks, one input projection, no key/value bias tokens)"
        )
    x = query if module.batch_first else query.transpose(0, 1)
    batch, tokens, width = x.shape
    q, k, v = (
        part.reshape(batch, tokens, module.num_heads, -1).transpose(1, 2)
        for part in F.linear(x, module.in_proj_weight, module.in_proj_bias).chunk(3, dim=-1)
    )
    probabilities = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
    store.append(AttentionRecord(probabilities, v))
    out = module.out_proj((probabilities @ v).transpose(1, 2).reshape(batch, tokens, width))
    return (out if module.batch_first else out.transpose(0, 1)), None


@contextmanager
def recorded_attention(model: PromptModel) -> Iterator[list[AttentionRecord]]:
    """While open, every image block's attention probabilities and values are appended in block
    order; the blocks' outputs are unchanged up to float rounding. Only this thread's forwards are
    recorded: the app runs other requests through the same frozen tower meanwhile."""
    store: list[AttentionRecord] = []
    owner = threading.get_ident()
    attentions = [block.attn for block in model.frozen_clip.visual.transformer.resblocks]
    unsupported = [
        type(attention).__name__ for attention in attentions if not isinstance(attention, nn.MultiheadAttention)
    ]
    if unsupported:
        raise ValueError(
            f"DAPT's attention maps need nn.MultiheadAttention blocks; the image tower has {unsupported[0]}"
        )

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        return _explicit_self_attention(module, args, kwargs, store) if threading.get_ident() == owner else None

    handles = [attention.register_forward_hook(hook, with_kwargs=True) for attention in attentions]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _recorded_output(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """`module`'s outputs in this thread's forwards while open (as `recorded_attention`)."""
    store: list[torch.Tensor] = []
    owner = threading.get_ident()
    handle = module.register_forward_hook(
        lambda module, inputs, output: store.append(output) if threading.get_ident() == owner else None
    )
    try:
        yield store
    finally:
        handle.remove()


def _image_path(model: PromptModel, images: torch.Tensor) -> VisionOutput:
    """The model's prompted image path (its groups and every component's hook) on `images`."""
    encoder = model.image_encoder or PromptImageEncoder(model.frozen_clip)
    hooks = [hook for component in model.components if (hook := component.image_hook()) is not None]
    return encoder(images, model.image_prompt_groups(), compose_hooks(hooks))


def _target_logits(model: PromptModel, output: VisionOutput, labels: torch.Tensor | None) -> torch.Tensor:
    """The sum of each image's logit for its label (None: its predicted class)."""
    logits = model.logits(model.host.image_outputs(output))
    targets = logits.detach().argmax(dim=-1) if labels is None else labels.to(logits.device)
    return logits.gather(1, targets.view(-1, 1)).sum()


def gradcam_scores(model: PromptModel, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """The released code's GradCAM (B, N) over the patches, on the last image block's ``ln_1``
    output: ReLU(sum_c a_jc w_c), w the output's gradient averaged over the patch tokens."""
    with torch.enable_grad(), _recorded_output(model.frozen_clip.visual.transformer.resblocks[-1].ln_1) as captured:
        output = _image_path(model, images.detach().requires_grad_(True))  # so a frozen image path has a gradient
        (gradients,) = torch.autograd.grad(_target_logits(model, output, labels), captured[-1])
    patches = _patches(output)
    activations, gradients = captured[-1].detach()[:, patches].float(), gradients[:, patches].float()
    weights = gradients.mean(dim=1, keepdim=True)  # (B, 1, W): one weight per channel
    return F.relu((activations * weights).sum(dim=-1))


def _last_attention_gradient(
    model: PromptModel, images: torch.Tensor, labels: torch.Tensor | None, part: str
) -> tuple[VisionOutput, torch.Tensor, torch.Tensor]:
    """The image path's output, the last block's recorded `part` (an `AttentionRecord` field) and
    the target logits' gradient with respect to it."""
    with torch.enable_grad(), recorded_attention(model) as attention:
        output = _image_path(model, images.detach().requires_grad_(True))
        recorded = getattr(attention[-1], part)
        (gradients,) = torch.autograd.grad(_target_logits(model, output, labels), recorded)
    return output, recorded.detach(), gradients


def grad_attention_scores(model: PromptModel, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """E_h[(dy/dA_h * A_h)^+] (B, N) on the last block's class-token row (Chefer et al., ICCV 2021)."""
    output, attention, gradients = _last_attention_gradient(model, images, labels, "probabilities")
    relevance = F.relu(gradients * attention).float()
    return relevance[:, :, 0, _patches(output)].mean(dim=1)


def head_gradcam_scores(model: PromptModel, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """GradCAM per attention head on the last block's values (B, N):
    sum_h |w_h . (v_hj - mean_k v_hk)|, w_h the gradient averaged over the patches. Measured from
    the average patch (a ViT token has no zero level), in absolute value (the object's sign varies
    per image) and per head (signed head maps cancel): see the module docstring."""
    output, values, gradients = _last_attention_gradient(model, images, labels, "values")
    patches = _patches(output)
    values, gradients = values[:, :, patches].float(), gradients[:, :, patches].float()
    weights = gradients.mean(dim=2, keepdim=True)  # (B, heads, 1, W / heads): one weight per head channel
    deviations = values - values.mean(dim=2, keepdim=True)
    return (deviations * weights).sum(dim=-1).abs().sum(dim=1)


def rollout_scores(model: PromptModel, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Attention rollout (B, N) (Abnar and Zuidema, ACL 2020): the class-token row of
    prod_l (0.5 E_h A_l + 0.5 I), the identity standing for the residual path. Class-agnostic:
    `labels` are not used."""
    with torch.no_grad(), recorded_attention(model) as attention:
        output = _image_path(model, images)
    identity = torch.eye(output.tokens.shape[1], device=output.tokens.device)
    flow = identity
    for probabilities, _ in attention:
        flow = (0.5 * probabilities.float().mean(dim=1) + 0.5 * identity) @ flow
    return flow[:, 0, _patches(output)]


CAM_SCORES: dict[str, Callable[[PromptModel, torch.Tensor, torch.Tensor | None], torch.Tensor]] = {
    "head-gradcam": head_gradcam_scores,
    "rollout": rollout_scores,
    "gradcam": gradcam_scores,
    "grad-attention": grad_attention_scores,
}


def normalised_maps(
    scores: torch.Tensor, size: Sequence[int], normalise: str = "image", align_corners: bool = False
) -> torch.Tensor:
    """Patch scores (B, N) as maps (B, 1, H, W) in [0, 1]: bilinear from the square patch grid to
    `size`, divided by each map's maximum (``image``) or by the whole batch's (``batch``, the
    reference's, which lets the batch's strongest map decide every image's mask)."""
    check_choice("dapt.gradcam_normalise", normalise, NORMALISATIONS)
    side = math.isqrt(scores.shape[1])
    if side * side != scores.shape[1]:
        raise ValueError(f"DAPT-G needs a square patch grid; the image tower has {scores.shape[1]} patch tokens")
    maps = F.interpolate(scores.view(-1, 1, side, side), size=tuple(size), mode="bilinear", align_corners=align_corners)
    peak = maps.amax(dim=(1, 2, 3), keepdim=True) if normalise == "image" else maps.amax()
    return maps / peak.clamp_min(1e-12)


def saliency_maps(
    model: PromptModel,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    normalise: str = "image",
    cam: str = "head-gradcam",
    align_corners: bool = False,
) -> torch.Tensor:
    """DAPT-G maps (B, 1, H, W) in [0, 1] of the prompted `model`: the `cam` map over the patch
    grid, as `normalised_maps` at the image size. The gradient maps target `labels` (None: the
    predicted class). No parameter gets a gradient."""
    check_choice("dapt.cam", cam, CAMS)
    return normalised_maps(CAM_SCORES[cam](model, images, labels), images.shape[-2:], normalise, align_corners)


def saliency_masks(
    model: PromptModel,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    threshold: float = 0.5,
    normalise: str = "image",
    cam: str = "head-gradcam",
    align_corners: bool = False,
) -> torch.Tensor:
    """Binary DAPT-G masks (B, 1, H, W): `saliency_maps` at `threshold`."""
    return saliency_maps(model, images, labels, normalise, cam, align_corners) >= threshold


# --- mask folders (DAPT-S) ---------------------------------------------------------------------
GEOMETRIC = (
    transforms.RandomResizedCrop,
    transforms.Resize,
    transforms.CenterCrop,
    transforms.RandomCrop,
    transforms.RandomHorizontalFlip,
    transforms.RandomVerticalFlip,
)
RESAMPLING = (transforms.RandomResizedCrop, transforms.Resize)
# deterministic format steps: they draw no random numbers and move no pixel
NOT_GEOMETRIC = (
    transforms.ToTensor,
    transforms.Normalize,
    transforms.PILToTensor,
    transforms.ConvertImageDtype,
    MaybeConvertMode,
    MaybeToTensor,
)


def geometric_part(transform: Callable) -> transforms.Compose:
    """The crops, resizes and flips of an image transform, in order, resampling with nearest
    neighbours; run under the image's seed on a same-size mask they draw the same random numbers,
    so the mask gets the same crop and flip. A random transform of another kind would shift the
    random stream, so it is refused."""
    steps = transform.transforms if isinstance(transform, transforms.Compose) else [transform]
    kept = []
    for step in steps:
        if isinstance(step, RESAMPLING):
            nearest = copy.copy(step)
            nearest.interpolation = transforms.InterpolationMode.NEAREST
            kept.append(nearest)
        elif isinstance(step, GEOMETRIC):
            kept.append(step)
        elif not isinstance(step, NOT_GEOMETRIC) and step is not _convert_to_rgb:
            raise ValueError(
                f"DAPT cannot pair masks with the image transform step {step!r}: only crops, resizes, flips and "
                "tensor conversion are supported"
            )
    return transforms.Compose(kept)


class MaskFolder:
    """Mask files paired to images by the longest matching tail of their path, without suffix."""

    def __init__(self, root: str | Path, ignore_value: int | None = 255) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"dapt mask folder {self.root} does not exist or is not a folder")
        self.ignore_value = ignore_value
        self.index = {
            path.relative_to(self.root).with_suffix("").as_posix(): path
            for path in sorted(self.root.rglob("*"))
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
        }
        if not self.index:
            raise DataError(f"dapt mask folder {self.root} holds no image files")

    def find(self, image: Path) -> Path:
        parts = image.with_suffix("").parts
        tried = ["/".join(parts[-k:]) for k in range(len(parts), 0, -1)]
        for key in tried:
            if key in self.index:
                return self.index[key]
        raise DataError(
            f"no mask for {image} in {self.root}: looked for {tried[-2] if len(tried) > 1 else tried[-1]}.* and "
            f"{tried[-1]}.* (any image suffix)"
        )

    def read(self, image: Path) -> Image.Image:
        """The binary mask (mode L, values 0/255) of `image`, checked to have the image's size."""
        path = self.find(image)
        try:
            with Image.open(path) as raw:
                values = np.asarray(raw)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: unreadable mask ({type(exc).__name__}: {exc})") from exc
        values = values[..., 0] if values.ndim == 3 else values
        binary = values >= 1
        if self.ignore_value is not None:
            binary &= values != self.ignore_value
        size = load_image(image).size  # as the image is decoded: EXIF orientation applied
        if (binary.shape[1], binary.shape[0]) != size:
            raise DataError(
                f"{path}: mask is {binary.shape[1]}x{binary.shape[0]} but its image {image} is {size[0]}x{size[1]}"
            )
        return Image.fromarray((binary * 255).astype(np.uint8))

    def paired(self, items: Sequence[ImageItem], view: int | None, views: "ViewSource") -> torch.Tensor:
        """(B, 1, H, W) bool masks with each image's crop and flip of view `view`."""
        geometry = geometric_part(views.preprocess_train if view is not None else views.preprocess_eval)
        masks = []
        for item in items:
            mask = self.read(item.path)
            if view is None:
                placed = geometry(mask)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(views.draw_seed(item.path, view))
                    placed = geometry(mask)
            masks.append(torch.from_numpy(np.asarray(placed) >= 128).unsqueeze(0))
        return torch.stack(masks)


class DecoupledViews:
    """The frozen input ``dapt``: the foreground mask of each view."""

    name = DAPT_INPUT
    needs_items = True

    def __init__(self, booster: "DAPT") -> None:
        self.booster = booster
        config = booster.config
        self.folder = MaskFolder(config.mask_dir, config.mask_ignore_value) if config.masks == "folder" else None

    @property
    def signature(self) -> str:
        config, model = self.booster.config, self.booster.model
        if self.folder is not None:
            return f"folder:{self.folder.root.resolve()}:ignore{config.mask_ignore_value}"
        corners = ":corners" if config.gradcam_align_corners else ""
        normalise = f"{config.gradcam_normalise}{corners}"
        return f"gradcam:{config.cam}:{model.name}@epoch{model.epoch}:t{config.gradcam_threshold}:{normalise}"

    def masks(
        self, images: torch.Tensor, items: Sequence[ImageItem] | None, view: int | None, views: "ViewSource | None"
    ) -> torch.Tensor:
        if self.folder is not None:
            if items is None or views is None:
                raise ValueError(
                    "dapt masks from a folder need the images' items and views (the feature cache passes them)"
                )
            return self.folder.paired(items, view, views).to(images.device)
        config = self.booster.config
        labels = None if items is None else torch.tensor([item.label for item in items], device=images.device)
        return saliency_masks(
            self.booster.model,
            images,
            labels,
            config.gradcam_threshold,
            config.gradcam_normalise,
            config.cam,
            config.gradcam_align_corners,
        )

    @torch.no_grad()
    def __call__(
        self,
        images: torch.Tensor,
        items: Sequence[ImageItem] | None = None,
        view: int | None = None,
        views: "ViewSource | None" = None,
    ) -> dict[str, torch.Tensor]:
        return {MASK: self.masks(images, items, view, views)}


# --- the booster -------------------------------------------------------------------------------
@BOOSTERS.register("dapt")
class DAPT(Booster):
    name = "dapt"
    title = "DAPT"
    description = (
        "DAPT: foreground/background views from masks (GradCAM or files), pull-push then alignment losses (TPAMI 2025)"
    )
    config_class: ClassVar[type] = DAPTConfig
    requires: ClassVar[frozenset[str]] = frozenset({PROMPTS_IMAGE_TOWER})
    requires_reason: ClassVar[str] = (
        "without them nothing in the image path learns, so DAPT's pull-push and background terms, which train "
        "the image side, carry no gradient; measured effect on such hosts: 0.0-0.2 points"
    )
    # the released trainer is MaPLe's (trainers/maple.py); the README's table adds DAPT + PromptSRC
    published_hosts: ClassVar[tuple[str, ...]] = ("maple", "promptsrc")

    @classmethod
    def label(cls, options: dict[str, Any]) -> str:
        """DAPT-G (GradCAM masks) or DAPT-S (mask files); our per-head GradCAM and the two
        other maps are ours, and the name says so."""
        if options.get("masks", "gradcam") == "folder":
            return "DAPT-S (mask files)"
        cam = options.get("cam", "head-gradcam")
        return "DAPT-G" if cam == "gradcam" else f"DAPT-G ({CAM_NAMES[cam]}, ours)"

    # the released code (module docstring): its ln_1 GradCAM, batch maximum, corner-aligned
    # upsampling, fixed switch and the 25 background words it trains with
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        "paper": {
            "dapt": {
                "cam": "gradcam",
                "gradcam_normalise": "batch",
                "gradcam_align_corners": True,
                "switch_epoch": 7,
                "background_words": list(REFERENCE_BACKGROUND_WORDS),
            },
        },
    }
    sources: ClassVar[dict[str, str]] = {
        "masks": f"{DAPT_REPO} trainers/maple.py:651-654 (DAPT-G: GradCAM masks, again at :683-686 each epoch)",
        "cam": f"{DAPT_REPO} trainers/util.py:39 (the last image block's ln_1), :202-223 (patch-mean weights, ReLU)",
        "mask_dir": "ours: no folder, the paper preset's masks are DAPT-G maps (DAPT-S reads <dataset>/mask: "
        f"{DAPT_REPO} datasets/data_manager.py:293)",
        "mask_ignore_value": f"{DAPT_REPO} datasets/new_da.py:43 (mask == 255 -> 0)",
        "gradcam_threshold": f"{DAPT_REPO} trainers/util.py:234-236 (threshold 0.5)",
        "gradcam_normalise": f"{DAPT_REPO} trainers/util.py:231-232 (divided by the maximum of the whole batch tensor)",
        "gradcam_align_corners": f"{DAPT_REPO} trainers/util.py:228 (F.upsample, bilinear, align_corners=True)",
        "switch_epoch": f"{DAPT_REPO} trainers/maple.py:330 (alignment when epoch > 6)",
        "triplet_weight": f"{DAPT_REPO} trainers/maple.py:324 (para_vd 0.8)",
        "triplet_margin": f"{DAPT_REPO} trainers/maple.py:308 (triplet_margin_loss, margin 1.5)",
        "foreground_weight": f"{DAPT_REPO} trainers/maple.py:323 (para_fg 0.1)",
        "background_weight": f"{DAPT_REPO} trainers/maple.py:322 (para_bg 0.5)",
        "background_template": f"{DAPT_REPO} trainers/maple.py:164 ('a clean origami {{}}.')",
        "background_words": f"{DAPT_REPO} trainers/maple.py:38-46 (32 words), :298 (it trains with the last 25)",
    }

    def __init__(self, config: DAPTConfig, context: BuildContext) -> None:
        super().__init__(config, context)
        if config.masks == "folder" and not config.mask_dir:
            raise ValueError(
                "dapt.masks='folder' needs dapt.mask_dir, the folder of mask files (one per training image)"
            )
        if "{}" not in config.background_template or not config.background_words:
            raise ValueError("dapt.background_template must contain '{}' and dapt.background_words must not be empty")
        self.tokenizer = context.backbone.tokenizer
        self._model: list[PromptModel] = []
        # the background prompts' embeddings, made once the model is attached (`_embed_background_prompts`)
        for name in ("background_prefix", "background_suffix", "background_eot"):
            self.register_buffer(name, None, persistent=False)

    def attach(self, model: PromptModel) -> None:
        """Keep the composing model: the masked views go through its prompted image path, and
        GradCAM runs on it."""
        self._model[:] = [model]

    @property
    def model(self) -> PromptModel:
        if not self._model:
            raise RuntimeError(
                "the dapt booster is not attached to a PromptModel (build it with specpl.factory.build_method)"
            )
        return self._model[0]

    def set_classnames(self, classnames: list[str], novel: bool = False) -> None:
        if self._model and self.background_prefix is None:
            self._embed_background_prompts()

    def frozen_inputs(self) -> list:
        return [DecoupledViews(self)]

    def image_view(
        self, model: PromptModel, image_path: Path, class_name: str | None, read_files: bool
    ) -> ImageView | None:
        """The foreground mask this run trains with on one image: its mask file (``masks="folder"``,
        over the whole image), else the DAPT-G map of the trained model thresholded as in training,
        on the image as the model sees it (its evaluation crop). A gradient map targets `class_name`
        when the run has that class, else the predicted one."""
        config = self.config
        if config.masks == "folder":
            return self._mask_file_view(image_path) if read_files else ImageView(NO_MASK_FILES_NOTE)
        device = model.logit_scale.device
        pixels = model.backbone.preprocess_eval(load_image(image_path)).unsqueeze(0).to(device)
        label, target = _target_class(model, pixels, class_name)
        labels = torch.tensor([label], device=device)
        maps = saliency_maps(model, pixels, labels, config.gradcam_normalise, config.cam, config.gradcam_align_corners)
        saliency = maps[0, 0].float().cpu().numpy()
        mask = saliency >= config.gradcam_threshold  # exactly `saliency_masks`, as DAPT trains with
        mean, std = (torch.tensor(values).view(3, 1, 1) for values in model.backbone.normalization)
        seen = ((pixels[0].float().cpu() * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        note = (
            f"**DAPT-G mask**: the `{config.cam}` map (`dapt.cam`) of this run's model, divided by its maximum and "
            f"thresholded at {config.gradcam_threshold:g}; it marks {float(mask.mean()) * 100:.0f}% of the image "
            f"as foreground. A gradient map targets {target}."
        )
        return ImageView(note, seen, {"saliency": saliency, "mask": mask})

    def _mask_file_view(self, image_path: Path) -> ImageView:
        """The user's mask file for the image, binarised as DAPT reads it, over the whole image."""
        try:
            folder = MaskFolder(self.config.mask_dir, self.config.mask_ignore_value)
            mask = np.asarray(folder.read(image_path)) > 0
            found = folder.find(image_path)
        except DataError as exc:
            return ImageView(
                "This run's DAPT reads its masks from files (`dapt.masks=folder`), and there is none to show here: "
                f"{exc}."
            )
        note = (
            f"**DAPT mask file** `{found.relative_to(folder.root).as_posix()}` from `{folder.root}`, "
            "binarised as DAPT reads it; "
            f"it marks {mask.mean() * 100:.0f}% of the image as foreground (training gives it each view's crop and "
            "flip)."
        )
        return ImageView(note, np.asarray(load_image(image_path)), {"mask": mask})

    # --- views and text -----------------------------------------------------------------------
    def encode_split(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_f, z_b) of x * m and x * (1 - m), in one pass through the model's image path."""
        mask = mask.to(images.dtype)
        features = self.model.encode_image(torch.cat([images * mask, images * (1 - mask)]))[FEATURES]
        return features.chunk(2)

    def _text_slots(self) -> list[PromptGroup]:
        """The slots the host's class prompts get: the host's own, then every booster's."""
        model = self.model
        host = [g for g in model.host.own_text_prompts() if g.at == START]
        return [*host, *(g for b in model.boosters.values() for g in b.text_prompts())]

    def background_text(self) -> torch.Tensor:
        """T_bg (N, D): the background prompts through the host's text tower, with the host's and
        every booster's text slots (fixed template embeddings at layer 0)."""
        return self.model.host.text_encoder.forward_shared_prefix(
            self.background_prefix,
            self.background_suffix,
            self.background_eot,
            self._text_slots(),
            self.model.text_hooks(),
        )[0]

    def _embed_background_prompts(self) -> None:
        """Tokenise and embed the background prompts once (never inside a compiled step), with as
        many template tokens in the shared prefix as the slots pre-place after [SOS]."""
        config, text_encoder = self.config, self.model.host.text_encoder
        placed = sum(g.length for g in self._text_slots() if not g.insert)
        head = config.background_template.split("{}")[0].strip()
        head_tokens = int(self.tokenizer([head])[0].argmax()) - 1 if head else 0
        padding = " ".join([PLACEHOLDER] * max(0, placed - head_tokens))
        tokens = self.tokenizer(
            [f"{padding} {config.background_template.format(word)}".strip() for word in config.background_words]
        )
        eot = tokens.argmax(dim=-1)
        device = text_encoder.model.token_embedding.weight.device
        with torch.no_grad():
            embedded = text_encoder.embed_tokens(tokens[:, : int(eot.max()) + 1].to(device)).float()
        cut = 1 + placed
        self.background_prefix = embedded[:1, :cut].clone()
        self.background_suffix = embedded[:, cut:].clone()
        self.background_eot = (eot - cut).to(device)

    # --- losses -------------------------------------------------------------------------------
    def losses(self, state: ForwardState) -> dict[str, torch.Tensor]:
        batch, config = state.batch, self.config
        mask = batch.require(f"{DAPT_INPUT}.{MASK}", "DAPT")
        if batch.images is None:
            raise ValueError("DAPT needs the batch's images: its masked views go through the trainable image path")
        foreground, background = self.encode_split(batch.images, mask)
        if state.epoch < switch_epoch(config, state.epochs):
            return {
                "triplet": config.triplet_weight
                * triplet_pull_push(state.image_features, foreground, background, config.triplet_margin)
            }
        return {
            "foreground": config.foreground_weight
            * foreground_alignment(foreground, state.refined_text, batch.labels, state.logit_scale),
            "background": config.background_weight
            * background_alignment(background, self.background_text(), state.logit_scale),
        }


def _target_class(model: PromptModel, pixels: torch.Tensor, class_name: str | None) -> tuple[int, str]:
    """The class a gradient map targets, and how it was chosen: the image's dataset class when the
    run has it, else the class the model predicts."""
    classnames = model.classnames
    if class_name in classnames:
        return classnames.index(class_name), f"{class_name!r} (the image's class in the dataset)"
    bf16 = next(model.backbone.model.parameters()).dtype == torch.bfloat16  # as the predictor runs a bf16 CLIP
    with torch.no_grad(), torch.autocast(pixels.device.type, dtype=torch.bfloat16, enabled=bf16):
        label = int(model.logits(model.encode_image(pixels)).argmax(dim=-1)[0])
    unknown = f"; its dataset class {class_name!r} is not one of the run's classes" if class_name else ""
    return label, f"{classnames[label]!r} (predicted{unknown})"
