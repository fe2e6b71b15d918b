"""The ``auto`` decomposer: the reference VAE teacher when its weights can be had, else ``fft``.

The choice is made without downloading anything: a local folder in `DecomposerConfig.source`, or
the Hugging Face cache (looked up file by file with ``try_to_load_from_cache``), or a hub that
is not marked offline (``HF_HUB_OFFLINE``) and answers one HEAD request for the model's config
without retries (the download then happens when the decomposer is built). The HEAD request is
there because a machine without network but without ``HF_HUB_OFFLINE`` would otherwise pick the
VAE and then fail its download after half a minute of retries. The one-sentence reason is meant
to be recorded with the run and shown to the user.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from specpl.bands.base import DecomposerUnavailable
from specpl.bands.diffusers_vae import QWEN_VAE_ID, hub_offline, looks_local
from specpl.config import DecomposerConfig

AUTO = "auto"
REFERENCE_DECOMPOSER = "qwen-vae"
FALLBACK_DECOMPOSER = "fft"
HUB_TIMEOUT_S = 5.0
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"  # what diffusers loads; safetensors only


def _hub_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)  # read at call time, so HF_HOME/HF_HUB_CACHE set at import apply


def cached_model_folder(repo_id: str) -> Path | None:
    """The cached snapshot folder of `repo_id` when both its config and its weights are in the
    Hugging Face cache, else None. Reads the cache only; never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    found = [try_to_load_from_cache(repo_id, name, cache_dir=_hub_cache_dir()) for name in (CONFIG_FILE, WEIGHTS_FILE)]
    if all(isinstance(path, str) and Path(path).is_file() for path in found):
        return Path(found[0]).parent
    return None


def hub_unreachable_because(repo_id: str) -> str | None:
    """None when the hub answers a HEAD request for `repo_id`'s config, else why not (one line).
    No retries: this decides a default, it should not stall a run."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:
        get_hf_file_metadata(hf_hub_url(repo_id, CONFIG_FILE), timeout=HUB_TIMEOUT_S, retry_on_errors=False)
    except Exception as err:
        first_line = next(iter(str(err).strip().splitlines()), "no message")
        return f"{type(err).__name__}: {first_line}"
    return None


def resolve_decomposer(config: DecomposerConfig) -> tuple[DecomposerConfig, str]:
    """The concrete decomposer config for `config` and one sentence saying why it was chosen.

    A name other than ``auto`` is kept as it is. ``auto`` becomes ``qwen-vae`` (the reference
    teacher, spec §1) when `config.source` is a local model folder, when its hub id
    (`config.source` or the reference id) is in the Hugging Face cache, or when the hub is not
    marked offline and can be reached; otherwise ``fft``. A `config.source` naming a local path
    that holds no model raises `DecomposerUnavailable` rather than silently training with
    another teacher.
    """
    if config.name != AUTO:
        return config, f"{config.name}, as the config names it."
    reference = replace(config, name=REFERENCE_DECOMPOSER)
    target = config.source or QWEN_VAE_ID
    if looks_local(target):
        folder = Path(target).expanduser().absolute()
        if not (folder / CONFIG_FILE).is_file():
            raise DecomposerUnavailable(
                f"the 'auto' decomposer was given the local folder {folder} as DecomposerConfig.source "
                f"(CLI --decomposer-source), but it holds no {CONFIG_FILE}: point it at a saved "
                f"AutoencoderKLQwenImage folder (e.g. `hf download {QWEN_VAE_ID} --local-dir DIR`) or leave it unset."
            )
        return (
            reference,
            f"{REFERENCE_DECOMPOSER} (the reference VAE), because its weights are in the local folder {folder}.",
        )
    cached = cached_model_folder(target)
    if cached is not None:
        return (
            reference,
            f"{REFERENCE_DECOMPOSER} (the reference VAE), because {target} is in the Hugging Face cache at {cached}.",
        )
    cache = _hub_cache_dir()
    offline = hub_offline()
    unreachable = None if offline else hub_unreachable_because(target)
    if not offline and unreachable is None:
        return reference, (
            f"{REFERENCE_DECOMPOSER} (the reference VAE): {target} is not in the Hugging Face cache {cache} "
            "but the hub answers, so it is downloaded when the decomposer is built."
        )
    why = "the hub is offline (HF_HUB_OFFLINE is set)" if offline else f"the hub could not be reached ({unreachable})"
    return replace(config, name=FALLBACK_DECOMPOSER, source=None), (
        f"{FALLBACK_DECOMPOSER}, because {why} and {target} is not in the Hugging Face cache {cache}; "
        "pass a local folder as DecomposerConfig.source (CLI --decomposer-source) to use the reference VAE."
    )
