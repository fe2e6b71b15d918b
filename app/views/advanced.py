"""The "Advanced" form, generated from the method registry and the config dataclasses: one field per
option of every registered host and booster, and per field of `TrainConfig`, `DecomposerConfig`
and `DataConfig` that the main form does not already set. Nothing here is written per method, so a
newly registered booster shows up with its options.

The form shows *effective* values: the component's dataclass default, then the chosen preset's
(``default`` or ``paper``, `specpl.config.PRESETS`), and for training the preset's settings and the
host's published ones in the preset's order, as the trainer resolves them
(`specpl.resolve.resolve_run`, as the trainer resolves them). Under ``default`` the epochs and batch size are
``auto``, derived from the number of training images when the run starts: their number boxes are
left empty (the main form's Epochs box: 0 or empty), and `app.views.plan` states the values beside it. A
run's config keeps only what the user changed from those, so presets keep working and the CLI line
stays short.

Values travel as a dict keyed like the CLI: ``train.batch_size``, ``decomposer.source``,
``data.seed``, ``run.template``; the main form's controls use ``method.host``, ``method.boosters``,
``method.preset``, ``decomposer.name``, ``data.shots``, ``data.split_ratio``, ``train.epochs``,
``train.lr``. Method options are the one ``method.options`` entry: the values the user set, keyed
``coop.n_ctx`` (as ``--option coop.n_ctx=4``); every other option keeps its effective value.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shlex
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from specpl.bands.diffusers_vae import looks_local
from specpl.config import (
    DEFAULT_TEMPLATE,
    PRESETS,
    DataConfig,
    DecomposerConfig,
    MethodConfig,
    RunConfig,
    TrainConfig,
    canonical_preset,
)
from specpl.methods import BOOSTERS, HOSTS
from specpl.resolve import resolve_run
from specpl.training_plan import AUTO

APP_TRAIN_DEFAULTS = {"eval_every_epochs": 1}  # the app evaluates every epoch: the validation curve needs it
MAIN_FORM = {  # set by the main form's own controls, so left out of the accordion
    "train": ("epochs", "lr"),
    "decomposer": ("name",),
    "data": ("root", "dataset", "shots", "split_ratio"),
}
SECTIONS = (("train", TrainConfig), ("decomposer", DecomposerConfig), ("data", DataConfig))
# The values the library accepts for its string settings (it checks them when a run is built).
CHOICES = {
    "train.optimizer": ("sgd", "adamw"),
    "train.precision": ("auto", "fp32", "bf16"),
    "train.augment": ("dassl", "clip", "none"),
    "train.schedule": ("epoch", "step"),
    "train.compile": ("auto", "on", "off"),
    "train.select": ("val", "last"),
    "data.subsample": ("all", "base", "new"),
}
# The form's own controls, in the order the UI passes them after the backbone (then `form_fields`).
MAIN_KEYS = (
    "method.host",
    "method.boosters",
    "method.preset",
    "decomposer.name",
    "data.shots",
    "train.epochs",
    "train.lr",
    "data.split_ratio",
)
OPTIONS_KEY = "method.options"  # {"coop.n_ctx": 4, ...}: the method options the user set
PRESET_FILE = "specpl-preset.json"
MAX_PRESET_BYTES = 256 * 1024
TEMPLATE_KEY = "run.template"
AUTO_KEYS = ("train.epochs", "train.batch_size")  # numbers that also take "auto" (derived from the data)


@dataclass(frozen=True)
class OptionField:
    """One generated control: `owner` is a host or booster name, or a config section."""

    owner: str
    name: str
    kind: str  # bool, int, float, str, choice, json (any other type, typed as JSON)
    nullable: bool
    default: Any  # the dataclass default (options: before any preset)
    is_option: bool  # a method option (``--option``) rather than a run setting
    literal: tuple[str, ...] = ()  # the values a `typing.Literal` option allows

    @property
    def key(self) -> str:
        return f"{self.owner}.{self.name}"

    @property
    def choices(self) -> tuple[str, ...]:
        return CHOICES.get(self.key, self.literal)


def _kind(hint: Any) -> tuple[str, bool, tuple[str, ...]]:
    """(kind, nullable, the allowed values of a Literal) of a dataclass field's type hint."""
    if typing.get_origin(hint) is typing.Literal:
        return "choice", False, tuple(typing.get_args(hint))
    args = typing.get_args(hint)
    nullable = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    kind = {bool: "bool", int: "int", float: "float", str: "str"}.get(base, "json")
    return kind, nullable, ()


