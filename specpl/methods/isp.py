"""ISP booster (Integrated Structural Prompt learning, arXiv 2507.05677), reconstructed from the abstract.

Only the abstract and a figure caption of the paper could be read and no code is public, so this
follows the reconstruction in docs/methods/isp.md (its spec §2-4), not the authors' equations; every
choice below is an option (`ISPConfig`) so the authors' variant can be matched once known.

Structural prompt modules (spec §2), before block l of each tower, through the towers' per-layer
hooks (`image_hook()`, `text_hook()`):
- vision self-structural: the vision prompt tokens P_v attend to the frozen tokens of that layer
  ([CLS] + patches), P_v <- P_v + W_o Attn(LN(P_v) W_q, LN(X_v) W_k, LN(X_v) W_v);
- vision cross-structural: then P_v <- P_v + W_o' Attn(Q = P_v, K = V = E_t^l), E_t^l the layer-l
  end-of-text hidden states of every class prompt: the cheap, image-independent form the spec
  recommends;
- text self-structural: the text prompt tokens P_t attend to each class's own frozen tokens at
  that layer ([SOS] and the class tokens up to its end-of-text; padding is masked), which makes
  the prompts class-specific (spec §2, "consequences");
- text cross-structural: then P_t <- P_t + W_o'' Attn(Q = P_t, K = V = P_v^l).
- Choices: the prompts are the host's own slot tokens, right after the patches and right after
  [SOS] (IVLP's layout, which ISP builds on). Other boosters' slot tokens follow them at the end
  of each sequence (CasPL's frozen boosting prompts) and pass every module unchanged: they belong
  to a frozen model the host adapts from, not to the prompts ISP structures. The modules are built
  only on hosts with deep prompts in both towers (IVLP, MaPLe, PromptSRC); on the other hosts
  (CoOp, CoCoOp, KgCoOp, MMRL) ISP is sample probing alone with `structural="auto"` (the
  default), and `structural="on"` is refused there with the hosts that fit. The modules act on
  layers 0..depth-1 (spec §7: every prompted layer), one module per layer and kind, 1 head of
  width 64. The frozen tokens are read without gradient
  (`detach_sources`, spec §7). E_t^l comes from a frozen pass of the run's template prompts,
  computed once per class set, so the image path never waits on the text pass. P_v^l in the text
  cross module is the host's learned vision prompt of layer l (its slot tokens), not the updated
  P_v: the updated one depends on the image, and the spec's default keeps the text features
  independent of the image (cacheable for a fixed class set); the full, image-conditioned form is
  not built (spec §2, "optional"). `text_structural=False` keeps the modules to the image tower.
- Presets: ``paper`` builds the modules in both towers, as the reconstruction reads the paper. The
  ``default`` preset builds them in the image tower alone: on MaPLe the text modules made training
  collapse (dusk camera: seeds 1 and 3 ended 16 and 23 HM below MaPLe; on seed 1 validation fell
  from 50 % to 22 % in the second epoch at lr 0.0035), and without them ISP + MaPLe trains as
  MaPLe does (bench/DEFAULTS.md).
- Zero start: with ``zero_start="output-projection"`` W_o is zero-initialised, as in the spec; the
  default ``"initial-difference"`` subtracts the same module at its initial weights (a frozen
  copy), f_theta(x) - f_theta0(x). Both are exactly zero at step 0, so step 0 gives the bare
  host's logits exactly, and its gradients (exactly with a zero W_o; with the difference the two
  input gradients cancel up to the order of summation). The default also lets every weight of the
  module learn from the first step, where a zero W_o gives the inner projections no gradient until
  W_o moves (and the all-methods test asks every learned tensor for a first-step gradient).

Sample probing (spec §3) reweights the host's loss per sample by its difficulty under frozen
zero-shot CLIP: p0_i = softmax(s0 cos(f0_i, g0))_{y_i}, f0 the frozen CLIP feature of the same
augmented view (the cached frozen input "clip_image"), g0 the frozen text of the run's template
(the dataset's CoOp template), s0 CLIP's own logit scale; d_i = 1 - p0_i, w_i = (1 + d_i) /
mean_batch(1 + d), detached. Options: `difficulty="joint"` uses d_i = 1 - p0_i p_i with the
prompted model's p_i; `weighting="focal"` uses w_i = d_i^gamma; `probe_templates` picks the frozen
text; `normalise_weights=False` keeps the raw 1 + d_i (spec §7's alternative). The host's weighted
loss is (1/B) sum_i w_i CE_i, so the mean-normalised weights keep the loss scale unchanged.
Weights apply at training only; evaluation has no loss.

How ISP composes with SpecPL (or any booster that adds terms): `PromptModel.forward` fixes the
order. Every booster's `sample_weights` is collected first (several multiply); the host then
computes its own loss with them (for MMRL both its cross-entropies); then every booster's
`losses` are added unweighted. So ISP's weights scale the host's classification loss only, never
SpecPL's granule, counterfactual or semantic-anchor terms, whatever the order the boosters are
listed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from torch import nn
from torch.func import functional_call

from specpl.backbone import Backbone
from specpl.config import check_choice
from specpl.frozen import CLIP_IMAGE, ClipImageFeatures
from specpl.methods.base import DEEP_TEXT_PROMPTS, PROMPTS_IMAGE_TOWER, Booster, BuildContext, ForwardState
from specpl.methods.registry import BOOSTERS
from specpl.methods.zeroshot import template_text_features
from specpl.slots import END, PromptGroup
from specpl.text import PromptTextEncoder
from specpl.vision import PromptImageEncoder

if TYPE_CHECKING:  # the composite this booster is attached to; it imports the contracts, not this
    from specpl.model import PromptModel

# what other modules (the benchmarks, the app) may import from this booster
__all__ = ["ISP", "ISPConfig", "probing_weights"]

IVLP_LAYOUT = frozenset({PROMPTS_IMAGE_TOWER, DEEP_TEXT_PROMPTS})  # hosts whose vision prompts follow the patches
OUTPUT_PROJECTION, INITIAL_DIFFERENCE = "output-projection", "initial-difference"
ZERO_SHOT, JOINT = "zero-shot", "joint"
LINEAR, FOCAL = "linear", "focal"
RUN_TEMPLATE, IMAGENET_TEMPLATES = "run", "openai-imagenet"
AUTO, ON, OFF = "auto", "on", "off"
RECONSTRUCTED = "ours: reconstructed from the ISP abstract (arXiv 2507.05677), no released code"


@dataclass
class ISPConfig:
    structural: Literal["auto", "on", "off"] = (
        AUTO  # the structural modules: auto builds them where the host has IVLP-layout prompts, on requires such a host
    )
    text_structural: bool = False  # also in the text tower (the paper preset; see the module docstring)
    self_structural: bool = True  # vision prompts attend to that layer's [CLS] + patch tokens
    cross_structural: bool = True  # vision prompts attend to the class prompts' end-of-text states
    depth: int = 9  # layers 0..depth-1 carry modules (cut to the towers' depth)
    attn_dim: int = 64  # d of the query/key/value projections
    heads: int = 1
    detach_sources: bool = True  # read the frozen tokens without gradient (spec §7)
    zero_start: str = INITIAL_DIFFERENCE  # or "output-projection" (W_o = 0, the spec's)
    sample_probing: bool = True
    difficulty: str = ZERO_SHOT  # "zero-shot": 1 - p0; "joint": 1 - p0 * p (prompted model)
    weighting: str = LINEAR  # "linear": 1 + d, mean-normalised; "focal": d ** focal_gamma
    focal_gamma: float = 2.0
    normalise_weights: bool = True  # mean 1 per batch (spec §7's recommendation); False: the raw 1 + d (or d ** gamma)
    probe_templates: str = RUN_TEMPLATE  # "run", "openai-imagenet" (80, averaged) or a template with "{}"
    probe_logit_scale: float | None = None  # None: the frozen CLIP's own exp(logit_scale)

    def __post_init__(self) -> None:
        if isinstance(self.structural, bool):  # bundles written before "auto": True meant auto
            self.structural = AUTO if self.structural else OFF
        _choice("structural", self.structural, (AUTO, ON, OFF))


def _choice(option: str, value: str, allowed: tuple[str, ...]) -> None:
    check_choice(f"isp.{option}", value, allowed)


class StructuralAttention(nn.Module):
    """W_o Attn(LN(queries) W_q, LN(sources) W_k, LN(sources) W_v): the update one set of prompt
    tokens gets from the tokens it attends to (spec §2)."""

    def __init__(
        self, query_width: int, source_width: int, dim: int, heads: int, device: torch.device | None = None
    ) -> None:
        super().__init__()
        self.heads = heads
        self.query_norm = nn.LayerNorm(query_width, device=device)
        self.source_norm = nn.LayerNorm(source_width, device=device)
        self.query = nn.Linear(query_width, dim, device=device)
        self.key = nn.Linear(source_width, dim, device=device)
        self.value = nn.Linear(source_width, dim, device=device)
        self.output = nn.Linear(dim, query_width, device=device)

    def forward(
        self, queries: torch.Tensor, sources: torch.Tensor, visible: torch.Tensor | None = None
    ) -> torch.Tensor:
        """queries (B, n, Wq), sources (B, m, Ws), `visible` (B, m) the sources each row may attend
        to (None: all) -> the update (B, n, Wq)."""

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        sources = self.source_norm(sources)
        q = split(self.query(self.query_norm(queries)))
        k, v = split(self.key(sources)), split(self.value(sources))
        mask = None if visible is None else visible[:, None, None, :]
        return self.output(F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).flatten(-2))


class ZeroStart(nn.Module):
    """A `StructuralAttention` whose output is exactly zero before training.

    ``output-projection``: W_o starts at zero. ``initial-difference``: the output is f_theta(x) -
    f_theta0(x), theta0 a frozen copy of the initial weights; gradients still flow into x through
    both terms, so at step 0 the inputs' gradients cancel too."""

    def __init__(self, module: StructuralAttention, mode: str) -> None:
        super().__init__()
        self.module = module
        self.mode = mode
        if mode == OUTPUT_PROJECTION:
            nn.init.zeros_(module.output.weight)
            nn.init.zeros_(module.output.bias)
        else:
            self.initial = nn.Module()  # persistent buffers: the output depends on them
            for name, parameter in module.named_parameters():
                self.initial.register_buffer(_buffer_name(name), parameter.detach().clone())

    def forward(
        self, queries: torch.Tensor, sources: torch.Tensor, visible: torch.Tensor | None = None
    ) -> torch.Tensor:
        out = self.module(queries, sources, visible)
        if self.mode == INITIAL_DIFFERENCE:
            initial = {name: self.initial.get_buffer(_buffer_name(name)) for name, _ in self.module.named_parameters()}
            out = out - functional_call(self.module, initial, (queries, sources, visible))
        return out


