"""Band maps as PIL images, for the app and notebooks (the CLI writes PNGs via `specpl.bands`)."""

from __future__ import annotations

import time

import numpy as np
import torch
from PIL import Image

from specpl.bands import BandDecomposer
from specpl.bands.display import to_pil, to_unit_tensor

__all__ = ["band_images", "heatmap", "to_pil", "to_unit_tensor"]

# A perceptually ordered dark-to-bright ramp (black, indigo, magenta, orange, pale yellow).
_HEAT_STOPS = np.array([[0, 0, 4], [60, 15, 110], [180, 55, 120], [250, 140, 50], [252, 250, 190]], dtype=np.float32)


def heatmap(magnitude: torch.Tensor) -> Image.Image:
    """(1, H, W) in [0, 1] -> a colour heatmap (brighter = more high-frequency energy)."""
    values = magnitude[0].detach().float().clamp(0, 1).cpu().numpy() * (len(_HEAT_STOPS) - 1)
    low = np.floor(values).astype(int).clip(0, len(_HEAT_STOPS) - 2)
    frac = (values - low)[..., None]
    colours = _HEAT_STOPS[low] * (1 - frac) + _HEAT_STOPS[low + 1] * frac
    return Image.fromarray(colours.round().astype(np.uint8))


def band_images(decomposer: BandDecomposer, image: Image.Image, size: int) -> dict[str, object]:
    """The original, decoded low band, high-band heatmap and latent grid, plus the seconds it took."""
    size -= size % decomposer.downsample
    started = time.perf_counter()
    maps = decomposer.render(to_unit_tensor(image, size))
    elapsed = time.perf_counter() - started
    return {
        "original": to_pil(maps.original[0]),
        "low": to_pil(maps.low_image[0]),
        "high": heatmap(maps.high_magnitude[0]),
        "latents": to_pil(maps.latent_grid[0]),
        "seconds": elapsed,
    }
