"""The band-decomposer interface shared by every latent codec.

A `BandDecomposer` is assembled from two parts rather than subclassed per backend: a *codec*
(image <-> latent, e.g. a frozen VAE) and a *low-pass filter* on the latent. The low band is the
filtered latent and the high band the residual, so ``low + high == latent`` up to float rounding,
and the statistics, display maps and band swaps are written once here for all backends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from specpl.registry import Registry


class DecomposerUnavailable(RuntimeError):
    """A decomposer's weights could not be had (offline, missing or unreadable)."""


@dataclass
class Bands:
    """A latent split into bands; the ``*_std`` pair is the same split of the posterior std
    (KL VAEs only), kept because SpecPL's statistics use both moments."""

    low: Tensor
    high: Tensor
    low_std: Tensor | None = None
    high_std: Tensor | None = None


@dataclass
class BandMaps:
    """Display tensors, all in [0, 1]: the input, the decoded low band, the high-band magnitude
    (upsampled to image size) and the latent channels tiled into one grey image."""

    original: Tensor  # (B, 3, H, W)
    low_image: Tensor  # (B, 3, H, W)
    high_magnitude: Tensor  # (B, 1, H, W)
    latent_grid: Tensor  # (B, 1, gh, gw)


class LatentCodec(Protocol):
    """What a backend must provide. Implementations are `nn.Module`s so that `.to(device)`
    moves their weights along with the decomposer."""

    latent_channels: int
    downsample: int  # input H and W must be multiples of this; latent size is H/downsample
    has_std: bool  # whether `encode` returns a posterior std (KL VAEs)

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """Images in [0, 1] -> (latent mean, latent std or None)."""

    def decode(self, latent: Tensor) -> Tensor:
        """Latent -> images in [0, 1]."""


def _check_kernel(kernel: int) -> None:
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"lowpass kernel must be a positive odd integer, got {kernel}")


def lowpass(latent: Tensor, kernel: int) -> Tensor:
    """SpecPL's spatial low-pass: a k x k box average per channel, stride 1, zero padding k//2,
    with the padded zeros counted in the average (so borders are darkened, as in the reference).

    `kernel` must be odd so that the output keeps the input's spatial size.
    """
    _check_kernel(kernel)
    return F.avg_pool2d(latent, kernel, stride=1, padding=kernel // 2, count_include_pad=True)


class BoxLowPass(nn.Module):
    """`lowpass` with its kernel bound, as a module so that decomposers pickle and print."""

    def __init__(self, kernel: int) -> None:
        super().__init__()
        _check_kernel(kernel)  # fail at build time, not on the first batch
        self.kernel = kernel

    def forward(self, latent: Tensor) -> Tensor:
        return lowpass(latent, self.kernel)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}"


