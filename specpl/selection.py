"""Model selection on validation: the best epoch (the initial state included) is the one exported.

A short run on a few images can end worse than it started, or worse than zero-shot CLIP. The
trainer scores zero-shot CLIP and the initial state on the validation images before training, then
every epoch, keeps a copy of the best state and restores it at the end. Best is the higher
validation accuracy; equal accuracies (common with a few validation images near the ceiling) are
told apart by the lower validation cross-entropy, and only an exact tie goes to the later epoch.
`verdict` says in one sentence how the kept model compares with zero-shot.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

BASE_NEW_NOTE = "Validation holds only the training (base) classes, so keeping the best epoch on it cannot protect new-class accuracy."


@dataclass
class Selection:
    """Validation accuracy per epoch (0: the initial state) and the best state so far."""

    val_images: int
    zero_shot: float
    scores: dict[int, float] = field(default_factory=dict)
    losses: dict[int, float] = field(default_factory=dict)  # validation cross-entropy per epoch
    best_epoch: int = -1
    best_state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def best_accuracy(self) -> float:
        return self.scores[self.best_epoch]

    def offer(self, epoch: int, accuracy: float, state: dict[str, torch.Tensor], loss: float = 0.0) -> bool:
        """Record an epoch's accuracy and cross-entropy; keep its state when it is at least as good
        as the best (exact ties go to the later epoch). True when it became the best."""
        self.scores[epoch], self.losses[epoch] = accuracy, loss
        if self.best_epoch >= 0 and (accuracy, -loss) < (self.best_accuracy, -self.losses[self.best_epoch]):
            return False
        self.best_epoch = epoch
        self.best_state = {k: v.detach().clone() for k, v in state.items()}
        return True

    def to_record(self) -> dict[str, Any]:
        """What a checkpoint keeps besides the best state's tensors."""
        return {
            "val_images": self.val_images, "zero_shot": self.zero_shot, "best_epoch": self.best_epoch,
            "scores": {str(k): v for k, v in self.scores.items()}, "losses": {str(k): v for k, v in self.losses.items()},
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], best_state: dict[str, torch.Tensor]) -> "Selection":
        scores = {int(k): float(v) for k, v in record["scores"].items()}
        losses = {int(k): float(v) for k, v in record["losses"].items()}
        return cls(int(record["val_images"]), float(record["zero_shot"]), scores, losses, int(record["best_epoch"]), best_state)

    def summary(self, epochs: int) -> dict[str, Any]:
        """The metrics.json entry: zero-shot and per-epoch validation accuracy and the kept epoch."""
        return {
            "split": "val",
            "val_images": self.val_images,
            "zero_shot_val": self.zero_shot,
            "initial_val": self.scores.get(0),
            "per_epoch_val": [self.scores.get(e) for e in range(1, epochs + 1)],
            "per_epoch_val_loss": [self.losses.get(e) for e in range(1, epochs + 1)],
            "best_epoch": self.best_epoch,
            "best_val": self.best_accuracy,
            "gain_over_zero_shot_val": self.best_accuracy - self.zero_shot,
        }


def verdict(selection: Selection | None, epochs: int, select: str, zero_shot_val: float | None = None, final_val: float | None = None) -> str:
    """One plain sentence on what was kept and how it compares with zero-shot on validation."""
    if selection is None:
        if select == "last" and zero_shot_val is not None and final_val is not None:
            side = "above" if final_val > zero_shot_val else "below" if final_val < zero_shot_val else "level with"
            return f"The last epoch is kept (paper preset); it is {side} zero-shot CLIP on validation ({final_val:.1f}% against {zero_shot_val:.1f}%)."
        if select == "last":
            return "The last epoch is kept (paper preset); there is no validation split to compare it with zero-shot CLIP."
        return "No validation images could be held out (a class has fewer than 2 training images), so the last epoch is kept unchecked against zero-shot CLIP."
    best, zero = selection.best_accuracy, selection.zero_shot
    if selection.best_epoch == 0:
        return (f"Training never improved on the initial prompts on validation ({best:.1f}%; zero-shot CLIP {zero:.1f}%), "
                "so the exported model is the initial state.")
    if best < zero:
        return f"The kept model (epoch {selection.best_epoch} of {epochs}) ends below zero-shot CLIP on validation: {best:.1f}% against {zero:.1f}%."
    return f"The kept model (epoch {selection.best_epoch} of {epochs}) scores {best:.1f}% on validation, {best - zero:+.1f} points over zero-shot CLIP ({zero:.1f}%)."
