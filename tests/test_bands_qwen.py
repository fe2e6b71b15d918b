"""The ``qwen-vae`` decomposer (the reference teacher) and the ``auto`` choice between it and ``fft``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from specpl.bands import (
    AUTO,
    BandDecomposer,
    DecomposerUnavailable,
    build_decomposer,
    from_diffusers_model,
    resolve_decomposer,
)
from specpl.bands.diffusers_vae import QWEN_VAE_ID
from specpl.config import DecomposerConfig

Z_DIM = 16  # as in the reference VAE: its statistic has 2 x 16 = 32 values
SIZE = 64  # -> an 8x8 latent, wider than the 7x7 window, so borders and interior both occur


@pytest.fixture(scope="module")
def tiny_qwen() -> BandDecomposer:
    """A random AutoencoderKLQwenImage with the reference's 16 channels and 8x downsampling, but narrow."""
    from diffusers import AutoencoderKLQwenImage

    torch.manual_seed(0)
    model = AutoencoderKLQwenImage(base_dim=4, z_dim=Z_DIM, dim_mult=[1, 2, 2, 2], num_res_blocks=1)
    return from_diffusers_model(model, lowpass_kernel=7, name="qwen-vae")


@pytest.fixture
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, offline: what a fresh machine without network sees."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def images(seed: int, count: int = 2) -> torch.Tensor:
    return torch.rand(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def box_lowpass_by_hand(latent: torch.Tensor, k: int = 7) -> torch.Tensor:
    """Sum of the k x k window over a zero-padded latent, divided by k^2 (padding counts)."""
    h, w = latent.shape[-2:]
    padded = F.pad(latent, (k // 2,) * 4)
    return sum(padded[..., dy : dy + h, dx : dx + w] for dy in range(k) for dx in range(k)) / k**2


def test_qwen_statistics_match_the_spec_by_hand(tiny_qwen: BandDecomposer) -> None:
    x = images(1)
    posterior = tiny_qwen.codec.model.encode((x * 2 - 1).unsqueeze(2)).latent_dist  # (B, 16, T=1, 8, 8)
    assert posterior.mean.shape == (2, Z_DIM, 1, SIZE // 8, SIZE // 8)
    expected_low, expected_high = [], []
    for moment in (posterior.mean[:, :, 0], posterior.std[:, :, 0]):  # raw moments: no shift, scale or latents_mean
        low = box_lowpass_by_hand(moment)
        expected_low.append(low.abs().mean(dim=(2, 3)))
        expected_high.append((moment - low).abs().mean(dim=(2, 3)))
    low_stats, high_stats = tiny_qwen.band_statistics(tiny_qwen.decompose(x))
    assert low_stats.shape == high_stats.shape == (2, 2 * Z_DIM) and tiny_qwen.stat_dim == 2 * Z_DIM
    torch.testing.assert_close(low_stats, torch.cat(expected_low, dim=1))
    torch.testing.assert_close(high_stats, torch.cat(expected_high, dim=1))


def test_qwen_codec_reads_the_video_vae_config(tiny_qwen: BandDecomposer) -> None:
    config = tiny_qwen.codec.model.config
    assert "block_out_channels" not in config and "scaling_factor" not in config  # why it needs its own adapter
    assert tiny_qwen.latent_channels == Z_DIM and tiny_qwen.downsample == 8
    mean, std = tiny_qwen.encode(images(2, count=1))
    assert mean.shape == std.shape == (1, Z_DIM, 8, 8) and bool((std > 0).all())
    with pytest.raises(ValueError, match="divisible by 8"):
        tiny_qwen.encode(torch.rand(1, 3, 60, 64))


def test_qwen_decode_swap_and_band_images(tiny_qwen: BandDecomposer) -> None:
    a, b = images(3, count=1), images(4, count=1)
    mean, _ = tiny_qwen.encode(a)
    decoded = tiny_qwen.decode(mean)
    expected = ((tiny_qwen.codec.model.decode(mean.unsqueeze(2)).sample[:, :, 0] + 1) / 2).clamp(0, 1)
    assert decoded.shape == (1, 3, SIZE, SIZE)
    torch.testing.assert_close(decoded, expected)
    torch.testing.assert_close(tiny_qwen.swap(a, a), decoded, rtol=0, atol=1e-5)
    low_a, _ = tiny_qwen.split(mean)
    _, high_b = tiny_qwen.split(tiny_qwen.encode(b)[0])
    torch.testing.assert_close(tiny_qwen.swap(a, b), tiny_qwen.decode(low_a + high_b))
    low_image, high_image = tiny_qwen.band_images(a)
    assert low_image.shape == high_image.shape == (1, 3, SIZE, SIZE)
    torch.testing.assert_close(low_image, tiny_qwen.decode(low_a))


def test_qwen_loads_from_a_local_folder(tiny_qwen: BandDecomposer, tmp_path: Path) -> None:
    tiny_qwen.codec.model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = build_decomposer(DecomposerConfig(name="qwen-vae", source=str(tmp_path)))
    assert loaded.name == "qwen-vae" and loaded.stat_dim == 2 * Z_DIM
    x = images(5)
    for got, want in zip(
        loaded.band_statistics(loaded.decompose(x)), tiny_qwen.band_statistics(tiny_qwen.decompose(x)), strict=True
    ):
        torch.testing.assert_close(got, want)


def test_missing_qwen_weights_name_the_hub_id_and_the_local_folder_option(empty_hub_cache: Path) -> None:
    with pytest.raises(DecomposerUnavailable) as info:
        build_decomposer(DecomposerConfig(name="qwen-vae"))
    message = str(info.value)
    assert QWEN_VAE_ID in message and "AutoencoderKLQwenImage" in message
    assert "DecomposerConfig.source" in message and "--decomposer-source" in message and "HF_HUB_OFFLINE" in message


def test_auto_offline_without_a_cached_vae_is_fft_and_says_why(empty_hub_cache: Path) -> None:
    config, reason = resolve_decomposer(DecomposerConfig(name=AUTO, lowpass_kernel=5, image_size=96))
    assert config == DecomposerConfig(name="fft", lowpass_kernel=5, image_size=96)
    assert reason.startswith("fft, because") and "HF_HUB_OFFLINE" in reason
    assert QWEN_VAE_ID in reason and str(empty_hub_cache) in reason
    assert build_decomposer(DecomposerConfig(name=AUTO)).name == "fft"


def test_auto_with_a_local_vae_folder_is_qwen_vae(
    tiny_qwen: BandDecomposer, tmp_path: Path, empty_hub_cache: Path
) -> None:
    folder = tmp_path / "qwen-vae"
    tiny_qwen.codec.model.save_pretrained(folder)
    config, reason = resolve_decomposer(DecomposerConfig(name=AUTO, source=str(folder)))
    assert config == DecomposerConfig(name="qwen-vae", source=str(folder))
    assert reason.startswith("qwen-vae") and str(folder) in reason
    built = build_decomposer(DecomposerConfig(name=AUTO, source=str(folder)))
    assert built.name == "qwen-vae" and built.stat_dim == 2 * Z_DIM


def test_auto_finds_the_vae_in_the_hub_cache_without_the_network(
    tiny_qwen: BandDecomposer, empty_hub_cache: Path
) -> None:
    """A cache laid out as huggingface_hub writes it: refs/main -> snapshots/<commit>/<files>."""
    repo = empty_hub_cache / ("models--" + QWEN_VAE_ID.replace("/", "--"))
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    tiny_qwen.codec.model.save_pretrained(snapshot)
    config, reason = resolve_decomposer(DecomposerConfig(name=AUTO))
    assert config.name == "qwen-vae" and config.source is None
    assert "Hugging Face cache" in reason and str(snapshot) in reason
    built = build_decomposer(DecomposerConfig(name=AUTO))  # diffusers reads the same cache, offline
    torch.testing.assert_close(built.encode(images(7))[0], tiny_qwen.encode(images(7))[0])
    (snapshot / "diffusion_pytorch_model.safetensors").unlink()  # a config without weights is not "cached"
    assert resolve_decomposer(DecomposerConfig(name=AUTO))[0].name == "fft"


def test_auto_online_picks_qwen_vae_to_download(empty_hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr("huggingface_hub.get_hf_file_metadata", lambda url, **kwargs: asked.append((url, kwargs)))
    config, reason = resolve_decomposer(DecomposerConfig(name=AUTO))  # decides only: nothing is fetched
    assert config.name == "qwen-vae" and "downloaded" in reason and "the hub answers" in reason
    assert len(asked) == 1 and asked[0][0].endswith(f"{QWEN_VAE_ID}/resolve/main/config.json")
    assert asked[0][1]["retry_on_errors"] is False
    assert not any(empty_hub_cache.iterdir())


def test_auto_without_network_is_fft_even_when_not_marked_offline(
    empty_hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(url: str, **kwargs: object) -> None:
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr("huggingface_hub.get_hf_file_metadata", no_network)
    config, reason = resolve_decomposer(DecomposerConfig(name=AUTO))
    assert config.name == "fft"
    assert "could not be reached (OSError: [Errno -2] Name or service not known)" in reason and QWEN_VAE_ID in reason


def test_auto_with_a_source_that_holds_no_model_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DecomposerUnavailable, match=f"{tmp_path}.*config.json"):
        resolve_decomposer(DecomposerConfig(name=AUTO, source=str(tmp_path)))


def test_named_decomposers_are_kept_as_they_are() -> None:
    config = DecomposerConfig(name="sd-vae", source="some/vae", lowpass_kernel=3)
    resolved, reason = resolve_decomposer(config)
    assert resolved == config and reason == "sd-vae, as the config names it."


def test_auto_says_how_to_fall_back_when_the_download_fails(
    empty_hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffusers import AutoencoderKLQwenImage

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("cannot reach huggingface.co")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr("huggingface_hub.get_hf_file_metadata", lambda url, **kwargs: None)  # the hub answers...
    monkeypatch.setattr(AutoencoderKLQwenImage, "from_pretrained", no_network)  # ...but the download fails
    with pytest.raises(DecomposerUnavailable) as info:
        build_decomposer(DecomposerConfig(name=AUTO))
    message = str(info.value)
    assert "cannot reach huggingface.co" in message and QWEN_VAE_ID in message
    assert "HF_HUB_OFFLINE=1" in message and "falls back to fft" in message
