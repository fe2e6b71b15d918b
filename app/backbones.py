"""Which CLIP backbones the app offers, whether each can be had right now, and the one function
that turns the user's choice into a `BackboneConfig` (`resolve_backbone`).

Availability is judged without loading anything: a built-in or random-init model is always
there, pretrained weights are "cached" when the Hugging Face cache holds them, "downloadable" when
the hub may be reached, and "offline" otherwise.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from specpl.backbone import TINY_TEST_MODEL
from specpl.config import BackboneConfig

HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass(frozen=True)
class BackboneOption:
    key: str  # what the dropdown returns
    name: str
    pretrained: str | None
    note: str = ""

    @property
    def title(self) -> str:
        return f"{self.name} ({self.pretrained or 'random init'})" + (f", {self.note}" if self.note else "")


OPTIONS = (
    BackboneOption("ViT-B-32/openai", "ViT-B-32", "openai"),
    BackboneOption("ViT-B-16/openai", "ViT-B-16", "openai"),
    BackboneOption("ViT-L-14/openai", "ViT-L-14", "openai"),
    BackboneOption(f"{TINY_TEST_MODEL}/none", TINY_TEST_MODEL, None, "tiny test model, untrained"),
)


@dataclass(frozen=True)
class Availability:
    status: str  # "built-in", "cached", "downloadable" or "offline"
    reason: str = ""

    @property
    def usable(self) -> bool:
        return self.status != "offline"


def option(key: str) -> BackboneOption:
    for candidate in OPTIONS:
        if candidate.key == key:
            return candidate
    raise ValueError(f"unknown backbone choice {key!r}; choose one of: {', '.join(o.key for o in OPTIONS)}")


def resolve_backbone(key: str) -> BackboneConfig:
    """The backbone to load for a dropdown choice. Every place in the app goes through here."""
    chosen = option(key)
    return BackboneConfig(name=chosen.name, pretrained=chosen.pretrained)


def availability(key: str) -> Availability:
    config = resolve_backbone(key)
    if not config.pretrained:
        return Availability("built-in")
    if _hub_cached(config):
        return Availability("cached")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return Availability("offline", "its weights are not in the Hugging Face cache and the app is offline (HF_HUB_OFFLINE)")
    return Availability("downloadable", "its weights will be downloaded on first use")


def dropdown_choices() -> list[tuple[str, str]]:
    """(label, key) pairs, each label saying whether the weights can be had."""
    return [(f"{o.title} — {availability(o.key).status}", o.key) for o in OPTIONS]


def default_backbone_key() -> str:
    """The first usable option (a pretrained model when one can be had)."""
    return next((o.key for o in OPTIONS if availability(o.key).usable), OPTIONS[-1].key)


def unavailable_message(key: str, reason: str | None = None) -> str | None:
    """One sentence saying why `key` can't be used and what can, or ``None`` when it can."""
    state = availability(key)
    if state.usable and reason is None:
        return None
    usable = [o.title for o in OPTIONS if o.key != key and availability(o.key).usable]
    return f"{option(key).title} can't be loaded because {reason or state.reason}; available now: {', '.join(usable) or 'none'}."


def _hub_cached(config: BackboneConfig) -> bool:
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    source = open_clip.get_pretrained_cfg(config.name, config.pretrained or "") or {}
    hub = source.get("hf_hub", "")
    if not hub:
        return False
    repo, filename = hub.rstrip("/").rsplit("/", 1) if not hub.endswith("/") else (hub.rstrip("/"), "")
    names = (filename,) if filename else HUB_WEIGHT_FILES
    return any(isinstance(try_to_load_from_cache(repo, name, cache_dir=config.cache_dir), str) for name in names)
