"""Run configuration as plain dataclasses, serialised to JSON beside every checkpoint.

Method-specific options live in one dataclass per host or booster (see `specpl.methods`); the
run config keeps them as plain dicts keyed by component name so that the JSON stays flat and a
new method needs no change here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, TypeVar

C = TypeVar("C")

DEFAULT_TEMPLATE = "a photo of a {}."
# Named option sets every host and booster has: ``default`` is the product's (chosen by measurement,
# bench/DEFAULTS.md), ``paper`` the published papers' and released code's settings. Where a host was
# published in two configurations, the second is a variant of ``paper`` named ``paper-<source>``
# (CoOp's ``paper-specpl``): it is ``paper`` plus that component's values for the variant.
PRESETS = ("default", "paper")
PAPER_VARIANT_PREFIX = "paper-"
PRESET_ALIASES = {"reference": "paper"}  # the paper preset's name in configs written before 2026-12-05
AUGMENT_ALIASES = {"reference": "dassl"}  # the Dassl augmentation's name in configs written before 2026-12-06


def canonical_preset(name: str) -> str:
    """A preset's current name (old configs and preset files say ``reference`` for ``paper``);
    a ``paper-<source>`` variant is checked against the method's components when it resolves."""
    name = PRESET_ALIASES.get(name, name)
    if name not in PRESETS and not (name.startswith(PAPER_VARIANT_PREFIX) and len(name) > len(PAPER_VARIANT_PREFIX)):
        aliases = ", ".join(f"{a!r} reads as {b!r}" for a, b in PRESET_ALIASES.items())
        raise ValueError(
            f"unknown preset {name!r}; the presets are: {', '.join(PRESETS)}, and paper-<source> "
            f"variants where a method defines one ({aliases})"
        )
    return name


def base_preset(name: str) -> str:
    """The preset a variant builds on: ``paper-specpl`` -> ``paper``."""
    name = canonical_preset(name)
    return PRESETS[1] if name.startswith(PAPER_VARIANT_PREFIX) else name


