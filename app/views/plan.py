"""The training plan the main form shows beside its Epochs box, once a dataset is loaded: the epochs,
batch size and steps the run will train with, from how many training images, and how many images
per class are held out for validation, all as the trainer will resolve them
(`specpl.training_plan`), from the dataset's per-class counts (known since the upload, so nothing
is decoded again).
"""

from __future__ import annotations

from dataclasses import dataclass

from specpl.config import RunConfig
from specpl.data import base_new_split
from specpl.training_plan import epoch_steps, resolved_training, validation_size


@dataclass(frozen=True)
class TrainingPlan:
    preset: str
    epochs: int
    batch_size: int
    steps: int
    train_images: int  # after the validation images are held out
    held_out: tuple[int, ...]  # validation images per class (empty: nothing is held out)
    select: str  # "val": validation chooses the kept epoch (specpl.selection); "last": the last epoch
    base_only: bool  # a base-to-new run: validation holds only the base classes

    def line(self) -> str:
        preset = "" if self.preset == "default" else f" ({self.preset} preset)"
        head = (
            f"Training plan{preset}: {_count(self.epochs, 'epoch')} of batch {self.batch_size} "
            f"({_count(self.steps, 'step')}) "
            f"from {_count(self.train_images, 'training image')}"
        )
        low, high = (min(self.held_out), max(self.held_out)) if self.held_out else (0, 0)
        if not high:
            held = "nothing held out for validation"
            if self.select == "val":
                return (
                    f"{head}; {held} (a class needs 2 training images to give one), "
                    "so the last epoch is kept unchecked."
                )
        else:
            held = f"{low if low == high else f'{low}–{high}'} per class held out for validation"
            if self.base_only:
                held += " (base classes only, so choosing the kept epoch on it cannot protect new-class accuracy)"
        kept = "epoch kept by validation" if self.select == "val" else "last epoch kept"
        return f"{head}; {held}; {kept}."


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def training_counts(counts: dict[str, tuple[int, int]], has_splits: bool, split_ratio: float) -> list[int]:
    """Training images per class before the shots cap, from a dataset summary's (train, test)
    counts: as they are for a ``train/``/``test/`` tree, else the class's images split by
    `split_ratio` as `specpl.data.read_fewshot_folder` splits them."""
    if has_splits:
        return [train for train, _ in counts.values()]
    totals = [train + test for train, test in counts.values()]
    return [max(1, round(total * split_ratio)) if total > 1 else total for total in totals]


def training_plan(config: RunConfig, per_class: list[int]) -> TrainingPlan:
    """What the trainer will do with `config` on classes of `per_class` training images (before the
    shots cap and the base/new subsample, which are `config.data`'s)."""
    if config.data.subsample in ("base", "new"):
        keep = base_new_split(len(per_class))[0 if config.data.subsample == "base" else 1]
        per_class = [per_class[i] for i in keep]
    shots = config.data.shots
    per_class = [min(shots, n) if shots else n for n in per_class]
    select = resolved_training(config)["select"]
    held_out = tuple(validation_size(n) for n in per_class) if select == "val" else ()
    images = sum(per_class) - sum(held_out)
    train = resolved_training(config, images)
    epochs, batch = int(train["epochs"]), int(train["batch_size"])
    steps = max(
        1, epochs * epoch_steps(images, batch, bool(train["drop_last"]), grad_accum=config.train.grad_accum_steps)[0]
    )
    return TrainingPlan(
        config.method.preset,
        epochs,
        batch,
        steps,
        images,
        held_out if any(held_out) else (),
        select,
        config.data.subsample == "base",
    )
