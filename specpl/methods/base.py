"""The pieces every method composes: a host (how prompts produce text and image features, and its
own loss) and any number of boosters (plug-ins that add tower prompts, refine text, reweight or add
losses). `specpl.model.PromptModel` wires them together over one frozen CLIP (a `model` argument
below is one); the trainer, the feature cache, the predictor and the counterfactual only ever talk
to it, so a new host (a module) or booster (a package) never touches them. This module holds only
these contracts: composing (`specpl.factory`) and the composite (`specpl.model`) live apart.

The seams, all optional for a component:
- tower prompts: `text_prompts()` / `image_prompts()` return `specpl.slots.PromptGroup`s, and
  `image_hook()` / `text_hook()` a per-layer hook in each tower (`specpl.slots.LayerHook`,
  `specpl.text.TextHook`): cross-modal and structural modules read and rewrite the tokens there;
- frozen inputs: `frozen_inputs()` names per-image outputs to compute once per (image, view)
  (`specpl.frozen`); the batch carries them by name in `Batch.frozen`;
- lifecycle: `prepare(first_batches)` before training, `on_epoch_end(epoch, epochs)`, `finalise()`;
- losses: boosters first set per-sample weights (`sample_weights`), then the host computes its
  own loss with them, then every booster adds its terms on top (unweighted). So a booster that
  reweights the host's loss (ISP) and one that adds terms (SpecPL) compose in a fixed order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from specpl.backbone import Backbone
from specpl.slots import LayerHook, PromptGroup
from specpl.text import PromptTextEncoder, TextHook
from specpl.vision import VisionOutput

if TYPE_CHECKING:
    from specpl.config import DecomposerConfig
    from specpl.frozen import FrozenInput

IMAGE_FEATURES = "image"  # the frozen-input name of a cached image path's outputs
FEATURES = "features"  # the primary (class-token) image feature in an image-output dict

# Capabilities a host may declare, which boosters may require (see `Booster.requires`).
PROMPTS_IMAGE_TOWER = "image-tower prompts"
DEEP_TEXT_PROMPTS = "deep text prompts"
CONTEXT_TOKENS = "a learned text context"


@dataclass
class Batch:
    """One training batch: labels, the images when gradients must reach the image tower, and the
    frozen per-image inputs by name (`specpl.frozen`)."""

    labels: torch.Tensor
    images: torch.Tensor | None = None
    frozen: dict[str, torch.Tensor] = field(default_factory=dict)

    def require(self, name: str, who: str) -> torch.Tensor:
        if name not in self.frozen:
            raise ValueError(
                f"{who} needs the frozen input {name!r}, which this batch lacks (has: {sorted(self.frozen) or 'none'})"
            )
        return self.frozen[name]


@dataclass
class ForwardState:
    """What host and booster losses may look at; filled in by `PromptModel.forward`."""

    batch: Batch
    image: dict[str, torch.Tensor]  # image outputs; image[FEATURES] is the (B, D) class-token feature
    raw_text: torch.Tensor  # (C, D) or (B, C, D) raw prompted text features
    refined_text: torch.Tensor  # same shape, after every booster's refinement
    logits: torch.Tensor  # (B, C) the host's logits
    logit_scale: torch.Tensor | float
    epoch: int = 0
    epochs: int = 1
    sample_weights: torch.Tensor | None = None  # (B,) set by reweighting boosters, read by the host's loss
    anchor: torch.Tensor | None = None  # the host's label-free logits for boosters, if not `logits`
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def image_features(self) -> torch.Tensor:
        return self.image[FEATURES]

    @property
    def anchor_logits(self) -> torch.Tensor:
        """The logits a booster's label-free terms read (SpecPL's L_sem): the host's logits, or
        the branch it names (MMRL: the class branch on raw text)."""
        return self.logits if self.anchor is None else self.anchor


@dataclass
class BuildContext:
    """What a host or booster may know about the run it is built into."""

    backbone: Backbone
    classnames: list[str]
    template: str
    host_name: str
    booster_names: list[str]
    decomposer: "DecomposerConfig | None" = None
    capabilities: frozenset[str] = frozenset()
    dataset: str | None = None  # the registered dataset name, for per-dataset defaults
    preset: str = "default"  # the named option set the options were resolved with (recorded in bundles)
    # builds the band decomposer of a config on a device (`specpl.bands.build_decomposer`, given by
    # the factory): a component asks for it by need, and the contracts know no decomposer
    make_decomposer: Callable[[DecomposerConfig, torch.device], nn.Module] | None = field(default=None, repr=False)
    _decomposer_module: list[nn.Module] = field(default_factory=list, repr=False)

    @property
    def embed_dim(self) -> int:
        return self.backbone.embed_dim

    @property
    def built_decomposer(self) -> nn.Module | None:
        """The decomposer if a component has asked for it, else None."""
        return self._decomposer_module[0] if self._decomposer_module else None

    def build_decomposer(self) -> nn.Module:
        """The run's band decomposer, built once and shared by every component that needs it."""
        if not self._decomposer_module:
            if self.decomposer is None or self.make_decomposer is None:
                raise ValueError(
                    f"{self.host_name}+{'+'.join(self.booster_names)} needs a band decomposer, and none is configured"
                )
            device = self.backbone.model.logit_scale.device
            if device.type == "meta":
                device = torch.device("cpu")
            self._decomposer_module.append(self.make_decomposer(self.decomposer, device))
        return self._decomposer_module[0]


