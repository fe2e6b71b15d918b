"""Reference forwards of the prompt-learning hosts, written after each method's released code, not after specpl.

This module is the other side of the equivalence tests (tests/test_equivalence.py, and the boosters'), so it
shares no code with specpl: it imports only torch and open_clip, and a test checks that. It computes what the
released trainers compute, the slow and plain way:
- every class prompt is a full ``context_length`` (77) token sequence, built from the released prompt string
  ``"<prompt prefix> <class name>."``: the frozen [SOS] embedding, the learned context, then the frozen
  embeddings after the first ``n_ctx`` word positions (so leftover init words stay as frozen text);
- the stock open_clip blocks (``model.transformer.resblocks``, ``model.visual.transformer.resblocks``) run one
  by one, with the causal mask for text, and prompts are inserted or overwritten before a block in a plain loop;
- text is pooled at the end-of-text token (the largest id) and projected; the image at [CLS] after ``ln_post``.
Nothing is cached, truncated or shared between classes or images.

Tower functions (the API the booster tests build on):
- `prompt_embeddings` / `with_context` / `context_prompts`: the released prompt learners' text input;
- `encode_text_reference`: text features, deep prompts overwriting positions 1..n before blocks 1, 2, ...
  (IVLP, MaPLe, PromptSRC), and an optional `BlockHook` before every block for other layouts;
- `encode_image_reference`: image features, prompts appended after the patch tokens before ``ln_pre`` and the
  last n positions overwritten before blocks 1, 2, ... (VPT-style: IVLP, MaPLe, PromptSRC), and the same hook;
- the pieces they are made of: `transformer_blocks`, `overwrite`, `causal_mask`, `text_mask`, `text_head`,
  `image_tokens`, `image_head`;
- `encode_text_rep_reference` / `encode_image_rep_reference`: MMRL's representation tokens;
- `clip_text_features` / `clip_image_features`: the frozen CLIP's own features (the regularisers' anchors).
Host forwards (`coop_reference`, ..., `caspl_boost_reference`) take the learned tensors by their released
names and return a `ReferenceStep`: the logits and the training loss of one step.

The blocks must be batch-first (open_clip's default); all arithmetic is in the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

Linear = tuple[Tensor, Tensor]
"""A learned ``nn.Linear`` as (weight, bias), applied with ``F.linear``."""

# PromptSRC's frozen text anchor averages these 60 templates (trainers/imagenet_templates.py, IMAGENET_TEMPLATES)
PROMPTSRC_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
)
MMRL_SCALE = 100.0  # MMRL's logits use a fixed scale, not CLIP's


@dataclass
class ReferenceStep:
    """One training step's outputs: the logits the method classifies with and the loss it backpropagates."""

    logits: Tensor
    loss: Tensor


# --- text input ----------------------------------------------------------------------------------------------


def random_prefix(n_ctx: int) -> str:
    """The released prompt prefix of a randomly initialised context: n placeholder words."""
    return " ".join(["X"] * n_ctx)


def class_prompts(prompt_prefix: str, classnames: Sequence[str]) -> list[str]:
    """The released prompt strings: ``"<prefix> <name>."`` with underscores in names read as spaces."""
    return [prompt_prefix + " " + name.replace("_", " ") + "." for name in classnames]


