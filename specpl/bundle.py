"""The model bundle on disk, without pickle: ``model.safetensors`` with the method's tensors (never
the frozen CLIP), ``config.json`` with everything needed to rebuild it, and a model-card
``README.md``. Every file is written to a temp name and renamed, and a folder is swapped in whole.
Older formats are upgraded on reading (`UPGRADES`).

What goes into ``config.json`` is the model's business (`specpl.model.PromptModel.save_bundle`);
rebuilding a model from a bundle is the factory's (`specpl.factory.load_bundle`).
"""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from specpl.config import PRESET_ALIASES
from specpl.io import atomic_write, atomic_write_text

BUNDLE_FORMAT = "specpl-bundle/6"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def versions() -> dict[str, str]:
    import open_clip

    from specpl import __version__

    return {
        "specpl": __version__,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "python": platform.python_version(),
    }


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(contiguous, str(tmp), metadata=metadata))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure means a bad file
        raise ValueError(f"{path} is not a valid safetensors file: {exc}") from exc


def write_bundle(directory: Path, tensors: dict[str, torch.Tensor], config: dict[str, Any], card: str) -> Path:
    """Write a complete bundle into `directory`, replacing any previous one atomically."""
    staging = directory.with_name(f".{directory.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_tensors(staging / WEIGHTS_FILE, tensors, {"format": BUNDLE_FORMAT})
    atomic_write_text(staging / CONFIG_FILE, json.dumps({"format": BUNDLE_FORMAT, **config}, indent=2) + "\n")
    atomic_write_text(staging / "README.md", card)
    swap_in(staging, directory)
    return directory


def read_bundle(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and validate a bundle; errors name the file and the reason."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: not a SpecPL model bundle")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_path} is not valid JSON: {exc}") from exc
    found = config.get("format") if isinstance(config, dict) else None
    if found not in UPGRADES and found != BUNDLE_FORMAT:
        newer = isinstance(found, str) and found.startswith("specpl-bundle/")
        advice = (
            "it was written by a newer SpecPL: upgrade with `pip install -U specpl`"
            if newer
            else "it is not a SpecPL model bundle"
        )
        raise ValueError(
            f"{config_path} has format {found!r}, this SpecPL reads {', '.join([*UPGRADES, BUNDLE_FORMAT])}; {advice}"
        )
    while config["format"] in UPGRADES:
        config = UPGRADES[config["format"]](config)
    for key in ("backbone", "method", "classnames"):
        if key not in config:
            raise ValueError(f"{config_path} lacks the {key!r} entry")
    return load_tensors(directory / WEIGHTS_FILE), config


def _upgrade_v1(config: dict[str, Any]) -> dict[str, Any]:
    """specpl-bundle/1 (before the method seams) kept SpecPL's band statistic size at the top
    level and the zero-shot template only in the run; both now live in the method options."""
    config = dict(config)
    method = dict(config["method"])
    options = {name: dict(values) for name, values in (method.get("options") or {}).items()}
    stat_dim = config.pop("band_stat_dim", None)
    if "specpl" in options and stat_dim is not None:
        options["specpl"].setdefault("band_stat_dim", stat_dim)
    method["options"] = options
    method.setdefault("preset", "default")
    config["method"] = method
    config["format"] = "specpl-bundle/2"
    return config


def with_options_added(
    options: dict[str, dict[str, Any]], values_before: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """A copy of `options` (component -> values) in which each option a later format added and they
    lack takes the value a model had before it existed (`values_before`, component -> values)."""
    options = {name: dict(values) for name, values in options.items()}
    for name, values in options.items():
        for key, value in values_before.get(name, {}).items():
            values.setdefault(key, value)
    return options


# options added with the step-0 identity defaults, and the value every earlier bundle was built with
_V2_OPTION_VALUES = {
    "specpl": {"refiner": "layernorm"},
    "cocoop": {"meta_init": "pytorch"},
    **{
        host: {"ctx_from_template": False, "tail": "{}."}
        for host in ("coop", "cocoop", "kgcoop", "ivlp", "maple", "promptsrc", "caspl-boost")
    },
}


def _upgrade_v2(config: dict[str, Any]) -> dict[str, Any]:
    """specpl-bundle/2 (before the step-0 identity defaults) was built with SpecPL's LayerNorm
    refiner, CoCoOp's PyTorch-initialised meta-net and the context followed by the class name and
    "."; options it lacks take those values, so it rebuilds the model it was trained as."""
    config = dict(config)
    method = dict(config["method"])
    options = with_options_added(method.get("options") or {}, _V2_OPTION_VALUES)
    if "specpl" in options and options["specpl"].get("test_blend") is None:  # None was 0.5 on CoCoOp, 1 elsewhere
        options["specpl"]["test_blend"] = 0.5 if method.get("host") == "cocoop" else 1.0
    method["options"] = options
    preset = method.get("preset", "default")
    method["preset"] = PRESET_ALIASES.get(preset, preset)
    config["method"] = method
    config["format"] = "specpl-bundle/3"
    return config


# options added since format 3, and the value every build before them had: format 4 gave the
# text-only hosts the linear adapter, format 5 gave IVLP PromptSRC's agreement terms, format 6 made
# MMRL's representation branch a residual on its class branch
OPTIONS_BEFORE_V6 = {
    **{host: {"linear_adapter": False} for host in ("coop", "cocoop", "kgcoop")},
    "ivlp": {"text_l1_weight": 0.0, "image_l1_weight": 0.0, "kl_weight": 0.0},
    "mmrl": {"rep_branch": "separate"},
}


def with_options_before_v6(options: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`options` with the options added in formats 4 to 6 that they lack set as before them; a run
    record written before then resumes with them too."""
    return with_options_added(options, OPTIONS_BEFORE_V6)


def _upgrade_v3_to_v5(config: dict[str, Any]) -> dict[str, Any]:
    """specpl-bundle/3 built CoOp, CoCoOp and KgCoOp without the linear adapter, formats 3 and 4
    trained IVLP without PromptSRC's agreement terms, and formats 3 to 5 built MMRL's
    representation branch apart from its class branch (options a bundle has are kept)."""
    config = dict(config)
    method = dict(config["method"])
    method["options"] = with_options_before_v6(method.get("options") or {})
    config["method"] = method
    config["format"] = "specpl-bundle/6"  # the format it upgrades to; a later format adds its own step
    return config


UPGRADES = {
    "specpl-bundle/1": _upgrade_v1,
    "specpl-bundle/2": _upgrade_v2,
    **{f"specpl-bundle/{n}": _upgrade_v3_to_v5 for n in (3, 4, 5)},
}  # format -> step to a newer one


def swap_in(staging: Path, directory: Path) -> None:
    """Replace `directory` by `staging` so that a reader sees the old or the new folder, whole."""
    retired = directory.with_name(f".{directory.name}.old")
    shutil.rmtree(retired, ignore_errors=True)
    if directory.exists():
        directory.rename(retired)
    staging.rename(directory)
    shutil.rmtree(retired, ignore_errors=True)
