"""Frozen band decomposers: image -> latent -> (low band, high band), SpecPL's spectral teacher.

``build_decomposer(config)`` looks the name up in `DECOMPOSERS`: ``fft`` (weight-free, the CPU
default), ``taef2`` (local TAEF2 weights), ``taesd`` and ``sd-vae`` (diffusers, hub or folder).
"""
from __future__ import annotations

import torch

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
    """The decomposer named by `config`, frozen and moved to `device`."""
    return DECOMPOSERS.get(config.name)(config).to(device)


__all__ = [
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
    "save_band_pngs",
]
