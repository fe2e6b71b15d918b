"""Reference forwards and losses of the boosters on MaPLe, written after each booster's released code, not after
specpl: the other side of tests/test_equivalence_boosters.py.

Like `reference_clip` (whose tower functions it builds on) it shares no code with specpl: it imports only torch,
open_clip's blocks through `reference_clip`, and the standard library, and a test checks that. Every prompt is a
full 77-token sequence through the stock open_clip blocks called one by one; nothing is cached or truncated.
- SpecPL: `Mlrac1e/SpecPL-Prompt-Learning` ``trainers/maple_specpl.py`` (``CustomCLIP.forward``, the bank refiner,
  ``SharedIndivFusion``, ``GranuleModulator``) and ``clip/vae.py`` (the band projections ``proj_low`` /
  ``proj_high``). The band statistics are the frozen decomposer's output, taken as an input.
- CasPL phase 2: `megvii-research/CasPL` ``trainers/caspl_maple.py`` (``[SOS][ctx][words][boost][class]`` as one
  token sequence with the positional embedding added along it, the layout the method notes read in
  `Martinser/CasPL`) and ``clip/model.py`` (``VisionTransformer_MaPLe``: ``[CLS, patches, boost, maple]``;
  ``ResidualAttentionBlock_MaPLe``: each set overwritten per layer while it has tokens).
- DAPT: `Ferenas/DAPT` ``trainers/maple.py`` (``CustomCLIP.forward``: the background prompts through the same text
  tower, the three image passes, the epoch switch ``epoch > 6``) and ``trainers/util.py``
  (``GradCAM.forward_train``: the last image block's ``ln_1``, bilinear with ``align_corners=True``, the batch
  maximum, threshold 0.5).
- ISP has no released code: the reconstruction in its method notes (structural modules before each prompted
  block, sample probing by frozen zero-shot difficulty). Where the notes leave a choice it is read so: the cross
  modules are the same attention as the self ones (layer norms on both sides); a text prompt's frozen tokens are
  its [SOS] and its tokens after the context up to its end-of-text, read without gradient; the class states are
  the frozen tower's end-of-text states of the template prompts; the text cross module reads MaPLe's vision
  prompt of the layer as learned (not as updated from the image: the notes keep the text independent of it); an
  update is W_o Attn(...) itself, the notes' zero-initialised W_o being a matter of the start.

Deliberate differences from the released code, each a numerical guard or a leak the method notes say not to copy:
the ``+ 1e-6`` added to norms and maxima is left out (it moves results by about 1e-6, far above the tests'
1e-8), and DAPT classifies over the C classes only (its released ``[:-25]`` slice keeps 7 background prompts
among the class columns).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import reference_clip as ref
import torch
import torch.nn.functional as F
from reference_clip import Linear, ReferenceStep
from torch import Tensor, nn

LayerNorm = tuple[Tensor, Tensor]
"""A learned ``nn.LayerNorm`` as (weight, bias), applied with ``F.layer_norm`` (eps 1e-5, PyTorch's default)."""


def layer_norm(x: Tensor, params: LayerNorm) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], *params)


def two_layer(x: Tensor, first: Linear, second: Linear, activation: Callable[[Tensor], Tensor]) -> Tensor:
    """Linear -> activation -> Linear (the released ``nn.Sequential`` MLPs)."""
    return F.linear(activation(F.linear(x, *first)), *second)


# --- the host ------------------------------------------------------------------------------------------------


@dataclass
class MaPLePrompts:
    """MaPLe's learned tensors under their released names (``MultiModalPromptLearner``)."""

    ctx: Tensor
    proj: Linear
    compound_prompts_text: Sequence[Tensor]
    compound_prompt_projections: Sequence[Linear]

    @property
    def n_ctx(self) -> int:
        return self.ctx.shape[-2]

    def vision_prompts(self) -> list[Tensor]:
        """The shallow vision prompt proj(ctx), then each deeper layer's projection of its text prompt."""
        pairs = zip(self.compound_prompts_text, self.compound_prompt_projections, strict=True)
        deeper = [F.linear(text, *layer) for text, layer in pairs]
        return [F.linear(self.ctx, *self.proj), *deeper]


