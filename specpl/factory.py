"""Composing a method from registered parts: option resolution (the component defaults, the named
preset, the user's options), `build_method`, and `load_bundle` to rebuild a saved model. Kept
apart from the composite itself (`specpl.model`) and the contracts (`specpl.methods.base`), as
open_clip keeps its factory apart from its model.

Options resolve in three layers, later ones winning: each component's dataclass defaults (the
product's), the named preset (``default`` or ``paper``, `specpl.config.PRESETS`; the host's values,
then each booster's), and the options the user gave.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from specpl.backbone import Backbone, load_backbone
from specpl.bands import build_decomposer
from specpl.bundle import read_bundle
from specpl.config import (
    DEFAULT_TEMPLATE,
    PAPER_VARIANT_PREFIX,
    PRESETS,
    BackboneConfig,
    DecomposerConfig,
    MethodConfig,
    base_preset,
    canonical_preset,
    from_dict,
)
from specpl.methods import BOOSTERS, HOSTS
from specpl.methods.base import BuildContext, stack_label
from specpl.model import PromptModel

DATASET_TRAIN = "train@"  # a preset target holding one dataset's training values, e.g. "train@imagenet"


def preset_values(config: MethodConfig, dataset: str | None = None) -> dict[str, dict[str, Any]]:
    """The values of `config.preset` for this host and its boosters, {component or "train": values}:
    the host's, then each booster's (its values for every host, then for this host), later ones
    winning, so a booster's per-host rule overrides the host's own. A ``paper-<source>`` variant
    layers each component's variant values over its ``paper`` ones. Within a layer, the values for
    `dataset` (``train@<dataset>``, a dataset's own published schedule) override its ``train``."""
    merged: dict[str, dict[str, Any]] = {}
    for layer in _preset_layers(config):
        for target, values in _for_dataset(layer, dataset).items():
            merged[target] = {**merged.get(target, {}), **values}
    return merged


def _preset_layers(config: MethodConfig) -> list[dict[str, dict[str, Any]]]:
    """The preset's layers in the order they apply (see `preset_values`)."""
    preset, base = canonical_preset(config.preset), base_preset(config.preset)
    components = [HOSTS.get(config.host), *(BOOSTERS.get(name) for name in config.boosters)]
    if preset != base and not any(preset in component.presets for component in components):
        variants = sorted(
            {
                p
                for r in (HOSTS, BOOSTERS)
                for n in r.names()
                for p in r.get(n).presets
                if p.startswith(PAPER_VARIANT_PREFIX)
            }
        )
        raise ValueError(
            f"preset {preset!r} is not defined by {' or '.join(c.name for c in components)}; "
            f"the paper variants are: {', '.join(variants) or 'none'}"
        )
    names = (base, preset) if preset != base else (base,)
    host = HOSTS.get(config.host)
    layers = [host.presets.get(name, {}) for name in host_preset_names(config)]
    for name in config.boosters:
        booster = BOOSTERS.get(name)
        for preset_name in names:
            layers += [
                booster.presets.get(preset_name, {}),
                booster.host_presets.get(preset_name, {}).get(config.host, {}),
            ]
    return layers


def host_preset_names(config: MethodConfig) -> list[str]:
    """The host's presets that apply, in order: the base preset, the ``paper-<source>`` variant
    asked for, then each variant a booster runs this host in (SpecPL's CoOp is ``paper-specpl``)."""
    preset, base = canonical_preset(config.preset), base_preset(config.preset)
    variants = [v for b in config.boosters if (v := BOOSTERS.get(b).host_variants.get(base, {}).get(config.host))]
    return list(dict.fromkeys([base, preset, *variants]))


def _for_dataset(layer: dict[str, dict[str, Any]], dataset: str | None) -> dict[str, dict[str, Any]]:
    """`layer` with its ``train@<dataset>`` values folded into ``train`` and other datasets' dropped."""
    folded = {target: values for target, values in layer.items() if not target.startswith(DATASET_TRAIN)}
    if dataset is not None and f"{DATASET_TRAIN}{dataset}" in layer:
        folded["train"] = {**folded.get("train", {}), **layer[f"{DATASET_TRAIN}{dataset}"]}
    return folded


def check_combination(host_name: str, booster_names: list[str]) -> None:
    """Refuse a host + boosters combination that cannot work, listing the valid ones."""
    host = HOSTS.get(host_name)
    if len(set(booster_names)) != len(booster_names):
        raise ValueError(f"a booster is listed twice: {booster_names}")
    if booster_names and not host.accepts_boosters:
        raise ValueError(
            f"host {host_name!r} takes no boosters (it is a phase of one); boost a host such as coop or maple instead"
        )
    for name in booster_names:
        booster = BOOSTERS.get(name)
        problems = []
        if booster.supported_hosts is not None and host_name not in booster.supported_hosts:
            problems.append(f"it supports the hosts {', '.join(booster.supported_hosts)}")
        missing = booster.requires - host.capabilities
        if missing:
            reason = f" ({booster.requires_reason})" if booster.requires_reason else ""
            problems.append(f"it needs a host with {' and '.join(sorted(missing))}{reason}")
        if problems:
            valid = [h for h in HOSTS.names() if _booster_fits(booster, h)]
            raise ValueError(
                f"booster {name!r} cannot run on host {host_name!r}: {'; '.join(problems)}. "
                f"Hosts it can boost: {', '.join(valid) or 'none'}"
            )


def _booster_fits(booster: type, host_name: str) -> bool:
    host = HOSTS.get(host_name)
    return (
        host.accepts_boosters
        and (booster.supported_hosts is None or host_name in booster.supported_hosts)
        and booster.requires <= host.capabilities
    )


def resolve_method_options(config: MethodConfig) -> dict[str, dict[str, Any]]:
    """Every component's full option set (defaults, then the preset, then the user's), as written
    to config.json."""
    names = [config.host, *config.boosters]
    check_combination(config.host, config.boosters)
    unknown = set(config.options) - set(names)
    if unknown:
        raise ValueError(f"options given for {sorted(unknown)}, which are not in this method ({names})")
    preset = preset_values(config)
    resolved = {}
    for name in names:
        component = HOSTS.get(name) if name == config.host else BOOSTERS.get(name)
        given = {**preset.get(name, {}), **config.options.get(name, {})}
        known = {f.name for f in dataclasses.fields(component.config_class)}
        bad = sorted(set(given) - known)
        if bad:
            raise ValueError(
                f"unknown option(s) for {name}: {', '.join(bad)}; {name}'s options are: {', '.join(sorted(known))}"
            )
        built = from_dict(component.config_class, given)
        component.settle_options(built, set(config.options.get(name, {})))
        if name != config.host:
            _check_option_requirements(name, built, config.host)
        resolved[name] = dataclasses.asdict(built)
    return resolved


def _check_option_requirements(booster_name: str, booster_config: Any, host_name: str) -> None:
    """Refuse a booster option the host cannot serve, naming the hosts that can."""
    booster, capabilities = BOOSTERS.get(booster_name), HOSTS.get(host_name).capabilities
    for option, needed in booster.option_requires(booster_config).items():
        missing = needed - capabilities
        if missing:
            valid = [h for h in HOSTS.names() if _booster_fits(booster, h) and needed <= HOSTS.get(h).capabilities]
            raise ValueError(
                f"{booster_name}.{option} cannot run on host {host_name!r}: it needs a host with "
                f"{' and '.join(sorted(missing))}. "
                f"Hosts it fits: {', '.join(valid) or 'none'}"
            )


def build_method(
    config: MethodConfig,
    backbone: Backbone,
    classnames: list[str],
    template: str = DEFAULT_TEMPLATE,
    decomposer: DecomposerConfig | None = None,
    decomposer_module: nn.Module | None = None,
    dataset: str | None = None,
) -> PromptModel:
    """Compose the host and boosters named in `config` over `backbone` for `classnames`.
    `decomposer` is the run's band decomposer config, built only if a component needs it;
    `decomposer_module` an already built one to use instead; `dataset` the registered dataset name
    (per-dataset defaults such as MMRL's lambda). Every tensor is put on the backbone's device."""
    options = resolve_method_options(config)
    host_cls = HOSTS.get(config.host)
    context = BuildContext(
        backbone=backbone,
        classnames=list(classnames),
        template=template,
        host_name=config.host,
        booster_names=list(config.boosters),
        decomposer=decomposer,
        capabilities=host_cls.capabilities,
        dataset=dataset,
        preset=canonical_preset(config.preset),
        make_decomposer=lambda cfg, device: build_decomposer(cfg, device=device),
    )
    if decomposer_module is not None:
        context._decomposer_module.append(decomposer_module)
    host = host_cls(host_cls.config_class(**options[config.host]), context)
    boosters = [BOOSTERS.get(n)(BOOSTERS.get(n).config_class(**options[n]), context) for n in config.boosters]
    model = PromptModel(context, host, boosters, options)
    model.to(backbone.model.token_embedding.weight.device)
    model.set_classnames(list(classnames))
    return model


def method_label(config: MethodConfig, options: dict[str, dict[str, Any]] | None = None) -> str:
    """The stack `config` names, in words (`stack_label`), for its resolved `options`."""
    options = options if options is not None else resolve_method_options(config)
    return stack_label(HOSTS.get(config.host), [BOOSTERS.get(name) for name in config.boosters], options)


def describe_stack(config: MethodConfig) -> str:
    """A stack in words (`method_label`) and its preset, with the published configuration that
    preset runs where a part has more than one (CoOp under ``paper`` alone is the ctxv1 row; with
    SpecPL it is SpecPL's CoOp): the heading of its rows in the sweep tables and world reports."""
    preset = canonical_preset(config.preset)
    host = HOSTS.get(config.host)
    note = host.preset_notes.get(host_preset_names(config)[-1], "")
    return f"{method_label(config)} ({preset} preset" + (f"; {host.title or host.name}: {note})" if note else ")")


def describe_methods() -> list[dict[str, Any]]:
    """Every registered host and booster: kind, name, one line, default options and presets."""
    rows = []
    for kind, registry in (("host", HOSTS), ("booster", BOOSTERS)):
        for name in registry.names():
            component = registry.get(name)
            defaults = dataclasses.asdict(component.config_class())
            row = {
                "kind": kind,
                "name": name,
                # its name as each preset builds it (DAPT's default masks are ours: "DAPT-G (per-head GradCAM, ours)")
                "names": {
                    p: component.label({**defaults, **component.presets.get(p, {}).get(name, {})}) for p in PRESETS
                },
                "description": component.description,
                "options": dataclasses.asdict(component.config_class()),
            }
            variants = [p for p in component.presets if p not in PRESETS]
            row["presets"] = {preset: component.presets.get(preset, {}) for preset in [*PRESETS, *variants]}
            row["preset_notes"] = dict(component.preset_notes)
            if kind == "host":
                row["training"] = dict(component.training_defaults)
            else:
                row["hosts"] = [h for h in HOSTS.names() if h != "zeroshot" and _booster_fits(component, h)]
                row["host_presets"] = {preset: component.host_presets.get(preset, {}) for preset in PRESETS}
                row["published_hosts"] = list(component.published_hosts)
            rows.append(row)
    return rows


def load_bundle(
    directory: str | Path,
    device: str | torch.device = "cpu",
    backbone: Backbone | None = None,
    classnames: list[str] | None = None,
    template: str | None = None,
) -> tuple[PromptModel, dict[str, Any]]:
    """Rebuild the method of a bundle over its backbone (loaded, or the one given if it matches);
    `classnames` and `template` build it for another class set with its own template (a
    cross-dataset target), where the bundle's would otherwise be used."""
    tensors, config = read_bundle(Path(directory))
    backbone_config = from_dict(BackboneConfig, config["backbone"])
    if backbone is None:
        backbone = load_backbone(backbone_config, device=device)
    elif (backbone.config.name, backbone.config.pretrained) != (backbone_config.name, backbone_config.pretrained):
        raise ValueError(
            f"bundle needs backbone {backbone_config.name} ({backbone_config.pretrained}), got {backbone.describe()}"
        )
    method = from_dict(MethodConfig, config["method"])
    decomposer = from_dict(DecomposerConfig, config["decomposer"]) if config.get("decomposer") else None
    names, template = list(classnames or config["classnames"]), template or config.get("template") or DEFAULT_TEMPLATE
    model = build_method(method, backbone, names, template, decomposer)
    model.load_learned_state_dict(tensors)
    return model, config
