"""Band decomposers: the low/high split, statistics, display helpers and weight loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from specpl.bands import (
    BandDecomposer,
    Bands,
    DecomposerUnavailable,
    build_decomposer,
    fft_decomposer,
    from_diffusers_model,
    lowpass,
    save_band_pngs,
)
from specpl.config import DecomposerConfig
from specpl.registry import UnknownNameError

TAEF2 = Path(__file__).resolve().parents[2] / "shared" / "weights" / "taef2"


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return (10 * torch.log10(1 / F.mse_loss(a, b))).item()


@pytest.fixture(scope="module")
def taef2() -> BandDecomposer:
    if not (TAEF2 / "taef2_encoder.pth").is_file() or not (TAEF2 / "taef2_decoder.pth").is_file():
        pytest.skip(f"shared TAEF2 weights not found at {TAEF2}")
    return build_decomposer(DecomposerConfig(name="taef2", source=str(TAEF2)))


@pytest.fixture(scope="module")
def tiny_kl() -> BandDecomposer:
    """A random two-level AutoencoderKL (downsample 2, 4 latent channels) with a non-unit scale
    and a non-zero shift, as FLUX's VAE has."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    model = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        mid_block_add_attention=False,
        scaling_factor=0.5,
        shift_factor=0.25,
    )
    return from_diffusers_model(model, lowpass_kernel=3)


@pytest.fixture(scope="module")
def tiny_taesd() -> BandDecomposer:
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    model = AutoencoderTiny(
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1),
    )
    return from_diffusers_model(model, lowpass_kernel=3)


def test_taef2_reconstructs_a_real_photo(taef2: BandDecomposer) -> None:
    data = pytest.importorskip("skimage.data", reason="scikit-image provides the test photo")
    image = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255
    image = F.interpolate(image, size=(256, 256), mode="bilinear", antialias=True, align_corners=False)
    mean, std = taef2.encode(image)
    assert mean.shape == (1, 32, 32, 32) and std is None
    assert psnr(taef2.decode(mean), image) >= 22


def test_taef2_is_frozen(taef2: BandDecomposer) -> None:
    assert not any(p.requires_grad for p in taef2.parameters())
    taef2.train()
    assert not taef2.training and not taef2.codec.training


def test_taef2_needs_a_source_and_names_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="taef2_encoder.pth"):
        build_decomposer(DecomposerConfig(name="taef2"))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "taef2_decoder.pth")):
        build_decomposer(DecomposerConfig(name="taef2", source=str(tmp_path)))


@pytest.mark.parametrize("which", ["fft", "taef2"])
def test_low_plus_high_is_the_latent(which: str, request: pytest.FixtureRequest) -> None:
    decomposer = fft_decomposer() if which == "fft" else request.getfixturevalue("taef2")
    images = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    bands = decomposer.decompose(images)
    latent, _ = decomposer.encode(images)
    torch.testing.assert_close(bands.low + bands.high, latent, rtol=1e-6, atol=1e-6)
    assert bands.low_std is None and bands.high_std is None


def test_lowpass_matches_hand_computation() -> None:
    x = torch.arange(9.0).view(1, 1, 3, 3)
    low = lowpass(x, 3)
    assert low[0, 0, 0, 0].item() == pytest.approx((0 + 1 + 3 + 4) / 9)  # padded zeros count
    assert low[0, 0, 0, 1].item() == pytest.approx((0 + 1 + 2 + 3 + 4 + 5) / 9)
    assert low[0, 0, 1, 1].item() == pytest.approx(36 / 9)
    with pytest.raises(ValueError, match="odd"):
        lowpass(x, 4)


def test_constant_latent_keeps_its_value_in_the_interior() -> None:
    low = lowpass(torch.full((1, 2, 12, 12), 2.5), 7)
    torch.testing.assert_close(low[..., 3:-3, 3:-3], torch.full((1, 2, 6, 6), 2.5))
    assert low[0, 0, 0, 0].item() == pytest.approx(2.5 * 16 / 49)  # corner sees 4x4 of the 7x7 window
    flat = fft_decomposer().decompose(torch.full((1, 3, 20, 20), 0.75))
    torch.testing.assert_close(flat.low[:, :3], torch.full_like(flat.low[:, :3], 0.75), rtol=0, atol=1e-5)
    torch.testing.assert_close(flat.low[:, 3:], torch.zeros_like(flat.low[:, 3:]), rtol=0, atol=1e-5)  # no edges


