"""Which CLIP backbones the app offers, whether each can be had right now, and the one function
that turns the user's choice into a `BackboneConfig` (`resolve_backbone`).

Availability is judged without loading anything: a random-init model is always there ("built-in"),
the embedded SpectralWorld CLIP is a file in assets/ ("embedded", or "missing"), and pretrained hub
weights are "cached" when the Hugging Face cache holds them, "downloadable" when the hub answers,
and "offline" otherwise. When no pretrained model can be had, the world CLIP is the default, so the
app works on a fresh offline machine.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlparse

from specpl import defaults
from specpl.backbone import EMBEDDED_WEIGHTS, TINY_TEST_MODEL
from specpl.config import BackboneConfig

HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HUB_PROBE_TIMEOUT_S = 2.0
HUB_PROBE_TTL_S = 60.0  # the dropdown asks once per option; probe the network at most this often
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
HUB, EMBEDDED, RANDOM_INIT = "hub", "embedded", "random init"
USABLE = ("built-in", "embedded", "cached", "downloadable")
WORLD_KEY = f"{defaults.WORLD_MODEL}/embedded"


@dataclass(frozen=True)
class BackboneOption:
    key: str  # what the dropdown returns
    name: str
    source: str  # HUB (pretrained weights by tag), EMBEDDED (the world CLIP's file) or RANDOM_INIT
    tag: str | None = None  # the open_clip pretrained tag of a HUB option
    note: str = ""

    @property
    def title(self) -> str:
        return f"{self.name} ({self.tag or self.source})" + (f", {self.note}" if self.note else "")


OPTIONS = (
    BackboneOption("ViT-B-32/openai", "ViT-B-32", HUB, "openai"),
    BackboneOption("ViT-B-16/openai", "ViT-B-16", HUB, "openai"),
    BackboneOption("ViT-L-14/openai", "ViT-L-14", HUB, "openai"),
    BackboneOption(WORLD_KEY, defaults.WORLD_MODEL, EMBEDDED, note="SpectralWorld images only"),
    BackboneOption(f"{TINY_TEST_MODEL}/none", TINY_TEST_MODEL, RANDOM_INIT, note="tiny test model, untrained"),
)
FALLBACK_NOTE = (
    "No pretrained CLIP can be loaded here (offline), so the embedded SpectralWorld CLIP is selected; "
    "it knows only SpectralWorld images — {hint}."
)


@dataclass(frozen=True)
class Availability:
    status: str  # one of USABLE, "offline" or "missing"
    reason: str = ""

    @property
    def usable(self) -> bool:
        return self.status in USABLE


def option(key: str) -> BackboneOption:
    for candidate in OPTIONS:
        if candidate.key == key:
            return candidate
    raise ValueError(f"unknown backbone choice {key!r}; choose one of: {', '.join(o.key for o in OPTIONS)}")


def resolve_backbone(key: str) -> BackboneConfig:
    """The backbone to load for a dropdown choice. Every place in the app goes through here."""
    chosen = option(key)
    if chosen.source == EMBEDDED:
        return defaults.world_backbone_config()
    return BackboneConfig(name=chosen.name, pretrained=chosen.tag)


def key_for(config: BackboneConfig) -> str:
    """The dropdown choice that loads `config` (a preset file's or an API call's backbone)."""
    for candidate in OPTIONS:
        chosen = resolve_backbone(candidate.key)
        if (chosen.name, chosen.pretrained) == (config.name, config.pretrained):
            return candidate.key
    raise ValueError(
        f"backbone {config.name} ({config.pretrained}) is not one this app offers: "
        f"{', '.join(o.title for o in OPTIONS)}"
    )


def availability(key: str) -> Availability:
    chosen, config = option(key), resolve_backbone(key)
    if chosen.source == RANDOM_INIT:
        return Availability("built-in")
    if chosen.source == EMBEDDED:
        weights = EMBEDDED_WEIGHTS[defaults.WORLD_MODEL]
        return (
            Availability("embedded")
            if weights.is_file()
            else Availability("missing", f"its weights file {weights} is missing from this installation")
        )
    if _hub_cached(config):
        return Availability("cached")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return Availability(
            "offline", "its weights are not in the Hugging Face cache and the app is offline (HF_HUB_OFFLINE)"
        )
    if not hub_reachable():
        return Availability(
            "offline", "its weights are not in the Hugging Face cache and the Hugging Face hub can't be reached"
        )
    return Availability("downloadable", "its weights will be downloaded on first use")


def dropdown_choices() -> list[tuple[str, str]]:
    """(label, key) pairs, each label saying whether the weights can be had."""
    return [(f"{o.title} — {availability(o.key).status}", o.key) for o in OPTIONS]


def default_backbone_key() -> str:
    """The first usable pretrained model, else the embedded world CLIP (never the untrained test model)."""
    return next((o.key for o in OPTIONS if o.source == HUB and availability(o.key).usable), WORLD_KEY)


def fallback_note(hint: str = "try the demo set") -> str | None:
    """The plain sentence saying the world CLIP is the default because no pretrained CLIP can be
    had, ending with `hint` (what to do with it); ``None`` when a pretrained CLIP is the default."""
    fallen_back = default_backbone_key() == WORLD_KEY and availability(WORLD_KEY).usable
    return FALLBACK_NOTE.format(hint=hint) if fallen_back else None


def unavailable_message(key: str, reason: str | None = None) -> str | None:
    """One sentence saying why `key` can't be used and what can, or ``None`` when it can."""
    state = availability(key)
    if state.usable and reason is None:
        return None
    usable = [o.title for o in OPTIONS if o.key != key and availability(o.key).usable]
    return (
        f"{option(key).title} can't be loaded because {reason or state.reason}; "
        f"available now: {'; '.join(usable) or 'none'}."
    )


def note(key: str) -> str:
    """The line under a backbone dropdown: why the choice can't be used, else its availability."""
    return unavailable_message(key) or f"{option(key).title}: {availability(key).status}."


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


_hub_probes: dict[tuple[str, int], tuple[float, bool]] = {}


def hub_reachable() -> bool:
    """Whether the hub's host takes a connection, so that an offline machine without HF_HUB_OFFLINE
    is told so up front rather than by a failed training. Through a proxy we can't tell: assume yes."""
    from huggingface_hub import constants

    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return True
    endpoint = urlparse(constants.ENDPOINT)
    address = (endpoint.hostname or "", endpoint.port or (443 if endpoint.scheme == "https" else 80))
    checked = _hub_probes.get(address)
    if checked and time.monotonic() - checked[0] < HUB_PROBE_TTL_S:
        return checked[1]
    try:
        with socket.create_connection(address, timeout=HUB_PROBE_TIMEOUT_S):
            reachable = True
    except OSError:
        reachable = False
    _hub_probes[address] = (time.monotonic(), reachable)
    return reachable
