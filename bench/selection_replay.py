"""Replay model selection: which epoch each rule would keep, and what that epoch scores on test.

A default run scores every epoch on validation (a few images held out of the training images).
This script trains rows as `specpl bench defaults` does, on a SpectralWorld camera (base-to-new)
or on the demo set (all classes), and also scores the test split of every state a rule can keep
(the initial state, each new best on validation, the last epoch), with the RNG state put back, so
training runs as it would without the extra scoring. Each run's reported result is kept beside
its trace. Selection only chooses
which scored state is exported, so replaying a rule over these traces gives exactly what a default
run under that rule would report. The rules:
- ``best accuracy``: the epoch with the highest validation accuracy (then lower cross-entropy);
- ``last``: the last epoch;
- ``round 2``: the rule before round 3 of choosing the defaults (bench/DEFAULTS.md): the initial
  state was kept only when it got every validation image right, not when it missed one, and the
  last epoch within one standard error of the best;
- ``round 5``: the shipped rule before round 6, the last epoch kept within one standard error of
  the best (`noise_margin`) instead of two, and round 10's treatment of the initial state;
- ``round 10``: the shipped rule before round 11, which kept the initial state whenever the
  chosen epoch did not beat it and never exported zero-shot CLIP (`unless_beaten`);
- ``shipped``: `specpl.selection.Selection.settle`, the default preset's rule.
It prints the headline of the kept epoch per row (HM, or accuracy on the demo set; mean over
seeds) and the sum over rows. ``--save`` writes the traces as JSON and ``--load`` replays saved
traces without training, so a changed rule can be compared on the same runs.

    python bench/selection_replay.py --domain dusk --rows coop cocoop ivlp ivlp+specpl [--seeds 1 2 3]
    python bench/selection_replay.py --domain demo --rows coop ivlp --save /tmp/demo-traces.json
    python bench/selection_replay.py --load /tmp/demo-traces.json [more.json ...]
    python bench/selection_replay.py --domain neon --rows "cocoop:train.batch_size=13"
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from specpl.backbone import load_backbone
from specpl.bands import build_decomposer
from specpl.config import DataConfig, MethodConfig
from specpl.data import read_fewshot_folder
from specpl.datasets import read_dataset
from specpl.defaults import demo_data_dir, world_backbone_config
from specpl.evaluate import harmonic_mean
from specpl.inference import Predictor
from specpl.methods.caspl import PHASE_ONE
from specpl.selection import ZERO_SHOT, Selection, misses, noise_margin
from specpl.trainer import Trainer
from specpl.world.benchmark import BenchRow, SeedRuns
from specpl.world.defaults_bench import DefaultsBenchConfig, DemoSeedRuns, parse_ablation, world_config
from specpl.world.generator import write_fewshot_folder

DEMO = "demo"
RULES = ("best accuracy", "last", "round 2", "round 5", "round 10", "shipped")


class TracingTrainer(Trainer):
    """A trainer that also scores the test splits of every state a rule can keep: a trace entry is
    [validation accuracy, validation cross-entropy, test accuracy per split]. Test is scored for
    zero-shot CLIP, the initial state, each epoch that becomes the best on validation, and the last
    epoch; other entries hold None there (a rule keeps one of these, never another)."""

    def __init__(self, *args, splits: dict[str, tuple], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.splits, self.trace = splits, []

    def _test(self, model) -> None:
        with torch.random.fork_rng():
            predictor, scores = Predictor(model), {}
            if None in self.trace[0][2:]:  # zero-shot CLIP's entry: scored with the initial state's
                zero_shot = Predictor.zero_shot(model.backbone, model.classnames, model.context.template)
                for split, (data, novel) in self.splits.items():
                    zero_shot.set_classnames(data.classnames, novel=novel)
                    scores[split] = zero_shot.evaluate(data.test).accuracy
                self.trace[0][2:] = [scores[split] for split in self.splits]
            for split, (data, novel) in reversed(self.splits.items()):  # the training classes last
                predictor.set_classnames(data.classnames, novel=novel)
                scores[split] = predictor.evaluate(data.test).accuracy
        model.train()
        self.trace[-1][2:] = [scores[split] for split in self.splits]

    def _validate(self, predictor, data, accelerator):
        accuracy, loss = super()._validate(predictor, data, accelerator)
        self.trace.append([accuracy, loss, *[None] * len(self.splits)])
        return accuracy, loss

    def _start_selection(self, model, *args, **kwargs):
        selection = super()._start_selection(model, *args, **kwargs)
        self._test(model)  # zero-shot CLIP's and the initial state's
        return selection

    def _score_epoch(self, model, data, epoch, epochs, step, accelerator):
        accuracy = super()._score_epoch(model, data, epoch, epochs, step, accelerator)
        if epoch == epochs or self.selection.best_epoch == epoch:
            self._test(model)
        return accuracy


class OneErrorSelection(Selection):
    """The selection of rounds 2-5: the last epoch kept within one standard error of the best."""

    @property
    def last_epoch_margin(self) -> float:
        return noise_margin(self.best_accuracy, self.val_images)


def replay(trace: list[list[float]], val_images: int) -> dict[str, int]:
    """The epoch each rule keeps (`ZERO_SHOT` for zero-shot CLIP). trace[0] is zero-shot CLIP's
    validation score, trace[1] the initial state's (epoch 0), then one entry per epoch."""
    epochs, last = trace[1:], len(trace) - 2
    zero_shot, zero_shot_loss = trace[0][:2]
    shipped = Selection(val_images, zero_shot, zero_shot_loss=zero_shot_loss)
    two_errors, one_error = Selection(val_images, zero_shot), OneErrorSelection(val_images, zero_shot)
    for selection in (shipped, two_errors, one_error):
        for epoch, (accuracy, loss, *_) in enumerate(epochs):
            selection.offer(epoch, accuracy, {"epoch": torch.tensor([epoch])}, loss)
    shipped.settle(last)
    return {
        "best accuracy": shipped.best_epoch,
        "last": last,
        "round 2": unless_beaten(one_error, last, misses_allowed=0),
        "round 5": unless_beaten(one_error, last, misses_allowed=1),
        "round 10": unless_beaten(two_errors, last, misses_allowed=1),
        "shipped": shipped.kept_epoch,
    }


