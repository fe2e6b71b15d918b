"""Build `assets/world-demo.zip`, a small few-shot SpectralWorld set for demos and quick runs.

    python -m specpl.world.demo_zip --out assets/world-demo.zip

The zip holds `train/<class>/NNNN.png` and `test/<class>/NNNN.png` (class folders are the exact
class names, spaces included). Entries are written in a fixed order with a fixed timestamp, so
the same arguments always give the same bytes.
"""

from __future__ import annotations

import argparse
import io
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

from specpl.world.generator import fewshot_images

# Pairs that share a shape but differ in texture (only the high band separates them) and pairs
# that share a texture but differ in shape (only the low band separates them), and all six
# shapes and textures.
DEMO_CLASSES: tuple[str, ...] = (
    "solid circle",
    "striped circle",
    "barred square",
    "checkered triangle",
    "dotted diamond",
    "dotted star",
    "grainy cross",
    "solid cross",
)
DEMO_SHOTS = 8
DEMO_TEST_PER_CLASS = 8
DEMO_SEED = 0
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def demo_zip_bytes(
    classnames: Sequence[str] = DEMO_CLASSES,
    shots: int = DEMO_SHOTS,
    test_per_class: int = DEMO_TEST_PER_CLASS,
    seed: int = DEMO_SEED,
) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for split, classname, index, image in fewshot_images(classnames, shots, test_per_class, seed):
            png = io.BytesIO()
            image.save(png, format="PNG")
            entry = zipfile.ZipInfo(f"{split}/{classname}/{index:04d}.png", date_time=_FIXED_TIME)
            entry.external_attr = 0o644 << 16
            archive.writestr(entry, png.getvalue())
    return buffer.getvalue()


def write_demo_zip(out: str | Path, **kwargs) -> Path:
    """Write the zip atomically; keyword arguments are those of `demo_zip_bytes`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(demo_zip_bytes(**kwargs))
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shots", type=int, default=DEMO_SHOTS)
    parser.add_argument("--test-per-class", type=int, default=DEMO_TEST_PER_CLASS)
    parser.add_argument("--seed", type=int, default=DEMO_SEED)
    args = parser.parse_args(argv)
    path = write_demo_zip(args.out, shots=args.shots, test_per_class=args.test_per_class, seed=args.seed)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
