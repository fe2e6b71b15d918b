"""One resolver for a run: from a `RunConfig` (and, once read, its data) to every setting it will
train with, the way the trainer does it. The trainer, the app's form and plan line, the sweep's
dry run and the benchmarks all call `resolve_run`, so what they show is what runs.

It imports no accelerate and reads no image: resolving is cheap enough to run on every form change.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from specpl.bands import resolve_decomposer
from specpl.config import DEFAULT_TEMPLATE, DecomposerConfig, RunConfig, canonical_preset
from specpl.data import FewShotData
from specpl.factory import resolve_method_options
from specpl.sources import value_sources
from specpl.training_plan import hold_out_validation, resolved_training


@dataclass(frozen=True)
class ResolvedRun:
    """What a run trains with. `training`'s epochs and batch size stay ``auto`` until the number of
    training images is known (`data` given); `data` is then the run's data with its validation
    images held out of training where the preset selects on validation."""

    preset: str
    options: dict[str, dict[str, Any]]  # every component's full options, as written to config.json
    training: dict[str, Any]
    template: str
    sources: dict[str, str]  # where each value of a paper run comes from (`specpl.sources`)
    data: FewShotData | None = None

    def record(self) -> dict[str, Any]:
        """The resolved settings as JSON-ready values (what `specpl sweep --dry-run` prints)."""
        record = {k: v for k, v in dataclasses.asdict(self).items() if k != "data"}
        if self.data is not None:
            record["train_images"] = len(self.data.train)
        return record


def resolve_run(config: RunConfig, data: FewShotData | None = None) -> ResolvedRun:
    """Every setting of `config`: the method's options (bad ones fail here, before anything is
    written), the training settings (for `data`'s training images once the validation images are
    held out), the template (the dataset's unless the run chose one) and each paper value's source."""
    options = resolve_method_options(config.method)
    training = resolved_training(config)
    if data is not None:
        if training["select"] == "val" and not data.val:  # validation comes out of the training images
            kept, held = hold_out_validation(data.train, config.data.seed)
            data = dataclasses.replace(data, train=kept, val=held)
        training = resolved_training(config, len(data.train))
    return ResolvedRun(
        preset=canonical_preset(config.method.preset),
        options=options,
        training=training,
        template=run_template(config, data),
        sources=value_sources(config.method, config.train, config.data.dataset),
        data=data,
    )


def run_template(config: RunConfig, data: FewShotData | None) -> str:
    """The run's template: one it chose wins; else the dataset's hand-crafted one; else the default."""
    if data is not None and data.template and config.template == DEFAULT_TEMPLATE:
        return data.template
    return config.template


def run_decomposer(config: RunConfig, image_size: int) -> tuple[DecomposerConfig, str]:
    """The run's concrete decomposer (``auto`` resolved, the image size the backbone's unless set)
    and why it was chosen."""
    decomposer = dataclasses.replace(config.decomposer, image_size=config.decomposer.image_size or image_size)
    return resolve_decomposer(decomposer)
