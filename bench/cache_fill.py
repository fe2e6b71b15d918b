"""Feature-cache fill throughput: images per second through `FeatureCache` from real JPEG files
(decoded and augmented in DataLoader workers, pinned memory, bf16 on a GPU), for the frozen CLIP
image features and for each band decomposer.

    python bench/cache_fill.py --device cuda --model ViT-B-16 --images 2048 --workers 12
    python bench/cache_fill.py --device cpu --model ViT-B-32 --images 64 --workers 2 --decomposers fft

Weights are random (the cost is the same), so it runs offline: the VAEs are built from their
published architectures (`diffusers` configs written out below) with random weights.
Prints one markdown row per frozen input: images/s, and the naive reference (one image at a time,
fp32, no workers) on the first 64 images for comparison.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from specpl.backbone import load_backbone
from specpl.bands import BandDecomposer, BoxLowPass, DiffusersVAECodec, fft_decomposer
from specpl.config import BackboneConfig
from specpl.data import ImageItem
from specpl.features import AugmentedViews, FeatureCache, train_transform
from specpl.frozen import BandStatistics, ClipImageFeatures
from specpl.trainer import frozen_in_bf16

SD_VAE = {
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
}


def random_decomposer(name: str) -> BandDecomposer:
    """A decomposer with its published architecture and random weights."""
    if name == "fft":
        return fft_decomposer()
    import diffusers

    if name == "taesd":
        model = diffusers.AutoencoderTiny()
    elif name == "sd-vae":
        model = diffusers.AutoencoderKL(**SD_VAE)
    elif name == "qwen-vae":
        model = diffusers.AutoencoderKLQwenImage()
    else:
        raise SystemExit(f"unknown decomposer {name!r}")
    return BandDecomposer(name, DiffusersVAECodec(model.eval()), BoxLowPass(7))


def write_images(folder: Path, count: int, size: int = 256) -> list[ImageItem]:
    rng = np.random.default_rng(0)
    items = []
    for i in range(count):
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path, quality=90)
        items.append(ImageItem(path, 0))
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--decomposers", nargs="*", default=["fft", "taesd", "sd-vae", "qwen-vae"])
    args = parser.parse_args()
    device = torch.device(args.device)
    backbone = load_backbone(BackboneConfig(name=args.model, pretrained=None), device=device)
    held = frozen_in_bf16(backbone) if device.type == "cuda" else backbone
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    views = AugmentedViews(train_transform("dassl", held, 0.08), held.preprocess_eval, seed=1)
    inputs = [("clip image features", ClipImageFeatures(held))]
    for name in args.decomposers:
        decomposer = random_decomposer(name).to(device)
        if device.type == "cuda":
            decomposer.to(torch.bfloat16)
        inputs.append((f"bands: {name}", BandStatistics(decomposer, held.normalization, held.image_size)))
    print("| frozen input | model | device | images | workers | images/s | naive images/s |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        items = write_images(Path(tmp), args.images)
        for title, frozen_input in inputs:
            cache = FeatureCache(views, [frozen_input], device, batch_size=args.batch, workers=args.workers)
            with autocast:
                cache.get(items[: args.batch], 99)  # warm-up: kernels, worker start
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                cache.get(items, 0)
                if device.type == "cuda":
                    torch.cuda.synchronize()
            rate = len(items) / (time.perf_counter() - started)
            naive = FeatureCache(views, [frozen_input], device, batch_size=1, workers=0)
            started = time.perf_counter()
            naive.get(items[:64], 1)
            naive_rate = 64 / (time.perf_counter() - started)
            print(
                f"| {title} | {args.model} | {device.type} | {len(items)} | {args.workers} | "
                f"{rate:,.0f} | {naive_rate:,.0f} |"
            )


if __name__ == "__main__":
    main()
