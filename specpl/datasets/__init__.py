"""Datasets by name: the benchmarks of the published tables and a user's own data.

``read_dataset(config)`` is what the trainer calls: `config.dataset` picks a registered dataset
(``folder`` is a plain class-folder tree, today's behaviour), `config.root` is where it lives (for
a benchmark: the ``$DATA`` folder holding CoOp's dataset folders, the dataset folder itself, or a
local copy of the Hugging Face mirror's archives). Shots, seed and base/new follow the published
protocol (`specpl.datasets.protocol`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from specpl.config import DataConfig
from specpl.data import FewShotData
from specpl.datasets.custom import FolderDataset, SplitJsonDataset
from specpl.datasets.standard import BASE_TO_NEW, DOMAIN_TARGETS, STANDARD_DATASETS, StandardDataset
from specpl.registry import Registry

__all__ = [
    "BASE_TO_NEW",
    "DATASETS",
    "DOMAIN_TARGETS",
    "DatasetSource",
    "StandardDataset",
    "dataset_template",
    "read_dataset",
]


class DatasetSource(Protocol):
    """What a registry entry gives: its name, its hand-crafted template (None: the run's own), and
    a reader from a `DataConfig` to the sampled, subsampled data."""

    name: str
    template: str | None

    def read(self, config: DataConfig, cache_dir: Path | None = None) -> FewShotData: ...


DATASETS: Registry[DatasetSource] = Registry("dataset")


def _register(source: DatasetSource) -> None:
    DATASETS.register(source.name)(lambda: source)


for _source in (FolderDataset(), SplitJsonDataset(), *STANDARD_DATASETS):
    _register(_source)


def read_dataset(config: DataConfig, cache_dir: Path | None = None) -> FewShotData:
    """The few-shot data `config` names; `cache_dir` holds the sampled shots (default
    ``$XDG_CACHE_HOME/specpl/fewshot``). Raises `specpl.data.DataError` naming the expected layout
    and the first thing that is wrong."""
    return DATASETS.get(config.dataset)().read(config, cache_dir)


def dataset_template(name: str) -> str | None:
    """The hand-crafted template of a registered dataset (None for a user's folder)."""
    return DATASETS.get(name)().template
