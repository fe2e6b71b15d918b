"""``specpl sweep``: every (dataset, method, seed) cell of a benchmark table, resumable.

Each cell trains one `specpl.trainer.Trainer` run under ``OUT/cells/<dataset>/<method>/seed<k>/run``
and, once it has finished, writes ``.../metrics.json`` atomically: that file is the only mark of a
finished cell. A rerun of the same command skips finished cells; a cell that was killed mid-run
resumes from its run's last checkpoint. The final markdown table (``OUT/RESULTS.md``) puts each
number next to the published one from the method specs, with the difference.

Cells can also be spread over a Ray cluster, one cell per GPU (``--ray``; ``pip install
specpl[ray]``). Ray only schedules: each task runs the same cell code and writes the same store,
so local and Ray runs resume each other. On several machines, OUT and the data root must be on a
filesystem every machine sees.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from specpl.config import DataConfig, RunConfig, from_dict, write_json_atomic
from specpl.datasets import BASE_TO_NEW, DATASETS
from specpl.datasets.published import PER_DATASET_SOURCE, published_average, published_base_new
from specpl.evaluate import aggregate_base_new, base_new_table, harmonic_mean
from specpl.io import atomic_write_text

PROTOCOLS = ("base2new", "fewshot")
USER_DATASETS = ("folder", "split_json")

CellRunner = Callable[[RunConfig, Path], dict[str, Any]]


class CellNotFinished(RuntimeError):
    """A cell's run stopped before the end (a stop request); it resumes on the next sweep."""


@dataclass(frozen=True)
class DatasetChoice:
    """A registered dataset and where it lives; `label` names it in paths and tables."""

    name: str
    root: str
    label: str


@dataclass(frozen=True)
class Cell:
    dataset: DatasetChoice
    method: str  # "host" or "host+booster+booster"
    seed: int
    config: RunConfig

    @property
    def key(self) -> str:
        return f"{self.dataset.label}/{self.method}/seed{self.seed}"


class CellStore:
    """Finished cells as ``OUT/cells/<dataset>/<method>/seed<k>/metrics.json``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def cell_dir(self, cell: Cell) -> Path:
        return self.root / "cells" / cell.key

    def run_dir(self, cell: Cell) -> Path:
        return self.cell_dir(cell) / "run"

    def result(self, cell: Cell) -> dict[str, Any] | None:
        """The cell's metrics when it has finished, else None."""
        path = self.cell_dir(cell) / "metrics.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))["metrics"]
        except FileNotFoundError:
            return None

    def save(self, cell: Cell, metrics: dict[str, Any]) -> None:
        record = {"dataset": cell.dataset.label, "method": cell.method, "seed": cell.seed, "metrics": metrics}
        write_json_atomic(self.cell_dir(cell) / "metrics.json", record)


def train_cell(config: RunConfig, run_dir: Path) -> dict[str, Any]:
    """The default cell runner: one trainer run, resumed from its checkpoint when one exists."""
    from specpl.trainer import Trainer

    result = Trainer(config, run_dir, progress_bar=False).fit(resume=(run_dir / "checkpoint").is_dir())
    if result.status != "finished":
        raise CellNotFinished(f"the run in {run_dir} was {result.status}")
    return {key: value for key, value in result.metrics.items() if key != "per_class"}


def run_cell(cell: Cell, store: CellStore, runner: CellRunner) -> dict[str, Any]:
    """Run one cell and record it; the record is written only after the run has finished."""
    metrics = runner(cell.config, store.run_dir(cell))
    store.save(cell, metrics)
    return metrics


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datasets", nargs="+", required=True, metavar="NAME[=ROOT]", help="registered datasets (e.g. oxford_pets dtd); NAME=ROOT gives one its own root, e.g. folder=/data/birds for a class-folder tree")
    parser.add_argument("--methods", nargs="+", required=True, metavar="HOST[+BOOSTER...]", help="e.g. coop coop+specpl maple+caspl")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--data-root", default="", help="the folder holding the datasets (CoOp's $DATA, or a copy of the Hugging Face mirror)")
    parser.add_argument("--out", required=True, help="sweep folder: cells/, RESULTS.md; rerun the same command to resume")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="base2new", help="base2new: train on base classes, report base/new/HM; fewshot: all classes, accuracy")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--config", help="a run config JSON for everything else (backbone, options, training); the sweep sets data, method and seed")
    parser.add_argument("--backbone", help="open_clip model name (default: the config's, else ViT-B-16)")
    parser.add_argument("--pretrained", help="pretrained tag or checkpoint file, or 'none' for random init")
    parser.add_argument("--epochs", type=int, help="override every host's published epoch count (for smoke runs)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--ray", action="store_true", help="spread cells over a Ray cluster, one per GPU (pip install specpl[ray])")
    parser.add_argument("--ray-address", help="the cluster to join (default: RAY_ADDRESS, else a local one)")
    parser.add_argument("--gpus-per-cell", type=float, default=1.0, help="GPUs Ray reserves for each cell (0 for a CPU cluster)")


