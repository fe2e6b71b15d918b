"""Frozen open_clip backbones: by name + pretrained tag, from a local file, or from ``hf-hub:``.

The project's own JSON configs (a tiny test model, the SpectralWorld CLIP) are registered with
open_clip at import, so every model goes through the same factory.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch
from torch import nn

from specpl.config import BackboneConfig
from specpl.registry import UnknownNameError
from specpl.world.model import MODEL_NAME as WORLD_MODEL
from specpl.world.model import WEIGHTS_PATH

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

TINY_TEST_MODEL = "specpl-tiny"
EMBEDDED_TAG = "embedded"  # weights shipped in this repository's assets/ (see specpl.defaults)
# CasPL's offline teacher: a larger world CLIP (8 + 8 blocks), see assets/world-clip-large/README.md
WORLD_TEACHER_MODEL = "world-clip-large"
# What ``pretrained="embedded"`` loads, by model name. SPECPL_WORLD_WEIGHTS points the world CLIP
# at another file (worker processes inherit it); tests swap an entry for a file of their own.
EMBEDDED_WEIGHTS: dict[str, Path] = {
    WORLD_MODEL: Path(os.environ.get("SPECPL_WORLD_WEIGHTS") or WEIGHTS_PATH),
    WORLD_TEACHER_MODEL: WEIGHTS_PATH.parents[1] / WORLD_TEACHER_MODEL / "open_clip_model.safetensors",
}
RANDOM_INIT_SEED = 0


class BackboneUnavailable(RuntimeError):
    """Pretrained weights could not be had; the message says where we looked and what to do."""


@dataclass
class Backbone:
    """A frozen CLIP model with its tokenizer and its own preprocessing transforms."""

    model: nn.Module
    tokenizer: Callable[..., torch.Tensor]
    preprocess_train: Callable[[Any], torch.Tensor]
    preprocess_eval: Callable[[Any], torch.Tensor]
    config: BackboneConfig  # resolved: quick_gelu is always set

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[-1])

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) of the model's own preprocessing, needed to undo it for the band VAE."""
        return tuple(self.model.visual.image_mean), tuple(self.model.visual.image_std)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())

    def describe(self) -> str:
        return f"{self.config.name} ({self.config.pretrained or 'random init'})"


def available_models() -> list[str]:
    return open_clip.list_models()


def resolve_quick_gelu(config: BackboneConfig) -> bool:
    """Decide the MLP activation. OpenAI's weights were trained with QuickGELU, but open_clip's plain
    ``ViT-B-16`` config uses GELU; loading OpenAI weights into it runs silently with the wrong
    activation. An explicit setting wins; then the pretrained tag's own record; then the model
    name's ``-quickgelu`` suffix; a local file named like an OpenAI checkpoint counts as OpenAI."""
    if config.quick_gelu is not None:
        return config.quick_gelu
    if config.name.endswith("-quickgelu"):
        return True
    pretrained = config.pretrained or ""
    tag_cfg = open_clip.get_pretrained_cfg(config.name, pretrained) if pretrained else {}
    if tag_cfg:
        return bool(tag_cfg.get("quick_gelu", False))
    if pretrained and Path(pretrained).is_file() and "openai" in Path(pretrained).name.lower():
        return True
    model_cfg = open_clip.get_model_config(config.name) or {}
    return bool(model_cfg.get("quick_gelu", False))


def load_backbone(config: BackboneConfig, device: str | torch.device = "cpu") -> Backbone:
    """Build the frozen CLIP described by `config`; raise `BackboneUnavailable` with a clear
    message (model, where we looked, how to supply a local file) when the weights can't be had."""
    if not config.name.startswith("hf-hub:") and config.name not in open_clip.list_models():
        raise UnknownNameError(
            f"unknown backbone {config.name!r}; open_clip knows {len(open_clip.list_models())} models, "
            f"e.g. ViT-B-16, ViT-B-32, {TINY_TEST_MODEL} (see specpl.backbone.available_models())"
        )
    quick_gelu = False if config.name.startswith("hf-hub:") else resolve_quick_gelu(config)
    resolved = dataclasses.replace(config, quick_gelu=quick_gelu)
    kwargs: dict[str, Any] = {"cache_dir": config.cache_dir, "device": device, "force_quick_gelu": quick_gelu}
    pretrained = config.pretrained
    if pretrained == EMBEDDED_TAG:
        pretrained = str(embedded_weights(config.name))
    if config.name.startswith("hf-hub:"):
        pretrained = None
    elif pretrained and not open_clip.get_pretrained_cfg(config.name, pretrained):
        if not Path(pretrained).is_file():
            tags = open_clip.list_pretrained_tags_by_model(config.name)
            raise BackboneUnavailable(
                f"pretrained weights {pretrained!r} for {config.name} are neither a known tag "
                f"({', '.join(tags) or 'none'}) nor an existing file. Pass a tag or the path of a local "
                f"open_clip checkpoint (.safetensors, .bin or .pt)."
            )
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)  # random-init models (tests) are the same in every process
            model, preprocess_train, preprocess_eval = open_clip.create_model_and_transforms(
                config.name, pretrained=pretrained, **kwargs
            )
    except Exception as exc:  # noqa: BLE001 - network, cache and format errors all mean "unavailable"
        raise BackboneUnavailable(_unavailable_message(config, exc)) from exc
    model.eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(config.name, cache_dir=config.cache_dir)
    return Backbone(model, tokenizer, preprocess_train, preprocess_eval, resolved)


def embedded_weights(name: str) -> Path:
    """The shipped weights file of an embedded model. A bundle records the tag, not this path, so
    it loads on any checkout."""
    files = EMBEDDED_WEIGHTS
    if name not in files:
        raise BackboneUnavailable(f"{name} has no embedded weights; embedded models: {', '.join(files)}")
    if not files[name].is_file():
        raise BackboneUnavailable(
            f"the embedded weights of {name} are missing: {files[name]} (restore the repository's assets/ folder)"
        )
    return files[name]


def _unavailable_message(config: BackboneConfig, exc: Exception) -> str:
    cache = config.cache_dir or os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
    if config.name.startswith("hf-hub:"):
        where = f"the Hugging Face hub repo {config.name[len('hf-hub:') :]} (cache: {cache})"
    elif config.pretrained and Path(config.pretrained).is_file():
        where = f"the local file {config.pretrained}"
    else:
        tag = open_clip.get_pretrained_cfg(config.name, config.pretrained or "") or {}
        source = tag.get("hf_hub") or tag.get("url") or "no download source"
        where = f"the Hugging Face cache {cache} and {source}"
    offline = " (offline: HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
    return (
        f"could not load {config.name} weights {config.pretrained!r}{offline}: looked in {where}. "
        f"Reason: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
        f"To use a local file, download the open_clip checkpoint on a connected machine and pass its path "
        f"as the pretrained value (CLI: --pretrained /path/to/open_clip_model.safetensors)."
    )
