"""Methods: hosts and boosters registered by name, and `build_method` to compose them."""
from __future__ import annotations

import dataclasses
from typing import Any

from specpl.backbone import Backbone
from specpl.config import MethodConfig, from_dict
from specpl.methods import coop, specpl, zeroshot  # noqa: F401  (registration side effects)
from specpl.methods.base import Batch, Booster, BoosterContext, Host, PromptModel, cosine_logits
from specpl.methods.registry import BOOSTERS, HOSTS

__all__ = ["BOOSTERS", "HOSTS", "Batch", "Booster", "Host", "PromptModel", "build_method", "resolve_method_options", "cosine_logits"]


def resolve_method_options(config: MethodConfig) -> dict[str, dict[str, Any]]:
    """Every component's full option set (defaults filled in), as written to config.json."""
    names = [config.host, *config.boosters]
    unknown = set(config.options) - set(names)
    if unknown:
        raise ValueError(f"options given for {sorted(unknown)}, which are not in this method ({names})")
    if len(set(config.boosters)) != len(config.boosters):
        raise ValueError(f"a booster is listed twice: {config.boosters}")
    resolved = {}
    for name in names:
        component = HOSTS.get(name) if name == config.host else BOOSTERS.get(name)
        resolved[name] = dataclasses.asdict(from_dict(component.config_class, config.options.get(name, {})))
    return resolved


def build_method(
    config: MethodConfig, backbone: Backbone, classnames: list[str], band_stat_dim: int | None = None
) -> PromptModel:
    """Compose the host and boosters named in `config` over `backbone` for `classnames`."""
    options = resolve_method_options(config)
    host_cls = HOSTS.get(config.host)
    host = host_cls(backbone, host_cls.config_class(**options[config.host]))
    context = BoosterContext(embed_dim=backbone.embed_dim, host_name=config.host, band_stat_dim=band_stat_dim)
    boosters = [BOOSTERS.get(n)(BOOSTERS.get(n).config_class(**options[n]), context) for n in config.boosters]
    model = PromptModel(backbone, host, boosters)
    model.set_classnames(classnames)
    return model