def test_band_statistics_without_std() -> None:
    decomposer = fft_decomposer()
    assert decomposer.stat_dim == 3 + 4 * 4  # colours + 4 orientations x 4 offsets
    low = torch.zeros(2, 3, 2, 2)
    low[0, 0] = torch.tensor([[1.0, -1.0], [3.0, -3.0]])
    bands = Bands(low=low, high=-2 * low)
    low_stats, high_stats = decomposer.band_statistics(bands)
    assert low_stats.shape == high_stats.shape == (2, 3)
    assert low_stats[0, 0].item() == pytest.approx(2.0)
    assert high_stats[0, 0].item() == pytest.approx(4.0)
    assert low_stats[1].abs().sum().item() == 0


def test_band_statistics_of_a_kl_vae_append_the_std(tiny_kl: BandDecomposer) -> None:
    assert tiny_kl.latent_channels == 4 and tiny_kl.stat_dim == 8
    bands = tiny_kl.decompose(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)))
    assert bands.low.shape == (2, 4, 8, 8) and bands.low_std is not None and bands.high_std is not None
    low_stats, high_stats = tiny_kl.band_statistics(bands)
    assert low_stats.shape == high_stats.shape == (2, 8)
    torch.testing.assert_close(low_stats[:, 4:], bands.low_std.abs().mean(dim=(2, 3)))
    torch.testing.assert_close(high_stats[:, :4], bands.high.abs().mean(dim=(2, 3)))


def test_kl_vae_latents_are_the_raw_posterior_and_decode_back(tiny_kl: BandDecomposer) -> None:
    """Spec §1 takes the statistics on the posterior's own mu and sigma; shift and scale only serve
    a diffusion model, and decoding the raw latent is what the VAE itself does."""
    images = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    mean, std = tiny_kl.encode(images)
    posterior = tiny_kl.codec.model.encode(images * 2 - 1).latent_dist
    torch.testing.assert_close(mean, posterior.mean)
    torch.testing.assert_close(std, posterior.std)
    expected = ((tiny_kl.codec.model.decode(posterior.mean).sample + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(tiny_kl.decode(mean), expected)


def test_kl_vae_statistics_ignore_the_shift_factor(tiny_kl: BandDecomposer) -> None:
    """With shift 0.25 the diffusion-space latent (mu - shift) * scale gives statistics that are
    not a rescaling of the spec's; ours are the spec's, checked by hand (3x3 zero-padded box)."""
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    posterior = tiny_kl.codec.model.encode(images * 2 - 1).latent_dist
    expected = []
    for moment in (posterior.mean, posterior.std):
        low = F.avg_pool2d(F.pad(moment, (1, 1, 1, 1)), 3, stride=1)
        expected.append((low.abs().mean(dim=(2, 3)), (moment - low).abs().mean(dim=(2, 3))))
    low_stats, high_stats = tiny_kl.band_statistics(tiny_kl.decompose(images))
    torch.testing.assert_close(low_stats, torch.cat([expected[0][0], expected[1][0]], dim=1))
    torch.testing.assert_close(high_stats, torch.cat([expected[0][1], expected[1][1]], dim=1))
    shifted_low = lowpass((posterior.mean - 0.25) * 0.5, 3).abs().mean(dim=(2, 3))
    ratio = shifted_low / low_stats[:, :4]
    assert (ratio.max() - ratio.min()).item() > 0.05  # not a constant factor a LayerNorm would remove


def test_taesd_wrapper_has_no_std(tiny_taesd: BandDecomposer) -> None:
    assert tiny_taesd.stat_dim == tiny_taesd.latent_channels == 4
    bands = tiny_taesd.decompose(torch.rand(1, 3, 16, 16))
    assert bands.low.shape == (1, 4, 8, 8) and bands.low_std is None
    with pytest.raises(ValueError, match="divisible by 2"):
        tiny_taesd.encode(torch.rand(1, 3, 15, 16))


def _energy_split(images: torch.Tensor) -> tuple[float, float]:
    """Shares of the colour channels' spatial variance (the DC level is not detail) in each band."""
    bands = fft_decomposer().decompose(images)
    low, high = (band[:, :3].flatten(2).var(dim=2).sum().item() for band in (bands.low, bands.high))
    return low / (low + high), high / (low + high)


def test_fft_puts_fine_stripes_high_and_smooth_gradients_low() -> None:
    stripes = (torch.arange(64) % 2).float().expand(1, 3, 64, 64)
    _, high_share = _energy_split(stripes)
    assert high_share > 0.99
    gradient = torch.linspace(0, 1, 64).expand(1, 3, 64, 64)
    low_share, _ = _energy_split(gradient)
    assert low_share > 0.99


@pytest.mark.parametrize("which", ["fft", "tiny_kl"])
def test_render_shapes_and_ranges(which: str, request: pytest.FixtureRequest) -> None:
    decomposer = fft_decomposer() if which == "fft" else request.getfixturevalue("tiny_kl")
    images = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(3))
    maps = decomposer.render(images)
    assert maps.original.shape == maps.low_image.shape == (2, 3, 16, 24)
    assert maps.high_magnitude.shape == (2, 1, 16, 24)
    assert maps.latent_grid.shape[:2] == (2, 1)
    for tensor in (maps.original, maps.low_image, maps.high_magnitude, maps.latent_grid):
        assert tensor.min().item() >= 0 and tensor.max().item() <= 1
    assert torch.allclose(maps.high_magnitude.flatten(1).amax(dim=1), torch.ones(2), atol=1e-3)
    if which == "fft":  # 19 channels tile into 4 rows x 5 columns of 16x24 with 1-pixel gaps
        assert maps.latent_grid.shape[2:] == (4 * 17 - 1, 5 * 25 - 1)


@pytest.mark.parametrize("which", ["fft", "tiny_kl"])
def test_swap_with_itself_is_a_reconstruction(which: str, request: pytest.FixtureRequest) -> None:
    decomposer = fft_decomposer() if which == "fft" else request.getfixturevalue("tiny_kl")
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    recon = decomposer.decode(decomposer.encode(images)[0])
    torch.testing.assert_close(decomposer.swap(images, images), recon, rtol=0, atol=1e-5)


def test_fft_swap_mixes_low_of_a_with_high_of_b() -> None:
    decomposer = fft_decomposer()
    smooth = torch.linspace(0.2, 0.8, 32).expand(1, 3, 32, 32)
    stripes = 0.5 + 0.2 * (torch.arange(32) % 2 * 2 - 1).float().expand(1, 3, 32, 32)
    mixed = decomposer.swap(smooth, stripes)
    colours = slice(0, 3)  # what decoding keeps; the difference channels are derived from them
    low, high = (band[:, colours] for band in decomposer.split(decomposer.encode(mixed)[0]))
    low_a = decomposer.split(decomposer.encode(smooth)[0])[0][:, colours]
    high_b = decomposer.split(decomposer.encode(stripes)[0])[1][:, colours]
    # re-splitting is only approximately idempotent (a Gaussian is not an ideal filter)
    assert ((low - low_a).norm() / low_a.norm()).item() < 0.1
    assert ((high - high_b).norm() / high_b.norm()).item() < 0.1


def test_offline_hub_load_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DecomposerUnavailable) as info:
        build_decomposer(DecomposerConfig(name="taesd"))
    message = str(info.value)
    assert "madebyollin/taesd" in message and "DecomposerConfig.source" in message
    assert "--decomposer-source" in message and "HF_HUB_OFFLINE" in message


