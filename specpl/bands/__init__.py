"""Frozen band decomposers: image -> latent -> (low band, high band), SpecPL's spectral teacher.

``build_decomposer(config)`` looks the name up in `DECOMPOSERS`: ``fft`` (weight-free),
``taef2`` (local TAEF2 weights), ``taesd``, ``sd-vae`` and ``qwen-vae`` (diffusers, hub or
folder; ``qwen-vae`` is the reference teacher). ``auto`` is first resolved by
`resolve_decomposer` to ``qwen-vae`` when its weights can be had, else ``fft``.
"""

from __future__ import annotations

import torch

from specpl.bands.auto import AUTO, resolve_decomposer
from specpl.bands.base import (
    DECOMPOSERS,
    BandDecomposer,
    BandMaps,
    Bands,
    BoxLowPass,
    DecomposerUnavailable,
    LatentCodec,
    lowpass,
)

# importing each backend module registers its decomposer(s) in DECOMPOSERS
from specpl.bands.diffusers_vae import DiffusersVAECodec, from_diffusers_model
from specpl.bands.display import save_band_pngs
from specpl.bands.fft import FFTLowPass, PixelCodec, fft_decomposer
from specpl.bands.taef2 import TAEF2Codec
from specpl.config import DecomposerConfig


def build_decomposer(config: DecomposerConfig, device: str | torch.device = "cpu") -> BandDecomposer:
    """The decomposer named by `config` (``auto`` resolved first), frozen and moved to `device`."""
    concrete, reason = resolve_decomposer(config)
    try:
        decomposer = DECOMPOSERS.get(concrete.name)(concrete)
    except DecomposerUnavailable as err:
        if config.name != AUTO:
            raise
        raise DecomposerUnavailable(
            f"{err} ('auto' chose {reason} With HF_HUB_OFFLINE=1 it falls back to fft; or name a decomposer.)"
        ) from err
    return decomposer.to(device)


__all__ = [
    "AUTO",
    "DECOMPOSERS",
    "BandDecomposer",
    "BandMaps",
    "Bands",
    "BoxLowPass",
    "DecomposerUnavailable",
    "DiffusersVAECodec",
    "FFTLowPass",
    "LatentCodec",
    "PixelCodec",
    "TAEF2Codec",
    "build_decomposer",
    "fft_decomposer",
    "from_diffusers_model",
    "lowpass",
    "resolve_decomposer",
    "save_band_pngs",
]
