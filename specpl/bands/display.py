"""PNG export of the band maps, for ``specpl bands`` and for looking at what a teacher sees."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from specpl.bands.base import BandDecomposer
from specpl.io import atomic_write_bytes


def load_image(path: Path, size: int) -> Tensor:
    """An image file as a (1, 3, size, size) tensor in [0, 1] (squashed to a square, as the
    trainer's resize does)."""
    with Image.open(path) as image:
        rgb = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)[None].float() / 255


def _png_bytes(image: Tensor) -> bytes:
    """(C, H, W) in [0, 1] with C = 1 or 3 -> PNG bytes."""
    pixels = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def save_band_pngs(decomposer: BandDecomposer, image_path: Path, out_dir: Path, size: int) -> list[Path]:
    """Write ``<stem>_low.png`` (decoded low band), ``<stem>_high.png`` (high-band magnitude) and
    ``<stem>_latents.png`` (latent channel grid) under `out_dir`; returns their paths."""
    maps = decomposer.render(load_image(Path(image_path), size))
    stem = Path(image_path).stem
    written = []
    for suffix, image in (("low", maps.low_image), ("high", maps.high_magnitude), ("latents", maps.latent_grid)):
        path = Path(out_dir) / f"{stem}_{suffix}.png"
        atomic_write_bytes(path, _png_bytes(image[0]))
        written.append(path)
    return written
