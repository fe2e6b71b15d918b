"""Replay model selection: which epoch each rule would keep, and what that epoch scores on test.

A default run scores every epoch on validation (a few images held out of the training images).
This script trains SpectralWorld rows as `specpl bench defaults` does, and after every epoch also
scores the test split (base and new classes, with the RNG state put back, so training runs as it
would without the extra scoring). Then it replays three rules over the same runs:
- ``best accuracy``: the epoch with the highest validation accuracy (then lower cross-entropy);
- ``last``: the last epoch;
- ``shipped``: `specpl.selection.Selection.settle`, the default preset's rule.
and prints the HM of the kept epoch per row (mean over seeds) and the sum over rows.

    python bench/selection_replay.py --camera dusk --rows coop cocoop ivlp ivlp+specpl [--seeds 1 2 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from specpl.backbone import load_backbone
from specpl.bands import build_decomposer
from specpl.config import DecomposerConfig, MethodConfig
from specpl.data import read_fewshot_folder
from specpl.defaults import world_backbone_config
from specpl.evaluate import harmonic_mean
from specpl.inference import Predictor
from specpl.selection import Selection
from specpl.trainer import Trainer
from specpl.world.benchmark import BenchRow, WorldBenchConfig, row_run_config
from specpl.world.defaults_bench import parse_ablation
from specpl.world.generator import write_fewshot_folder


class TracingTrainer(Trainer):
    """A trainer that also scores the test split (base, new) whenever it scores validation."""

    def __init__(self, *args, splits: dict[str, tuple], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.splits, self.trace = splits, []

    def _test(self, model) -> tuple[float, float]:
        with torch.random.fork_rng():
            predictor, scores = Predictor(model), {}
            for split in ("new", "base"):  # base last: the model trains on the base classes
                data, novel = self.splits[split]
                predictor.set_classnames(data.classnames, novel=novel)
                scores[split] = predictor.evaluate(data.test).accuracy
        model.train()
        return scores["base"], scores["new"]

    def _validate(self, predictor, data, accelerator):
        accuracy, loss = super()._validate(predictor, data, accelerator)
        self.trace.append((accuracy, loss, *self._test(predictor.model)))
        return accuracy, loss


def replay(trace: list[tuple[float, float, float, float]], val_images: int) -> dict[str, int]:
    """The epoch each rule keeps. trace[0] is zero-shot CLIP's validation score, trace[1] the
    initial state's (epoch 0), then one entry per epoch."""
    epochs = trace[1:]
    best = max(range(len(epochs)), key=lambda e: (epochs[e][0], -epochs[e][1], e))
    selection = Selection(val_images, trace[0][0])
    for epoch, (accuracy, loss, *_) in enumerate(epochs):
        selection.offer(epoch, accuracy, {"epoch": torch.tensor([epoch])}, loss)
    selection.settle(len(epochs) - 1)
    return {"best accuracy": best, "last": len(epochs) - 1, "shipped": selection.kept_epoch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--camera", default="dusk")
    parser.add_argument("--rows", nargs="+", required=True, help="HOST[+BOOSTER...][:COMPONENT.KEY=VALUE,...]")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--test-per-class", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    backbone = load_backbone(world_backbone_config())
    decomposer_config = DecomposerConfig(name="fft", image_size=64)
    decomposer = build_decomposer(decomposer_config)
    config = WorldBenchConfig(
        shots=4,
        test_per_class=args.test_per_class,
        epochs=None,
        batch_size=None,
        n_ctx=None,
        decomposer=decomposer_config,
        camera=args.camera,
    )
    kept: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for seed in args.seeds:
            root = write_fewshot_folder(
                Path(workdir) / f"data-{seed}", config.shots, config.test_per_class, seed, camera=args.camera
            )
            splits = {
                s: (read_fewshot_folder(root, shots=config.shots, seed=seed, subsample=s), s == "new")
                for s in ("base", "new")
            }
            for index, text in enumerate(args.rows):
                host, boosters, options = parse_ablation(text)
                row = BenchRow(text, MethodConfig(host=host, boosters=boosters, options=options))
                run = row_run_config(row, config, backbone, root, seed)
                trainer = TracingTrainer(
                    run,
                    Path(workdir) / f"row{index}-{seed}",
                    backbone=backbone,
                    decomposer=decomposer,
                    progress_bar=False,
                    splits=splits,
                )
                result = trainer.fit()
                val_images = result.metrics["selection"]["val_images"]
                trace = trainer.trace
                if (
                    len(trace) != len(result.metrics["selection"]["per_epoch_val"]) + 2
                ):  # zero-shot, initial, every epoch
                    raise RuntimeError(
                        f"{text}: {len(trace)} validation scores for "
                        f"{len(result.metrics['selection']['per_epoch_val'])} epochs"
                    )
                for rule, epoch in replay(trace, val_images).items():
                    base, new = trace[1 + epoch][2:]
                    kept.setdefault(text, {}).setdefault(rule, []).append(harmonic_mean(base, new))
                print(
                    f"seed {seed} {text}: "
                    + ", ".join(f"{rule} {values[-1]:.1f}" for rule, values in kept[text].items()),
                    flush=True,
                )
    totals = {rule: 0.0 for rule in ("best accuracy", "last", "shipped")}
    print(f"\n| row ({args.camera}, seeds {' '.join(map(str, args.seeds))}) | " + " | ".join(totals) + " |")
    print("|---" * (len(totals) + 1) + "|")
    for text, rules in kept.items():
        print(f"| {text} | " + " | ".join(f"{statistics.fmean(rules[rule]):.1f}" for rule in totals) + " |")
        for rule in totals:
            totals[rule] += statistics.fmean(rules[rule])
    print("| sum | " + " | ".join(f"{value:.1f}" for value in totals.values()) + " |")


if __name__ == "__main__":
    main()