def _dataclass_fields(owner: str, cls: type, is_option: bool, skip: tuple[str, ...] = ()) -> list[OptionField]:
    hints = typing.get_type_hints(cls)
    fields = []
    for item in dataclasses.fields(cls):
        if item.name in skip:
            continue
        kind, nullable, literal = _kind(hints[item.name])
        default = item.default if item.default is not dataclasses.MISSING else item.default_factory()  # type: ignore[misc]
        if f"{owner}.{item.name}" in CHOICES:
            kind = "choice"
        fields.append(OptionField(owner, item.name, kind, nullable, default, is_option, literal))
    return fields


def component_names() -> list[str]:
    """Every registered host, then every booster (a name is never both)."""
    return [*HOSTS.names(), *BOOSTERS.names()]


@functools.cache
def form_fields() -> tuple[OptionField, ...]:
    """Every generated field, in display order: each component's options, then the run settings."""
    fields: list[OptionField] = []
    for name in component_names():
        registry = HOSTS if name in HOSTS else BOOSTERS
        fields += _dataclass_fields(name, registry.get(name).config_class, is_option=True)
    for section, cls in SECTIONS:
        fields += _dataclass_fields(section, cls, is_option=False, skip=MAIN_FORM.get(section, ()))
    fields.append(OptionField("run", "template", "str", False, DEFAULT_TEMPLATE, False))
    return tuple(fields)


def setting_fields() -> list[OptionField]:
    """The run settings' fields (one control each, always in the form)."""
    return [field for field in form_fields() if not field.is_option]


def option_fields(component: str) -> list[OptionField]:
    """One host's or booster's option fields (drawn only while it is chosen)."""
    return [field for field in form_fields() if field.is_option and field.owner == component]


def form_keys() -> list[str]:
    """Every key the UI's form passes, in order: `MAIN_KEYS`, each setting field, then `OPTIONS_KEY`."""
    return [*MAIN_KEYS, *(field.key for field in setting_fields()), OPTIONS_KEY]


def presets_of(host: str) -> list[str]:
    """The presets a run of `host` can take: every host and booster has each of `PRESETS` (a
    component's ``presets`` holds only what a preset changes), and a host published in two
    configurations has its ``paper-<source>`` variant too (CoOp's ``paper-specpl``)."""
    return [*PRESETS, *(name for name in HOSTS.get(host).presets if name not in PRESETS)]


def known_preset(name: str | None) -> str:
    """A preset's current name (``reference`` reads as ``paper``), or ``default`` for none or an
    unknown one."""
    try:
        return canonical_preset(name or "default")
    except ValueError:
        return "default"


def effective_values(host: str, boosters: list[str], preset: str) -> dict[str, Any]:
    """What each field means when left alone, for this host, boosters and preset (every other
    component's fields: their dataclass defaults). An invalid
    combination still gets values (each booster's own defaults), so the form can show them
    while the method note explains the refusal."""
    method = MethodConfig(host=host, boosters=list(boosters), preset=known_preset(preset))
    train = TrainConfig(**APP_TRAIN_DEFAULTS)
    try:
        resolved = resolve_run(RunConfig(method=method, train=train))
    except ValueError:  # the host's values, and each booster's own defaults
        resolved = resolve_run(RunConfig(method=dataclasses.replace(method, boosters=[]), train=train))
        resolved.options.update({name: dataclasses.asdict(BOOSTERS.get(name).config_class()) for name in boosters})
    options = resolved.options
    values = {
        field.key: field.default for field in form_fields() if field.is_option
    }  # components not chosen: their own defaults
    values.update(
        {f"{component}.{key}": value for component, settings in options.items() for key, value in settings.items()}
    )
    values.update({f"train.{key}": value for key, value in resolved.training.items()})
    values.update(
        {f"decomposer.{f.name}": getattr(DecomposerConfig(), f.name) for f in dataclasses.fields(DecomposerConfig)}
    )
    values.update({f"data.{f.name}": getattr(DataConfig(), f.name) for f in dataclasses.fields(DataConfig)})
    values[TEMPLATE_KEY] = DEFAULT_TEMPLATE
    return values


