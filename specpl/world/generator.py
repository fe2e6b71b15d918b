"""SpectralWorld: a procedural image-caption world whose frequency content is known by construction.

Every image is one flat-ish object on a muted background. The *low-frequency* factors (shape,
colour, background, position, scale, a gentle lighting ramp) change the image only on scales of
many pixels; the *high-frequency* factor (surface texture) is a pattern with a period of 1-4
pixels painted inside the object. A classifier over "<texture> <shape>" classes therefore needs
both bands, which is what makes the world a controlled test bed for spectral prompt learning.

Only numpy and PIL are used, and masks are computed analytically (no rasteriser), so the seed
alone fixes every pixel.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SIZE = 64

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "star")

# "striped" means horizontal stripes and "barred" vertical bars, so every texture is one word.
TEXTURES: tuple[str, ...] = ("solid", "striped", "barred", "dotted", "checkered", "grainy")

# Allowed pattern periods in pixels. Grain is per-pixel noise; checker periods are two cells.
TEXTURE_PERIODS: dict[str, tuple[int, ...]] = {
    "solid": (0,),
    "striped": (2, 3, 4),
    "barred": (2, 3, 4),
    "dotted": (3, 4),
    "checkered": (2, 4),
    "grainy": (1,),
}

# At most 165 per channel: the brightest texture level (x1.4) at the brightest jitter (x1.1)
# then stays within 8 bits, and no clipping breaks the zero-mean texture.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (165, 30, 30),
    "green": (35, 145, 50),
    "blue": (38, 62, 165),
    "yellow": (165, 150, 20),
    "purple": (120, 40, 160),
    "orange": (165, 92, 15),
}

# Muted, low-saturation backgrounds so the object colour always stands out.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128),
    "beige": (205, 192, 165),
    "brown": (105, 85, 65),
    "slate": (85, 95, 110),
}

# Texture multiplies the object colour by 1 + TEXTURE_CONTRAST * (mean - pattern): dark where the
# pattern is on, light where it is off, and exactly the plain colour on average, so texture adds
# no low-frequency content and the low band carries only shape, colour and layout.
TEXTURE_CONTRAST = 0.8
LIGHT_STRENGTH = 0.25
RADIUS_RANGE = (15.0, 22.0)
MAX_CENTRE_OFFSET = 8.0
BRIGHTNESS_RANGE = (0.85, 1.1)

# Half of the templates name only the class factors and half add colour and background, so the
# contrastive signal is not dominated by the (easy) colour and background words.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of a {texture} {shape}.",
    "a {texture} {shape}.",
    "a {shape} with a {texture} surface.",
    "a picture of a {texture} {shape}.",
    "this is a {texture} {shape}.",
    "{a_colour} {colour} {texture} {shape} on {a_background} {background} background.",
    "a photo of {a_texture} {texture} {colour} {shape}.",
    "{a_colour} {colour} {shape} with a {texture} surface on {a_background} {background} background.",
    "a {texture} {shape} that is {colour}.",
    "{texture} {colour} {shape} over {background}.",
)


# Cameras: a per-pixel colour mapping applied after rendering, `out = (1 - s) * image + s * tint`.
# Pretraining sees only "default" (the identity). "sepia" is a downstream domain the world CLIP has
# never seen: a warm cast at reduced contrast, like an old print. It keeps every factor visible
# (texture contrast scales by 1 - s, nothing clips), so few-shot adaptation can recover what the
# shift costs zero-shot, the classic case for prompt learning.
CAMERAS: dict[str, tuple[float, tuple[int, int, int]]] = {
    "default": (0.0, (0, 0, 0)),
    "sepia": (0.45, (200, 120, 40)),
    "dusk": (
        0.5,
        (40, 60, 120),
    ),  # a cold, dark cast: held out in the first round of choosing the defaults (bench/DEFAULTS.md)
    "haze": (0.4, (175, 195, 175)),  # a pale, washed-out cast: held out in the second round
    "neon": (0.45, (200, 60, 170)),  # a magenta cast, like a cheap LED light: added unseen for the third round
    "underwater": (0.45, (30, 140, 150)),  # a teal cast, as under water: added unseen for the fourth round
    "canopy": (0.45, (70, 160, 60)),  # a green cast, as under leaves: added unseen for the fifth round
    "safelight": (0.5, (190, 30, 20)),  # a red cast, as under a darkroom lamp: added unseen to confirm round 5
    "sodium": (0.5, (225, 195, 30)),  # a yellow cast, as under a sodium street lamp: added unseen in round 7
    "overcast": (0.3, (140, 145, 155)),  # a mild grey cast, as on a dull day: added unseen in round 8
    "dim": (0.6, (15, 15, 20)),  # underexposed: dark and flat with no hue, added unseen in round 8
    "glare": (0.5, (240, 240, 235)),  # overexposed: bright and flat with no hue, added unseen in round 9
    "violet": (0.5, (80, 30, 190)),  # a deep violet cast, as under a blacklight: added unseen in round 10
    "olive": (0.5, (110, 120, 20)),  # a dark yellow-green cast, as through old tinted glass: added unseen in round 11
    "frost": (0.45, (150, 195, 235)),  # a pale cold-blue cast, as in snow light: added unseen in round 12
    "ember": (0.5, (235, 105, 25)),  # a strong orange cast, as by firelight: added unseen in round 13
    "rose": (0.45, (235, 150, 175)),  # a pale pink cast, as through a rose-tinted filter: added unseen in round 13
}


@dataclass(frozen=True)
class WorldSample:
    """Everything needed to render one image; rendering is a pure function of these fields."""

    shape: str
    texture: str
    colour: str
    background: str
    cx: float
    cy: float
    radius: float
    period: int
    phase_x: int
    phase_y: int
    brightness: float
    light_angle: float
    noise_seed: int


def world_classnames() -> list[str]:
    """All "<texture> <shape>" class names in sorted (stable) order; folder names use them verbatim."""
    return sorted(f"{texture} {shape}" for texture in TEXTURES for shape in SHAPES)


def class_of(sample: WorldSample) -> str:
    return f"{sample.texture} {sample.shape}"


def split_classname(classname: str) -> tuple[str, str]:
    """Inverse of `class_of`: (texture, shape)."""
    texture, shape = classname.split(" ")
    if texture not in TEXTURES or shape not in SHAPES:
        raise ValueError(f"not a SpectralWorld class: {classname!r}")
    return texture, shape


def _as_rng(rng: np.random.Generator | int) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def sample_one(rng: np.random.Generator, texture: str | None = None, shape: str | None = None) -> WorldSample:
    """Draw one sample; `texture`/`shape` fix the class, everything else is random."""
    texture = texture or _pick(rng, TEXTURES)
    shape = shape or _pick(rng, SHAPES)
    colour = _pick(rng, tuple(COLOURS))
    background = _pick(rng, tuple(BACKGROUNDS))
    radius = float(rng.uniform(*RADIUS_RANGE))
    # Keep the whole object (plus a 2 px margin) inside the frame.
    offset = min(MAX_CENTRE_OFFSET, IMAGE_SIZE / 2 - radius - 2)
    cx, cy = (float(IMAGE_SIZE / 2 + rng.uniform(-offset, offset)) for _ in range(2))
    periods = TEXTURE_PERIODS[texture]
    period = periods[int(rng.integers(len(periods)))]
    phase_x, phase_y = (int(rng.integers(max(period, 1))) for _ in range(2))
    return WorldSample(
        shape=shape,
        texture=texture,
        colour=colour,
        background=background,
        cx=cx,
        cy=cy,
        radius=radius,
        period=period,
        phase_x=phase_x,
        phase_y=phase_y,
        brightness=float(rng.uniform(*BRIGHTNESS_RANGE)),
        light_angle=float(rng.uniform(0.0, 2 * math.pi)),
        noise_seed=int(rng.integers(2**31)),
    )


def sample_world(rng: np.random.Generator | int, n: int) -> list[WorldSample]:
    """`n` samples with every factor drawn uniformly."""
    rng = _as_rng(rng)
    return [sample_one(rng) for _ in range(n)]


def sample_class(rng: np.random.Generator | int, classname: str, n: int) -> list[WorldSample]:
    """`n` samples of one "<texture> <shape>" class with the other factors random."""
    rng = _as_rng(rng)
    texture, shape = split_classname(classname)
    return [sample_one(rng, texture=texture, shape=shape) for _ in range(n)]


def _polygon_mask(vertices: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over pixel centres."""
    inside = np.zeros(x.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0), strict=True):
        if y0 == y1:
            continue
        crosses = (y0 > y) != (y1 > y)
        x_at_y = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < x_at_y)
    return inside


