"""Readers for the on-disk layouts of the standard benchmarks, as CoOp's DATASETS.md describes them.

Each reader turns a dataset folder into `LabelledSplits`: the class names indexed by label id and
the full train / val / test lists, before any few-shot sampling. The label ids are the ones in the
dataset's own files (a split JSON, ``variants.txt``, ``classnames.txt``), never the order of the
class folders, because the published base/new split is defined on those ids.

Every reader checks the layout as it goes and raises `DataError` at the first thing that is wrong
(a missing folder or file, a malformed entry, an image the split file lists but the disk lacks).
Images are checked for existence, not decoded: the reference sets are curated, and decoding a
100k-image test split up front would cost minutes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Iterable

from specpl.data import DataError, ImageItem

SPLITS = ("train", "val", "test")


@dataclass
class LabelledSplits:
    """A dataset's class names by label id and its full splits; a split not asked for stays empty."""

    classnames: list[str]
    train: list[ImageItem] = field(default_factory=list)
    val: list[ImageItem] = field(default_factory=list)
    test: list[ImageItem] = field(default_factory=list)
    template: str | None = None  # only a user's split JSON may carry its own


def clean_classname(name: str, renames: dict[str, str] | None = None) -> str:
    """The standard clean-up: a dataset's rename table, then underscores to spaces (CoOp's prompt
    learner does the latter for every dataset, e.g. ``Apply_Eye_Makeup`` -> ``Apply Eye Makeup``)."""
    name = (renames or {}).get(name, name)
    return " ".join(name.replace("_", " ").split())


def read_split_json(
    split_file: Path,
    image_root: Path,
    wanted: Collection[str] = SPLITS,
    renames: dict[str, str] | None = None,
    required: Collection[str] = SPLITS,
) -> LabelledSplits:
    """Read ``{"train"|"val"|"test": [[relative_path, label, classname], ...]}`` (CoOp's
    ``split_zhou_*.json``); paths are relative to `image_root`. Labels must be 0..n-1, each with one
    class name. An optional top-level ``"template"`` (a user's own file) is kept."""
    if not split_file.is_file():
        raise DataError(f"split file {split_file} does not exist")
    try:
        raw = json.loads(split_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"split file {split_file} is not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise DataError(
            f"split file {split_file} must hold a JSON object with {', '.join(map(repr, required))}, "
            f"not {type(raw).__name__}"
        )
    for name in required:
        if name not in raw:
            raise DataError(
                f"split file {split_file} has no {name!r} list (keys: {', '.join(map(repr, raw)) or 'none'})"
            )
    template = raw.get("template")
    if template is not None and (not isinstance(template, str) or "{}" not in template):
        raise DataError(
            f"split file {split_file}: 'template' must be a string with a {{}} for the class name, not {template!r}"
        )

    names_by_label: dict[int, str] = {}
    entries: dict[str, list[tuple[str, int]]] = {}
    for split in SPLITS:
        rows = raw.get(split, [])
        if not isinstance(rows, list):
            raise DataError(f"split file {split_file}: {split!r} must be a list of [relative_path, label, classname]")
        parsed = []
        for index, row in enumerate(rows):
            if not (
                isinstance(row, list)
                and len(row) == 3
                and isinstance(row[0], str)
                and isinstance(row[1], int)
                and not isinstance(row[1], bool)
                and isinstance(row[2], str)
            ):
                raise DataError(
                    f"split file {split_file}: {split}[{index}] is {json.dumps(row)[:120]}, "
                    "expected [relative_path, label, classname]"
                )
            relative, label, classname = row
            if label < 0:
                raise DataError(f"split file {split_file}: {split}[{index}] has a negative label {label}")
            known = names_by_label.setdefault(label, classname)
            if known != classname:
                raise DataError(
                    f"split file {split_file}: label {label} is {known!r} and also {classname!r} ({split}[{index}])"
                )
            parsed.append((relative, label))
        entries[split] = parsed
    if not names_by_label:
        raise DataError(f"split file {split_file} lists no images")
    missing_labels = sorted(set(range(max(names_by_label) + 1)) - set(names_by_label))
    if missing_labels:
        raise DataError(
            f"split file {split_file}: labels must run 0..{max(names_by_label)}, "
            f"but label {missing_labels[0]} has no image"
        )
    if not image_root.is_dir():
        raise DataError(f"image folder {image_root} does not exist")

    splits = LabelledSplits(
        [clean_classname(names_by_label[i], renames) for i in range(len(names_by_label))], template=template
    )
    for split in wanted:
        items = [ImageItem(image_root / relative, label) for relative, label in entries[split]]
        check_images_exist(items, f"split file {split_file} ({split})")
        setattr(splits, split, items)
    return splits


