"""Accuracy, per-class accuracy, the scored test split and the base-to-novel summary.

The aggregate HM over several datasets (or seeds) is the HM of the mean base and mean new
accuracies, not the mean of per-dataset HMs (the convention of the published tables).

`score_split` scores a whole split once however many processes run: under ``accelerate launch``
each process scores its share and the predictions are gathered with ``gather_for_metrics``, which
drops the samples the sharded loader repeats to even out the last round.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from specpl.data import ImageItem, load_image

if TYPE_CHECKING:
    from accelerate import Accelerator

    from specpl.inference import Predictor

MAX_MISCLASSIFIED = 64
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


def base_new_table(seed_results: Mapping[str, Iterable[tuple[float, float]]]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """The published table's two levels: per dataset, base and new averaged over seeds and the HM
    of those means; then the average row over datasets, again the HM of the mean base and mean new
    (never a mean of HMs)."""
    rows = {name: aggregate_base_new(pairs) for name, pairs in seed_results.items()}
    return rows, aggregate_base_new((row["base"], row["new"]) for row in rows.values())


@torch.no_grad()
def evaluate_logits(logits_fn: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[tuple[torch.Tensor, torch.Tensor]], classnames: Sequence[str]) -> EvalResult:
    """Run `logits_fn` over (inputs, labels) batches and score the arg-max."""
    predictions, labels = [], []
    for inputs, batch_labels in batches:
        predictions.append(logits_fn(inputs).argmax(dim=-1).cpu())
        labels.append(batch_labels.cpu())
    if not predictions:
        return EvalResult(0.0, {}, 0)
    return accuracy_from_predictions(torch.cat(predictions), torch.cat(labels), classnames)


class _TestImages(Dataset):
    """(eval-preprocessed image, label, index) of each item; decoded in loader workers when asked."""

    def __init__(self, items: Sequence[ImageItem], preprocess: Callable) -> None:
        self.items, self.preprocess = items, preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        item = self.items[index]
        return self.preprocess(load_image(item.path)), item.label, index


@torch.no_grad()
def score_split(predictor: "Predictor", items: Sequence[ImageItem], accelerator: "Accelerator | None" = None, batch_size: int = 32, workers: int = 0) -> dict[str, Any]:
    """Accuracy, per-class accuracy, the confusion matrix (rows: true class) and the first
    misclassified images with what they were taken for, over every image of `items` exactly once.

    With an `accelerator` of several processes, each process scores its share of the loader and
    every process returns the metrics of the whole split (rows put back in item order)."""
    names = predictor.classnames
    loader = DataLoader(_TestImages(items, predictor.backbone.preprocess_eval), batch_size=batch_size, num_workers=workers)
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader)
    columns: list[list[torch.Tensor]] = [[], [], [], [], []]  # predicted, probability, label, index, true-class log-probability
    for images, labels, indices in loader:
        log_probs = predictor.logits(images).float().log_softmax(-1)
        top = log_probs.exp().max(dim=-1)
        labels = labels.to(top.indices.device)
        rows = (top.indices, top.values, labels, indices.to(top.indices.device), log_probs.gather(1, labels.long()[:, None])[:, 0])
        if accelerator is not None:
            rows = accelerator.gather_for_metrics(rows)
        for column, values in zip(columns, rows):
            column.append(values.cpu())
    if columns[0]:
        predicted, probability, labels, indices, true_log_prob = (torch.cat(column) for column in columns)
        order = indices.argsort()
        predicted, probability, labels, true_log_prob = predicted[order], probability[order], labels[order].long(), true_log_prob[order]
    else:
        predicted, probability, labels, true_log_prob = torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0)
    result = accuracy_from_predictions(predicted, labels, names)
    confusion = torch.zeros(len(names), len(names), dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    wrong = (predicted != labels).nonzero().flatten().tolist()[:MAX_MISCLASSIFIED]
    misclassified = [
        {"path": str(items[i].path), "label": names[int(labels[i])], "predicted": names[int(predicted[i])], "probability": float(probability[i])}
        for i in wrong
    ]
    loss = float(-true_log_prob.mean()) if len(true_log_prob) else float("nan")
    return {"accuracy": result.accuracy, "loss": loss, "per_class": result.per_class, "test_images": result.count, "confusion": confusion.tolist(), "misclassified": misclassified}


def metrics_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline metrics (events, bundles, sweep tables); the details stay in metrics.json."""
    return {k: v for k, v in metrics.items() if k not in DETAIL_KEYS}
