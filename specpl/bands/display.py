"""PNG export of the band maps, for ``specpl bands`` and for looking at what a teacher sees."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from specpl.bands.base import BandDecomposer
from specpl.data import load_image
from specpl.io import atomic_write_bytes


def to_unit_tensor(image: Image.Image, size: int) -> Tensor:
    """(1, 3, size, size) in [0, 1], squashed to a square as the band teacher sees it."""
    rgb = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    return torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)


def to_pil(image: Tensor) -> Image.Image:
    """(3, H, W) or (1, H, W) in [0, 1] -> PIL image."""
    pixels = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def save_band_pngs(decomposer: BandDecomposer, image_path: Path, out_dir: Path, size: int) -> list[Path]:
    """Write ``<stem>_low.png`` (decoded low band), ``<stem>_high.png`` (high-band magnitude) and
    ``<stem>_latents.png`` (latent channel grid) under `out_dir`; returns their paths."""
    maps = decomposer.render(to_unit_tensor(load_image(Path(image_path)), size))
    stem = Path(image_path).stem
    written = []
    for suffix, image in (("low", maps.low_image), ("high", maps.high_magnitude), ("latents", maps.latent_grid)):
        path = Path(out_dir) / f"{stem}_{suffix}.png"
        buffer = io.BytesIO()
        to_pil(image[0]).save(buffer, format="PNG")
        atomic_write_bytes(path, buffer.getvalue())
        written.append(path)
    return written
