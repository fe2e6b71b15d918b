"""``specpl sweep``: every (dataset, method, seed) cell of a benchmark table, resumable.

Each cell trains one `specpl.trainer.Trainer` run under ``OUT/cells/<dataset>/<method>/seed<k>/run``
and, once it has finished, writes ``.../metrics.json`` atomically: that file is the only mark of a
trained cell. A rerun of the same command skips finished cells; a cell that was killed mid-run
resumes from its run's last checkpoint. The final markdown table (``OUT/RESULTS.md``) puts each
number next to the published one from the method specs, with the difference.

Protocols: ``base2new`` and ``fewshot`` train one cell per (dataset, method, seed). The transfer
protocols train one cell per (method, seed) on a source dataset (``--source``, ImageNet by default;
all classes, K shots) and evaluate that one model, without retraining, on each target's full test
split with the target's own class names and template: ``cross-dataset`` on the other ten datasets,
``domain-generalisation`` on ImageNet-V2, -Sketch, -A and -R (-A and -R hold 200 of ImageNet's
classes; the dataset layer gives those 200 names, and the model classifies among them, as the
published tables do). Each target's metrics are written atomically to
``.../seed<k>/targets/<target>.json`` as soon as they exist, so a rerun evaluates only the targets
still missing. Both transfer protocols (and ``fewshot`` on the same dataset) train the same model,
so they may share an OUT and reuse each other's trained cells; a base-to-new OUT is refused.

Data parallel within a cell: ``accelerate launch --num_processes N -m specpl sweep ...`` runs
every cell over N processes (the feature-cache fill and the evaluation are shared, see
`specpl.trainer`); only the main process writes records and the table.

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
from typing import TYPE_CHECKING, Any, Callable, Sequence

from specpl.config import DEFAULT_TEMPLATE, DataConfig, RunConfig, canonical_preset, from_dict, write_json_atomic
from specpl.datasets import BASE_TO_NEW, DATASETS, DOMAIN_TARGETS, read_dataset
from specpl.datasets.published import (
    PER_DATASET_SOURCE,
    PublishedTransfer,
    published_average,
    published_base_new,
    published_transfer,
)
from specpl.evaluate import aggregate_base_new, base_new_table, harmonic_mean, metrics_summary
from specpl.io import atomic_write_text

if TYPE_CHECKING:
    from accelerate import PartialState

TRANSFER_PROTOCOLS = ("cross-dataset", "domain-generalisation")
PROTOCOLS = ("base2new", "fewshot", *TRANSFER_PROTOCOLS)
DEFAULT_SOURCE = "imagenet"
USER_DATASETS = ("folder", "split_json")

CellRunner = Callable[[RunConfig, Path], dict[str, Any]]
TargetEvaluator = Callable[
    [Path, "DatasetChoice", RunConfig], dict[str, Any]
]  # (run dir, target, cell config) -> metrics


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
    dataset: DatasetChoice  # what it trains on (a transfer protocol's source)
    method: str  # "host" or "host+booster+booster"
    seed: int
    config: RunConfig
    targets: tuple[DatasetChoice, ...] = ()  # transfer protocols: where the trained model is evaluated

    @property
    def key(self) -> str:
        return f"{self.dataset.label}/{self.method}/seed{self.seed}"


class CellStore:
    """Trained cells as ``OUT/cells/<dataset>/<method>/seed<k>/metrics.json`` and their targets'
    metrics as ``.../targets/<target>.json``. A store that is not the `writer` (a process other
    than the main one of a data-parallel sweep) reads but records nothing."""

    def __init__(self, root: Path, writer: bool = True) -> None:
        self.root = Path(root)
        self.writer = writer

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
        if self.writer:
            record = {"dataset": cell.dataset.label, "method": cell.method, "seed": cell.seed, "metrics": metrics}
            write_json_atomic(self.cell_dir(cell) / "metrics.json", record)

    def target_result(self, cell: Cell, target: DatasetChoice) -> dict[str, Any] | None:
        """The metrics of the cell's model on `target` once evaluated, else None."""
        try:
            return json.loads(self._target_file(cell, target).read_text(encoding="utf-8"))["metrics"]
        except FileNotFoundError:
            return None

    def save_target(self, cell: Cell, target: DatasetChoice, metrics: dict[str, Any]) -> None:
        if self.writer:
            record = {
                "source": cell.dataset.label,
                "target": target.label,
                "method": cell.method,
                "seed": cell.seed,
                "metrics": metrics,
            }
            write_json_atomic(self._target_file(cell, target), record)

    def finished(self, cell: Cell) -> bool:
        """Trained, and evaluated on every target."""
        return self.result(cell) is not None and all(
            self.target_result(cell, target) is not None for target in cell.targets
        )

    def _target_file(self, cell: Cell, target: DatasetChoice) -> Path:
        return self.cell_dir(cell) / "targets" / f"{target.label}.json"