def maple_features(
    model: nn.Module, images: Tensor, prompts: Tensor, tokens: Tensor, maple: MaPLePrompts
) -> tuple[Tensor, Tensor]:
    """(raw text features of the prompt embeddings, raw image features): MaPLe's two towers."""
    text = ref.encode_text_reference(model, prompts, tokens, maple.compound_prompts_text)
    vision = maple.vision_prompts()
    return text, ref.encode_image_reference(model, images, vision[0], vision[1:])


# --- SpecPL ----------------------------------------------------------------------------------------------------


@dataclass
class BandProjection:
    """``VAEAttributeTeacher.proj_low`` / ``proj_high``: LN -> Linear -> SiLU -> Linear, frozen."""

    ln: LayerNorm
    first: Linear
    second: Linear

    def __call__(self, stats: Tensor) -> Tensor:
        return two_layer(layer_norm(stats, self.ln), self.first, self.second, F.silu)


@dataclass
class SpecPLTensors:
    """The SpecPL tensors of ``GlobalAttrBankRefiner`` under their released names."""

    attr_tokens: Tensor  # the bank (M, D)
    agg: tuple[Linear, Linear]
    ln: LayerNorm
    proj_low: BandProjection
    proj_high: BandProjection
    fusion_ln_s: LayerNorm
    fusion_ln_a: LayerNorm
    fusion_mlp: tuple[Linear, Linear]
    fusion_ln_out: LayerNorm
    modulator_ln: LayerNorm
    modulator_mlp: tuple[Linear, Linear]
    tau: float = 0.07  # ATTR_BANK_TAU
    lmbd_sem: float = 0.1  # ATTR_LAMBDA
    lmbd_g_f: float = 0.1  # ATTR_LAMBDA_G_F
    lmbd_g_cf: float = 0.1  # ATTR_LAMBDA_G_CF

    def refine_text(self, text_features: Tensor) -> Tensor:
        """normalise(LN(q + agg([q; softmax(q B^T / tau) B]))), q the normalised text."""
        q = ref.normalise(text_features)
        bank = ref.normalise(self.attr_tokens)
        r = (q @ bank.t() / self.tau).softmax(dim=-1) @ bank
        delta = two_layer(torch.cat([q, r], dim=-1), *self.agg, F.gelu)
        return ref.normalise(layer_norm(q + delta, self.ln))

    def fusion(self, shared: Tensor, indiv: Tensor) -> Tensor:
        """``SharedIndivFusion``: normalise(LN_out(LN_s(a) + MLP([LN_s(a); LN_a(g)])))."""
        s = layer_norm(shared, self.fusion_ln_s)
        delta = two_layer(torch.cat([s, layer_norm(indiv, self.fusion_ln_a)], dim=-1), *self.fusion_mlp, F.silu)
        return ref.normalise(layer_norm(s + delta, self.fusion_ln_out))

    def granule_modulator(self, cond: Tensor, img_feat: Tensor) -> Tensor:
        """``GranuleModulator``: [s, b] = MLP(LN(cond)); normalise((1 + tanh s) * v + b)."""
        s, b = two_layer(layer_norm(cond, self.modulator_ln), *self.modulator_mlp, F.silu).chunk(2, dim=-1)
        return ref.normalise((1.0 + torch.tanh(s)) * img_feat + b)