def _buffer_name(parameter: str) -> str:
    return parameter.replace(".", "__")


@torch.no_grad()
def at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` in fp32 when it is in a half type (a bf16 frozen tower), else as it is: ISP's modules
    compute in their own precision, fp32 in training and fp64 in the equivalence test."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def end_of_text_states(backbone: Backbone, prompts: list[str], layers: int) -> torch.Tensor:
    """(layers, N, W): the hidden state at each prompt's end-of-text token entering text blocks
    0..layers-1 of the frozen CLIP (sequences cut after the longest end-of-text: exact under the
    causal mask)."""
    model = backbone.model
    device = model.token_embedding.weight.device
    tokens = backbone.tokenizer(prompts)
    eot = tokens.argmax(dim=-1)
    length = int(eot.max()) + 1  # read on the host: the model may sit on any device
    x = model.token_embedding(tokens[:, :length].to(device)) + model.positional_embedding[:length]
    eot = eot.to(device)
    mask = model.attn_mask[:length, :length]
    rows = torch.arange(len(prompts), device=device)
    states = []
    for block in model.transformer.resblocks[:layers]:
        states.append(x[rows, eot])
        x = block(x, attn_mask=mask)
    return at_least_fp32(torch.stack(states))


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


@BOOSTERS.register("isp")
class ISP(Booster):
    name = "isp"
    title = "ISP (reconstructed)"  # no released code: the design follows the abstract (module docstring)
    description = (
        "ISP (reconstructed from the abstract): self- and cross-structural modules on the deep prompts of the image "
        "tower (both towers in the paper preset; IVLP-layout hosts), "
        "and sample probing that reweights the host's loss by frozen zero-shot CLIP difficulty (arXiv 2507.05677)"
    )
    config_class: ClassVar[type] = ISPConfig
    presets: ClassVar[dict[str, dict[str, dict[str, object]]]] = {"paper": {"isp": {"text_structural": True}}}
    sources: ClassVar[dict[str, str]] = {
        "structural": f"{RECONSTRUCTED}; the abstract's structural prompt, on the IVLP layout it extends",
        "text_structural": f"{RECONSTRUCTED}; the abstract relates prompts and tokens in both branches",
        "self_structural": f"{RECONSTRUCTED}; the abstract's self-structural module",
        "cross_structural": f"{RECONSTRUCTED}; the abstract's cross-structural module",
        "depth": f"{RECONSTRUCTED}; every prompted layer of IVLP (9)",
        "attn_dim": f"{RECONSTRUCTED}; a small single-head attention (64)",
        "heads": f"{RECONSTRUCTED}; a small single-head attention",
        "detach_sources": f"{RECONSTRUCTED}; the frozen tokens are read, not trained through",
        "zero_start": f"{RECONSTRUCTED}; any zero start keeps step 0 the bare host, this one trains every weight",
        "sample_probing": f"{RECONSTRUCTED}; the abstract's sample probing module",
        "difficulty": f"{RECONSTRUCTED}; the figure caption reads difficulty off frozen CLIP's prediction",
        "weighting": f"{RECONSTRUCTED}; 1 + d keeps easy samples in the loss",
        "focal_gamma": f"{RECONSTRUCTED}; the usual focal exponent, used only with weighting='focal'",
        "normalise_weights": f"{RECONSTRUCTED}; mean 1 per batch keeps the loss scale",
        "probe_templates": f"{RECONSTRUCTED}; the dataset's hand-crafted template",
        "probe_logit_scale": f"{RECONSTRUCTED}; frozen CLIP's own logit scale",
    }

    @classmethod
    def option_requires(cls, config: ISPConfig) -> dict[str, frozenset[str]]:
        return {"structural": IVLP_LAYOUT} if config.structural == ON else {}

    def __init__(self, config: ISPConfig, context: BuildContext) -> None:
        super().__init__(config, context)
        _choice("zero_start", config.zero_start, (INITIAL_DIFFERENCE, OUTPUT_PROJECTION))
        _choice("difficulty", config.difficulty, (ZERO_SHOT, JOINT))
        _choice("weighting", config.weighting, (LINEAR, FOCAL))
        if config.probe_templates not in (RUN_TEMPLATE, IMAGENET_TEMPLATES) and "{}" not in config.probe_templates:
            raise ValueError(
                f"isp.probe_templates must be 'run', 'openai-imagenet' or a template with '{{}}'; got "
                f"{config.probe_templates!r}"
            )
        if config.attn_dim % config.heads:
            raise ValueError(f"isp.attn_dim ({config.attn_dim}) must be divisible by isp.heads ({config.heads})")
        self.backbone = [context.backbone]  # a list keeps the frozen model out of the module tree
        self.template = context.template
        clip_scale = context.backbone.model.logit_scale.detach().float().exp()
        scale = clip_scale if config.probe_logit_scale is None else clip_scale.new_tensor(config.probe_logit_scale)
        self.register_buffer("probe_scale", scale, persistent=False)  # 0-d: no host sync to read it
        self.vision_self = nn.ModuleList()
        self.vision_cross = nn.ModuleList()
        self.text_self = nn.ModuleList()
        self.text_cross = nn.ModuleList()
        self.layers = 0
        if config.structural != OFF and IVLP_LAYOUT <= context.capabilities:
            self._build_structural(config, context)
        self.trains_image_path = self.layers > 0

    def _build_structural(self, config: ISPConfig, context: BuildContext) -> None:
        model = context.backbone.model
        vision, text = PromptImageEncoder(model), PromptTextEncoder(model)
        self.frozen_tokens = int(model.visual.positional_embedding.shape[0])  # [CLS] + patches
        self.layers = max(0, min(config.depth, vision.depth, text.depth))
        device = model.token_embedding.weight.device

        def module(query_width: int, source_width: int) -> ZeroStart:
            attention = StructuralAttention(query_width, source_width, config.attn_dim, config.heads, device)
            return ZeroStart(attention, config.zero_start)

        if config.self_structural:
            self.vision_self.extend(module(vision.width, vision.width) for _ in range(self.layers))
            if config.text_structural:
                self.text_self.extend(module(text.width, text.width) for _ in range(self.layers))
        if config.cross_structural:
            self.vision_cross.extend(module(vision.width, text.width) for _ in range(self.layers))
            if config.text_structural:
                self.text_cross.extend(module(text.width, vision.width) for _ in range(self.layers))
        if not (config.self_structural or config.cross_structural):
            self.layers = 0

    def attach(self, model: "PromptModel") -> None:
        self.host_of_model = [
            model.host
        ]  # the text cross module reads the host's vision prompts; a list keeps it out of the tree
        self.other_boosters = [b for b in model.boosters.values() if b is not self]  # whose slot tokens pass unchanged

    @staticmethod
    def other_tokens(groups: list[PromptGroup], layer: int) -> int:
        """How many tokens other boosters' slot `groups` hold at the end of a tower's sequence before
        block `layer` (an inserted group stays in place after its last layer)."""
        if any(g.at != END for g in groups):
            raise ValueError("isp: the structural modules need other boosters' slots after the host's (end-anchored)")
        return sum(g.length for g in groups if g.insert and g.first_layer <= layer)

    # --- class set ------------------------------------------------------------------------
    def set_classnames(self, classnames: list[str], novel: bool = False) -> None:
        """The frozen text both parts read: g0 for probing, E_t for the cross-structural module."""
        backbone = self.backbone[0]
        if self.config.sample_probing:
            text = probe_text_features(backbone, self.config.probe_templates, self.template, classnames)
            self.register_buffer("probe_text", text, persistent=False)
        if len(self.vision_cross):
            states = end_of_text_states(backbone, [self.template.format(c) for c in classnames], self.layers)
            self.register_buffer("class_states", states, persistent=False)

    # --- structural prompts -----------------------------------------------------------------
    def image_hook(self):
        return self.restructure if self.layers else None

    def restructure(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Before block `layer`: the host's prompt tokens (after the patches) updated by the self- and
        cross-structural modules; the [CLS] and patch tokens, and other boosters' tokens after the
        host's, pass unchanged."""
        if layer >= self.layers:
            return x
        end = x.shape[1] - self.other_tokens([g for b in self.other_boosters for g in b.image_prompts()], layer)
        if end <= self.frozen_tokens:
            return x
        frozen, prompts = x[:, : self.frozen_tokens], x[:, self.frozen_tokens : end]
        updated = at_least_fp32(prompts)
        if len(self.vision_self):
            sources = frozen.detach() if self.config.detach_sources else frozen
            updated = updated + self.vision_self[layer](updated, at_least_fp32(sources))
        if len(self.vision_cross):
            classes = self.class_states[layer].unsqueeze(0).expand(x.shape[0], -1, -1)
            updated = updated + self.vision_cross[layer](updated, classes)
        return torch.cat([frozen, updated.to(x.dtype), x[:, end:]], dim=1)

    def text_hook(self):
        return self.restructure_text if len(self.text_self) or len(self.text_cross) else None

    def restructure_text(
        self, layer: int, prefix: torch.Tensor, suffix: torch.Tensor, eot: torch.Tensor
    ) -> torch.Tensor:
        """Before text block `layer`: the host's prompt tokens (the prefix after [SOS]) updated by the
        self-structural module, one prefix per class (G, N, P, W), then by the cross-structural
        module; [SOS], other boosters' tokens at the end of the prefix and the class tokens pass
        unchanged."""
        if layer >= self.layers:
            return prefix
        end = prefix.shape[1] - self.other_tokens([g for b in self.other_boosters for g in b.text_prompts()], layer)
        if end <= 1:
            return prefix
        updated = at_least_fp32(prefix[:, 1:end])  # (G, n, W)
        if len(self.text_self):
            groups, classes, length = suffix.shape[:3]
            frozen = torch.cat([prefix[:, None, :1].expand(-1, classes, -1, -1), suffix], dim=2)  # [SOS] + class tokens
            frozen = frozen.detach() if self.config.detach_sources else frozen
            positions = torch.arange(length + 1, device=suffix.device)
            visible = positions <= (eot + 1).unsqueeze(-1)  # up to each class's end-of-text
            queries = updated.unsqueeze(1).expand(-1, classes, -1, -1).flatten(0, 1)
            delta = self.text_self[layer](queries, at_least_fp32(frozen.flatten(0, 1)), visible.flatten(0, 1))
            updated = (queries + delta).unflatten(0, (groups, classes))
        if len(self.text_cross):
            vision = self.host_vision_prompts(layer)
            if vision is not None:
                flat = updated.flatten(0, -3)
                sources = at_least_fp32(vision).unsqueeze(0).expand(flat.shape[0], -1, -1)
                updated = (flat + self.text_cross[layer](flat, sources)).view_as(updated)
        head, tail = prefix[:, :1], prefix[:, end:]
        if updated.dim() == 4:
            head, tail = (t.unsqueeze(1).expand(-1, updated.shape[1], -1, -1) for t in (head, tail))
        return torch.cat([head, updated.to(prefix.dtype), tail], dim=-2)

    def host_vision_prompts(self, layer: int) -> torch.Tensor | None:
        """(m, W_v): the host's learned vision prompt tokens of `layer` (shared by every image)."""
        tokens = [
            group.tokens[layer - group.first_layer]
            for group in self.host_of_model[0].image_prompts()
            if group.first_layer <= layer <= group.last_layer and group.tokens[layer - group.first_layer].dim() == 2
        ]
        return torch.cat(tokens) if tokens else None

    # --- sample probing ----------------------------------------------------------------------
    def frozen_inputs(self) -> list:
        return [ClipImageFeatures(self.backbone[0])] if self.config.sample_probing else []

    def zero_shot_logits(self, clip_image: torch.Tensor) -> torch.Tensor:
        """s0 * cos(f0, g0) over the current classes, at CLIP's own scale unless set."""
        return self.probe_scale * F.normalize(clip_image.to(self.probe_text.dtype), dim=-1) @ self.probe_text.t()

    def sample_weights(self, state: ForwardState) -> torch.Tensor | None:
        if not self.config.sample_probing:
            return None
        zero_shot = self.zero_shot_logits(state.batch.require(CLIP_IMAGE, "ISP's sample probing"))
        c = self.config
        return probing_weights(
            zero_shot, state.batch.labels, c.difficulty, c.weighting, c.focal_gamma, state.logits, c.normalise_weights
        )
