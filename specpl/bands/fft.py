"""``fft``: a weight-free decomposer for CPU runs and tests.

The "latent" is the image itself (3 colour channels in [0, 1], full resolution) followed by oriented
luminance differences (0, 45, 90 and 135 degrees at offsets of 1, 2, 4 and 8 pixels), so decoding
is exact (the colour channels) and nothing has to be downloaded. The difference channels matter for
SpecPL: its band statistic is a per-channel mean of |.|, and over three colour channels alone that
pools away which way and how finely an image is patterned; with oriented channels the high band's
statistics tell stripes from bars from grain (see bench/WORLD.md for the linear probes).

Unlike the VAE decomposers, the low band comes from a frequency-domain low-pass rather than
SpecPL's k x k box average: at full pixel resolution a 7-pixel box would be a much finer split
than 7 latent pixels (56 image pixels) of a VAE, and a radial cutoff states the split directly as
a frequency.

It is also the right split for the world benchmark. A VAE latent has a stride of 8 px, so a 1-4 px
texture is coded in the latent's channel values rather than in its spatial variation, and a latent
box low-pass leaves much of it in the low band. Measured with `band_linear_probe` on TAEF2 at
128 px (600/300 images, band-image reading, low vs high): kernel 3 gave texture 0.52 vs 0.64;
the spec's kernel 7 (56 px) also blurred shape out of the low band, 0.36 vs 0.81.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from specpl.bands.base import DECOMPOSERS, BandDecomposer
from specpl.config import DecomposerConfig

DEFAULT_CUTOFF = 1 / 8  # fraction of Nyquist: 1/16 cycles per pixel, i.e. detail finer than ~16 px is "high"
DIFFERENCE_OFFSETS = (1, 2, 4, 8)


class FFTLowPass(nn.Module):
    """Smooth radial low-pass: gain exp(-ln2 * (f / f_c)^2), which is 1 at DC, 1/2 at the cutoff
    f_c = `cutoff` x Nyquist and has no ringing (a Gaussian in both domains).

    The input is mirrored to twice its size before the FFT, so the implied periodic signal is
    continuous at the borders; without this, the wrap-around jump of e.g. a left-to-right
    gradient would leak into the high band along the edges.
    """

    def __init__(self, cutoff: float = DEFAULT_CUTOFF) -> None:
        super().__init__()
        if not 0 < cutoff <= 1:
            raise ValueError(f"fft cutoff is a fraction of Nyquist in (0, 1], got {cutoff}")
        self.cutoff = cutoff

    def forward(self, latent: Tensor) -> Tensor:
        h, w = latent.shape[-2:]
        mirrored = torch.cat([latent, latent.flip(-1)], dim=-1)
        mirrored = torch.cat([mirrored, mirrored.flip(-2)], dim=-2).float()
        fy = torch.fft.fftfreq(2 * h, device=latent.device).view(-1, 1)
        fx = torch.fft.rfftfreq(2 * w, device=latent.device).view(1, -1)
        radius = torch.sqrt(fy**2 + fx**2) / 0.5  # in units of Nyquist (0.5 cycles per pixel)
        gain = torch.exp(-math.log(2) * (radius / self.cutoff) ** 2)
        spectrum = torch.fft.rfft2(mirrored) * gain
        low = torch.fft.irfft2(spectrum, s=(2 * h, 2 * w))[..., :h, :w]
        return low.to(latent.dtype)

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}"


class PixelCodec(nn.Module):
    """Latent = [image colours; oriented luminance differences]; decoding keeps the colours."""

    has_std = False
    downsample = 1

    def __init__(self, offsets: tuple[int, ...] = DIFFERENCE_OFFSETS) -> None:
        super().__init__()
        self.offsets = offsets
        self.latent_channels = 3 + 4 * len(offsets)

    def encode(self, images: Tensor) -> tuple[Tensor, None]:
        luminance = images.mean(dim=1, keepdim=True)
        channels = [images]
        for s in self.offsets:
            padded = F.pad(luminance, (s, s, s, s), mode="replicate")
            centre = padded[..., s:-s, s:-s]
            right, down = padded[..., s:-s, 2 * s :], padded[..., 2 * s :, s:-s]
            down_right, down_left = padded[..., 2 * s :, 2 * s :], padded[..., 2 * s :, : -2 * s]
            channels += [right - centre, down - centre, down_right - centre, down_left - centre]
        return torch.cat(channels, dim=1), None

    def decode(self, latent: Tensor) -> Tensor:
        return latent[:, :3]


def fft_decomposer(cutoff: float = DEFAULT_CUTOFF) -> BandDecomposer:
    return BandDecomposer("fft", PixelCodec(), FFTLowPass(cutoff))


@DECOMPOSERS.register("fft")
def _build_fft(config: DecomposerConfig) -> BandDecomposer:
    """`config.lowpass_kernel` does not apply here (see the module docstring)."""
    return fft_decomposer()