def coerce(field: OptionField, value: Any) -> Any:
    """A control's value as the config wants it; ``None`` (an empty field) means "leave it"."""
    if value is None or (isinstance(value, str) and not value.strip() and (field.nullable or field.kind != "str")):
        return None
    if field.key in AUTO_KEYS and isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        if field.kind == "bool":
            return bool(value)
        if field.kind == "int":
            if float(value) != int(float(value)):
                raise ValueError("not a whole number")
            return int(float(value))
        if field.kind == "float":
            return float(value)
        if field.kind == "json":
            return json.loads(value) if isinstance(value, str) else value
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"option {field.key} = {value!r} is not a valid {field.kind} ({exc})") from None


def run_config(values: Mapping[str, Any], backbone: Any) -> RunConfig:
    """The run config the form describes (`backbone` is a `BackboneConfig`; the data root is left
    empty). Raises ValueError with the library's message for an invalid method or setting."""
    host = str(values["method.host"])
    boosters = list(values.get("method.boosters") or [])
    preset = str(values.get("method.preset") or "default")
    effective = effective_values(host, boosters, preset)
    selected = {host, *boosters}
    overrides = dict(values.get(OPTIONS_KEY) or {})
    fields = form_fields()
    unknown = sorted(set(overrides) - {field.key for field in fields if field.is_option})
    if unknown:
        raise ValueError(
            f"unknown method option(s) {', '.join(unknown)}; options are keyed component.name, e.g. coop.n_ctx"
        )
    options: dict[str, dict[str, Any]] = {}
    sections: dict[str, dict[str, Any]] = {"train": dict(APP_TRAIN_DEFAULTS), "decomposer": {}, "data": {}}
    template = DEFAULT_TEMPLATE
    for field in fields:
        if field.is_option and field.owner not in selected:
            continue  # an option set while another component was chosen
        value = coerce(field, overrides.get(field.key) if field.is_option else values.get(field.key))
        if value is None or value == effective.get(field.key):
            continue
        if field.is_option:
            options.setdefault(field.owner, {})[field.name] = value
        elif field.key == TEMPLATE_KEY:
            template = value
        else:
            sections[field.owner][field.name] = value
    shots = int(values.get("data.shots") or 0)
    config = RunConfig(
        backbone=backbone,
        decomposer=DecomposerConfig(name=str(values.get("decomposer.name") or "auto"), **sections["decomposer"]),
        method=MethodConfig(host=host, boosters=boosters, options=options, preset=preset),
        data=DataConfig(
            shots=shots or None, split_ratio=float(values.get("data.split_ratio") or 0.5), **sections["data"]
        ),
        train=TrainConfig(
            epochs=main_epochs(values.get("train.epochs")),
            lr=float(values.get("train.lr") or 0) or None,
            **sections["train"],
        ),
        template=template,
    )
    resolve_run(config)  # unknown methods, bad combinations and options fail here, as in the trainer
    return config


def main_epochs(value: Any) -> int | str | None:
    """The main form's Epochs box: a number typed wins; empty or 0 leaves the preset's (the
    default preset's ``auto``: derived from the number of training images); "auto" is kept as typed."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        epochs = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"epochs = {value!r} is not a number (leave it empty or 0 for auto)") from None
    if epochs != int(epochs) or epochs < 0:
        raise ValueError(f"epochs = {value!r} is not a whole number of epochs (leave it empty or 0 for auto)")
    return int(epochs) or None


def form_values(config: RunConfig) -> dict[str, Any]:
    """The inverse of `run_config`: every key's value for a loaded preset (the backbone aside)."""
    method = config.method
    values = effective_values(method.host, method.boosters, method.preset)
    values.update({f"train.{key}": value for key, value in resolve_run(config).training.items()})
    values.update({f"decomposer.{key}": value for key, value in dataclasses.asdict(config.decomposer).items()})
    values.update({f"data.{key}": value for key, value in dataclasses.asdict(config.data).items()})
    values.update(
        {
            "method.host": method.host,
            "method.boosters": list(method.boosters),
            "method.preset": method.preset,
            "data.shots": config.data.shots or 0,
            "train.lr": config.train.lr or 0,
            TEMPLATE_KEY: config.template,
            "train.epochs": config.train.epochs
            if isinstance(config.train.epochs, int)
            else None,  # empty: auto (the preset's)
            OPTIONS_KEY: {
                f"{component}.{key}": value
                for component, settings in method.options.items()
                for key, value in settings.items()
            },
        }
    )
    return values


def server_paths(config: RunConfig) -> list[str]:
    """The settings the user gave that name a local path ("key = value"): method options such as a
    mask folder or a teacher checkpoint, and the decomposer's source. On a shared server each one
    would let a visitor make the app read the server's files."""
    given = {
        f"{component}.{key}": value
        for component, settings in config.method.options.items()
        for key, value in settings.items()
    }
    given["decomposer.source"] = config.decomposer.source
    return [
        f"{key} = {value}"
        for key, value in given.items()
        if isinstance(value, str) and value.strip() and looks_local(value.strip())
    ]


