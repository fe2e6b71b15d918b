"""What a run trains with: the preset's training settings, the step budget derived from the data,
and the validation images held out for model selection.

Two presets (`specpl.config.PRESETS`):
- ``default``, the product's, chosen by measurement (``specpl bench defaults``, bench/DEFAULTS.md):
  open_clip's mild crop (scale 0.9-1), a cosine stepped per step, epochs and batch size derived
  from the number of training images so the optimizer gets enough steps (`step_budget`), and the
  epoch kept chosen on validation (`specpl.selection`: the last, unless an earlier one, the
  initial state included, is clearly better);
- ``paper``, the published papers' and released code's: Dassl's random resized crop (scale
  0.08-1) and flip, a cosine stepped per epoch, each host's published epochs and batch size, and
  the last epoch kept.
Explicit values always win; a host or booster preset's ``train`` values come next.
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import TYPE_CHECKING, Any

from specpl.config import base_preset
from specpl.data import ImageItem
from specpl.factory import preset_values
from specpl.methods import HOSTS

if TYPE_CHECKING:
    from specpl.config import RunConfig

AUTO = "auto"
PRESET_TRAINING: dict[str, dict[str, Any]] = {
    "default": {
        "augment": "clip",
        "schedule": "step",
        "drop_last": True,
        "select": "val",
        "epochs": AUTO,
        "batch_size": AUTO,
    },
    "paper": {"augment": "dassl", "crop_scale": 0.08, "schedule": "epoch", "drop_last": True, "select": "last"},
}
# The default budget: at least MIN_STEPS_PER_EPOCH steps an epoch (batch cut to fit) and about
# TARGET_STEPS steps in all, within [MIN_EPOCHS, MAX_EPOCHS] epochs (bench/DEFAULTS.md measures them).
TARGET_STEPS = 300
MIN_STEPS_PER_EPOCH = 4
MIN_EPOCHS, MAX_EPOCHS = 5, 100
MAX_VAL_PER_CLASS = 4


def step_budget(train_images: int, host_batch: int, epochs: Any = AUTO, batch_size: Any = AUTO) -> tuple[int, int]:
    """(epochs, batch size) for `train_images` images: a value given as a number is kept; ``auto``
    derives it. The batch is the host's published one, cut so an epoch has at least
    `MIN_STEPS_PER_EPOCH` steps; the epochs give about `TARGET_STEPS` steps, at least `MIN_EPOCHS`
    (so validation has epochs to choose from) and at most `MAX_EPOCHS`."""
    n = max(1, train_images)
    batch = int(batch_size) if batch_size != AUTO else max(1, min(int(host_batch), n // MIN_STEPS_PER_EPOCH))
    if epochs != AUTO:
        return int(epochs), batch
    steps_per_epoch = max(1, n // batch)
    return min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(TARGET_STEPS / steps_per_epoch))), batch


def epoch_steps(
    images: int, batch_size: int, drop_last: bool, processes: int = 1, grad_accum: int = 1
) -> tuple[int, bool]:
    """(optimizer steps an epoch, whether the last partial batch is dropped) for `images` training
    images: the drop applies only when a whole round of batches fits; accelerate shards whole
    batches over `processes`, and with the drop an uneven last round is dropped too."""
    drop = drop_last and images >= batch_size * processes
    batches = images // batch_size if drop else math.ceil(images / batch_size)
    per_process = batches // processes if drop else math.ceil(batches / processes)
    return math.ceil(per_process / max(1, grad_accum)), drop


def resolved_training(config: "RunConfig", train_images: int | None = None) -> dict[str, Any]:
    """The run's training settings: explicit values, else the preset's component values, else the
    preset's training (`PRESET_TRAINING`) and the host's published schedule, in the preset's order;
    a dataset's own published schedule (``train@<dataset>`` in a preset) wins over the general one
    (``default`` derives epochs and batch size from `train_images`; ``auto`` stays when it is None)."""
    preset = base_preset(config.method.preset)
    host = HOSTS.get(config.method.host).training_defaults
    ours = PRESET_TRAINING[preset]
    given = preset_values(config.method, config.data.dataset).get("train", {})
    layers = [given, *((ours, host) if preset == "default" else (host, ours))]
    train = dataclasses.asdict(config.train)
    for key, value in train.items():
        if value is None:
            train[key] = next((layer[key] for layer in layers if key in layer), None)
    if train["crop_scale"] is None:
        train["crop_scale"] = host.get("crop_scale", PRESET_TRAINING["paper"]["crop_scale"])
    if AUTO in (train["epochs"], train["batch_size"]) and train_images is not None:
        train["epochs"], train["batch_size"] = step_budget(
            train_images, host.get("batch_size", 32), train["epochs"], train["batch_size"]
        )
    return train


def validation_size(images: int) -> int:
    """Validation images held out of a class's `images` training images: a quarter, at least one
    from two images on and at most `MAX_VAL_PER_CLASS` (16 shots: 4; 8: 2; 4: 1; 2: 1; 1: none)."""
    if images < 2:
        return 0
    return min(MAX_VAL_PER_CLASS, max(1, images // 4))


def hold_out_validation(train: list[ImageItem], seed: int) -> tuple[list[ImageItem], list[ImageItem]]:
    """(train, val): `validation_size` images of each class moved from `train` to validation, drawn
    with `seed`; unlabeled images (label -1) stay in train. Validation is never the test split."""
    by_label: dict[int, list[ImageItem]] = {}
    for item in train:
        by_label.setdefault(item.label, []).append(item)
    held: set[ImageItem] = set()
    rng = random.Random(f"validation:{seed}")
    for label, items in sorted(by_label.items()):
        if label >= 0:
            held.update(rng.sample(items, validation_size(len(items))))
    return [item for item in train if item not in held], [item for item in train if item in held]
