"""``taef2``: the TAEF2 tiny autoencoder (FLUX.2 latent space, 32 channels, 1/8 resolution).

The weights are two local state dicts (``taef2_encoder.pth``, ``taef2_decoder.pth``, MIT,
madebyollin/taesd). The layout follows TAESD; what the state dicts do not say was settled by
reconstruction quality on a real photo (skimage's astronaut, ~30 dB PSNR at 512 px; other
choices scored 18-27 dB):

* images go in as [0, 1] and come out as [0, 1] (not [-1, 1]); the latent is used raw, with no
  scale or shift;
* the blocks at 1/8 resolution carry an extra ``pool`` branch, conv1x1 (64->256) -> GroupNorm
  with 4 groups -> ReLU -> conv1x1 (256->64), applied per pixel to the block *input* and added
  to the conv path and the skip before the block's final ReLU.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from specpl.bands.base import DECOMPOSERS, BandDecomposer, BoxLowPass
from specpl.config import DecomposerConfig

WIDTH = 64
LATENT_CHANNELS = 32
POOL_WIDTH = 4 * WIDTH
POOL_GROUPS = 4
FILES = ("taef2_encoder.pth", "taef2_decoder.pth")


def _conv(n_in: int, n_out: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=bias)


class _Block(nn.Module):
    """Residual block ReLU(conv path + x [+ pool(x)])."""

    def __init__(self, pooled: bool) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv(WIDTH, WIDTH), nn.ReLU(), _conv(WIDTH, WIDTH), nn.ReLU(), _conv(WIDTH, WIDTH))
        self.pool = (
            nn.Sequential(
                nn.Conv2d(WIDTH, POOL_WIDTH, 1, bias=False),
                nn.GroupNorm(POOL_GROUPS, POOL_WIDTH),
                nn.ReLU(),
                nn.Conv2d(POOL_WIDTH, WIDTH, 1, bias=False),
            )
            if pooled
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x) + x
        if self.pool is not None:
            out = out + self.pool(x)
        return F.relu(out)


class _SoftClamp(nn.Module):
    """Squash decoder inputs into (-3, 3) smoothly, as the TAESD decoders expect."""

    def forward(self, latent: Tensor) -> Tensor:
        return torch.tanh(latent / 3) * 3


def _stage(pooled: bool, count: int = 3) -> list[nn.Module]:
    return [_Block(pooled) for _ in range(count)]


def _down() -> nn.Module:
    return _conv(WIDTH, WIDTH, stride=2, bias=False)


def _up() -> list[nn.Module]:
    return [nn.Upsample(scale_factor=2, mode="nearest"), _conv(WIDTH, WIDTH, bias=False)]


def _encoder() -> nn.Sequential:
    """Indices match the state-dict keys: 0 stem, 1 block, then 3 x (down, 3 blocks), 14 head."""
    return nn.Sequential(
        _conv(3, WIDTH), _Block(pooled=False),
        _down(), *_stage(False), _down(), *_stage(False), _down(), *_stage(True),
        _conv(WIDTH, LATENT_CHANNELS),
    )  # fmt: skip


def _decoder() -> nn.Sequential:
    """Indices match the state-dict keys: clamp, conv, ReLU, 3 pooled blocks, 3 x (up, ...), head."""
    return nn.Sequential(
        _SoftClamp(), _conv(LATENT_CHANNELS, WIDTH), nn.ReLU(), *_stage(True),
        *_up(), *_stage(False), *_up(), *_stage(False), *_up(), _Block(pooled=False),
        _conv(WIDTH, 3),
    )  # fmt: skip


class TAEF2Codec(nn.Module):
    """TAEF2 encoder/decoder pair: [0, 1] images <-> raw 32-channel latents at 1/8 size."""

    latent_channels = LATENT_CHANNELS
    downsample = 8
    has_std = False

    def __init__(self) -> None:
        super().__init__()
        self.encoder = _encoder()
        self.decoder = _decoder()

    @classmethod
    def from_folder(cls, folder: str | Path) -> "TAEF2Codec":
        """Load the two state dicts from `folder` (stored in fp16; kept in fp32 here)."""
        paths = [Path(folder).expanduser() / name for name in FILES]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"taef2 weights not found: looked for {', '.join(str(p) for p in paths)}; missing {', '.join(missing)}"
            )
        codec = cls()
        for module, path in zip((codec.encoder, codec.decoder), paths, strict=True):
            state = torch.load(path, map_location="cpu", weights_only=True)
            module.load_state_dict({k: v.float() for k, v in state.items()})
        return codec

    def encode(self, images: Tensor) -> tuple[Tensor, None]:
        return self.encoder(images), None

    def decode(self, latent: Tensor) -> Tensor:
        return self.decoder(latent)


@DECOMPOSERS.register("taef2")
def _build_taef2(config: DecomposerConfig) -> BandDecomposer:
    if config.source is None:
        raise ValueError(
            "the taef2 decomposer needs local weights: set DecomposerConfig.source (CLI --decomposer-source) "
            f"to the folder holding {FILES[0]} and {FILES[1]}"
        )
    return BandDecomposer("taef2", TAEF2Codec.from_folder(config.source), BoxLowPass(config.lowpass_kernel))
