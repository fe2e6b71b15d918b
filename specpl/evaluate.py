"""Metrics only: accuracy, per-class accuracy, the base-to-novel summary. Scoring a split with a
model is `specpl.inference.score_split`.

The aggregate HM over several datasets (or seeds) is the HM of the mean base and mean new
accuracies, not the mean of per-dataset HMs (the convention of the published tables).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

DETAIL_KEYS = ("per_class", "confusion", "misclassified", "selection", "loss")


@dataclass
class EvalResult:
    accuracy: float  # percent
    per_class: dict[str, float]
    count: int

    def to_dict(self) -> dict[str, object]:
        return {"accuracy": self.accuracy, "per_class": self.per_class, "count": self.count}


def accuracy_from_predictions(predictions: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str]) -> EvalResult:
    correct = predictions == labels
    per_class = {}
    for index, name in enumerate(classnames):
        mask = labels == index
        if mask.any():
            per_class[name] = 100.0 * float(correct[mask].float().mean())
    return EvalResult(100.0 * float(correct.float().mean()) if len(labels) else 0.0, per_class, int(len(labels)))


def harmonic_mean(base: float, new: float) -> float:
    return 0.0 if base + new == 0 else 2 * base * new / (base + new)


def aggregate_base_new(pairs: Iterable[tuple[float, float]]) -> dict[str, float]:
    """Mean base, mean new, and the HM of those two means."""
    pairs = list(pairs)
    if not pairs:
        raise ValueError("aggregate_base_new needs at least one (base, new) pair")
    base = sum(b for b, _ in pairs) / len(pairs)
    new = sum(n for _, n in pairs) / len(pairs)
    return {"base": base, "new": new, "hm": harmonic_mean(base, new)}


def base_new_table(
    seed_results: Mapping[str, Iterable[tuple[float, float]]],
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """The published table's two levels: per dataset, base and new averaged over seeds and the HM
    of those means; then the average row over datasets, again the HM of the mean base and mean new
    (never a mean of HMs)."""
    rows = {name: aggregate_base_new(pairs) for name, pairs in seed_results.items()}
    return rows, aggregate_base_new((row["base"], row["new"]) for row in rows.values())


@torch.no_grad()
def evaluate_logits(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    classnames: Sequence[str],
) -> EvalResult:
    """Run `logits_fn` over (inputs, labels) batches and score the arg-max."""
    predictions, labels = [], []
    for inputs, batch_labels in batches:
        predictions.append(logits_fn(inputs).argmax(dim=-1).cpu())
        labels.append(batch_labels.cpu())
    if not predictions:
        return EvalResult(0.0, {}, 0)
    return accuracy_from_predictions(torch.cat(predictions), torch.cat(labels), classnames)


def metrics_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline metrics (events, bundles, sweep tables); the details stay in metrics.json."""
    return {k: v for k, v in metrics.items() if k not in DETAIL_KEYS}