def prompt_embeddings(model: nn.Module, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
    """(frozen token embeddings (N, 77, W), token ids (N, 77)) of `texts`, tokenised to the full context length."""
    tokens = open_clip.tokenize(list(texts)).to(model.token_embedding.weight.device)
    with torch.no_grad():
        return model.token_embedding(tokens), tokens


def with_context(embeddings: Tensor, ctx: Tensor) -> Tensor:
    """``[SOS] ctx <embeddings after position n>``: the learned context (n, W), or one per prompt (N, n, W),
    replaces word positions 1..n; the rest of each sequence is kept frozen."""
    return overwrite(embeddings, 1, ctx)


def context_prompts(
    model: nn.Module, prompt_prefix: str, classnames: Sequence[str], ctx: Tensor
) -> tuple[Tensor, Tensor]:
    """(prompt embeddings, token ids) of the released prompt learners for `classnames`."""
    embeddings, tokens = prompt_embeddings(model, class_prompts(prompt_prefix, classnames))
    return with_context(embeddings, ctx), tokens


# --- towers --------------------------------------------------------------------------------------------------


BlockHook = Callable[[int, Tensor], Tensor]
"""(block index, hidden states (N, L, W) about to enter that block) -> the states to feed it."""


def causal_mask(length: int, like: Tensor) -> Tensor:
    """CLIP's additive causal mask (-inf above the diagonal) for `length` tokens."""
    return torch.full((length, length), float("-inf"), dtype=like.dtype, device=like.device).triu_(1)


def text_mask(model: nn.Module, x: Tensor) -> Tensor:
    """The model's own causal mask, or one rebuilt at the length of `x` when tokens were inserted (as MMRL does)."""
    mask = model.attn_mask
    return mask if mask.shape[-1] == x.shape[1] else causal_mask(x.shape[1], x)


def transformer_blocks(transformer: nn.Module) -> nn.ModuleList:
    """The stock blocks of one tower, to be called one by one on batch-first (N, L, W) states."""
    if not getattr(transformer, "batch_first", True):
        raise ValueError("the reference runs batch-first open_clip blocks")
    return transformer.resblocks


def overwrite(x: Tensor, start: int, tokens: Tensor) -> Tensor:
    """`x` (N, L, W) with positions start..start+n-1 replaced by `tokens`: (n, W) for every row, or (N, n, W)."""
    tokens = tokens.expand(x.shape[0], -1, -1) if tokens.dim() == 2 else tokens
    return torch.cat([x[:, :start], tokens, x[:, start + tokens.shape[1] :]], dim=1)


def text_head(model: nn.Module, x: Tensor, eot_index: Tensor) -> Tensor:
    """``ln_final``, pooling at `eot_index` (N,), the text projection."""
    x = model.ln_final(x)
    pooled = x[torch.arange(x.shape[0], device=x.device), eot_index]
    projection = model.text_projection
    return projection(pooled) if isinstance(projection, nn.Linear) else pooled @ projection


def encode_text_reference(
    model: nn.Module,
    prompts: Tensor,
    tokens: Tensor,
    deep_prompts: Sequence[Tensor] = (),
    before_block: BlockHook | None = None,
    eot_offset: int = 0,
) -> Tensor:
    """Text features (N, D) of prompt embeddings (N, 77, W), pooled at each row's end-of-text (``tokens.argmax``,
    plus `eot_offset` for tokens a hook inserted before it). ``deep_prompts[i]`` (n, W), or one per prompt
    (N, n, W), overwrites positions 1..n before block i + 1, as the released IVLP and MaPLe blocks do; later
    blocks propagate what is there. `before_block` then sees (and may rewrite) the states before every block."""
    x = prompts + model.positional_embedding
    for layer, block in enumerate(transformer_blocks(model.transformer)):
        if 1 <= layer <= len(deep_prompts):
            x = overwrite(x, 1, deep_prompts[layer - 1])
        if before_block is not None:
            x = before_block(layer, x)
        x = block(x, attn_mask=text_mask(model, x))
    return text_head(model, x, tokens.argmax(dim=-1) + eot_offset)


def image_tokens(visual: nn.Module, images: Tensor) -> Tensor:
    """Patch embedding, [CLS] and positional embedding: the tokens before any prompt and ``ln_pre``."""
    x = visual.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device)
    return torch.cat([cls, x], dim=1) + visual.positional_embedding


def image_head(visual: nn.Module, x: Tensor) -> Tensor:
    """``ln_post`` of [CLS] and the image projection."""
    return visual.ln_post(x[:, 0]) @ visual.proj


def encode_image_reference(
    model: nn.Module,
    images: Tensor,
    shallow_prompts: Tensor | None = None,
    deep_prompts: Sequence[Tensor] = (),
    before_block: BlockHook | None = None,
) -> Tensor:
    """Image features (B, D). `shallow_prompts` (n, W) are appended after the patch tokens before ``ln_pre``;
    ``deep_prompts[i]`` (n, W) overwrites the last n positions before block i + 1 (the released VPT/IVLP/MaPLe
    vision towers); `before_block` then sees (and may rewrite) the states before every block. With none of
    them, this is frozen CLIP's image feature."""
    visual = model.visual
    x = image_tokens(visual, images)
    if shallow_prompts is not None:
        x = torch.cat([x, shallow_prompts.expand(x.shape[0], -1, -1)], dim=1)
    x = visual.ln_pre(x)
    for layer, block in enumerate(transformer_blocks(visual.transformer)):
        if 1 <= layer <= len(deep_prompts):
            x = overwrite(x, x.shape[1] - deep_prompts[layer - 1].shape[-2], deep_prompts[layer - 1])
        if before_block is not None:
            x = before_block(layer, x)
        x = block(x)
    return image_head(visual, x)