def channel_abs_mean(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C): mean of |x| over space, the per-band statistic of SpecPL."""
    return x.abs().mean(dim=(2, 3))


def latent_grid(latent: Tensor, pad: int = 1) -> Tensor:
    """Tile the channels of (B, C, h, w) into a near-square (B, 1, gh, gw) image in [0, 1].

    Each channel is min-max normalised on its own so that channels of small magnitude stay
    visible; the `pad` pixels between tiles are 0.
    """
    b, c, h, w = latent.shape
    cols = math.ceil(math.sqrt(c))
    rows = math.ceil(c / cols)
    flat = latent.flatten(2)
    lo = flat.amin(dim=2, keepdim=True)
    hi = flat.amax(dim=2, keepdim=True)
    tiles = ((flat - lo) / (hi - lo).clamp_min(1e-8)).view(b, c, h, w)
    tiles = F.pad(tiles, (0, pad, 0, pad))
    tiles = torch.cat([tiles, tiles.new_zeros(b, rows * cols - c, h + pad, w + pad)], dim=1)
    grid = tiles.view(b, rows, cols, h + pad, w + pad).permute(0, 1, 3, 2, 4)
    grid = grid.reshape(b, 1, rows * (h + pad), cols * (w + pad))
    return grid[:, :, : grid.shape[2] - pad, : grid.shape[3] - pad]


class BandDecomposer(nn.Module):
    """A frozen teacher splitting images into latent low/high bands.

    Every parameter is frozen and the module is pinned to eval mode (a parent's ``.train()``
    does not switch it), and all public methods run under ``torch.no_grad``: SpecPL only reads
    the teacher's outputs, it never trains it.
    """

    def __init__(self, name: str, codec: nn.Module, low_pass: nn.Module) -> None:
        super().__init__()
        self.name = name
        self.codec = codec
        self.low_pass = low_pass
        self.latent_channels: int = codec.latent_channels
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "BandDecomposer":
        """Stay in eval mode whatever the caller asks: the teacher is frozen."""
        return super().train(False)

    @property
    def stat_dim(self) -> int:
        """Length of each band's statistic vector: C, or 2C when the posterior std is used."""
        return self.latent_channels * (2 if self.codec.has_std else 1)

    @property
    def downsample(self) -> int:
        """Input side lengths must be multiples of this (the codec's spatial reduction)."""
        return self.codec.downsample

    def _dtype_device(self) -> tuple[torch.dtype, torch.device | None]:
        param = next(self.codec.parameters(), None)
        return (param.dtype, param.device) if param is not None else (torch.float32, None)

    def _prepare(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.downsample or w % self.downsample:
            raise ValueError(f"{self.name}: image size {h}x{w} must be divisible by {self.downsample}; resize first")
        dtype, device = self._dtype_device()
        return images.to(device=device, dtype=dtype).clamp(0, 1)

    @torch.no_grad()
    def encode(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """Images in [0, 1] (B, 3, H, W) -> (latent mean, latent std or None)."""
        return self.codec.encode(self._prepare(images))

    @torch.no_grad()
    def decode(self, latent: Tensor) -> Tensor:
        """Latent -> images in [0, 1]."""
        dtype, device = self._dtype_device()
        return self.codec.decode(latent.to(device=device, dtype=dtype)).clamp(0, 1)

    @torch.no_grad()
    def split(self, latent: Tensor) -> tuple[Tensor, Tensor]:
        """(low, high) of a latent; high is the residual latent - low."""
        low = self.low_pass(latent)
        return low, latent - low

    @torch.no_grad()
    def decompose(self, images: Tensor) -> Bands:
        """Encode, then split the posterior mean (and std, if any) into low and high bands."""
        mean, std = self.encode(images)
        low, high = self.split(mean)
        low_std, high_std = self.split(std) if std is not None else (None, None)
        return Bands(low=low, high=high, low_std=low_std, high_std=high_std)

    @torch.no_grad()
    def band_statistics(self, bands: Bands) -> tuple[Tensor, Tensor]:
        """(low_stats, high_stats), each (B, stat_dim): mean |.| per channel of the mean's band,
        followed by the same for the std's band when there is one."""
        low, high = channel_abs_mean(bands.low), channel_abs_mean(bands.high)
        if bands.low_std is not None and bands.high_std is not None:
            low = torch.cat([low, channel_abs_mean(bands.low_std)], dim=1)
            high = torch.cat([high, channel_abs_mean(bands.high_std)], dim=1)
        return low, high

    @torch.no_grad()
    def band_images(self, images: Tensor, bands: Bands | None = None) -> tuple[Tensor, Tensor]:
        """(low, high), each band as an image in [0, 1] of the input's size: the decoded low band,
        and the rest of the image (input - low image) around mid-grey. This is what a frozen image
        encoder is shown to ask what each band holds (`specpl.world.benchmark.band_linear_probe`).
        Pass `bands` when `images` were already decomposed."""
        images = self._prepare(images)
        low = self.decode((bands if bands is not None else self.decompose(images)).low)
        return low, (images - low + 0.5).clamp(0, 1)

    @torch.no_grad()
    def render(self, images: Tensor) -> BandMaps:
        """Tensors for showing what each band holds (see `BandMaps`)."""
        images = self._prepare(images)
        bands = self.decompose(images)
        magnitude = bands.high.pow(2).sum(dim=1, keepdim=True).sqrt()
        magnitude = F.interpolate(magnitude, size=images.shape[-2:], mode="bilinear", align_corners=False)
        peak = magnitude.flatten(1).amax(dim=1).clamp_min(1e-8).view(-1, 1, 1, 1)
        return BandMaps(
            original=images,
            low_image=self.decode(bands.low),
            high_magnitude=(magnitude / peak).clamp(0, 1),
            latent_grid=latent_grid(bands.low + bands.high),
        )

    @torch.no_grad()
    def swap(self, images_a: Tensor, images_b: Tensor) -> Tensor:
        """decode(low(a) + high(b)): a's semantics rendered with b's granularity, in [0, 1]."""
        if images_a.shape != images_b.shape:
            raise ValueError(f"swap needs equal shapes, got {tuple(images_a.shape)} and {tuple(images_b.shape)}")
        low_a, _ = self.split(self.encode(images_a)[0])
        _, high_b = self.split(self.encode(images_b)[0])
        return self.decode(low_a + high_b)


DECOMPOSERS: Registry[BandDecomposer] = Registry("band decomposer")