def train_cell(config: RunConfig, run_dir: Path) -> dict[str, Any]:
    """The default cell runner: one trainer run, resumed from its checkpoint when one exists."""
    from specpl.trainer import Trainer

    result = Trainer(config, run_dir, progress_bar=False).fit(resume=(run_dir / "checkpoint").is_dir())
    if result.status != "finished":
        raise CellNotFinished(f"the run in {run_dir} was {result.status}")
    return metrics_summary(result.metrics)  # the details stay in the run's own metrics.json


def evaluate_target(run_dir: Path, target: DatasetChoice, config: RunConfig) -> dict[str, Any]:
    """The default target evaluator: the cell's trained bundle rebuilt for the target's class
    names and hand-crafted template, scored on the target's full test split by every process of
    the cell together (each image once). The target's classes are marked novel, so MMRL uses its
    class branch off the source, as its reference does (docs/methods/mmrl.md: fusion on ImageNet, the class
    branch elsewhere). The frozen CLIP is held in the precision the cell trained in."""
    import torch
    from accelerate import Accelerator

    from specpl.backbone import load_backbone
    from specpl.factory import load_bundle
    from specpl.inference import Predictor, score_split
    from specpl.trainer import frozen_in_bf16, resolve_precision

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    data = read_dataset(DataConfig(root=target.root, dataset=target.name, shots=None))
    backbone = load_backbone(config.backbone, device=accelerator.device)
    if resolve_precision(config.train.precision) == "bf16":
        backbone = frozen_in_bf16(backbone)
    model, _ = load_bundle(
        run_dir / "model", accelerator.device, backbone, data.classnames, data.template or DEFAULT_TEMPLATE
    )
    predictor = Predictor(model, device=accelerator.device)
    predictor.set_classnames(data.classnames, novel=True)
    return score_split(predictor, data.test, accelerator, workers=config.train.num_workers)


