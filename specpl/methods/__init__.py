"""Methods: hosts and boosters registered by name, and `build_method` to compose them.

Options resolve in three layers, later ones winning: each component's dataclass defaults (the
product's), the named preset (``default`` or ``paper``, `specpl.config.PRESETS`; the host's values,
then each booster's), and the options the user gave.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from specpl.backbone import Backbone
from specpl.config import DEFAULT_TEMPLATE, PRESETS, DecomposerConfig, MethodConfig, canonical_preset, from_dict
from specpl.methods import caspl, cocoop, coop, dapt, deep, isp, kgcoop, mmrl, specpl, zeroshot  # noqa: F401  (registration side effects)
from specpl.methods.base import Batch, Booster, BuildContext, ForwardState, Host, PromptModel, cosine_logits
from specpl.methods.registry import BOOSTERS, HOSTS

__all__ = [
    "BOOSTERS",
    "HOSTS",
    "Batch",
    "Booster",
    "BuildContext",
    "ForwardState",
    "Host",
    "PromptModel",
    "build_method",
    "check_combination",
    "cosine_logits",
    "describe_methods",
    "preset_values",
    "resolve_method_options",
]


def preset_values(config: MethodConfig) -> dict[str, dict[str, Any]]:
    """The values of `config.preset` for this host and its boosters, {component or "train": values}:
    the host's, then each booster's (its values for every host, then for this host), later ones
    winning, so a booster's per-host rule overrides the host's own."""
    preset = canonical_preset(config.preset)
    layers = [HOSTS.get(config.host).presets.get(preset, {})]
    for name in config.boosters:
        booster = BOOSTERS.get(name)
        layers += [booster.presets.get(preset, {}), booster.host_presets.get(preset, {}).get(config.host, {})]
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for target, values in layer.items():
            merged[target] = {**merged.get(target, {}), **values}
    return merged


def check_combination(host_name: str, booster_names: list[str]) -> None:
    """Refuse a host + boosters combination that cannot work, listing the valid ones."""
    host = HOSTS.get(host_name)
    if len(set(booster_names)) != len(booster_names):
        raise ValueError(f"a booster is listed twice: {booster_names}")
    if booster_names and not host.accepts_boosters:
        raise ValueError(f"host {host_name!r} takes no boosters (it is a phase of one); boost a host such as coop or maple instead")
    for name in booster_names:
        booster = BOOSTERS.get(name)
        problems = []
        if booster.supported_hosts is not None and host_name not in booster.supported_hosts:
            problems.append(f"it supports the hosts {', '.join(booster.supported_hosts)}")
        missing = booster.requires - host.capabilities
        if missing:
            problems.append(f"it needs a host with {' and '.join(sorted(missing))}")
        if problems:
            valid = [h for h in HOSTS.names() if _booster_fits(booster, h)]
            raise ValueError(
                f"booster {name!r} cannot run on host {host_name!r}: {'; '.join(problems)}. "
                f"Hosts it can boost: {', '.join(valid) or 'none'}"
            )


def _booster_fits(booster: type, host_name: str) -> bool:
    host = HOSTS.get(host_name)
    return host.accepts_boosters and (booster.supported_hosts is None or host_name in booster.supported_hosts) and booster.requires <= host.capabilities


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
            raise ValueError(f"unknown option(s) for {name}: {', '.join(bad)}; {name}'s options are: {', '.join(sorted(known))}")
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
                f"{booster_name}.{option} cannot run on host {host_name!r}: it needs a host with {' and '.join(sorted(missing))}. "
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
    )
    if decomposer_module is not None:
        context._decomposer_module.append(decomposer_module)
    host = host_cls(host_cls.config_class(**options[config.host]), context)
    boosters = [BOOSTERS.get(n)(BOOSTERS.get(n).config_class(**options[n]), context) for n in config.boosters]
    model = PromptModel(context, host, boosters, options)
    model.to(backbone.model.token_embedding.weight.device)
    model.set_classnames(list(classnames))
    return model


def describe_methods() -> list[dict[str, Any]]:
    """Every registered host and booster: kind, name, one line, default options and presets."""
    rows = []
    for kind, registry in (("host", HOSTS), ("booster", BOOSTERS)):
        for name in registry.names():
            component = registry.get(name)
            row = {
                "kind": kind,
                "name": name,
                "description": component.description,
                "options": dataclasses.asdict(component.config_class()),
            }
            row["presets"] = {preset: component.presets.get(preset, {}) for preset in PRESETS}
            if kind == "host":
                row["training"] = dict(component.training_defaults)
            else:
                row["hosts"] = [h for h in HOSTS.names() if h != "zeroshot" and _booster_fits(component, h)]
                row["host_presets"] = {preset: component.host_presets.get(preset, {}) for preset in PRESETS}
            rows.append(row)
    return rows