def unless_beaten(selection: Selection, last: int, misses_allowed: int) -> int:
    """The epoch rounds 2-10 kept: the last or the best as `selection` chooses them, then the
    initial state when the choice did not beat it (accuracy, then cross-entropy) or it missed at
    most `misses_allowed` validation images (round 2: none; rounds 3-10: one)."""
    kept = selection.candidate(last)
    start_misses = misses(selection.scores[0], selection.val_images)
    return 0 if start_misses <= misses_allowed or selection.rank(kept) <= selection.rank(0) else kept


def headline(test: list[float | None]) -> float:
    """HM of (base, new), or the accuracy of a demo-set trace."""
    if None in test:
        raise ValueError("a rule kept a state whose test split was not scored")
    return harmonic_mean(*test) if len(test) == 2 else test[0]


class Tracing(SeedRuns):
    """A seed's runs whose trainers trace (`TracingTrainer`); CasPL's phase 1, which has no test
    classes to score, trains as it does in the bench."""

    def __init__(self, *args: Any, splits: dict[str, tuple], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.splits = splits
        self.trainers: dict[Path, TracingTrainer] = {}

    def trainer(self, row: BenchRow, run_dir: Path) -> Trainer:
        if row.method.host == PHASE_ONE:
            return super().trainer(row, run_dir)
        trainer = TracingTrainer(
            self.run_config(row),
            run_dir,
            backbone=self.backbone,
            decomposer=self.row_decomposer(row),
            progress_bar=False,
            splits=self.splits,
        )
        self.trainers[run_dir] = trainer
        return trainer


class DemoTracing(Tracing, DemoSeedRuns):
    """The demo set's runs, traced."""


def trace_runs(args: argparse.Namespace) -> dict:
    """Train every row on every seed and return {"domain", "rows": {row: {seed: {val_images, trace}}}}."""
    torch.set_num_threads(1)
    backbone = load_backbone(world_backbone_config())
    world = world_config(DefaultsBenchConfig(hosts=(), test_per_class=args.test_per_class), args.domain)
    decomposer = build_decomposer(world.decomposer)
    traces: dict = {"domain": args.domain, "test_per_class": args.test_per_class, "rows": {}}
    with tempfile.TemporaryDirectory() as workdir:
        demo_root = demo_data_dir(Path(workdir) / "demo") if args.domain == DEMO else None
        for seed in args.seeds:
            if demo_root is None:
                root = write_fewshot_folder(
                    Path(workdir) / f"data-{seed}", world.shots, world.test_per_class, seed, camera=args.domain
                )
                splits = {
                    s: (read_fewshot_folder(root, shots=world.shots, seed=seed, subsample=s), s == "new")
                    for s in ("base", "new")
                }
                runs: Tracing = Tracing(world, backbone, decomposer, {}, root, seed, Path(workdir), splits=splits)
            else:  # as `specpl bench defaults` trains the demo set: no flag but the seed
                splits = {"all": (read_dataset(DataConfig(root=str(demo_root), seed=seed)), False)}
                runs = DemoTracing(world, backbone, decomposer, {}, demo_root, seed, Path(workdir), splits=splits)
            for index, text in enumerate(args.rows):
                host, boosters, options = parse_ablation(text)
                train = options.pop("train", {})  # train.KEY=VALUE: a training setting, not a method option
                row = BenchRow(text, MethodConfig(host=host, boosters=boosters, options=options), train=train)
                run_dir = Path(workdir) / f"row{index}-{seed}"
                result = runs.fit(row, run_dir)
                trace = runs.trainers.pop(run_dir).trace  # let the finished trainer, and its model, go
                epochs = len(result.metrics["selection"]["per_epoch_val"])
                if len(trace) != epochs + 2:  # zero-shot, initial, every epoch
                    raise RuntimeError(f"{text}: {len(trace)} validation scores for {epochs} epochs")
                traces["rows"].setdefault(text, {})[str(seed)] = {
                    "val_images": result.metrics["selection"]["val_images"],
                    "reported": headline([result.metrics[k] for k in ("base", "new") if k in result.metrics])
                    if demo_root is None
                    else result.metrics["accuracy"],
                    "trace": trace,
                }
                print(f"seed {seed} {text}: traced {epochs} epochs", flush=True)
    return traces


def report(traces: dict) -> None:
    """The kept epoch's headline per rule, per row (mean over seeds), and the sum over rows."""
    totals = dict.fromkeys(RULES, 0.0)
    seeds = sorted({seed for runs in traces["rows"].values() for seed in runs}, key=int)
    print(f"\n| row ({traces['domain']}, seeds {' '.join(seeds)}) | " + " | ".join(RULES) + " |")
    print("|---" * (len(RULES) + 1) + "|")
    for text, runs in traces["rows"].items():
        kept = {rule: [] for rule in RULES}
        for run in runs.values():
            for rule, epoch in replay(run["trace"], run["val_images"]).items():
                kept[rule].append(headline(run["trace"][0 if epoch == ZERO_SHOT else 1 + epoch][2:]))
        print(f"| {text} | " + " | ".join(f"{statistics.fmean(kept[rule]):.2f}" for rule in RULES) + " |")
        for rule in RULES:
            totals[rule] += statistics.fmean(kept[rule])
    print("| sum | " + " | ".join(f"{value:.1f}" for value in totals.values()) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domain", "--camera", default="dusk", help="a SpectralWorld camera, or 'demo'")
    parser.add_argument(
        "--rows", nargs="+", help="HOST[+BOOSTER...][:COMPONENT.KEY=VALUE,...]; component train sets a training value"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--test-per-class", type=int, default=50)
    parser.add_argument("--save", type=Path, help="write the traces here as JSON")
    parser.add_argument("--load", type=Path, nargs="+", help="replay traces saved by --save instead of training")
    args = parser.parse_args()
    if args.load:
        for path in args.load:
            report(json.loads(path.read_text()))
    elif args.rows:
        traces = trace_runs(args)
        if args.save:
            args.save.write_text(json.dumps(traces))
        report(traces)
    else:
        parser.error("give --rows to train, or --load saved traces")


if __name__ == "__main__":
    main()