def _regular_points(n: int, radius: float, start: float) -> np.ndarray:
    angles = start + 2 * math.pi * np.arange(n) / n
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def shape_mask(sample: WorldSample) -> np.ndarray:
    """Boolean (H, W) mask of the object, in image coordinates with y pointing down."""
    grid = np.arange(IMAGE_SIZE) + 0.5
    x = grid[None, :] - sample.cx
    y = grid[:, None] - sample.cy
    x, y = np.broadcast_arrays(x, y)
    r = sample.radius
    up = -math.pi / 2
    if sample.shape == "circle":
        return x**2 + y**2 <= r**2
    if sample.shape == "square":
        half = 0.8 * r
        return (np.abs(x) <= half) & (np.abs(y) <= half)
    if sample.shape == "diamond":
        # Narrower than tall, so it is never a rotated square.
        return np.abs(x) / (0.65 * r) + np.abs(y) / r <= 1.0
    if sample.shape == "cross":
        arm = 0.33 * r
        return ((np.abs(x) <= arm) & (np.abs(y) <= r)) | ((np.abs(y) <= arm) & (np.abs(x) <= r))
    if sample.shape == "triangle":
        return _polygon_mask(_regular_points(3, r, up), x, y)
    if sample.shape == "star":
        outer = _regular_points(5, r, up)
        inner = _regular_points(5, 0.45 * r, up + math.pi / 5)
        return _polygon_mask(np.stack([outer, inner], axis=1).reshape(10, 2), x, y)
    raise ValueError(f"unknown shape {sample.shape!r}")