def run_cell(
    cell: Cell, store: CellStore, runner: CellRunner, evaluator: TargetEvaluator = evaluate_target
) -> dict[str, Any]:
    """Train the cell unless it has been, then evaluate its model on each target not yet
    evaluated; each record is written once its result exists, so a kill loses only the step in
    progress."""
    metrics = store.result(cell)
    if metrics is None:
        metrics = runner(cell.config, store.run_dir(cell))
        store.save(cell, metrics)
    for target in cell.targets:
        if store.target_result(cell, target) is None:
            store.save_target(cell, target, evaluator(store.run_dir(cell), target, cell.config))
    return metrics


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--datasets",
        nargs="+",
        metavar="NAME[=ROOT]",
        help=(
            "base2new and fewshot: registered datasets (e.g. oxford_pets dtd); "
            "NAME=ROOT gives one its own root, e.g. folder=/data/birds for a class-folder tree"
        ),
    )
    parser.add_argument(
        "--methods", nargs="+", required=True, metavar="HOST[+BOOSTER...]", help="e.g. coop coop+specpl maple+caspl"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument(
        "--data-root",
        default="",
        help="the folder holding the datasets (CoOp's $DATA, or a copy of the Hugging Face mirror)",
    )
    parser.add_argument(
        "--out", required=True, help="sweep folder: cells/, RESULTS.md; rerun the same command to resume"
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="base2new",
        help=(
            "base2new: train on base classes, report base/new/HM; fewshot: all classes, accuracy; "
            "cross-dataset and domain-generalisation: train on --source, evaluate the one model on each of --targets"
        ),
    )
    parser.add_argument(
        "--source",
        metavar="NAME[=ROOT]",
        help=f"transfer protocols: the dataset to train on (default {DEFAULT_SOURCE})",
    )
    parser.add_argument(
        "--targets",
        nargs="+",
        metavar="NAME[=ROOT]",
        help=(
            "transfer protocols: where to evaluate (default: cross-dataset the other ten datasets, "
            "domain-generalisation imagenetv2 imagenet_sketch imagenet_a imagenet_r)"
        ),
    )
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument(
        "--preset",
        default="paper",
        help="paper (default: the published settings, which the tables compare against) or default (the product's)",
    )
    parser.add_argument(
        "--config",
        help=(
            "a run config JSON for everything else (backbone, options, training); the sweep sets data, method and seed"
        ),
    )
    parser.add_argument("--backbone", help="open_clip model name (default: the config's, else ViT-B-16)")
    parser.add_argument("--pretrained", help="pretrained tag or checkpoint file, or 'none' for random init")
    parser.add_argument(
        "--epochs",
        type=int,
        help=(
            "override every cell's epoch count (smoke runs); "
            "each host's published schedule, ImageNet's own included, applies without it"
        ),
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help=(
            "print every cell's resolved config (options, training and where each paper value comes from) "
            "and train nothing"
        ),
    )
    parser.add_argument("--batch-size", type=int)
    parser.add_argument(
        "--ray", action="store_true", help="spread cells over a Ray cluster, one per GPU (pip install specpl[ray])"
    )
    parser.add_argument("--ray-address", help="the cluster to join (default: RAY_ADDRESS, else a local one)")
    parser.add_argument(
        "--gpus-per-cell", type=float, default=1.0, help="GPUs Ray reserves for each cell (0 for a CPU cluster)"
    )


def run_sweep(
    args: argparse.Namespace, runner: CellRunner = train_cell, evaluator: TargetEvaluator = evaluate_target
) -> int:
    """Run every unfinished cell, then write and print the table. 0 when every cell has finished
    (for a transfer protocol: trained and evaluated on every target)."""
    cells = plan_cells(args)
    if args.dry_run:
        for cell in cells:
            print(json.dumps({"cell": cell.key, **resolved_cell(cell.config)}, default=str))
        return 0
    processes = None if args.ray else _process_state()
    store = CellStore(Path(args.out), writer=processes is None or processes.is_main_process)
    training = _training_record(args)
    _check_same_training(store.root / "sweep.json", training, args.protocol)
    datasets = _unique(c.dataset for c in cells)
    targets = list(cells[0].targets)
    if store.writer:
        write_json_atomic(
            store.root / "sweep.json",
            {
                "datasets": [vars(d) for d in datasets],
                "targets": [vars(t) for t in targets],
                "methods": args.methods,
                "seeds": args.seeds,
                "protocol": args.protocol,
                **training,
            },
        )

    def say(text: str) -> None:
        if store.writer:
            print(text, flush=True)

    pending = [cell for cell in cells if not store.finished(cell)]
    say(f"sweep: {len(cells)} cells, {len(cells) - len(pending)} already finished, {len(pending)} to run")
    if args.ray:
        failures = run_cells_with_ray(pending, store, runner, evaluator, args.ray_address, args.gpus_per_cell)
    else:
        failures = []
        for index, cell in enumerate(pending, start=1):
            say(f"[{index}/{len(pending)}] {cell.key}")
            try:
                run_cell(cell, store, runner, evaluator)
            except Exception as exc:  # one failed cell must not stop the others; KeyboardInterrupt still does
                failures.append((cell, f"{type(exc).__name__}: {exc}"))
                traceback.print_exc()
    if processes is not None:
        processes.wait_for_everyone()  # every process reads the main one's last records below
    if store.writer:
        table = render_table(cells, store, args.protocol, args.shots)
        atomic_write_text(store.root / "RESULTS.md", table)
        print(table)
    for cell, error in failures:
        print(f"failed: {cell.key}: {error}", file=sys.stderr)
    return 0 if all(store.finished(cell) for cell in cells) else 1


def resolved_cell(config: RunConfig) -> dict[str, Any]:
    """What a cell would train with, as the trainer resolves it (`specpl.resolve`): its preset,
    every option, the training settings for its dataset's training images (read from its layout,
    so a bad layout shows before a long sweep) and, for a paper preset, each value's source."""
    from specpl.resolve import resolve_run

    return {"dataset": config.data.dataset, **resolve_run(config, read_dataset(config.data)).record()}


def _process_state() -> "PartialState":
    """accelerate's process state: several processes under ``accelerate launch``, else one. Made
    as the trainer's Accelerator makes it (on the CPU when there is no GPU)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def _training_record(args: argparse.Namespace) -> dict[str, Any]:
    """What decides the model a cell trains, apart from dataset, method and seed."""
    return {
        "classes": "base" if args.protocol == "base2new" else "all",
        "shots": args.shots,
        "preset": canonical_preset(args.preset),
    }


def _check_same_training(sweep_file: Path, training: dict[str, Any], protocol: str) -> None:
    """Refuse an OUT whose cells were trained another way (a base-to-new OUT for a few-shot or
    transfer sweep, or another K): its finished cells would be reported as this sweep's."""
    try:
        previous = json.loads(sweep_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return
    # sweeps written before the presets trained the published data path: the paper preset
    before = {
        "classes": previous.get("classes", "base" if previous["protocol"] == "base2new" else "all"),
        "shots": previous["shots"],
        "preset": canonical_preset(previous.get("preset", "paper")),
    }
    if before != training:
        raise ValueError(
            f"{sweep_file.parent} holds a {previous['protocol']} sweep "
            f"({before['shots']} shots, trained on {before['classes']} classes, {before['preset']} preset); "
            f"this {protocol} sweep trains on {training['classes']} classes with {training['shots']} shots, "
            f"{training['preset']} preset: give it another --out"
        )


def plan_cells(args: argparse.Namespace) -> list[Cell]:
    """Every (dataset, method, seed) cell with its run config and, for a transfer protocol, its
    targets; names are checked before anything runs."""
    from specpl.methods import BOOSTERS, HOSTS

    base = _base_config(args)
    choices, targets = _plan_datasets(args)
    for method in args.methods:
        host, *boosters = method.split("+")
        HOSTS.get(host)
        for booster in boosters:
            BOOSTERS.get(booster)
    return [
        Cell(choice, method, seed, _cell_config(base, choice, method, seed, args), targets)
        for choice in choices
        for method in args.methods
        for seed in args.seeds
    ]


def _plan_datasets(args: argparse.Namespace) -> tuple[list[DatasetChoice], tuple[DatasetChoice, ...]]:
    """The datasets to train on and the targets to evaluate on (none outside transfer protocols)."""
    if args.protocol not in TRANSFER_PROTOCOLS:
        if args.source or args.targets:
            raise ValueError(
                f"--source and --targets belong to the {' and '.join(TRANSFER_PROTOCOLS)} protocols, "
                f"not {args.protocol}"
            )
        if not args.datasets:
            raise ValueError(f"--protocol {args.protocol} needs --datasets")
        choices = [_dataset_choice(text, args.data_root) for text in args.datasets]
        _check_distinct([choice.label for choice in choices], "--datasets")
        return choices, ()
    if args.datasets:
        raise ValueError(
            f"--protocol {args.protocol} trains on --source (default {DEFAULT_SOURCE}) and evaluates on --targets; "
            "--datasets is for base2new and fewshot"
        )
    source = _dataset_choice(args.source or DEFAULT_SOURCE, args.data_root)
    targets = tuple(
        _dataset_choice(text, args.data_root, evaluation_only=True)
        for text in args.targets or default_targets(args.protocol, source.name)
    )
    _check_distinct([target.label for target in targets], "--targets")
    if source.label in {target.label for target in targets}:
        raise ValueError(
            f"{source.label} is the source; its own test split is scored when its cell trains, "
            "so leave it out of --targets"
        )
    return [source], targets


def default_targets(protocol: str, source: str) -> tuple[str, ...]:
    """Cross-dataset: every base-to-new dataset but the source; domain generalisation: the four
    ImageNet variants."""
    if protocol == "domain-generalisation":
        return DOMAIN_TARGETS
    return tuple(name for name in BASE_TO_NEW if name != source)


def _check_distinct(labels: list[str], flag: str) -> None:
    if len(set(labels)) != len(labels):
        raise ValueError(f"two datasets share a name in {flag}: {labels}")


def _dataset_choice(text: str, data_root: str, evaluation_only: bool = False) -> DatasetChoice:
    name, _, root = text.partition("=")
    source = DATASETS.get(name)()
    if getattr(source, "test_only", False) and not evaluation_only:
        raise ValueError(
            f"{name} is a test-only ImageNet variant; "
            "train on imagenet and evaluate on it instead (--protocol domain-generalisation)"
        )
    if not (root or data_root):
        raise ValueError(f"dataset {name} needs a root: pass --data-root or {name}=ROOT")
    label = Path(root).stem if root and name in USER_DATASETS else name
    return DatasetChoice(name, root or data_root, label)


def _base_config(args: argparse.Namespace) -> RunConfig:
    config = RunConfig()
    if args.config:
        raw = json.loads(Path(args.config).read_text(encoding="utf-8"))
        config = from_dict(
            RunConfig,
            {k: raw[k] for k in ("backbone", "decomposer", "method", "data", "train", "template") if k in raw},
        )
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
    config.method = dataclasses.replace(
        config.method, host=host, boosters=boosters, options=options, preset=canonical_preset(args.preset)
    )
    subsample = "base" if args.protocol == "base2new" else "all"
    config.data = DataConfig(
        root=choice.root,
        dataset=choice.name,
        shots=args.shots,
        seed=seed,
        subsample=subsample,
        split_ratio=base.data.split_ratio,
    )
    config.train.seed = seed
    config.template = DATASETS.get(choice.name)().template or base.template
    return config


def run_cells_with_ray(
    cells: Sequence[Cell],
    store: CellStore,
    runner: CellRunner,
    evaluator: TargetEvaluator,
    address: str | None,
    gpus_per_cell: float,
) -> list[tuple[Cell, str]]:
    """One Ray task per cell, each reserving `gpus_per_cell` GPUs (Ray sets CUDA_VISIBLE_DEVICES for
    it); tasks record their own cells, so cells finished before a crash of the driver are kept."""
    try:
        import ray
    except ImportError:
        raise RuntimeError("--ray needs Ray: pip install 'specpl[ray]' (or pip install ray)") from None
    if not ray.is_initialized():
        ray.init(address=address)
    task = ray.remote(num_cpus=1, num_gpus=gpus_per_cell, max_retries=0)(run_cell)
    running = {task.remote(cell, store, runner, evaluator): cell for cell in cells}
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
    """One markdown table per method (a transfer protocol: one table, a row per method); every
    number as ``ours (published, difference)``; each method headed by what it is (`describe_stack`)."""
    from specpl.factory import describe_stack

    seeds = sorted({cell.seed for cell in cells})
    lines = [f"# Sweep results ({protocol}, {shots} shots, seeds {', '.join(map(str, seeds))})", ""]
    if protocol in TRANSFER_PROTOCOLS:
        return "\n".join(lines + _transfer_table(cells, store, protocol, len(seeds))) + "\n"
    lines.append(
        "Each entry: ours (published, ours minus published); a dataset's value is the mean over its finished seeds."
    )
    lines.append(
        f"Published per-dataset numbers: {PER_DATASET_SOURCE}. Average rows are the HM of the mean base and mean new."
    )
    for method in _unique(cell.method for cell in cells):
        results = {}
        for cell in cells:
            metrics = store.result(cell) if cell.method == method else None
            if metrics is not None:
                results.setdefault(cell.dataset, []).append(metrics)
        lines += ["", f"## {method}: {describe_stack(next(c for c in cells if c.method == method).config.method)}", ""]
        datasets = _unique(cell.dataset for cell in cells if cell.method == method)
        lines += (
            _base_new_rows(method, datasets, results, len(seeds))
            if protocol == "base2new"
            else _accuracy_rows(datasets, results, len(seeds))
        )
    return "\n".join(lines) + "\n"


def _base_new_rows(
    method: str, datasets: list[DatasetChoice], results: dict[DatasetChoice, list[dict[str, Any]]], n_seeds: int
) -> list[str]:
    rows = ["| Dataset | Seeds | Base | New | HM |", "|---|---|---|---|---|"]
    pairs = {d: [(m["base"], m["new"]) for m in results[d]] for d in datasets if d in results}
    ours, average = base_new_table(pairs) if pairs else ({}, None)
    for dataset in datasets:
        published = published_base_new(method, dataset.name)
        reference = (
            None if published is None else {"base": published[0], "new": published[1], "hm": harmonic_mean(*published)}
        )
        rows.append(
            f"| {dataset.label} | {len(results.get(dataset, []))}/{n_seeds} "
            f"| {_entries(ours.get(dataset), reference)} |"
        )
    if average is not None:
        reference = _published_average(method, list(ours))
        rows.append(f"| **Average** ({len(ours)} datasets) | | {_entries(average, reference)} |")
        only_average = published_average(method)
        if reference is None and only_average:
            rows += [
                "",
                (
                    f"The published 11-dataset average of {method} ({only_average.source}) "
                    "is compared only once all 11 datasets have run."
                ),
            ]
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


def _accuracy_rows(
    datasets: list[DatasetChoice], results: dict[DatasetChoice, list[dict[str, Any]]], n_seeds: int
) -> list[str]:
    rows = ["| Dataset | Seeds | Accuracy |", "|---|---|---|"]
    means = {d: sum(m["accuracy"] for m in results[d]) / len(results[d]) for d in datasets if d in results}
    for dataset in datasets:
        rows.append(
            f"| {dataset.label} | {len(results.get(dataset, []))}/{n_seeds} | {_entry(means.get(dataset), None)} |"
        )
    if means:
        rows.append(f"| **Average** ({len(means)} datasets) | | {_entry(sum(means.values()) / len(means), None)} |")
    return rows


def _transfer_table(cells: Sequence[Cell], store: CellStore, protocol: str, n_seeds: int) -> list[str]:
    """Columns: the source, each target and the targets' average (the source excluded, as the
    published tables take it); a row per method, and a note of what each is (`describe_stack`)."""
    from specpl.factory import describe_stack

    source, targets = cells[0].dataset, list(cells[0].targets)
    lines = [
        (
            f"Trained on {source.label} (all classes); "
            "each target is the trained model on its full test split with its own class names and template."
        ),
        (
            "Each entry: ours (published, ours minus published), the mean over the seeds evaluated; "
            "[k/n]: only k of the n trained seeds so far."
        ),
        "Average: the mean over the targets, the source excluded.",
        "",
        "| Method | Seeds | " + " | ".join([f"{source.label} (source)", *(t.label for t in targets), "Average"]) + " |",
        "|---|---|" + "---|" * (len(targets) + 2),
    ]
    notes = []
    for method in _unique(cell.method for cell in cells):
        own = [cell for cell in cells if cell.method == method]
        trained = [metrics["accuracy"] for cell in own if (metrics := store.result(cell)) is not None]
        scores = {
            t: [m["accuracy"] for cell in own if (m := store.target_result(cell, t)) is not None] for t in targets
        }
        published = published_transfer(protocol, method, source.name)
        means = {t: sum(v) / len(v) for t, v in scores.items() if v}
        entries = [_seeded_entry(trained, len(trained), _published_accuracy(published, source))]
        entries += [_seeded_entry(scores[t], len(trained), _published_accuracy(published, t)) for t in targets]
        average = sum(means.values()) / len(means) if targets and len(means) == len(targets) else None
        entries.append(_entry(average, _published_transfer_average(published, targets)))
        lines.append(f"| {method} | {len(trained)}/{n_seeds} | " + " | ".join(entries) + " |")
        notes.append(f"- {method}: {describe_stack(own[0].config.method)}.")
        if published is not None:
            notes.append(f"- {method}: published numbers from {published.reference}.")
            subset = [t for t in targets if t.name in published.average_over]
            if (
                published.average is not None
                and len(published.average_over) == len(subset) < len(targets)
                and all(t in means for t in subset)
            ):
                ours = sum(means[t] for t in subset) / len(subset)
                notes.append(
                    f"  Its published average is over {', '.join(t.label for t in subset)} only: "
                    f"{published.average:.2f}; ours over the same targets: {_entry(ours, published.average)}."
                )
    if not any(published_transfer(protocol, m, source.name) for m in _unique(c.method for c in cells)):
        notes.append(f"- The method specs publish no {protocol} numbers for these methods.")
    return lines + [""] + notes


def _seeded_entry(values: list[float], trained: int, published: float | None) -> str:
    """The mean of `values` against the published number, marked when fewer seeds than trained."""
    entry = _entry(sum(values) / len(values) if values else None, published)
    return f"{entry} [{len(values)}/{trained}]" if values and len(values) < trained else entry


def _published_accuracy(published: PublishedTransfer | None, dataset: DatasetChoice) -> float | None:
    return None if published is None or dataset.label != dataset.name else published.accuracy.get(dataset.name)


def _published_transfer_average(published: PublishedTransfer | None, targets: list[DatasetChoice]) -> float | None:
    """The published average over exactly these targets: from per-target numbers when each has
    one, else a published average-only figure over the same set."""
    if published is None or not targets:
        return None
    values = [_published_accuracy(published, t) for t in targets]
    if all(v is not None for v in values):
        return sum(values) / len(values)
    standard = {t.name for t in targets if t.label == t.name}
    if published.average is not None and len(standard) == len(targets) and standard == set(published.average_over):
        return published.average
    return None


def _entry(ours: float | None, published: float | None) -> str:
    if ours is None:
        return "–"
    if published is None:
        return f"{ours:.2f}"
    difference = round(ours - published, 2) + 0.0  # + 0.0 turns a rounded -0.00 into 0.00
    return f"{ours:.2f} ({published:.2f}, {difference:+.2f})"


def _unique(items: Any) -> list[Any]:
    return list(dict.fromkeys(items))
