"""Few-shot image folders: scanning, validation, K-shot sampling and the base/new protocol.

Every file is checked once when the folder is read. A file that is not an image, or that cannot be
decoded, is skipped and reported (with its reason) instead of crashing an epoch later.
"""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MAX_IMAGE_PIXELS = 64_000_000  # a decompression-bomb guard well above any photo a user uploads


class DataError(ValueError):
    """The data folder cannot be used; the message names the path and the reason."""


@dataclass(frozen=True)
class ImageItem:
    path: Path
    label: int


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str


@dataclass
class FewShotData:
    """Train and test items over one ordered class list, plus every file that was skipped.

    `val` is the protocol's few-shot validation split (registered datasets only; the published
    numbers are taken at the last epoch, so nothing selects on it yet). `template` is the dataset's
    hand-crafted prompt template, for the methods that use one (KgCoOp, MMRL, CasPL).
    """

    classnames: list[str]
    train: list[ImageItem]
    test: list[ImageItem]
    skipped: list[SkippedFile] = field(default_factory=list)
    val: list[ImageItem] = field(default_factory=list)
    template: str | None = None

    def summary(self) -> dict[str, object]:
        counts = {name: [0, 0] for name in self.classnames}
        for split, items in ((0, self.train), (1, self.test)):
            for item in items:
                if item.label >= 0:  # -1: an unlabeled training image
                    counts[self.classnames[item.label]][split] += 1
        return {
            "classes": len(self.classnames),
            "train_images": len(self.train),
            "val_images": len(self.val),
            "test_images": len(self.test),
            "per_class": {name: {"train": tr, "test": te} for name, (tr, te) in counts.items()},
            "skipped": [f"{s.path}: {s.reason}" for s in self.skipped],
        }


def load_image(path: Path) -> Image.Image:
    """Decode an image as RGB with its EXIF orientation applied (phone photos are often rotated)."""
    with Image.open(path) as image:
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise DataError(f"{path}: {image.width}x{image.height} pixels is over the {MAX_IMAGE_PIXELS} limit")
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")


def class_display_name(folder_name: str) -> str:
    """Folder ``golden_retriever`` becomes the prompt text ``golden retriever``."""
    return folder_name.replace("_", " ").strip()


def base_new_split(num_classes: int) -> tuple[range, range]:
    """The standard protocol: sorted labels, the first ceil(n/2) are base, the rest new."""
    n_base = math.ceil(num_classes / 2)
    return range(0, n_base), range(n_base, num_classes)


def read_fewshot_folder(
    root: str | Path,
    shots: int | None = 16,
    seed: int = 1,
    split_ratio: float = 0.5,
    subsample: str = "all",
) -> FewShotData:
    """Read ``root/<class>/*`` (split by `split_ratio`) or ``root/{train,test}/<class>/*``.

    `shots` caps the training images per class, drawn with `seed`; ``None`` keeps all. `subsample`
    keeps ``all`` classes, or only the ``base`` or ``new`` half (relabelled from 0).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist or is not a folder")
    has_splits = (root / "train").is_dir()
    train_root = root / "train" if has_splits else root
    class_dirs = sorted(p for p in train_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"data folder {train_root} has no class sub-folders (expected {train_root}/<class>/<image>)")
    if len(class_dirs) < 2:
        raise DataError(
            f"data folder {train_root} has one class ({class_dirs[0].name}); classification needs at least 2"
        )
    if subsample not in ("all", "base", "new"):
        raise DataError(f"subsample must be 'all', 'base' or 'new', not {subsample!r}")

    skipped: list[SkippedFile] = []
    rng = random.Random(seed)
    base, new = base_new_split(len(class_dirs))
    kept_labels = {"all": range(len(class_dirs)), "base": base, "new": new}[subsample]
    classnames = [class_display_name(class_dirs[i].name) for i in kept_labels]

    train: list[ImageItem] = []
    test: list[ImageItem] = []
    for new_label, old_label in enumerate(kept_labels):
        class_dir = class_dirs[old_label]
        candidates = _image_files(class_dir, skipped)
        if has_splits:
            test_dir = root / "test" / class_dir.name
            test_candidates = _image_files(test_dir, skipped) if test_dir.is_dir() else []
        else:
            shuffled = candidates[:]
            random.Random(f"{seed}:{class_dir.name}").shuffle(shuffled)
            n_train = max(1, round(len(shuffled) * split_ratio)) if len(shuffled) > 1 else len(shuffled)
            candidates, test_candidates = sorted(shuffled[:n_train]), sorted(shuffled[n_train:])
        order = candidates[:]
        rng.shuffle(order)
        chosen = _first_readable(order, shots, skipped)
        if not chosen:
            raise DataError(f"class folder {class_dir} has no readable images")
        train += [ImageItem(p, new_label) for p in sorted(chosen)]
        test += [ImageItem(p, new_label) for p in _first_readable(test_candidates, None, skipped)]

    if skipped:
        listing = "\n".join(f"  {s.path}: {s.reason}" for s in skipped)
        warnings.warn(f"skipped {len(skipped)} file(s) in {root}:\n{listing}", stacklevel=2)
    return FewShotData(classnames=classnames, train=train, test=test, skipped=skipped)


def read_unlabeled_folder(root: str | Path) -> list[ImageItem]:
    """Every readable image under `root` (any depth, sorted), with label -1: images for a method that
    learns without labels. Unreadable files and links are skipped and reported, as for a dataset."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"unlabeled image folder {root} does not exist or is not a folder")
    skipped: list[SkippedFile] = []
    folders = sorted({root, *(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())})
    candidates = sorted(path for folder in folders for path in _image_files(folder, skipped))
    items = [ImageItem(path, -1) for path in _first_readable(candidates, None, skipped)]
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} file(s) in {root}:\n" + "\n".join(f"  {s.path}: {s.reason}" for s in skipped),
            stacklevel=2,
        )
    if not items:
        raise DataError(f"unlabeled image folder {root} holds no readable images")
    return items


def _image_files(folder: Path, skipped: list[SkippedFile]) -> list[Path]:
    files = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        if path.is_symlink():
            skipped.append(SkippedFile(path, "symbolic links are not followed"))
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            files.append(path)
        else:
            skipped.append(SkippedFile(path, f"not an image file (suffix {path.suffix or 'none'})"))
    return files


def _first_readable(paths: list[Path], limit: int | None, skipped: list[SkippedFile]) -> list[Path]:
    """Decode candidates in order until `limit` readable ones are found."""
    readable: list[Path] = []
    for path in paths:
        if limit is not None and len(readable) >= limit:
            break
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                load_image(path)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            skipped.append(SkippedFile(path, f"unreadable image ({type(exc).__name__}: {exc})"))
            continue
        readable.append(path)
    return readable
