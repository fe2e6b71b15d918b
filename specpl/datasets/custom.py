"""A user's own dataset, with no code: a class-folder tree or a split JSON.

- ``folder``: ``root/<class>/*`` or ``root/{train,test}/<class>/*`` (`specpl.data.read_fewshot_folder`,
  unchanged: labels follow sorted folder names, shots drawn per class with the run seed).
- ``split_json``: one JSON file in CoOp's split format, ``{"train"|"test": [[relative_path, label,
  classname], ...]}`` with an optional ``"val"`` list and an optional ``"template"`` (the dataset's
  hand-crafted prompt, e.g. ``"a photo of a {}, a type of bird."``). Paths are relative to the
  JSON file's folder. It follows the full protocol of the standard datasets: Dassl-seeded shots,
  the cache, and base/new on label ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

from specpl.config import DataConfig
from specpl.data import DataError, FewShotData, read_fewshot_folder
from specpl.datasets.layouts import read_split_json
from specpl.datasets.protocol import fewshot_data

SPLIT_JSON_NAME = "split.json"


@dataclass(frozen=True)
class FolderDataset:
    name: str = "folder"
    template: str | None = None

    def read(self, config: DataConfig, cache_dir: Path | None = None) -> FewShotData:
        return read_fewshot_folder(config.root, config.shots, config.seed, config.split_ratio, config.subsample)


SPLIT_JSON_LAYOUT = (
    f"  a JSON file (or a folder holding {SPLIT_JSON_NAME}):\n"
    '    {"train": [[relative_path, label, classname], ...], "test": [...],\n'
    '     "val": [...] (optional), "template": "a photo of a {}." (optional)}\n'
    "  paths relative to the JSON file's folder; labels 0..n-1, one class name per label"
)


@dataclass(frozen=True)
class SplitJsonDataset:
    name: str = "split_json"
    template: str | None = None  # a split file may carry its own; it reaches FewShotData.template

    def read(self, config: DataConfig, cache_dir: Path | None = None) -> FewShotData:
        root = Path(config.root).expanduser()
        split_file = root / SPLIT_JSON_NAME if root.is_dir() else root
        try:
            reader = partial(read_split_json, split_file, split_file.parent, required=("train", "test"))
            # the file's stem keeps the few-shot caches of two split files in one folder apart
            return fewshot_data(
                f"{self.name}-{split_file.stem}",
                split_file.parent,
                reader,
                config.shots,
                config.seed,
                config.subsample,
                None,
                cache_dir,
            )
        except DataError as exc:
            raise DataError(f"{exc}.\nExpected:\n{SPLIT_JSON_LAYOUT}") from None
