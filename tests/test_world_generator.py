"""SpectralWorld generator: determinism, coverage, captions, and that texture really is high-frequency."""

from __future__ import annotations

import dataclasses
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from specpl.world import generator as gen
from specpl.world.demo_zip import DEMO_CLASSES, demo_zip_bytes

REPO = Path(__file__).resolve().parents[1]
# Periods of 8 px and longer sit below this radius (in cycles per image); textures have 1-4 px.
CUTOFF = gen.IMAGE_SIZE / 8


def _pixels(samples: list[gen.WorldSample]) -> np.ndarray:
    return np.stack([np.asarray(gen.render(s)) for s in samples])


def _spectrum(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Power spectrum of the zero-mean image and the radial frequency of every bin."""
    power = np.abs(np.fft.fft2(gray - gray.mean())) ** 2
    freq = np.fft.fftfreq(gray.shape[0]) * gray.shape[0]
    return power, np.hypot(freq[None, :], freq[:, None])


def _large_solid(shape: str, colour: str, background: str) -> gen.WorldSample:
    base = gen.sample_class(np.random.default_rng(0), f"solid {shape}", 1)[0]
    return dataclasses.replace(base, colour=colour, background=background, radius=20.0, cx=32.0, cy=32.0)


def _textured(base: gen.WorldSample) -> list[gen.WorldSample]:
    return [
        dataclasses.replace(base, texture=texture, period=period)
        for texture in gen.TEXTURES[1:]
        for period in gen.TEXTURE_PERIODS[texture]
    ]


def test_same_seed_same_pixels_different_seed_differs():
    a = _pixels(gen.sample_world(7, 16))
    b = _pixels(gen.sample_world(np.random.default_rng(7), 16))
    c = _pixels(gen.sample_world(8, 16))
    assert a.shape == (16, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_every_factor_appears():
    samples = gen.sample_world(0, 600)
    assert {s.shape for s in samples} == set(gen.SHAPES)
    assert {s.texture for s in samples} == set(gen.TEXTURES)
    assert {s.colour for s in samples} == set(gen.COLOURS)
    assert {s.background for s in samples} == set(gen.BACKGROUNDS)
    for texture, periods in gen.TEXTURE_PERIODS.items():
        assert {s.period for s in samples if s.texture == texture} == set(periods)
    assert len({round(s.radius) for s in samples}) > 4 and len({round(s.cx) for s in samples}) > 4


def test_objects_stay_inside_the_frame():
    for sample in gen.sample_world(1, 300):
        mask = gen.shape_mask(sample)
        assert mask.sum() > 100
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def test_classnames_are_sorted_texture_shape_pairs():
    names = gen.world_classnames()
    assert names == sorted(names) and len(set(names)) == len(gen.TEXTURES) * len(gen.SHAPES)
    for sample in gen.sample_world(2, 50):
        name = gen.class_of(sample)
        assert name in names and gen.split_classname(name) == (sample.texture, sample.shape)
    assert all(s.texture == "dotted" and s.shape == "star" for s in gen.sample_class(3, "dotted star", 5))
    with pytest.raises(ValueError):
        gen.split_classname("striped banana")


def test_captions_name_the_factors():
    rng = np.random.default_rng(4)
    wordings = set()
    for sample in gen.sample_world(5, 400):
        text = gen.caption(sample, rng)
        words = set(text.replace(".", " ").replace(",", " ").split())
        assert sample.texture in words and sample.shape in words
        assert words & set(gen.COLOURS) <= {sample.colour}
        assert words & set(gen.BACKGROUNDS) <= {sample.background}
        assert "a orange" not in text  # articles agree with the next word
        for word, key in ((sample.texture, "T"), (sample.shape, "S"), (sample.colour, "C"), (sample.background, "B")):
            text = text.replace(word, key)
        wordings.add(text.replace("an ", "a "))
    assert len(wordings) == len(gen.CAPTION_TEMPLATES)  # every template is used


def test_texture_energy_lies_above_the_cutoff():
    """What texture adds to an image (textured minus solid) is almost all above 8 cycles/image."""
    for shape in gen.SHAPES:
        for colour in gen.COLOURS:
            base = _large_solid(shape, colour, "grey")
            solid = np.asarray(gen.render(base).convert("L"), dtype=np.float64)
            for sample in _textured(base):
                added = np.asarray(gen.render(sample).convert("L"), dtype=np.float64) - solid
                power, radius = _spectrum(added)
                assert power[radius > CUTOFF].sum() > 0.85 * power.sum(), (shape, colour, sample.texture)


def test_textured_surface_has_far_more_high_band_energy_than_solid():
    """Inside the object, a textured surface carries high-band energy and a solid one carries none."""
    patch = slice(24, 40)  # 16x16 window well inside a radius-20 square centred in the frame
    for colour in gen.COLOURS:
        base = _large_solid("square", colour, "beige")

        def high_band(sample: gen.WorldSample) -> float:
            gray = np.asarray(gen.render(sample).convert("L"), dtype=np.float64)[patch, patch]
            power, radius = _spectrum(gray)
            return float(power[radius > CUTOFF / 4].sum())  # same physical cutoff on a 16 px window

        solid_energy = high_band(base)
        for sample in _textured(base):
            assert high_band(sample) > 100 * (solid_energy + 1.0), (colour, sample.texture, sample.period)


def test_brightest_texture_never_clips():
    """Clipping at 255 would give textured objects a different mean colour than solid ones."""
    brightest_level = 1 + gen.TEXTURE_CONTRAST * max(
        gen.pattern_mean(t, p) for t, ps in gen.TEXTURE_PERIODS.items() for p in ps
    )
    assert max(max(c) for c in gen.COLOURS.values()) * gen.BRIGHTNESS_RANGE[1] * brightest_level <= 255


def test_texture_keeps_the_mean_colour():
    """Texture is zero-mean modulation: the object's average colour (a low-band quantity) is unchanged."""
    for shape in gen.SHAPES:
        base = _large_solid(shape, "orange", "slate")
        mask = gen.shape_mask(base)
        solid_mean = np.asarray(gen.render(base), dtype=np.float64)[mask].mean(axis=0)
        for sample in _textured(base):
            mean = np.asarray(gen.render(sample), dtype=np.float64)[mask].mean(axis=0)
            assert np.abs(mean - solid_mean).max() < 0.06 * solid_mean.max(), (shape, sample.texture)


def test_stripes_peak_at_their_period():
    """Horizontal stripes of period p put their strongest high-band peak at 64/p cycles vertically."""
    base = _large_solid("square", "blue", "grey")
    for period in gen.TEXTURE_PERIODS["striped"]:
        gray = np.asarray(gen.render(dataclasses.replace(base, texture="striped", period=period)).convert("L"), float)
        power = np.abs(np.fft.fft2(gray - gray.mean())) ** 2
        high = np.arange(int(CUTOFF) + 1, gen.IMAGE_SIZE // 2 + 1)  # vertical frequencies above the cutoff
        peak = high[np.argmax(power[high, 0])]
        assert abs(peak - gen.IMAGE_SIZE / period) <= 1


def test_fewshot_folder_is_deterministic_and_uses_class_names(tmp_path):
    classes = ["striped circle", "grainy star"]
    a = gen.write_fewshot_folder(tmp_path / "a", shots=2, test_per_class=1, seed=3, classnames=classes)
    b = gen.write_fewshot_folder(tmp_path / "b", shots=2, test_per_class=1, seed=3, classnames=classes)
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*.png"))
    assert files == [
        "test/grainy star/0000.png",
        "test/striped circle/0000.png",
        "train/grainy star/0000.png",
        "train/grainy star/0001.png",
        "train/striped circle/0000.png",
        "train/striped circle/0001.png",
    ]
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    # A class gets the same images whether it is written alone or with others.
    c = gen.write_fewshot_folder(tmp_path / "c", shots=2, test_per_class=1, seed=3, classnames=["grainy star"])
    assert (c / "train/grainy star/0001.png").read_bytes() == (a / "train/grainy star/0001.png").read_bytes()


def test_committed_demo_zip_is_reproducible():
    committed = (REPO / "assets" / "world-demo.zip").read_bytes()
    assert len(committed) < 1_000_000
    assert committed == demo_zip_bytes()
    names = zipfile.ZipFile(io.BytesIO(committed)).namelist()
    assert {n.split("/")[1] for n in names} == set(DEMO_CLASSES)
    assert {n.split("/")[0] for n in names} == {"train", "test"}


def test_cameras_blend_towards_their_tint_and_default_is_the_identity():
    sample = gen.sample_world(5, 1)[0]
    plain = np.asarray(gen.render(sample), dtype=np.float64)
    assert np.array_equal(np.asarray(gen.render(sample, "default")), plain.astype(np.uint8))
    strength, tint = gen.CAMERAS["sepia"]
    sepia = np.asarray(gen.render(sample, "sepia"), dtype=np.float64)
    assert np.abs(sepia - ((1 - strength) * plain + strength * np.asarray(tint))).max() <= 0.5  # one rounding
    with pytest.raises(ValueError, match="unknown camera 'night'; available: default, sepia"):
        gen.render(sample, "night")
