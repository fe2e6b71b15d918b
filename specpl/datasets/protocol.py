"""The few-shot and base-to-new protocol of the published tables (CoOp / CoCoOp on Dassl).

Sampling reproduces Dassl's ``generate_fewshot_dataset`` as the reference runs it: Python's
``random`` seeded with the run seed (1, 2, 3), then for the train split and after it the val split,
one ``random.sample`` per label, labels taken in the order they first appear in the split list; a
class with fewer images than asked keeps them all. Val gets ``min(K, 4)`` shots. The same split
file and seed therefore give the reference's images.

Base/new is decided after sampling, on label ids: sort the ids, the first ``ceil(n/2)`` are base,
the rest new, and each half is relabelled from 0. This is not class-folder order: FGVC-Aircraft's
ids follow ``variants.txt``, and a user's split JSON may number classes in any order.

Samples are cached as JSON per (dataset folder, K, seed), as CoOp caches ``split_fewshot/`` pickles,
so that every method in a sweep trains on the same images; the cache lives outside the (possibly
read-only) dataset folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from pathlib import Path
from typing import Callable, Collection

from specpl.config import write_json_atomic
from specpl.data import DataError, FewShotData, ImageItem
from specpl.datasets.layouts import LabelledSplits, check_images_exist

VAL_SHOTS_CAP = 4
CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/specpl/fewshot`` (``~/.cache/specpl/fewshot``)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "specpl" / "fewshot"


def sample_per_label(items: list[ImageItem], shots: int, rng: random.Random) -> list[ImageItem]:
    """Dassl's per-label draw: labels in first-appearance order, ``rng.sample`` within each."""
    by_label: dict[int, list[ImageItem]] = {}
    for item in items:
        by_label.setdefault(item.label, []).append(item)
    sampled: list[ImageItem] = []
    for group in by_label.values():
        sampled += rng.sample(group, shots) if len(group) >= shots else group
    return sampled


def sample_fewshot(
    train: list[ImageItem], val: list[ImageItem], shots: int, seed: int
) -> tuple[list[ImageItem], list[ImageItem]]:
    """K shots per class from train, then min(K, 4) from val, from one generator seeded with `seed`."""
    rng = random.Random(seed)
    sampled_train = sample_per_label(train, shots, rng)
    return sampled_train, sample_per_label(val, min(shots, VAL_SHOTS_CAP), rng)


def subsample_classes(
    classnames: list[str], splits: dict[str, list[ImageItem]], subsample: str, present: Collection[int]
) -> tuple[list[str], dict[str, list[ImageItem]]]:
    """Keep ``all`` classes, or the ``base`` / ``new`` half of the sorted label ids in `present`,
    relabelled from 0."""
    if subsample == "all":
        return classnames, splits
    labels = sorted(set(present))
    n_base = math.ceil(len(labels) / 2)
    kept = {"base": labels[:n_base], "new": labels[n_base:]}[subsample]
    relabel = {old: new for new, old in enumerate(kept)}
    kept_splits = {
        name: [ImageItem(item.path, relabel[item.label]) for item in items if item.label in relabel]
        for name, items in splits.items()
    }
    return [classnames[label] for label in kept], kept_splits


def fewshot_data(
    name: str,
    folder: Path,
    read: Callable[[Collection[str]], LabelledSplits],
    shots: int | None,
    seed: int,
    subsample: str,
    template: str | None,
    cache_dir: Path | None = None,
) -> FewShotData:
    """Read a dataset's splits (``read(wanted_splits)``), draw or reload the cached K-shot sample,
    and cut the base / new half. ``shots`` None or < 1 keeps every training image."""
    if subsample not in ("all", "base", "new"):
        raise DataError(f"subsample must be 'all', 'base' or 'new', not {subsample!r}")
    sampling = shots is not None and shots >= 1
    cache_file = _cache_file(cache_dir or default_cache_dir(), name, folder, shots, seed) if sampling else None
    cached = _read_cache(cache_file, folder, name, shots, seed) if cache_file and cache_file.is_file() else None
    splits = read(("test",) if cached else ("train", "val", "test"))
    if cached:
        train, val = cached
        _check_labels(train + val, len(splits.classnames), cache_file)
    elif sampling:
        train, val = sample_fewshot(splits.train, splits.val, shots, seed)
        _write_cache(cache_file, folder, name, shots, seed, train, val)
    else:
        train, val = splits.train, splits.val
    present = {item.label for item in train} or range(len(splits.classnames))  # test-only sets: every class
    classnames, kept = subsample_classes(
        splits.classnames, {"train": train, "val": val, "test": splits.test}, subsample, present
    )
    return FewShotData(
        classnames=classnames,
        train=kept["train"],
        test=kept["test"],
        val=kept["val"],
        template=splits.template or template,
    )


def _cache_file(cache_dir: Path, name: str, folder: Path, shots: int, seed: int) -> Path:
    """One file per (dataset, K, seed); the folder digest keeps two copies of a dataset apart."""
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:10]
    return cache_dir / f"{name}-{digest}" / f"shot_{shots}-seed_{seed}.json"


def _write_cache(
    path: Path, folder: Path, name: str, shots: int, seed: int, train: list[ImageItem], val: list[ImageItem]
) -> None:
    def rows(items: list[ImageItem]) -> list[list[object]]:
        return [[Path(os.path.relpath(item.path, folder)).as_posix(), item.label] for item in items]

    write_json_atomic(
        path,
        {
            "format": CACHE_FORMAT,
            "dataset": name,
            "folder": str(folder.resolve()),
            "shots": shots,
            "seed": seed,
            "train": rows(train),
            "val": rows(val),
        },
    )


def _read_cache(path: Path, folder: Path, name: str, shots: int, seed: int) -> tuple[list[ImageItem], list[ImageItem]]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if (raw["format"], raw["dataset"], raw["shots"], raw["seed"]) != (CACHE_FORMAT, name, shots, seed):
            raise ValueError("it was written for another dataset, K or seed")
        train, val = (
            [ImageItem(folder / relative, int(label)) for relative, label in raw[split]] for split in ("train", "val")
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"few-shot cache {path} cannot be used ({type(exc).__name__}: {exc}); delete it to draw the sample again"
        ) from None
    check_images_exist(train + val, f"few-shot cache {path} (delete it to draw the sample again)")
    return train, val


def _check_labels(items: list[ImageItem], num_classes: int, source: Path) -> None:
    bad = next((item for item in items if not 0 <= item.label < num_classes), None)
    if bad is not None:
        raise DataError(
            f"few-shot cache {source} has label {bad.label} for {bad.path}, "
            f"but the dataset has {num_classes} classes; delete it to draw the sample again"
        )
