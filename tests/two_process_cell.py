"""Run in each of two processes by tests/two_process_checks.py: fill a feature cache whose input
records the images it is given, then run a sweep. Each process writes OUT/cache-rank<k>.json with
the images it computed and the cache it holds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from torchvision import transforms

from specpl.cli import main
from specpl.data import ImageItem
from specpl.features import AugmentedViews, FeatureCache


class RecordingInput:
    """A frozen input that records the images it computes, by file name."""

    name, signature, needs_items = "mean", "v1", True

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(
        self, images: torch.Tensor, items: list[ImageItem], view: int | None, views: AugmentedViews
    ) -> torch.Tensor:
        self.seen += [item.path.name for item in items]
        return images.mean(dim=(1, 2, 3))


def fill_cache(images: list[Path], processes: PartialState | None) -> dict[str, Any]:
    """Fill a cache of `images` (batches of 2), then ask again: what this process computed each time
    and the values it holds."""
    recorder = RecordingInput()
    to_tensor = transforms.ToTensor()
    cache = FeatureCache(
        AugmentedViews(to_tensor, to_tensor, seed=1), [recorder], torch.device("cpu"), batch_size=2, processes=processes
    )
    items = [ImageItem(path, 0) for path in images]
    values = cache.get(items, 0)["mean"].tolist()
    computed = list(recorder.seen)
    again = cache.get(items, 0)["mean"].tolist()
    return {
        "computed": computed,
        "computed_again": recorder.seen[len(computed) :],
        "values": values,
        "again": again,
        "entries": len(cache),
    }


def run(out: Path, image_folder: Path, sweep: list[str]) -> int:
    """The cache check, then the sweep; returns the sweep's exit code."""
    state = PartialState(cpu=not torch.cuda.is_available())
    result = fill_cache(sorted(image_folder.iterdir()), state)
    Path(out, f"cache-rank{state.process_index}.json").write_text(json.dumps(result))
    return main(sweep)