@dataclass(frozen=True)
class ImageQuery:
    """An interface asks what a component shows of one image: its file, its class in the dataset
    when known, and whether the component may open files its options name (not on a shared server)."""

    image_path: Path
    class_name: str | None = None
    read_files: bool = True


@dataclass(frozen=True)
class SwapQuery:
    """An interface asks what a component makes of swapping bands between preprocessed images
    (N, 3, H, W), split by the run's `decomposer` (`specpl.counterfactual`)."""

    images: torch.Tensor
    decomposer: nn.Module


@dataclass
class ImageView:
    """What a component shows of one image, for any interface: the image as the model sees it
    (H, W, 3 uint8), maps over it by name (a float map in [0, 1] is a heat map, a bool map a region
    kept), and a note in Markdown. With no `image` there is only the note (why nothing is shown)."""

    note: str
    image: np.ndarray | None = None
    maps: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class SwapRows:
    """What a component makes of a band swap: for each (semantic image X, granule image Y), its
    logits (C,) and the cosine between X's feature before and after Y's band modulates it."""

    rows: dict[tuple[int, int], tuple[torch.Tensor, float]]


Inspection = ImageView | SwapRows


class Component(nn.Module):
    """What hosts and boosters share: a name, an options dataclass, a one-line description, and
    every seam with a do-nothing default."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    config_class: ClassVar[type]
    # a trainable tensor in the image path that no prompt group shows (then images are encoded
    # with gradients every step instead of being cached per view)
    trains_image_path: ClassVar[bool] = False
    # Named option sets (`specpl.config.PRESETS`): {preset: {component name or "train": values}}. The
    # options dataclass's defaults are the product's; a preset names only what it changes, for this
    # component or another (a host's training schedule, a booster's values for itself).
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {}
    # Where each value of the ``paper`` preset comes from (repository, commit, file and line, or a
    # paper section), keyed "<option>" for this component's options, "train.<key>" for the training
    # values its presets set, and "train@<dataset>.<key>" for a dataset's own schedule. A key with no
    # published value says so ("ours: ..."). `specpl methods --preset paper` shows them, and a run
    # records them in config.json; tests/test_sources.py checks that every value has one.
    sources: ClassVar[dict[str, str]] = {}
    # the sources of a paper variant's values: {variant: {"<component>.<option>" or "train.<key>": source}}
    variant_sources: ClassVar[dict[str, dict[str, str]]] = {}
    # what a paper preset reproduces where a component has more than one ({preset: "which table"})
    preset_notes: ClassVar[dict[str, str]] = {}
    title: ClassVar[str] = ""  # the name in tables and the app ("CoOp"); `label` qualifies it by options

    @classmethod
    def label(cls, options: dict[str, Any]) -> str:
        """The name of this component as built with `options`: a variant that is ours, or a
        reconstruction, says so (e.g. "SpecPL (new classes unrefined, ours)")."""
        return cls.title or cls.name

    def __init__(self, config: Any, context: BuildContext) -> None:
        super().__init__()
        self.config = config

    def resolved_options(self) -> dict[str, Any]:
        """The options as built (values derived at build time filled in); written to bundles."""
        return dataclasses.asdict(self.config)

    @classmethod
    def settle_options(cls, options: Any, given: set[str]) -> None:
        """Adjust `options` (this component's dataclass, presets and the user's values applied) for
        what the user gave by name in `given`: an explicit choice that another option would
        silently override turns that one off (a context host's explicit context)."""

    def attach(self, model: nn.Module) -> None:
        """Called once by the `PromptModel` this component is composed into, before the class
        names are set; a component that needs the whole model (DAPT encodes masked views through
        it) keeps a reference here, outside its module tree."""

    def set_classnames(self, classnames: list[str], novel: bool = False) -> None:
        """Called whenever the class set changes; `novel` marks classes the model was not trained
        on. A host builds its class prompts here; a booster that depends on the classes rebuilds."""

    def wants_first_batches(self) -> int:
        """How many training batches `prepare` wants before the first step (SpecPL's bank init)."""
        return 0

    def text_prompts(self) -> list[PromptGroup]:
        return []

    def image_prompts(self) -> list[PromptGroup]:
        return []

    def image_hook(self) -> LayerHook | None:
        return None

    def text_hook(self) -> TextHook | None:
        return None

    def frozen_inputs(self) -> list["FrozenInput"]:
        return []

    def inspect(self, model: nn.Module, query: ImageQuery | SwapQuery) -> Inspection | None:
        """This component's own view for an interface, as plain data the interface draws whatever
        the component: of one image (`ImageQuery` -> `ImageView`; DAPT's foreground mask) or of a
        band swap (`SwapQuery` -> `SwapRows`; SpecPL's granule path). None: nothing to show."""
        return None

    def prepare(self, batches: list[Batch]) -> None:
        """Called once before training with the first frozen batches."""

    def on_epoch_end(self, epoch: int, epochs: int) -> None:
        """Called after each training epoch (1-based `epoch`)."""

    def finalise(self) -> None:
        """Called once after the last epoch, before evaluation and export."""


class Host(Component):
    """A prompt-learning host. Subclasses set `name`, `config_class`, `training_defaults` and
    implement `set_classnames` and `encode_text`."""

    capabilities: ClassVar[frozenset[str]] = frozenset()
    conditions_text_on_image: ClassVar[bool] = False  # True when text depends on each image (CoCoOp)
    accepts_boosters: ClassVar[bool] = True  # False for a host that is a phase of a booster (CasPL's distillation)
    learns_from_labels: ClassVar[bool] = True  # False: it can train on an unlabeled image folder
    # False: its bundle is another method's input (CasPL's phase 1), so model selection never
    # exports zero-shot CLIP in its place (`specpl.selection`, rule 4)
    replaceable_by_zero_shot: ClassVar[bool] = True
    fixed_logit_scale: ClassVar[float | None] = None  # None: the backbone's exp(logit_scale)
    training_defaults: ClassVar[dict[str, Any]] = {}  # the published schedule (epochs, batch, lr, optimizer)

    def __init__(self, config: Any, context: BuildContext) -> None:
        super().__init__(config, context)
        self.clip = [context.backbone.model]  # frozen; kept out of the state dict
        self.text_encoder = PromptTextEncoder(context.backbone.model)
        self.classnames: list[str] = []
        self.novel = False  # True while evaluating classes the method was not trained on

    def set_classnames(self, classnames: list[str], novel: bool = False) -> None:
        raise NotImplementedError

    def encode_text(
        self,
        image_features: torch.Tensor | None = None,
        groups: Sequence[PromptGroup] = (),
        hooks: Sequence[TextHook] = (),
    ) -> torch.Tensor:
        """Raw prompted text features: (C, D), or (B, C, D) for image-conditioned hosts. `groups`
        are boosters' text prompt slots, placed after the host's own; `hooks` their text hooks."""
        raise NotImplementedError

    def own_text_prompts(self) -> list[PromptGroup]:
        """The host's own text slots beyond its context (deep prompts, representation tokens), which
        its class prompts get before any booster's; a booster that encodes extra text through the
        host (DAPT's background prompts) passes them on."""
        return []

    def image_outputs(self, output: VisionOutput) -> dict[str, torch.Tensor]:
        """What the image tower gives this host: by default the pooled feature alone."""
        return {FEATURES: output.pooled}

    def logits(
        self, image: dict[str, torch.Tensor], raw_text: torch.Tensor, refined_text: torch.Tensor, scale: float
    ) -> torch.Tensor:
        """The host's class logits; by default s*cos(image, refined text)."""
        return cosine_logits(image[FEATURES], refined_text, scale)

    def anchor_logits(
        self, image: dict[str, torch.Tensor], raw_text: torch.Tensor, scale: float
    ) -> torch.Tensor | None:
        """Logits for boosters' label-free terms when they differ from `logits` (else None)."""
        return None

    def host_losses(self, state: ForwardState) -> dict[str, torch.Tensor]:
        """The host's own loss terms (already weighted). Default: cross-entropy."""
        return {"cls": weighted_cross_entropy(state.logits, state.batch.labels, state.sample_weights)}


class Booster(Component):
    """A plug-in that may add tower prompts, refine text, reweight the host's loss or add terms."""

    requires: ClassVar[frozenset[str]] = frozenset()  # host capabilities this booster needs
    requires_reason: ClassVar[str] = ""  # why it needs them: a refused host's error says it
    supported_hosts: ClassVar[tuple[str, ...] | None] = None  # None: any host with `requires`
    # per-host values on top of `presets`: {preset: {host: {component name or "train": values}}}
    host_presets: ClassVar[dict[str, dict[str, dict[str, dict[str, Any]]]]] = {}
    # the sources of `host_presets`' paper values: {host: {"<component>.<option>" or "train.<key>": source}}
    host_sources: ClassVar[dict[str, dict[str, str]]] = {}
    # hosts on which the booster's paper or released code reports results; any other stack is
    # labelled "unpublished combination" wherever its results appear
    published_hosts: ClassVar[tuple[str, ...]] = ()
    # a host's paper variant this booster runs it in: {preset: {host: variant}} (SpecPL's CoOp is
    # CoOp's ``paper-specpl``); the variant's values apply after the host's and before the booster's
    host_variants: ClassVar[dict[str, dict[str, str]]] = {}

    @classmethod
    def option_requires(cls, config: Any) -> dict[str, frozenset[str]]:
        """Host capabilities that options set in `config` need, by the option that needs them
        (checked with the resolved options: e.g. ISP's ``structural="on"`` needs deep prompts)."""
        return {}

    def refine_text(self, text: torch.Tensor) -> torch.Tensor:
        return text

    def sample_weights(self, state: ForwardState) -> torch.Tensor | None:
        """Per-sample weights (B,) for the host's loss, or None."""
        return None

    def losses(self, state: ForwardState) -> dict[str, torch.Tensor]:
        return {}


UNPUBLISHED = "unpublished combination"


def stack_label(host: type[Host], boosters: list[type[Booster]], options: dict[str, dict[str, Any]]) -> str:
    """What a stack is, in words: each part's label for its resolved `options` (e.g. "MaPLe + ISP
    (reconstructed)"), and "unpublished combination" where no paper reports this host with these
    boosters (every stack of two boosters; a booster on a host outside its `published_hosts`)."""
    parts = [host.label(options.get(host.name, {})), *(b.label(options.get(b.name, {})) for b in boosters)]
    published = len(boosters) <= 1 and all(host.name in b.published_hosts for b in boosters)
    return " + ".join(parts) + ("" if published else f" ({UNPUBLISHED})")


def cosine_logits(image_features: torch.Tensor, text_features: torch.Tensor, scale: float) -> torch.Tensor:
    """s * cos(image, text) for text (C, D) or per-image text (B, C, D)."""
    image = F.normalize(image_features, dim=-1)
    text = F.normalize(text_features, dim=-1)
    if text.dim() == 3:
        return scale * torch.einsum("bd,bcd->bc", image, text)
    return scale * image @ text.t()


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean cross-entropy, or (1/B) sum_i w_i CE_i with the weights as the reweighting boosters give
    them: a booster normalises its own (ISP's are mean 1 per batch unless asked for raw 1 + d)."""
    if weights is None:
        return F.cross_entropy(logits, labels)
    per_sample = F.cross_entropy(logits, labels, reduction="none")
    return (per_sample * weights).mean()


def compose_hooks(hooks: list[LayerHook]) -> LayerHook | None:
    if not hooks:
        return None
    if len(hooks) == 1:
        return hooks[0]

    def hook(layer: int, x: torch.Tensor) -> torch.Tensor:
        for h in hooks:
            x = h(layer, x)
        return x

    return hook