def read_aircraft(folder: Path, wanted: Collection[str] = SPLITS) -> LabelledSplits:
    """FGVC-Aircraft: class names in ``variants.txt`` (label = line number, not alphabetical) and
    ``images_variant_{train,val,test}.txt`` lines of ``<image id> <variant name>``."""
    variants_file = folder / "variants.txt"
    classnames = [line.strip() for line in _read_lines(variants_file) if line.strip()]
    if not classnames:
        raise DataError(f"{variants_file} lists no variants")
    label_of = {name: label for label, name in enumerate(classnames)}
    image_dir = folder / "images"
    splits = LabelledSplits([clean_classname(name) for name in classnames])
    for split in SPLITS:  # every list is checked, so a broken one is reported even when not used
        list_file = folder / f"images_variant_{split}.txt"
        items = []
        for number, line in enumerate(_read_lines(list_file), start=1):
            if not line.strip():
                continue
            image_id, _, variant = line.strip().partition(" ")
            if variant not in label_of:
                raise DataError(f"{list_file} line {number}: variant {variant!r} is not in {variants_file}")
            items.append(ImageItem(image_dir / f"{image_id}.jpg", label_of[variant]))
        if split in wanted:
            if not image_dir.is_dir():
                raise DataError(f"image folder {image_dir} does not exist")
            check_images_exist(items, str(list_file))
            setattr(splits, split, items)
    return splits


def read_imagenet_classnames(classnames_file: Path) -> dict[str, str]:
    """``classnames.txt``: one ``<wnid> <class name>`` per line, in label order (CLIP's names)."""
    names = {}
    for number, line in enumerate(_read_lines(classnames_file), start=1):
        if not line.strip():
            continue
        wnid, _, name = line.strip().partition(" ")
        if not name:
            raise DataError(f"{classnames_file} line {number} is {line.strip()!r}, expected '<wnid> <class name>'")
        names[wnid] = name
    if not names:
        raise DataError(f"{classnames_file} lists no classes")
    return names


def read_imagenet(folder: Path, wanted: Collection[str] = SPLITS) -> LabelledSplits:
    """ImageNet: ``images/train/<wnid>/*`` and ``images/val/<wnid>/*`` (the val set is the test
    split, as in every published table); labels follow ``classnames.txt``. There is no val split."""
    names = read_imagenet_classnames(folder / "classnames.txt")
    splits = LabelledSplits([clean_classname(name) for name in names.values()])
    for split, subfolder in (("train", "train"), ("test", "val")):
        if split not in wanted:
            continue
        root = folder / "images" / subfolder
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist")
        items = []
        for label, wnid in enumerate(names):
            class_dir = root / wnid
            if not class_dir.is_dir():
                raise DataError(f"class folder {class_dir} (from classnames.txt) does not exist")
            items += [ImageItem(path, label) for path in _image_files(class_dir)]
        setattr(splits, split, items)
    return splits


def read_imagenet_variant(
    folder: Path, image_dir: str, numbered_folders: bool, classnames_files: Iterable[Path]
) -> LabelledSplits:
    """A test-only ImageNet variant with ImageNet's class names.

    ImageNet-V2 has folders ``0``..``999`` named by label; -Sketch, -A and -R have ``<wnid>``
    folders, labelled by their sorted order (-A and -R hold 200 of the 1000 classes).
    """
    classnames_file = next((path for path in classnames_files if path.is_file()), None)
    if classnames_file is None:
        raise DataError(f"classnames.txt not found (looked at {', '.join(str(p) for p in classnames_files)})")
    names = read_imagenet_classnames(classnames_file)
    root = folder / image_dir
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    if numbered_folders:
        wnids = list(names)
        class_dirs = [(root / str(label), names[wnids[label]]) for label in range(len(wnids))]
    else:
        folders = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
        unknown = [name for name in folders if name not in names]
        if unknown:
            raise DataError(f"class folder {root / unknown[0]} is not a wnid listed in {classnames_file}")
        class_dirs = [(root / wnid, names[wnid]) for wnid in folders]
    splits = LabelledSplits([clean_classname(name) for _, name in class_dirs])
    for label, (class_dir, _) in enumerate(class_dirs):
        if not class_dir.is_dir():
            raise DataError(f"class folder {class_dir} does not exist")
        splits.test += [ImageItem(path, label) for path in _image_files(class_dir)]
    if not splits.test:
        raise DataError(f"image folder {root} holds no images")
    return splits


def check_images_exist(items: list[ImageItem], source: str) -> None:
    missing = [item.path for item in items if not item.path.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"{source} lists {missing[0]}, which does not exist{more}")


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    return path.read_text(encoding="utf-8").splitlines()


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        Path(entry.path) for entry in os.scandir(folder) if entry.is_file() and not entry.name.startswith(".")
    )
