"""The model bundle's schema, owned by the method: what `PromptModel.save_bundle` writes and
`PromptModel.from_bundle` reads. File handling (atomic folders, format upgrades) is in
`specpl.checkpoint`; this module decides what goes into ``config.json``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from specpl.backbone import Backbone, load_backbone
from specpl.checkpoint import read_bundle, versions, write_bundle
from specpl.config import DEFAULT_TEMPLATE, BackboneConfig, DecomposerConfig, MethodConfig, from_dict
from specpl.model_card import render_model_card

if TYPE_CHECKING:
    from specpl.methods.base import PromptModel


def bundle_config(model: "PromptModel", run: dict[str, Any]) -> dict[str, Any]:
    """config.json of `model`: everything needed to rebuild it, plus the run's record (`run`:
    train settings, data, metrics, ...)."""
    backbone = model.backbone
    preprocessing = dict(getattr(backbone.model.visual, "preprocess_cfg", {}) or {})
    preprocessing.update(
        image_size=backbone.image_size, mean=list(backbone.normalization[0]), std=list(backbone.normalization[1])
    )
    decomposer = model.context.decomposer
    return {
        "backbone": dataclasses.asdict(backbone.config),
        "method": {
            "host": model.host.name,
            "boosters": list(model.boosters),
            "preset": model.preset,
            "options": model.resolved_options(),
        },
        "label": model.label(),
        "decomposer": dataclasses.asdict(decomposer) if decomposer is not None else None,
        "classnames": list(model.classnames),
        "template": model.context.template,
        "preprocessing": preprocessing,
        **run,
        "versions": versions(),
    }


def save_bundle(model: "PromptModel", directory: Path, run: dict[str, Any] | None = None) -> Path:
    config = bundle_config(model, run or {})
    return write_bundle(Path(directory), model.learned_state_dict(), config, render_model_card(config))


def load_bundle(
    directory: str | Path,
    device: str | torch.device = "cpu",
    backbone: Backbone | None = None,
    classnames: list[str] | None = None,
    template: str | None = None,
) -> tuple["PromptModel", dict[str, Any]]:
    """Rebuild the method of a bundle over its backbone (loaded, or the one given if it matches);
    `classnames` and `template` build it for another class set with its own template (a
    cross-dataset target), where the bundle's would otherwise be used."""
    from specpl.methods import build_method

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
    model = build_method(
        method,
        backbone,
        list(classnames or config["classnames"]),
        template or config.get("template") or DEFAULT_TEMPLATE,
        decomposer,
    )
    model.load_learned_state_dict(tensors)
    return model, config