def run_sweep(args: argparse.Namespace, runner: CellRunner = train_cell) -> int:
    """Run every unfinished cell, then write and print the table. 0 when every cell has finished."""
    cells = plan_cells(args)
    store = CellStore(Path(args.out))
    write_json_atomic(store.root / "sweep.json", {"datasets": [vars(d) for d in _unique(c.dataset for c in cells)], "methods": args.methods, "seeds": args.seeds, "protocol": args.protocol, "shots": args.shots})
    pending = [cell for cell in cells if store.result(cell) is None]
    print(f"sweep: {len(cells)} cells, {len(cells) - len(pending)} already finished, {len(pending)} to run", flush=True)
    if args.ray:
        failures = run_cells_with_ray(pending, store, runner, args.ray_address, args.gpus_per_cell)
    else:
        failures = []
        for index, cell in enumerate(pending, start=1):
            print(f"[{index}/{len(pending)}] {cell.key}", flush=True)
            try:
                run_cell(cell, store, runner)
            except Exception as exc:  # one failed cell must not stop the others; KeyboardInterrupt still does
                failures.append((cell, f"{type(exc).__name__}: {exc}"))
                traceback.print_exc()
    table = render_table(cells, store, args.protocol, args.shots)
    atomic_write_text(store.root / "RESULTS.md", table)
    print(table)
    for cell, error in failures:
        print(f"failed: {cell.key}: {error}", file=sys.stderr)
    return 0 if all(store.result(cell) is not None for cell in cells) else 1


def plan_cells(args: argparse.Namespace) -> list[Cell]:
    """Every (dataset, method, seed) cell with its run config; names are checked before anything runs."""
    from specpl.methods import BOOSTERS, HOSTS

    base = _base_config(args)
    choices = [_dataset_choice(text, args.data_root) for text in args.datasets]
    labels = [choice.label for choice in choices]
    if len(set(labels)) != len(labels):
        raise ValueError(f"two datasets share a name in --datasets: {labels}")
    for method in args.methods:
        host, *boosters = method.split("+")
        HOSTS.get(host)
        for booster in boosters:
            BOOSTERS.get(booster)
    return [Cell(choice, method, seed, _cell_config(base, choice, method, seed, args)) for choice in choices for method in args.methods for seed in args.seeds]


def _dataset_choice(text: str, data_root: str) -> DatasetChoice:
    name, _, root = text.partition("=")
    source = DATASETS.get(name)()
    if getattr(source, "test_only", False):
        raise ValueError(f"{name} is a test-only ImageNet variant; train on imagenet and evaluate on it instead")
    if not (root or data_root):
        raise ValueError(f"dataset {name} needs a root: pass --data-root or {name}=ROOT")
    label = Path(root).stem if root and name in USER_DATASETS else name
    return DatasetChoice(name, root or data_root, label)


def _base_config(args: argparse.Namespace) -> RunConfig:
    config = RunConfig()
    if args.config:
        raw = json.loads(Path(args.config).read_text(encoding="utf-8"))
        config = from_dict(RunConfig, {k: raw[k] for k in ("backbone", "decomposer", "method", "data", "train", "template") if k in raw})
    if args.backbone:
        config.backbone.name = args.backbone
    if args.pretrained:
        config.backbone.pretrained = None if args.pretrained.lower() == "none" else args.pretrained
    if args.epochs is not None:
        config.train.epochs = args.epochs
    if args.batch_size is not None:
        config.train.batch_size = args.batch_size
    return config


def _cell_config(base: RunConfig, choice: DatasetChoice, method: str, seed: int, args: argparse.Namespace) -> RunConfig:
    """The base config with this cell's data, method and seed (the reference seeds sampling and
    training with the same number). A dataset's hand-crafted template replaces the base one."""
    host, *boosters = method.split("+")
    config = RunConfig.from_dict(base.to_dict())
    options = {name: values for name, values in base.method.options.items() if name in (host, *boosters)}
    config.method = dataclasses.replace(config.method, host=host, boosters=boosters, options=options)
    subsample = "base" if args.protocol == "base2new" else "all"
    config.data = DataConfig(root=choice.root, dataset=choice.name, shots=args.shots, seed=seed, subsample=subsample, split_ratio=base.data.split_ratio)
    config.train.seed = seed
    config.template = DATASETS.get(choice.name)().template or base.template
    return config


