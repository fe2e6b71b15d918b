"""Where the world-CLIP config and weights live, and how to load them with stock open_clip."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import open_clip
import torch

MODEL_NAME = "world-clip"
CONFIG_DIR = Path(__file__).resolve().parents[1] / "model_configs"
WEIGHTS_PATH = Path(__file__).resolve().parents[2] / "assets" / "world-clip" / "open_clip_model.safetensors"


def register_config() -> None:
    """Make `MODEL_NAME` known to open_clip (idempotent: open_clip appends paths, so check first)."""
    if MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)


def load_world_clip(
    weights: str | Path | None = WEIGHTS_PATH,
) -> tuple[torch.nn.Module, Callable, Callable]:
    """(model in eval mode, eval preprocess, tokenizer); `weights=None` gives a random init."""
    register_config()
    pretrained = str(weights) if weights is not None else None
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=pretrained)
    return model.eval(), preprocess, open_clip.get_tokenizer(MODEL_NAME)