def specpl_maple_reference(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    classnames: Sequence[str],
    prompt_prefix: str,
    maple: MaPLePrompts,
    specpl: SpecPLTensors,
    band_stats: Tensor,
    perm: Tensor,
) -> ReferenceStep:
    """MaPLe + SpecPL (``CustomCLIP.forward``): CE on refined-text logits + 0.1 L_sem (low band, raw text,
    detached probabilities) + 0.1 CE of the factual FiLM logits + 0.1 CE of the counterfactual ones (the high band
    of sample perm[i], its label). `band_stats` (B, 2, S) are the low and high band statistics; `perm` is the
    batch permutation the released code draws with ``torch.randperm``."""
    prompts, tokens = ref.context_prompts(model, prompt_prefix, classnames, maple.ctx)
    text_features, image_features = maple_features(model, images, prompts, tokens, maple)
    logit_scale = model.logit_scale.exp()
    refined_text = specpl.refine_text(text_features)
    image_n, text_n = ref.normalise(image_features), ref.normalise(refined_text)
    logits = logit_scale * image_n @ text_n.t()
    loss_cls = F.cross_entropy(logits, labels)
    with torch.no_grad():  # teacher_bands: the frozen projections, then L2-normalised
        t_low = ref.normalise(specpl.proj_low(band_stats[:, 0]))
        t_high = ref.normalise(specpl.proj_high(band_stats[:, 1]))
        p = logits.detach().softmax(dim=-1)
    t_exp = ref.normalise(p @ ref.normalise(text_features))
    loss_sem = (1.0 - (t_exp * t_low).sum(dim=-1)).mean()
    shared = ref.normalise(text_features[labels])  # SHARED_SOURCE raw_text
    img_g_f = specpl.granule_modulator(specpl.fusion(shared, t_high), image_n)
    loss_g_f = F.cross_entropy(logit_scale * img_g_f @ text_n.t(), labels)
    img_g_cf = specpl.granule_modulator(specpl.fusion(shared, t_high[perm]), image_n)
    loss_g_cf = F.cross_entropy(logit_scale * img_g_cf @ text_n.t(), labels[perm])
    loss = loss_cls + specpl.lmbd_sem * loss_sem + specpl.lmbd_g_f * loss_g_f + specpl.lmbd_g_cf * loss_g_cf
    return ReferenceStep(logits, loss)


# --- CasPL phase 2 ---------------------------------------------------------------------------------------------


def caspl_maple_reference(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    classnames: Sequence[str],
    prompt_prefix: str,
    maple: MaPLePrompts,
    boost_text: Sequence[Tensor],
    boost_vision: Sequence[Tensor],
) -> ReferenceStep:
    """MaPLe + CasPL (``CasPL_MaPLe``): the phase-1 (teacher) prompts frozen beside MaPLe's, CE.

    Text: the prompt string is the host's prefix, L placeholder words and the class, so that one 77-token sequence
    holds ``[SOS][ctx][the prefix's frozen words][boost][class]`` with the positional embedding added along it;
    before block l >= 1 MaPLe's ``compound_prompts_text[l - 1]`` overwrites the context and ``boost_text[l]`` the
    boosting positions, each while it has a layer. Vision: ``[CLS, patches, boost, maple]`` before ``ln_pre``, each
    set overwritten in place likewise."""
    n, n_boost, deep = maple.n_ctx, boost_text[0].shape[-2], maple.compound_prompts_text
    texts = ref.class_prompts(f"{prompt_prefix} {ref.random_prefix(n_boost)}", classnames)
    embeddings, tokens = ref.prompt_embeddings(model, texts)
    start = int(ref.prompt_embeddings(model, [prompt_prefix])[1][0].argmax())  # [SOS] + the prefix's words
    rows = len(classnames)
    x = torch.cat([embeddings[:, :1], maple.ctx.expand(rows, -1, -1), embeddings[:, 1 + n : start]], dim=1)
    x = torch.cat([x, boost_text[0].expand(rows, -1, -1), embeddings[:, start + n_boost :]], dim=1)
    x = x + model.positional_embedding
    for layer, block in enumerate(model.transformer.resblocks):
        if 1 <= layer <= len(deep):
            x = torch.cat([x[:, :1], deep[layer - 1].expand(rows, -1, -1), x[:, 1 + n :]], dim=1)
        if 1 <= layer < len(boost_text):
            x = torch.cat([x[:, :start], boost_text[layer].expand(rows, -1, -1), x[:, start + n_boost :]], dim=1)
        x = block(x, attn_mask=model.attn_mask)
    text = ref.text_head(model, x, tokens.argmax(dim=-1))

    visual, vision, n_boost_vision, batch = model.visual, maple.vision_prompts(), boost_vision[0].shape[-2], len(images)
    x = ref.image_tokens(visual, images)
    x = visual.ln_pre(torch.cat([x, boost_vision[0].expand(batch, -1, -1), vision[0].expand(batch, -1, -1)], dim=1))
    for layer, block in enumerate(visual.transformer.resblocks):
        end = x.shape[1] - n
        if 1 <= layer < len(boost_vision):
            x = torch.cat([x[:, : end - n_boost_vision], boost_vision[layer].expand(batch, -1, -1), x[:, end:]], dim=1)
        if 1 <= layer < len(vision):
            x = torch.cat([x[:, :end], vision[layer].expand(batch, -1, -1)], dim=1)
        x = block(x)
    logits = ref.clip_logits(ref.image_head(visual, x), text, model.logit_scale.exp())
    return ReferenceStep(logits, F.cross_entropy(logits, labels))