def texture_pattern(sample: WorldSample) -> np.ndarray:
    """(H, W) values in [0, 1]; 1 marks the dark part of the pattern."""
    y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    x = x + sample.phase_x
    y = y + sample.phase_y
    p = sample.period
    if sample.texture == "solid":
        pattern = np.zeros((IMAGE_SIZE, IMAGE_SIZE))
    elif sample.texture == "striped":
        pattern = y % p < p // 2
    elif sample.texture == "barred":
        pattern = x % p < p // 2
    elif sample.texture == "dotted":
        dot = p // 2
        pattern = (x % p < dot) & (y % p < dot)
    elif sample.texture == "checkered":
        cell = p // 2
        pattern = (x // cell + y // cell) % 2
    elif sample.texture == "grainy":
        pattern = np.random.default_rng(sample.noise_seed).random((IMAGE_SIZE, IMAGE_SIZE))
    else:
        raise ValueError(f"unknown texture {sample.texture!r}")
    return np.asarray(pattern, dtype=np.float64)


def pattern_mean(texture: str, period: int) -> float:
    """Expected value of `texture_pattern` over one period (or over the grain distribution)."""
    if texture == "solid":
        return 0.0
    if texture in ("striped", "barred"):
        return (period // 2) / period
    if texture == "dotted":
        return ((period // 2) / period) ** 2
    return 0.5  # checkered and grainy


def render(sample: WorldSample, camera: str = "default") -> Image.Image:
    """Draw the sample as a 64x64 RGB image, as seen by `camera` (see `CAMERAS`)."""
    if camera not in CAMERAS:
        raise ValueError(f"unknown camera {camera!r}; available: {', '.join(CAMERAS)}")
    grid = (np.arange(IMAGE_SIZE) + 0.5) / IMAGE_SIZE - 0.5
    ramp = math.cos(sample.light_angle) * grid[None, :] + math.sin(sample.light_angle) * grid[:, None]
    light = 1.0 + LIGHT_STRENGTH * ramp
    background = np.asarray(BACKGROUNDS[sample.background], dtype=np.float64)
    image = light[..., None] * background

    colour = sample.brightness * np.asarray(COLOURS[sample.colour], dtype=np.float64)
    modulation = 1.0 + TEXTURE_CONTRAST * (pattern_mean(sample.texture, sample.period) - texture_pattern(sample))
    surface = modulation[..., None] * colour
    mask = shape_mask(sample)
    image[mask] = surface[mask]
    strength, tint = CAMERAS[camera]
    if strength:
        image = (1 - strength) * np.clip(np.rint(image), 0, 255) + strength * np.asarray(tint, dtype=np.float64)
    return Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


FACTORS: tuple[str, ...] = ("texture", "shape", "colour", "background")


@dataclass(frozen=True)
class Caption:
    """A caption and the factors it states; it is true of every image that agrees on those."""

    text: str
    named: frozenset[str]

    def holds_for(self, described: WorldSample, other: WorldSample) -> bool:
        """Whether this caption, written for `described`, is also a correct caption of `other`."""
        return all(getattr(described, factor) == getattr(other, factor) for factor in self.named)


def describe(sample: WorldSample, rng: np.random.Generator | int) -> Caption:
    """Caption `sample` with a randomly chosen template; every template names texture and shape."""
    rng = _as_rng(rng)
    template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
    text = template.format(
        shape=sample.shape,
        texture=sample.texture,
        colour=sample.colour,
        background=sample.background,
        a_colour=_article(sample.colour),
        a_texture=_article(sample.texture),
        a_background=_article(sample.background),
    )
    return Caption(text, frozenset(f for f in FACTORS if "{" + f + "}" in template))


def caption(sample: WorldSample, rng: np.random.Generator | int) -> str:
    return describe(sample, rng).text


def fewshot_images(
    classnames: Sequence[str], shots: int, test_per_class: int, seed: int, camera: str = "default"
) -> Iterator[tuple[str, str, int, Image.Image]]:
    """Yield (split, classname, index, image) for a few-shot train/test set.

    Each (split, class) pair has its own random stream derived from the seed and the class's
    position in `world_classnames()`, so a subset of classes gets exactly the images the full set
    would contain, and train and test never share a stream.
    """
    all_classes = world_classnames()
    for split, count, split_id in (("train", shots, 0), ("test", test_per_class, 1)):
        for classname in classnames:
            rng = np.random.default_rng([seed, split_id, all_classes.index(classname)])
            for index, sample in enumerate(sample_class(rng, classname, count)):
                yield split, classname, index, render(sample, camera)


def write_fewshot_folder(
    root: str | Path,
    shots: int,
    test_per_class: int,
    seed: int,
    classnames: Sequence[str] | None = None,
    camera: str = "default",
) -> Path:
    """Write `root/{train,test}/<class name>/NNNN.png`; class folders are the exact class names."""
    root = Path(root)
    for split, classname, index, image in fewshot_images(
        classnames or world_classnames(), shots, test_per_class, seed, camera
    ):
        folder = root / split / classname
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:04d}.png")
    return root
