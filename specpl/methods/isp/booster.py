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
  only on hosts with deep prompts in both towers (IVLP, MaPLe, PromptSRC); on MMRL ISP is sample
  probing alone with `structural="auto"`, and `structural="on"` is refused there with the hosts
  that fit. The modules act on
  layers 0..depth-1 (spec §7: every prompted layer), one module per layer and kind, 1 head of
  width 64. The frozen tokens are read without gradient
  (`detach_sources`, spec §7). E_t^l comes from a frozen pass of the run's template prompts,
  computed once per class set, so the image path never waits on the text pass. P_v^l in the text
  cross module is the host's learned vision prompt of layer l (its slot tokens), not the updated
  P_v: the updated one depends on the image, and the spec's default keeps the text features
  independent of the image (cacheable for a fixed class set); the full, image-conditioned form is
  not built (spec §2, "optional"). `text_structural=False` keeps the modules to the image tower.
- Presets: ``paper`` builds the modules in both towers, as the reconstruction reads the paper. The
  ``default`` preset builds none (``structural="off"``): ISP there is sample probing alone, on every
  host it takes. The modules cost IVLP new-class accuracy under every camera they were measured on (round
  13 of bench/DEFAULTS.md: under overcast, safelight, sodium and frost IVLP + ISP summed 54.2 HM
  over zero-shot against IVLP's 72.2, new classes 66.0 % against 77.1 % under overcast; with either
  module alone 59-60; with none 73.2), and PromptSRC's alike (overcast: +5.3 HM with them, +13.3
  without, PromptSRC +13.3); on MaPLe they were level, and its text modules made training collapse
  (dusk camera: seeds 1 and 3 ended 16 and 23 HM below MaPLe). `--option isp.structural=auto` builds the
  image-tower modules, `isp.text_structural=true` the text ones too.
- The modules themselves, and their zero start: `specpl.methods.isp.structural`.

Sample probing (spec §3, `specpl.methods.isp.probing`) reweights the host's loss per sample by its
difficulty under frozen zero-shot CLIP.

Hosts: only those with image-tower prompts (`requires`: IVLP, MaPLe, MMRL, PromptSRC). On CoOp,
CoCoOp and KgCoOp no structural module fits, so ISP could only be its sample probing, and there it
lost to the host alone on every camera it was measured on (CoOp and KgCoOp: 20 of 20 rows, 0.2 to
1.8 HM under, bench/DEFAULTS.md rounds 12-13; CoCoOp trains one image a step, where the weights
divided by their batch mean are all 1 and ISP changes nothing), so the combination is refused. On
the hosts that take it, sample probing alone stayed within a seed sd of the host or above it (round 13).

How ISP composes with SpecPL (or any booster that adds terms): `PromptModel.forward` fixes the
order. Every booster's `sample_weights` is collected first (several multiply); the host then
computes its own loss with them (for MMRL both its cross-entropies); then every booster's
`losses` are added unweighted. So ISP's weights scale the host's classification loss only, never
SpecPL's granule, counterfactual or semantic-anchor terms, whatever the order the boosters are
listed in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from specpl.frozen import CLIP_IMAGE, ClipImageFeatures
from specpl.methods.base import PROMPTS_IMAGE_TOWER, Booster, BuildContext, ForwardState
from specpl.methods.isp.config import (
    FOCAL,
    IMAGENET_TEMPLATES,
    INITIAL_DIFFERENCE,
    IVLP_LAYOUT,
    JOINT,
    LINEAR,
    OFF,
    ON,
    OUTPUT_PROJECTION,
    RUN_TEMPLATE,
    ZERO_SHOT,
    ISPConfig,
    at_least_fp32,
    check_isp_choice,
)
from specpl.methods.isp.probing import probe_text_features, probing_weights
from specpl.methods.isp.structural import StructuralAttention, ZeroStart, end_of_text_states
from specpl.methods.registry import BOOSTERS
from specpl.slots import END, PromptGroup
from specpl.text import PromptTextEncoder
from specpl.vision import PromptImageEncoder

if TYPE_CHECKING:  # the composite this booster is attached to; it imports the contracts, not this
    from specpl.model import PromptModel

RECONSTRUCTED = "ours: reconstructed from the ISP abstract (arXiv 2507.05677), no released code"


@BOOSTERS.register("isp")
class ISP(Booster):
    name = "isp"
    title = "ISP (reconstructed)"  # no released code: the design follows the abstract (module docstring)
    description = (
        "ISP (reconstructed from the abstract): sample probing that reweights the host's loss by frozen zero-shot "
        "CLIP difficulty, and self- and cross-structural modules on the deep prompts of IVLP-layout hosts (both "
        "towers in the paper preset; none in the default preset) (arXiv 2507.05677)"
    )
    config_class: ClassVar[type] = ISPConfig
    requires: ClassVar[frozenset[str]] = frozenset({PROMPTS_IMAGE_TOWER})
    requires_reason: ClassVar[str] = (
        "without them no structural module fits and ISP is its sample probing alone, which lost to CoOp and "
        "KgCoOp on every camera measured (20 of 20 rows, 0.2-1.8 HM) and changes nothing on CoCoOp's one-image "
        "batches"
    )
    presets: ClassVar[dict[str, dict[str, dict[str, object]]]] = {
        "default": {"isp": {"structural": OFF}},  # the modules cost new classes (module docstring)
        "paper": {"isp": {"text_structural": True}},
    }
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
    def label(cls, options: dict[str, object]) -> str:
        """With the structural modules off (the default preset), ISP is its sample probing alone."""
        return "ISP (sample probing, reconstructed)" if options.get("structural") in (OFF, False) else cls.title

    @classmethod
    def option_requires(cls, config: ISPConfig) -> dict[str, frozenset[str]]:
        return {"structural": IVLP_LAYOUT} if config.structural == ON else {}

    def __init__(self, config: ISPConfig, context: BuildContext) -> None:
        super().__init__(config, context)
        check_isp_choice("zero_start", config.zero_start, (INITIAL_DIFFERENCE, OUTPUT_PROJECTION))
        check_isp_choice("difficulty", config.difficulty, (ZERO_SHOT, JOINT))
        check_isp_choice("weighting", config.weighting, (LINEAR, FOCAL))
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