# --- DAPT ------------------------------------------------------------------------------------------------------

BACKGROUND_CATEGORY = (
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
BACKGROUND_CATEGORY_FOOD = ("table", "forks", "tablecloth", "hands", "spoon", "glasses", "dishes")
BG_TEMPLATE = "a clean origami {}."


def dapt_text_features(model: nn.Module, classnames: Sequence[str], prompt_prefix: str, maple: MaPLePrompts) -> Tensor:
    """Normalised text features (C + 32, D): the class prompts, then the 32 background prompts, whose first-layer
    input is their frozen token embeddings (no context); deeper blocks overwrite positions 1..n in every row."""
    prompts, tokens = ref.context_prompts(model, prompt_prefix, classnames, maple.ctx)
    words = (*BACKGROUND_CATEGORY, *BACKGROUND_CATEGORY_FOOD)
    background, bg_tokens = ref.prompt_embeddings(model, [BG_TEMPLATE.format(word) for word in words])
    prompts, tokens = torch.cat([prompts, background]), torch.cat([tokens, bg_tokens])
    return ref.normalise(ref.encode_text_reference(model, prompts, tokens, maple.compound_prompts_text))


def dapt_gradcam_reference(
    model: nn.Module, images: Tensor, labels: Tensor, text_features: Tensor, maple: MaPLePrompts, threshold: float = 0.5
) -> tuple[Tensor, Tensor]:
    """(saliency maps, binary masks) (B, 1, H, W) of ``GradCAM.forward_train``: the gradient of mean(logits *
    onehot(label)) at the last image block's ``ln_1`` output, averaged over the patch tokens (between [CLS] and the
    n prompts), weights their activations; ReLU, bilinear upsampling with ``align_corners=True``, divided by the
    batch's maximum, thresholded. `text_features` are every normalised text row (``forward_test``'s logits)."""
    recorded: list[Tensor] = []
    ln_1 = model.visual.transformer.resblocks[-1].ln_1
    handle = ln_1.register_forward_hook(lambda module, args, output: recorded.append(output))
    try:
        vision = maple.vision_prompts()
        image = ref.normalise(ref.encode_image_reference(model, images, vision[0], vision[1:]))
    finally:
        handle.remove()
    logits = model.logit_scale.exp() * image @ text_features.t()
    one_hot_labels = F.one_hot(labels, num_classes=logits.shape[1]).to(logits.dtype)
    (gradients,) = torch.autograd.grad((logits * one_hot_labels).mean(), recorded[-1])
    patches = slice(1, recorded[-1].shape[1] - maple.n_ctx)
    visual_feature = recorded[-1].detach()[:, patches]
    visual_gradient = gradients[:, patches].mean(dim=1, keepdim=True)  # one weight per channel
    cam = F.relu(torch.bmm(visual_feature, visual_gradient.transpose(1, 2))).transpose(1, 2)  # (B, 1, patches)
    side = math.isqrt(cam.shape[-1])
    cam = F.interpolate(cam.reshape(-1, 1, side, side), size=images.shape[-2:], mode="bilinear", align_corners=True)
    saliency_map = cam / cam.max()
    return saliency_map, (saliency_map >= threshold).to(images.dtype)


def dapt_maple_reference(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    classnames: Sequence[str],
    prompt_prefix: str,
    maple: MaPLePrompts,
    mask: Tensor,
    epoch: int,
) -> ReferenceStep:
    """MaPLe + DAPT (``CustomCLIP.forward``): CE + (0-based `epoch` > 6: 0.1 CE(s sg(z_f) T_fg, y) + 0.5 CE(s z_b T_bg,
    argmax z_b T_bg); else 0.8 triplet(z, sg z_f, sg z_b, margin 1.5)). T_fg: the C class rows, T_bg: the last 25
    background rows; z, z_f, z_b: the normalised features of x, x * mask and x * (1 - mask)."""
    text = dapt_text_features(model, classnames, prompt_prefix, maple)
    text_fg, text_bg = text[: len(classnames)], text[-len(BACKGROUND_CATEGORY) :]
    vision = maple.vision_prompts()

    def encode(x: Tensor) -> Tensor:
        return ref.normalise(ref.encode_image_reference(model, x, vision[0], vision[1:]))

    logit_scale = model.logit_scale.exp()
    image_features, image_fg, image_bg = encode(images), encode(images * mask), encode(images * (1 - mask))
    logits = logit_scale * image_features @ text_fg.t()
    if epoch > 6:
        pseudo_label = torch.argmax(image_bg @ text_bg.t(), dim=-1)
        loss_fg = F.cross_entropy(logit_scale * image_fg.detach() @ text_fg.t(), labels)
        loss_re = 0.1 * loss_fg + 0.5 * F.cross_entropy(logit_scale * image_bg @ text_bg.t(), pseudo_label)
    else:
        loss_re = 0.8 * F.triplet_margin_loss(image_features, image_fg.detach(), image_bg.detach(), margin=1.5)
    return ReferenceStep(logits, F.cross_entropy(logits, labels) + loss_re)


# --- ISP (reconstruction) ----------------------------------------------------------------------------------------


@dataclass
class StructuralAttention:
    """One structural module: W_o softmax(LN(P) W_q (LN(X) W_k)^T / sqrt(d_head)) LN(X) W_v, over `heads` heads."""

    query_norm: LayerNorm
    source_norm: LayerNorm
    query: Linear
    key: Linear
    value: Linear
    output: Linear
    heads: int = 1

    def __call__(self, prompts: Tensor, sources: Tensor, visible: Tensor | None = None) -> Tensor:
        """The update of `prompts` (G, n, Wq) from `sources` (G, m, Ws); `visible` (G, m): what each row reads."""

        def split(t: Tensor) -> Tensor:  # (G, T, d) -> (G, heads, T, d / heads)
            return t.reshape(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2)

        sources = layer_norm(sources, self.source_norm)
        q = split(F.linear(layer_norm(prompts, self.query_norm), *self.query))
        k, v = split(F.linear(sources, *self.key)), split(F.linear(sources, *self.value))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if visible is not None:
            scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
        attended = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(prompts.shape[0], prompts.shape[1], -1)
        return F.linear(attended, *self.output)


@dataclass
class ISPTensors:
    """The structural modules of each prompted layer 0..J-1."""

    vision_self: Sequence[StructuralAttention]
    vision_cross: Sequence[StructuralAttention]
    text_self: Sequence[StructuralAttention]
    text_cross: Sequence[StructuralAttention]


@torch.no_grad()
def end_of_text_states(model: nn.Module, texts: Sequence[str], layers: int) -> Tensor:
    """(layers, N, W): the frozen text tower's hidden states at each text's end-of-text entering blocks 0..layers-1."""
    embeddings, tokens = ref.prompt_embeddings(model, texts)
    x, rows, eot = embeddings + model.positional_embedding, torch.arange(len(texts)), tokens.argmax(dim=-1)
    states = []
    for block in model.transformer.resblocks[:layers]:
        states.append(x[rows, eot])
        x = block(x, attn_mask=model.attn_mask)
    return torch.stack(states)


@torch.no_grad()
def probing_weights(clip_image: Tensor, clip_text: Tensor, labels: Tensor, scale: Tensor | float) -> Tensor:
    """Sample probing: w_i = (1 + d_i) / mean(1 + d), d_i = 1 - softmax(s cos(f0_i, g0))_{y_i} under frozen CLIP."""
    confidence = (scale * ref.normalise(clip_image) @ ref.normalise(clip_text).t()).softmax(dim=-1)
    hardness = 1 + (1 - confidence[torch.arange(labels.shape[0]), labels])
    return hardness / hardness.mean()


def isp_maple_reference(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    classnames: Sequence[str],
    prompt_prefix: str,
    maple: MaPLePrompts,
    isp: ISPTensors,
    class_states: Tensor,
    weights: Tensor,
) -> ReferenceStep:
    """MaPLe + ISP as reconstructed: before block l < J (after MaPLe's replacement, and after ``ln_pre`` at l = 0)
    - text: the context positions P_t of every class prompt attend to that prompt's frozen tokens ([SOS] and the
      rest up to its end-of-text, read without gradient), then to MaPLe's vision prompt of layer l;
    - vision: the prompt tokens after the patches attend to [CLS] and the patches (without gradient), then to
      `class_states[l]` (C, W_t), the frozen end-of-text states of the template prompts;
    each update added to the prompts. The loss is (1/B) sum_i w_i CE_i with the probing `weights`."""
    prompts, tokens = ref.context_prompts(model, prompt_prefix, classnames, maple.ctx)
    vision, n, deep, rows = maple.vision_prompts(), maple.n_ctx, maple.compound_prompts_text, len(classnames)
    positions = torch.arange(tokens.shape[1])
    visible = torch.cat([positions[:1], positions[1 + n :]]).unsqueeze(0) <= tokens.argmax(dim=-1, keepdim=True)
    x = prompts + model.positional_embedding
    for layer, block in enumerate(model.transformer.resblocks):
        if 1 <= layer <= len(deep):
            x = torch.cat([x[:, :1], deep[layer - 1].expand(rows, -1, -1), x[:, 1 + n :]], dim=1)
        if layer < len(isp.text_self):
            frozen = torch.cat([x[:, :1], x[:, 1 + n :]], dim=1).detach()
            context = x[:, 1 : 1 + n]
            context = context + isp.text_self[layer](context, frozen, visible)
            context = context + isp.text_cross[layer](context, vision[layer].expand(rows, -1, -1))
            x = torch.cat([x[:, :1], context, x[:, 1 + n :]], dim=1)
        x = block(x, attn_mask=model.attn_mask)
    text = ref.text_head(model, x, tokens.argmax(dim=-1))

    visual, batch = model.visual, len(images)
    x = ref.image_tokens(visual, images)
    frozen_tokens = x.shape[1]
    x = visual.ln_pre(torch.cat([x, vision[0].expand(batch, -1, -1)], dim=1))
    for layer, block in enumerate(visual.transformer.resblocks):
        if 1 <= layer < len(vision):
            x = torch.cat([x[:, : x.shape[1] - n], vision[layer].expand(batch, -1, -1)], dim=1)
        if layer < len(isp.vision_self):
            frozen, prompt = x[:, :frozen_tokens], x[:, frozen_tokens:]
            prompt = prompt + isp.vision_self[layer](prompt, frozen.detach())
            prompt = prompt + isp.vision_cross[layer](prompt, class_states[layer].expand(batch, -1, -1))
            x = torch.cat([frozen, prompt], dim=1)
        x = block(x)
    logits = ref.clip_logits(ref.image_head(visual, x), text, model.logit_scale.exp())
    return ReferenceStep(logits, (weights * F.cross_entropy(logits, labels, reduction="none")).mean())
