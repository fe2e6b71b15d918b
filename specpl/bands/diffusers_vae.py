"""``taesd``, ``sd-vae`` and ``qwen-vae``: diffusers autoencoders behind one codec.

All three take images in [-1, 1] and decode to [-1, 1]; the codec converts from and to [0, 1].
``qwen-vae`` is the reference teacher of SpecPL (`REPA-E/e2e-qwenimage-vae`, diffusers
``AutoencoderKLQwenImage``, 16 channels, 8x downsampling). It is a video VAE, so the codec adds a
time axis of length 1 on the way in and squeezes it out again on the way out.

Latents are the VAE's *raw* posterior moments: no ``shift_factor``, ``scaling_factor`` or
``latents_mean``/``latents_std`` is applied. That is what SpecPL's statistic is defined on
(spec §1: mean |.| of the low/high band of mu and of sigma, straight from the posterior), and the
map matters: subtracting a non-zero shift changes mean |.| by more than a constant factor, and
it moves what the zero-padded box low-pass darkens the borders toward. Those factors only put
latents in the scale a diffusion model was trained on, which nothing here uses; every consumer
of the statistics layer-normalises them first, and the display maps normalise per channel or
per image. `decode` takes the same raw latents, so decoded bands and swaps stay correct.

Weights come from the hub id or a local folder in `DecomposerConfig.source` (safetensors only).
Any failure to get them becomes one `DecomposerUnavailable` saying where we looked and how to
supply a folder, and with ``HF_HUB_OFFLINE`` set nothing but the local cache is tried, so an
offline run fails fast.
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
QWEN_VAE_ID = "REPA-E/e2e-qwenimage-vae"


class DiffusersVAECodec(nn.Module):
    """Wraps a built diffusers autoencoder: an ``AutoencoderKL``-family model (posterior mean and
    std), an ``AutoencoderKLQwenImage`` (the same through a time axis of length 1) or an
    ``AutoencoderTiny`` (deterministic latent, no std)."""

    def __init__(self, model: nn.Module) -> None:
        from diffusers import AutoencoderKLQwenImage, AutoencoderTiny

        super().__init__()
        self.model = model
        config = model.config
        self.time_axis: bool = isinstance(model, AutoencoderKLQwenImage)
        if self.time_axis:  # its config has z_dim and dim_mult, not AutoencoderKL's keys
            self.latent_channels: int = config.z_dim
            self.downsample: int = 2 ** (len(config.dim_mult) - 1)  # one 2x spatial step between stages
        else:
            blocks = config.get("encoder_block_out_channels") or config.get("block_out_channels")
            self.latent_channels = config.latent_channels
            self.downsample = 2 ** (len(blocks) - 1)
        self.has_std: bool = not isinstance(model, AutoencoderTiny)

    def _add_time(self, x: Tensor) -> Tensor:
        return x.unsqueeze(2) if self.time_axis else x

    def _drop_time(self, x: Tensor) -> Tensor:
        return x.squeeze(2) if self.time_axis else x

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        output = self.model.encode(self._add_time(images * 2 - 1))
        if not self.has_std:
            return output.latents, None
        posterior = output.latent_dist
        return self._drop_time(posterior.mean), self._drop_time(posterior.std)

    def decode(self, latent: Tensor) -> Tensor:
        return (self._drop_time(self.model.decode(self._add_time(latent)).sample) + 1) / 2


def from_diffusers_model(model: nn.Module, lowpass_kernel: int = 7, name: str | None = None) -> BandDecomposer:
    """A decomposer around an already-built diffusers autoencoder (e.g. a small random one in tests)."""
    return BandDecomposer(name or type(model).__name__, DiffusersVAECodec(model), BoxLowPass(lowpass_kernel))


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set, read at call time: huggingface_hub reads it only once, at import."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def looks_local(target: str) -> bool:
    """A hub id is ``org/name``; anything existing, absolute, relative-marked or deeper is a path."""
    return Path(target).expanduser().exists() or target.startswith(("/", ".", "~")) or target.count("/") > 1


def load_pretrained(name: str, model_cls: Any, source: str | None, default_id: str) -> nn.Module:
    """`model_cls.from_pretrained` (safetensors only) on a local folder or hub id, failing with
    `DecomposerUnavailable`."""
    target = source or default_id
    local = Path(target).expanduser().absolute() if looks_local(target) else None
    try:
        if local is not None:
            if not local.is_dir():
                raise FileNotFoundError(f"no such folder: {local}")
            return model_cls.from_pretrained(local, use_safetensors=True)
        try:  # the cache first: no network round trip when the weights are already here
            return model_cls.from_pretrained(target, local_files_only=True, use_safetensors=True)
        except Exception:
            if hub_offline():
                raise
            return model_cls.from_pretrained(target, use_safetensors=True)
    except Exception as err:
        where = f"local folder {local}" if local is not None else f"hub id {target!r}"
        if local is None and hub_offline():
            where += " (HF_HUB_OFFLINE is set, so only the local cache was tried)"
        raise DecomposerUnavailable(
            f"the {name!r} decomposer could not load {model_cls.__name__} weights from {where}: "
            f"{type(err).__name__}: {str(err).rstrip('.')}. Download the model folder on a machine with network access "
            f"(e.g. `hf download {default_id} --local-dir DIR`) and pass it as DecomposerConfig.source "
            "(CLI: --decomposer-source DIR)."
        ) from err


def _register(name: str, class_name: str, default_id: str) -> None:
    """Register a decomposer that loads diffusers' `class_name` from `default_id` or `config.source`."""

    @DECOMPOSERS.register(name)
    def build(config: DecomposerConfig) -> BandDecomposer:
        import diffusers

        model = load_pretrained(name, getattr(diffusers, class_name), config.source, default_id)
        return from_diffusers_model(model, config.lowpass_kernel, name=name)


_register("taesd", "AutoencoderTiny", TAESD_ID)
_register("sd-vae", "AutoencoderKL", SD_VAE_ID)
_register("qwen-vae", "AutoencoderKLQwenImage", QWEN_VAE_ID)