def preset_json(config: RunConfig) -> str:
    """The preset file: the full run config without the data folder (it names a folder on this
    server); ``specpl train --config`` reads it as it is."""
    raw = config.to_dict()
    raw["data"]["root"] = ""
    return json.dumps(raw, indent=2) + "\n"


def read_preset(path: Path, label: str) -> RunConfig:
    """A preset file, checked: JSON of a run config, a known method, valid options."""
    if path.stat().st_size > MAX_PRESET_BYTES:
        raise ValueError(f"{label} is over {MAX_PRESET_BYTES // 1024} KB; a preset is a small JSON file")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("it is not a JSON object")
        config = RunConfig.from_dict(
            {k: v for k, v in raw.items() if k in ("backbone", "decomposer", "method", "data", "train", "template")}
        )
        resolve_run(config)
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"{label} is not a usable preset: {exc}") from None
    return config


# ----- the CLI line --------------------------------------------------------------------------


def cli_command(config: RunConfig, data: str = "DATASET_FOLDER", out: str = "runs/my-run") -> str:
    """The ``specpl train`` line that trains `config`. Settings the CLI has no flag for come from
    the saved preset (``--config``); the flags written here agree with it."""
    default = RunConfig()
    flags: list[str] = ["--data", data, "--out", out]
    unflagged = False

    def flag(name: str, value: Any) -> None:
        flags.extend([name, str(value)])

    backbone = config.backbone
    if backbone.name != default.backbone.name:
        flag("--backbone", backbone.name)
    if backbone.pretrained != default.backbone.pretrained:
        flag("--pretrained", backbone.pretrained or "none")
    if backbone.quick_gelu is not None:
        flag("--quick-gelu", "yes" if backbone.quick_gelu else "no")
    unflagged |= backbone.cache_dir is not None
    method = config.method
    if method.host != default.method.host:
        flag("--host", method.host)
    if method.preset != default.method.preset:
        flag("--preset", method.preset)
    for booster in method.boosters:
        flag("--booster", booster)
    for component, settings in method.options.items():
        for key, value in settings.items():
            flag("--option", f"{component}.{key}={json.dumps(value)}")
    decomposer = config.decomposer
    if decomposer.name != default.decomposer.name:
        flag("--decomposer", decomposer.name)
    if decomposer.source:
        flag("--decomposer-source", decomposer.source)
    unflagged |= (decomposer.lowpass_kernel, decomposer.image_size) != (
        default.decomposer.lowpass_kernel,
        default.decomposer.image_size,
    )
    data_config = config.data
    if data_config.dataset != default.data.dataset:
        flag("--dataset", data_config.dataset)
    if data_config.shots != default.data.shots:
        flag("--shots", data_config.shots or 0)
    if data_config.split_ratio != default.data.split_ratio:
        flag("--split-ratio", data_config.split_ratio)
    if data_config.subsample != default.data.subsample:
        flag("--subsample", data_config.subsample)
    seeds = (data_config.seed, config.train.seed)
    if seeds[0] == seeds[1] != default.data.seed:
        flag("--seed", seeds[0])  # the CLI's --seed sets both
    else:
        unflagged |= seeds != (default.data.seed, default.train.seed)
    train, base = dataclasses.asdict(config.train), dataclasses.asdict(default.train)
    flagged = {
        "epochs": "--epochs",
        "batch_size": "--batch-size",
        "lr": "--lr",
        "grad_accum_steps": "--grad-accum",
        "augment": "--augment",
        "schedule": "--schedule",
        "eval_every_epochs": "--eval-every",
    }
    for key, value in train.items():
        if value == base[key] or key == "seed":
            continue
        if key in flagged and value == AUTO:
            unflagged = True  # the CLI's flags take numbers: an explicit "auto" comes from the preset file
        elif key in flagged and value is not None:
            flag(flagged[key], value)
        elif key == "cache_features" and value is False:
            flags.append("--no-cache")
        elif key == "compile" and value == "on":
            flags.append("--compile")
        else:
            unflagged = True
    if config.template != default.template:
        flag("--template", config.template)
    prefix = ["--config", PRESET_FILE] if unflagged else []
    return shlex.join(["specpl", "train", *prefix, *flags])
