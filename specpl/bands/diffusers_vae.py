"""``taesd`` and ``sd-vae``: diffusers autoencoders behind one codec.

Both take images in [-1, 1] and decode to [-1, 1]; the codec converts from and to [0, 1].
Latents are reported in the diffusion model's scale, ``(z - shift_factor) * scaling_factor``
(0.18215 for sd-vae-ft-mse, 1 for TAESD), so channel magnitudes are about 1 whichever VAE is
used; the posterior std is multiplied by the same factor, and `decode` undoes the map.

Weights come from the hub id or a local folder in `DecomposerConfig.source`. Any failure to get
them becomes one `DecomposerUnavailable` saying where we looked and how to supply a folder, and
with ``HF_HUB_OFFLINE`` set nothing but the local cache is tried, so an offline run fails fast.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from specpl.bands.base import DECOMPOSERS, BandDecomposer, BoxLowPass, DecomposerUnavailable
from specpl.config import DecomposerConfig

TAESD_ID = "madebyollin/taesd"
SD_VAE_ID = "stabilityai/sd-vae-ft-mse"


class DiffusersVAECodec(nn.Module):
    """Wraps a built diffusers ``AutoencoderKL``-family model (posterior mean and std) or an
    ``AutoencoderTiny`` (deterministic latent, no std)."""

    def __init__(self, model: nn.Module) -> None:
        from diffusers import AutoencoderTiny

        super().__init__()
        self.model = model
        config = model.config
        blocks = config.get("encoder_block_out_channels") or config.get("block_out_channels")
        self.latent_channels: int = config.latent_channels
        self.downsample: int = 2 ** (len(blocks) - 1)
        self.has_std: bool = not isinstance(model, AutoencoderTiny)
        self.scale = float(config.get("scaling_factor") or 1.0)
        self.shift = float(config.get("shift_factor") or 0.0)

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        output = self.model.encode(images * 2 - 1)
        if not self.has_std:
            return (output.latents - self.shift) * self.scale, None
        posterior = output.latent_dist
        return (posterior.mean - self.shift) * self.scale, posterior.std * self.scale

    def decode(self, latent: Tensor) -> Tensor:
        return (self.model.decode(latent / self.scale + self.shift).sample + 1) / 2


def from_diffusers_model(model: nn.Module, lowpass_kernel: int = 7, name: str | None = None) -> BandDecomposer:
    """A decomposer around an already-built diffusers autoencoder (e.g. a small random one in tests)."""
    return BandDecomposer(name or type(model).__name__, DiffusersVAECodec(model), BoxLowPass(lowpass_kernel))


def _hub_offline() -> bool:
    # Read at call time: huggingface_hub reads the variable only once, at import.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _looks_local(target: str) -> bool:
    """A hub id is ``org/name``; anything existing, absolute, relative-marked or deeper is a path."""
    return Path(target).expanduser().exists() or target.startswith(("/", ".", "~")) or target.count("/") > 1


def load_pretrained(name: str, model_cls: Any, source: str | None, default_id: str) -> nn.Module:
    """`model_cls.from_pretrained` on a local folder or hub id, failing with `DecomposerUnavailable`."""
    target = source or default_id
    local = Path(target).expanduser().absolute() if _looks_local(target) else None
    try:
        if local is not None:
            if not local.is_dir():
                raise FileNotFoundError(f"no such folder: {local}")
            return model_cls.from_pretrained(local)
        try:  # the cache first: no network round trip when the weights are already here
            return model_cls.from_pretrained(target, local_files_only=True)
        except Exception:
            if _hub_offline():
                raise
            return model_cls.from_pretrained(target)
    except Exception as err:
        where = f"local folder {local}" if local is not None else f"hub id {target!r}"
        if local is None and _hub_offline():
            where += " (HF_HUB_OFFLINE is set, so only the local cache was tried)"
        raise DecomposerUnavailable(
            f"the {name!r} decomposer could not load {model_cls.__name__} weights from {where}: "
            f"{type(err).__name__}: {str(err).rstrip('.')}. Download the model folder on a machine with network access "
            f"(e.g. `hf download {default_id} --local-dir DIR`) and pass it as DecomposerConfig.source "
            "(CLI: --decomposer-source DIR)."
        ) from err


@DECOMPOSERS.register("taesd")
def _build_taesd(config: DecomposerConfig) -> BandDecomposer:
    from diffusers import AutoencoderTiny

    model = load_pretrained("taesd", AutoencoderTiny, config.source, TAESD_ID)
    return from_diffusers_model(model, config.lowpass_kernel, name="taesd")


@DECOMPOSERS.register("sd-vae")
def _build_sd_vae(config: DecomposerConfig) -> BandDecomposer:
    from diffusers import AutoencoderKL

    model = load_pretrained("sd-vae", AutoencoderKL, config.source, SD_VAE_ID)
    return from_diffusers_model(model, config.lowpass_kernel, name="sd-vae")