def test_taesd_loads_from_a_local_folder(tiny_taesd: BandDecomposer, tmp_path: Path) -> None:
    tiny_taesd.codec.model.save_pretrained(tmp_path)
    loaded = build_decomposer(DecomposerConfig(name="taesd", source=str(tmp_path)))
    assert loaded.name == "taesd" and loaded.stat_dim == 4
    images = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(loaded.encode(images)[0], tiny_taesd.encode(images)[0])


def test_missing_local_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DecomposerUnavailable, match="no such folder"):
        build_decomposer(DecomposerConfig(name="sd-vae", source=str(tmp_path / "absent")))


def test_unknown_decomposer_lists_the_available_ones() -> None:
    with pytest.raises(UnknownNameError) as info:
        build_decomposer(DecomposerConfig(name="wavelet"))
    for name in ("fft", "taef2", "taesd", "sd-vae", "qwen-vae"):
        assert name in str(info.value)


def test_save_band_pngs(tmp_path: Path) -> None:
    from PIL import Image

    source = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (200, 40, 90)).save(source)
    paths = save_band_pngs(fft_decomposer(), source, tmp_path / "out", 32)
    assert [p.name for p in paths] == ["photo_low.png", "photo_high.png", "photo_latents.png"]
    assert all(p.is_file() for p in paths)
    assert Image.open(paths[0]).size == (32, 32)


def test_fft_high_band_statistics_see_orientation() -> None:
    """Over colour channels alone, stripes and bars have identical |.| statistics; the oriented
    difference channels tell them apart (offset 1: right-difference vs down-difference)."""
    decomposer = fft_decomposer()
    rows = (torch.arange(32) % 2).float().view(1, 1, 32, 1).expand(1, 3, 32, 32) * 0.5 + 0.25
    stripes, bars = rows, rows.transpose(-1, -2)
    (_, high_stripes), (_, high_bars) = (decomposer.band_statistics(decomposer.decompose(x)) for x in (stripes, bars))
    torch.testing.assert_close(high_stripes[:, :3], high_bars[:, :3], rtol=1e-4, atol=1e-5)
    right, down = 3, 4  # offset-1 channels
    assert high_bars[0, right] > 5 * high_bars[0, down]
    assert high_stripes[0, down] > 5 * high_stripes[0, right]