def _place_rep(x: Tensor, rep: Tensor, first: bool) -> Tensor:
    """MMRL: insert the K tokens (K, W) right after the first token, or overwrite the K already there."""
    if not first:
        return overwrite(x, 1, rep)
    return torch.cat([x[:, :1], rep.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)


def encode_text_rep_reference(
    model: nn.Module, prompts: Tensor, tokens: Tensor, rep_tokens: Sequence[Tensor], rep_layers: Sequence[int]
) -> Tensor:
    """MMRL's text tower (clip/model_mmrl.py): `rep_layers` are 1-indexed blocks (the released REP_LAYERS). Before
    the first, the K tokens ``rep_tokens[0]`` are inserted after [SOS] (no positional embedding); before each later
    one, ``rep_tokens[i]`` overwrites them. From the first rep layer on, the causal mask is rebuilt at the longer
    length; the feature is pooled at end-of-text + K."""
    x = prompts + model.positional_embedding
    mask = model.attn_mask
    counter = 0
    for index, block in enumerate(transformer_blocks(model.transformer)):
        layer = index + 1
        if layer in rep_layers:
            x = _place_rep(x, rep_tokens[counter], layer == rep_layers[0])
            counter += 1
        if layer >= rep_layers[0]:
            mask = causal_mask(x.shape[1], x)
        x = block(x, attn_mask=mask)
    return text_head(model, x, tokens.argmax(dim=-1) + rep_tokens[0].shape[-2])


def encode_image_rep_reference(
    model: nn.Module, images: Tensor, rep_tokens: Sequence[Tensor], rep_layers: Sequence[int], proj_rep: Tensor
) -> tuple[Tensor, Tensor]:
    """MMRL's image tower: (f_c, f_r). The K tokens are inserted after [CLS] before the first rep layer (after
    ``ln_pre``, no positional embedding) and overwritten before each later one. f_c = ln_post([CLS]) @ proj;
    f_r = mean over the K tokens of ln_post(token), then @ proj_rep."""
    visual = model.visual
    x = visual.ln_pre(image_tokens(visual, images))
    counter = 0
    for index, block in enumerate(transformer_blocks(visual.transformer)):
        layer = index + 1
        if layer in rep_layers:
            x = _place_rep(x, rep_tokens[counter], layer == rep_layers[0])
            counter += 1
        x = block(x)
    n_rep = rep_tokens[0].shape[-2]
    rep = visual.ln_post(x[:, 1 : 1 + n_rep]).mean(dim=1) @ proj_rep
    return image_head(visual, x), rep


@torch.no_grad()
def clip_text_features(model: nn.Module, texts: Sequence[str]) -> Tensor:
    """Frozen CLIP's raw (unnormalised) text features of `texts`, through the same loop with no prompts."""
    embeddings, tokens = prompt_embeddings(model, texts)
    return encode_text_reference(model, embeddings, tokens)


@torch.no_grad()
def clip_image_features(model: nn.Module, images: Tensor) -> Tensor:
    """Frozen CLIP's raw image features (the regularisers' f0)."""
    return encode_image_reference(model, images)


def promptsrc_fixed_embeddings(model: nn.Module, classnames: Sequence[str]) -> Tensor:
    """PromptSRC's ``fixed_embeddings`` (C, D): the raw text features of the 60 templates averaged, not normalised."""
    names = [name.replace("_", " ") for name in classnames]
    per_template = [clip_text_features(model, [t.replace("{}", n) for n in names]) for t in PROMPTSRC_TEMPLATES]
    return torch.cat([features.unsqueeze(1) for features in per_template], dim=1).mean(dim=1)


# --- hosts ---------------------------------------------------------------------------------------------------


def normalise(x: Tensor) -> Tensor:
    """x / ||x||, as the released code writes it."""
    return x / x.norm(dim=-1, keepdim=True)


def clip_logits(image_features: Tensor, text_features: Tensor, scale: Tensor | float) -> Tensor:
    """scale * cos(image, text) for every pair (B, C)."""
    return scale * normalise(image_features) @ normalise(text_features).t()


def _scale(model: nn.Module) -> Tensor:
    return model.logit_scale.exp()


def coop_reference(
    model: nn.Module, images: Tensor, labels: Tensor, classnames: Sequence[str], ctx: Tensor, prompt_prefix: str
) -> ReferenceStep:
    """CoOp (KaiyangZhou/CoOp trainers/coop.py, class token at the end): CE over CLIP-scaled cosine logits."""
    prompts, tokens = context_prompts(model, prompt_prefix, classnames, ctx)
    text = encode_text_reference(model, prompts, tokens)
    logits = clip_logits(encode_image_reference(model, images), text, _scale(model))
    return ReferenceStep(logits, F.cross_entropy(logits, labels))


def cocoop_reference(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    classnames: Sequence[str],
    ctx: Tensor,
    meta_net: tuple[Linear, Linear],
    prompt_prefix: str,
) -> ReferenceStep:
    """CoCoOp (trainers/cocoop.py): the meta-net (linear1, ReLU, linear2) maps the normalised image feature to
    one shift added to every context token; every class prompt is encoded again for each image."""
    image = normalise(encode_image_reference(model, images))
    bias = F.linear(F.relu(F.linear(image, *meta_net[0])), *meta_net[1])  # (B, W)
    embeddings, tokens = prompt_embeddings(model, class_prompts(prompt_prefix, classnames))
    rows = []
    for shift, image_i in zip(bias, image, strict=True):
        text = normalise(encode_text_reference(model, with_context(embeddings, ctx + shift), tokens))
        rows.append(_scale(model) * image_i @ text.t())
    logits = torch.stack(rows)
    return ReferenceStep(logits, F.cross_entropy(logits, labels))


def ivlp_logits(
    model: nn.Module,
    images: Tensor,
    classnames: Sequence[str],
    ctx: Tensor,
    text_deep: Sequence[Tensor],
    vision_prompts: Sequence[Tensor],
    prompt_prefix: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """IVLP's forward (multimodal-prompt-learning trainers/independentVL.py): (logits, normalised text features,
    normalised image features). ``vision_prompts[0]`` is the VisionTransformer's VPT, the rest the blocks'."""
    prompts, tokens = context_prompts(model, prompt_prefix, classnames, ctx)
    text = normalise(encode_text_reference(model, prompts, tokens, text_deep))
    image = normalise(encode_image_reference(model, images, vision_prompts[0], vision_prompts[1:]))
    return _scale(model) * image @ text.t(), text, image


def ivlp_reference(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    classnames: Sequence[str],
    ctx: Tensor,
    text_deep: Sequence[Tensor],
    vision_prompts: Sequence[Tensor],
    prompt_prefix: str,
) -> ReferenceStep:
    """IVLP: independent deep prompts in both towers, CE."""
    logits, _, _ = ivlp_logits(model, images, classnames, ctx, text_deep, vision_prompts, prompt_prefix)
    return ReferenceStep(logits, F.cross_entropy(logits, labels))


def maple_reference(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    classnames: Sequence[str],
    ctx: Tensor,
    proj: Linear,
    compound_prompts_text: Sequence[Tensor],
    compound_prompt_projections: Sequence[Linear],
    prompt_prefix: str,
) -> ReferenceStep:
    """MaPLe (trainers/maple.py): the shallow vision prompt is proj(ctx), before ``ln_pre``; block i + 1 gets the
    text prompt ``compound_prompts_text[i]`` and the vision prompt ``compound_prompt_projections[i]`` of it. CE."""
    prompts, tokens = context_prompts(model, prompt_prefix, classnames, ctx)
    pairs = zip(compound_prompts_text, compound_prompt_projections, strict=True)
    vision_deep = [F.linear(prompt, *layer) for prompt, layer in pairs]
    text = encode_text_reference(model, prompts, tokens, compound_prompts_text)
    image = encode_image_reference(model, images, F.linear(ctx, *proj), vision_deep)
    logits = clip_logits(image, text, _scale(model))
    return ReferenceStep(logits, F.cross_entropy(logits, labels))


def promptsrc_reference(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    classnames: Sequence[str],
    ctx: Tensor,
    text_deep: Sequence[Tensor],
    vision_prompts: Sequence[Tensor],
    prompt_prefix: str,
    fixed_embeddings: Tensor,
    zero_shot_features: Tensor,
    text_loss_weight: float = 25.0,
    image_loss_weight: float = 10.0,
) -> ReferenceStep:
    """PromptSRC (trainers/promptsrc.py, forward_backward): CE + 25 L1(text, g0) + 10 L1(image, f0) + KL(zero-shot
    logits || prompted logits) summed and divided by the number of logits. `fixed_embeddings` (C, D) and
    `zero_shot_features` (B, D) are the frozen anchors (normalised here, as released); see
    `promptsrc_fixed_embeddings` and `clip_image_features`."""
    logits, text, image = ivlp_logits(model, images, classnames, ctx, text_deep, vision_prompts, prompt_prefix)
    fixed, zero_shot = normalise(fixed_embeddings), normalise(zero_shot_features)
    zero_shot_logits = _scale(model) * zero_shot @ fixed.t()
    text_l1 = F.l1_loss(text, fixed, reduction="mean") * text_loss_weight
    image_l1 = F.l1_loss(image, zero_shot, reduction="mean") * image_loss_weight
    log_zero_shot = F.log_softmax(zero_shot_logits, dim=1)
    kl = F.kl_div(F.log_softmax(logits, dim=1), log_zero_shot, reduction="sum", log_target=True)
    loss = F.cross_entropy(logits, labels) + (kl / logits.numel() + text_l1 + image_l1)
    return ReferenceStep(logits, loss)


def kgcoop_reference(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    classnames: Sequence[str],
    ctx: Tensor,
    prompt_prefix: str,
    text_features_old: Tensor,
    weight: float = 8.0,
) -> ReferenceStep:
    """KgCoOp (htyao89/KgCoOp trainers/kgcoop.py): CE + w (1 - mean cos(text, frozen template text))."""
    prompts, tokens = context_prompts(model, prompt_prefix, classnames, ctx)
    text = normalise(encode_text_reference(model, prompts, tokens))
    image = normalise(encode_image_reference(model, images))
    logits = _scale(model) * image @ text.t()
    score = 1.0 - torch.mean(F.cosine_similarity(text, normalise(text_features_old), dim=1, eps=1e-07))
    return ReferenceStep(logits, F.cross_entropy(logits, labels) + weight * score)


def mmrl_reference(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    classnames: Sequence[str],
    template: str,
    compound_rep_tokens: Tensor,
    r2t: Sequence[Linear],
    r2v: Sequence[Linear],
    proj_rep: Tensor,
    rep_layers: Sequence[int],
    text_features_clip: Tensor,
    image_features_clip: Tensor,
    reg_weight: float,
    alpha: float = 0.7,
) -> ReferenceStep:
    """MMRL (yunncheng/MMRL trainers/mmrl.py, MMRL_Loss): the shared R mapped per rep layer into both towers;
    logits are the fusion alpha * 100 cos(f_c, g) + (1 - alpha) * 100 cos(f_r, g); the loss is alpha CE(class) +
    (1 - alpha) CE(rep) + lambda (1 - mean cos(f_c, f0)) + lambda (1 - mean cos(g, g0))."""
    embeddings, tokens = prompt_embeddings(model, [template.format(name.replace("_", " ")) for name in classnames])
    text_rep = [F.linear(compound_rep_tokens, *layer) for layer in r2t]
    vision_rep = [F.linear(compound_rep_tokens, *layer) for layer in r2v]
    text = normalise(encode_text_rep_reference(model, embeddings, tokens, text_rep, rep_layers))
    image, image_rep = encode_image_rep_reference(model, images, vision_rep, rep_layers, proj_rep)
    image, image_rep = normalise(image), normalise(image_rep)
    logits, logits_rep = MMRL_SCALE * image @ text.t(), MMRL_SCALE * image_rep @ text.t()
    reg_image = 1 - torch.mean(F.cosine_similarity(image, normalise(image_features_clip), dim=1))
    reg_text = 1 - torch.mean(F.cosine_similarity(text, normalise(text_features_clip), dim=1))
    loss = alpha * F.cross_entropy(logits, labels) + (1 - alpha) * F.cross_entropy(logits_rep, labels)
    loss = loss + reg_weight * reg_image + reg_weight * reg_text
    return ReferenceStep(alpha * logits + (1 - alpha) * logits_rep, loss)


def zeroshot_reference(model: nn.Module, images: Tensor, labels: Tensor, text_features: Tensor) -> ReferenceStep:
    """Zero-shot CLIP: CLIP-scaled cosine logits against frozen template text features (C, D); CE."""
    logits = clip_logits(encode_image_reference(model, images), text_features, _scale(model))
    return ReferenceStep(logits, F.cross_entropy(logits, labels))


def caspl_boost_reference(
    model: nn.Module,
    images: Tensor,
    classnames: Sequence[str],
    ctx: Tensor,
    text_deep: Sequence[Tensor],
    vision_prompts: Sequence[Tensor],
    teacher_logits: Tensor,
    temperature: float = 1.0,
) -> ReferenceStep:
    """CasPL phase 1 (megvii-research/CasPL trainers/caspl.py): IVLP-layout prompts from random init, trained by
    KL(softmax(teacher / T) || softmax(student / T)) summed, divided by the batch size, times T^2."""
    logits, _, _ = ivlp_logits(model, images, classnames, ctx, text_deep, vision_prompts, random_prefix(ctx.shape[-2]))
    teacher = F.softmax(teacher_logits / temperature, dim=1)
    student = F.log_softmax(logits / temperature, dim=1)
    loss = F.kl_div(student, teacher, reduction="sum") * temperature**2 / teacher.shape[0]
    return ReferenceStep(logits, loss)
