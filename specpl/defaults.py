"""The embedded offline default: the SpectralWorld CLIP and its few-shot demo set, both in assets/.

Used by the CLI and the app when the configured backbone cannot be loaded (no network, no cached
weights) or no data folder is given, so that every feature works on a fresh offline machine. The
library itself never falls back silently: `load_backbone` raises, and callers decide.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch

from specpl.backbone import (
    EMBEDDED_TAG,
    EMBEDDED_WEIGHTS,
    WORLD_MODEL,
    WORLD_TEACHER_MODEL,
    Backbone,
    BackboneUnavailable,
    load_backbone,
)
from specpl.config import BackboneConfig
from specpl.world.model import WEIGHTS_PATH

ASSETS = WEIGHTS_PATH.parents[1]
DEMO_ZIP = ASSETS / "world-demo.zip"


def world_backbone_config() -> BackboneConfig:
    return BackboneConfig(name=WORLD_MODEL, pretrained=EMBEDDED_TAG, quick_gelu=False)


def world_teacher_config() -> BackboneConfig:
    """The larger world CLIP that teaches world-clip in CasPL's phase 1 (a local file: bundles
    record the teacher as ``embedded``, so this path is resolved on each checkout)."""
    weights = EMBEDDED_WEIGHTS[WORLD_TEACHER_MODEL]
    if not weights.is_file():
        raise BackboneUnavailable(
            f"the embedded weights of {WORLD_TEACHER_MODEL} are missing: {weights} "
            "(restore the repository's assets/ folder)"
        )
    return BackboneConfig(name=WORLD_TEACHER_MODEL, pretrained=str(weights), quick_gelu=False)


def load_backbone_or_world(config: BackboneConfig, device: str | torch.device = "cpu") -> tuple[Backbone, str | None]:
    """The configured backbone, or the world CLIP with a plain sentence saying why."""
    try:
        return load_backbone(config, device=device), None
    except BackboneUnavailable as exc:
        reason = str(exc).split(": looked in")[0]
        note = (
            f"{reason}; using the embedded SpectralWorld CLIP ({WORLD_MODEL}) instead, "
            "which knows only SpectralWorld images."
        )
        return load_backbone(world_backbone_config(), device=device), note


def demo_data_dir(target: Path | None = None) -> Path:
    """The demo few-shot set (train/ and test/ class folders), unpacked once into `target`
    (default: the user cache, ``$XDG_CACHE_HOME/specpl/world-demo``)."""
    target = (
        Path(target)
        if target
        else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "specpl" / "world-demo"
    )
    if not (target / "train").is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            with zipfile.ZipFile(DEMO_ZIP) as archive:
                if any(name.startswith("/") or ".." in Path(name).parts for name in archive.namelist()):
                    raise ValueError(f"{DEMO_ZIP} holds an unsafe path")
                archive.extractall(staging)
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)  # whole or not at all
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