def check_choice(option: str, value: Any, allowed: Sequence[str]) -> None:
    """Refuse a method option outside its allowed values, naming them (`option` is
    "component.key")."""
    if value not in allowed:
        raise ValueError(f"{option} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


@dataclass
class BackboneConfig:
    """Which open_clip model to load and from where.

    `pretrained` is an open_clip tag (``openai``), a local checkpoint file, or ``hf-hub:org/repo``;
    ``None`` means random init (only sensible for the tiny test configs). `quick_gelu` ``None``
    infers the activation from the weights' origin (OpenAI weights need QuickGELU).
    """

    name: str = "ViT-B-16"
    pretrained: str | None = "openai"
    quick_gelu: bool | None = None
    cache_dir: str | None = None


@dataclass
class DecomposerConfig:
    """The frozen band decomposer: ``auto``, ``qwen-vae`` (the reference teacher), ``fft``
    (weight-free), ``taef2``, ``taesd`` or ``sd-vae``.

    ``auto`` takes the reference VAE when its weights are in `source`, in the Hugging Face cache
    or downloadable, and ``fft`` otherwise; the run records which was used and why.
    `source` is a hub id or local folder for the VAE weights; `image_size` is the square
    resolution the decomposer sees (latent size is 1/8 of it for the VAEs); ``None`` uses the
    backbone's input size, and the resolved value is what a bundle records.
    """

    name: str = "auto"
    source: str | None = None
    lowpass_kernel: int = 7
    image_size: int | None = None


@dataclass
class MethodConfig:
    """A host plus any number of boosters; `options` maps a component name to its overrides."""

    host: str = "coop"
    boosters: list[str] = field(default_factory=list)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    preset: str = "default"  # "default" (the product's, measured) or "paper" (the published settings); see PRESETS

    def __post_init__(self) -> None:
        self.preset = canonical_preset(self.preset)


@dataclass
class DataConfig:
    """A few-shot image folder: ``root/<class>/*`` or ``root/{train,test}/<class>/*``."""

    root: str = ""
    dataset: str = "folder"  # a registered dataset layout (specpl.datasets); "folder" = class sub-folders
    shots: int | None = 16
    split_ratio: float = 0.5
    subsample: str = "all"  # "all", "base" or "new" (standard base-to-novel protocol)
    seed: int = 1
    # a folder of unlabeled images to train on instead of the split's labelled training images, for a
    # host that learns without labels (CasPL's phase 1); the class names and test split stay the dataset's
    unlabeled_root: str | None = None


@dataclass
class TrainConfig:
    """Optimisation settings. ``None`` takes the preset's value (`specpl.training_plan`); epochs and
    batch size ``"auto"`` are derived from the number of training images."""

    epochs: int | str | None = None
    batch_size: int | str | None = None
    lr: float | None = None
    optimizer: str | None = None
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    grad_accum_steps: int = 1
    seed: int = 1
    precision: str = "auto"  # "auto" = bf16 on GPU, fp32 on CPU; or "fp32", "bf16"
    # "dassl" (Dassl's random resized crop + flip, fresh each epoch; the papers'), "clip" (open_clip's
    # mild crop) or "none" (the eval transform: no resampling crop to blur fine texture); see specpl.features
    augment: str | None = None
    crop_scale: float | None = None  # the smallest crop of "dassl" (0.08 Dassl hosts, 0.5 MMRL)
    schedule: str | None = None  # "epoch": cosine stepped per epoch after warm-up (reference); "step": per step
    drop_last: bool | None = None  # drop the last partial batch (reference; fixed shapes for CUDA graphs)
    cache_features: bool = True
    max_cached_views: int | None = None  # distinct views kept per image; None = a fresh view every epoch
    eval_every_epochs: int = 0  # >0: accuracy on the validation split every N epochs (never the test split)
    # "val": the epoch kept is chosen on validation: the last, unless an earlier one or the initial state
    # is clearly better, or zero-shot CLIP when the run cannot be seen to beat it (`specpl.selection`);
    # "last": the last epoch, as the papers report
    select: str | None = None
    checkpoint_every_epochs: int = 1
    num_workers: int = 0
    # "on" compiles the training forward and backward with torch.compile (inductor); on a GPU it
    # also captures them in CUDA graphs ("reduce-overhead"), which removes the kernel-launch cost
    # that bounds a prompt-learning step there. The first steps pay the compile time. "auto" compiles
    # on a GPU when the run has enough steps to earn that time back (specpl.trainer.resolve_compile).
    compile: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.augment, bool):  # configs written before the presets: True/False
            self.augment = "clip" if self.augment else "none"
        self.augment = AUGMENT_ALIASES.get(self.augment, self.augment)
        if self.augment not in (None, "dassl", "clip", "none"):
            raise ValueError(f"train.augment must be 'dassl', 'clip' or 'none', got {self.augment!r}")
        if self.schedule not in (None, "epoch", "step"):
            raise ValueError(f"train.schedule must be 'epoch' or 'step', got {self.schedule!r}")
        if self.select not in (None, "val", "last"):
            raise ValueError(f"train.select must be 'val' or 'last', got {self.select!r}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, str) and value != "auto":
                raise ValueError(f"train.{name} must be a number or 'auto', got {value!r}")
        if self.compile not in ("auto", "off", "on"):
            raise ValueError(f"train.compile must be 'auto', 'off' or 'on', got {self.compile!r}")


@dataclass
class RunConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    decomposer: DecomposerConfig = field(default_factory=DecomposerConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    template: str = DEFAULT_TEMPLATE

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "RunConfig":
        return from_dict(cls, raw)


def from_dict(cls: type[C], raw: dict[str, Any]) -> C:
    """Build dataclass `cls` from a dict, recursing into nested dataclasses.

    Unknown keys are an error rather than silently ignored, so a typo in a config file is caught.
    """
    if not isinstance(raw, dict):
        raise TypeError(f"{cls.__name__} expects a JSON object, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}; known: {', '.join(fields)}")
    kwargs = {}
    for name, value in raw.items():
        nested = fields[name].default_factory if fields[name].default_factory is not dataclasses.MISSING else None
        if nested is not None and dataclasses.is_dataclass(nested) and isinstance(value, dict):
            value = from_dict(nested, value)  # type: ignore[arg-type]
        kwargs[name] = value
    return cls(**kwargs)


def write_json_atomic(path: Path, payload: Any) -> None:
    from specpl.io import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")
