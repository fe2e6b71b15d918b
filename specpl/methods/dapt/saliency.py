"""DAPT-G's saliency maps: where the *current* prompted model looks for an image's class, over
the patch grid -> bilinear to the image size -> divided by the maximum; thresholded, the foreground
mask DAPT trains with (`specpl.methods.dapt.masks`) and the view it shows (`DAPT.inspect`).
Kept apart from the booster: computing a map needs only a prompted model, not DAPT's losses.

`cam` picks the map; the gradient maps target the label's logit and read the patch tokens only
(never [CLS] or prompt slots):
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
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from specpl.config import check_choice
from specpl.methods.base import compose_hooks
from specpl.methods.dapt.config import CAMS, NORMALISATIONS
from specpl.slots import PromptGroup
from specpl.vision import PromptImageEncoder, VisionOutput

if TYPE_CHECKING:  # the composite whose image path is mapped; it imports the contracts, not this
    from specpl.model import PromptModel


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
    per image) and per head (signed head maps cancel): see the module docstring for the measurements."""
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