def run_cells_with_ray(cells: Sequence[Cell], store: CellStore, runner: CellRunner, address: str | None, gpus_per_cell: float) -> list[tuple[Cell, str]]:
    """One Ray task per cell, each reserving `gpus_per_cell` GPUs (Ray sets CUDA_VISIBLE_DEVICES for
    it); tasks record their own cells, so cells finished before a crash of the driver are kept."""
    try:
        import ray
    except ImportError:
        raise RuntimeError("--ray needs Ray: pip install 'specpl[ray]' (or pip install ray)") from None
    if not ray.is_initialized():
        ray.init(address=address)
    task = ray.remote(num_cpus=1, num_gpus=gpus_per_cell, max_retries=0)(run_cell)
    running = {task.remote(cell, store, runner): cell for cell in cells}
    failures = []
    while running:
        (done,), _ = ray.wait(list(running), num_returns=1)
        cell = running.pop(done)
        try:
            ray.get(done)
            print(f"finished {cell.key}", flush=True)
        except (ray.exceptions.RayTaskError, ray.exceptions.WorkerCrashedError) as exc:
            failures.append((cell, str(exc).splitlines()[0]))
    return failures


def render_table(cells: Sequence[Cell], store: CellStore, protocol: str, shots: int) -> str:
    """One markdown table per method; every number as ``ours (published, difference)``."""
    seeds = sorted({cell.seed for cell in cells})
    lines = [f"# Sweep results ({protocol}, {shots} shots, seeds {', '.join(map(str, seeds))})", ""]
    lines.append("Each entry: ours (published, ours minus published); a dataset's value is the mean over its finished seeds.")
    lines.append(f"Published per-dataset numbers: {PER_DATASET_SOURCE}. Average rows are the HM of the mean base and mean new.")
    for method in _unique(cell.method for cell in cells):
        results = {}
        for cell in cells:
            metrics = store.result(cell) if cell.method == method else None
            if metrics is not None:
                results.setdefault(cell.dataset, []).append(metrics)
        lines += ["", f"## {method}", ""]
        datasets = _unique(cell.dataset for cell in cells if cell.method == method)
        lines += _base_new_rows(method, datasets, results, len(seeds)) if protocol == "base2new" else _accuracy_rows(datasets, results, len(seeds))
    return "\n".join(lines) + "\n"


def _base_new_rows(method: str, datasets: list[DatasetChoice], results: dict[DatasetChoice, list[dict[str, Any]]], n_seeds: int) -> list[str]:
    rows = ["| Dataset | Seeds | Base | New | HM |", "|---|---|---|---|---|"]
    pairs = {d: [(m["base"], m["new"]) for m in results[d]] for d in datasets if d in results}
    ours, average = base_new_table(pairs) if pairs else ({}, None)
    for dataset in datasets:
        published = published_base_new(method, dataset.name)
        reference = None if published is None else {"base": published[0], "new": published[1], "hm": harmonic_mean(*published)}
        rows.append(f"| {dataset.label} | {len(results.get(dataset, []))}/{n_seeds} | {_entries(ours.get(dataset), reference)} |")
    if average is not None:
        reference = _published_average(method, list(ours))
        rows.append(f"| **Average** ({len(ours)} datasets) | | {_entries(average, reference)} |")
        only_average = published_average(method)
        if reference is None and only_average:
            rows += ["", f"The published 11-dataset average of {method} ({only_average.source}) is compared only once all 11 datasets have run."]
    return rows


def _entries(ours: dict[str, float] | None, published: dict[str, float] | None) -> str:
    return " | ".join(_entry(ours and ours[k], published and published[k]) for k in ("base", "new", "hm"))


def _published_average(method: str, datasets: list[DatasetChoice]) -> dict[str, float] | None:
    """The published average over the same datasets: from per-dataset numbers when every one has
    them, else an average-only row when the sweep covers all 11 datasets."""
    published = [published_base_new(method, d.name) for d in datasets]
    if all(p is not None for p in published):
        return aggregate_base_new(published)
    row = published_average(method)
    if row and {d.name for d in datasets} == set(BASE_TO_NEW):
        return {"base": row.base, "new": row.new, "hm": row.hm}
    return None


def _accuracy_rows(datasets: list[DatasetChoice], results: dict[DatasetChoice, list[dict[str, Any]]], n_seeds: int) -> list[str]:
    rows = ["| Dataset | Seeds | Accuracy |", "|---|---|---|"]
    means = {d: sum(m["accuracy"] for m in results[d]) / len(results[d]) for d in datasets if d in results}
    for dataset in datasets:
        rows.append(f"| {dataset.label} | {len(results.get(dataset, []))}/{n_seeds} | {_entry(means.get(dataset), None)} |")
    if means:
        rows.append(f"| **Average** ({len(means)} datasets) | | {_entry(sum(means.values()) / len(means), None)} |")
    return rows


def _entry(ours: float | None, published: float | None) -> str:
    if ours is None:
        return "–"
    if published is None:
        return f"{ours:.2f}"
    difference = round(ours - published, 2) + 0.0  # + 0.0 turns a rounded -0.00 into 0.00
    return f"{ours:.2f} ({published:.2f}, {difference:+.2f})"


def _unique(items: Any) -> list[Any]:
    return list(dict.fromkeys(items))

