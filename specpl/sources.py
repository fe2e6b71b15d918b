"""Where each value of a ``paper`` run comes from: the released code's file (and line where one
line sets it), a paper's section, or, where nothing was published, a sentence starting "ours:".

A component declares its sources next to its presets (`Component.sources`, a booster's
`host_sources` for its per-host values, a host's `variant_sources` for a ``paper-<source>``
variant); the training settings every host shares come from Dassl, the toolbox all the released
code trains with (`TRAINING_SOURCES`). A value the run was given explicitly says so. The sources
apply in the order the values do (`specpl.methods.preset_values`): the last layer to set a value
names its source. `specpl methods --preset paper` prints them and a run writes them to its
config.json; tests/test_sources.py checks that every value of every method has one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from specpl.config import MethodConfig, TrainConfig, base_preset, canonical_preset
from specpl.factory import DATASET_TRAIN, host_preset_names
from specpl.methods import BOOSTERS, HOSTS
from specpl.methods.sourcing import DASSL_CROP

DASSL = "KaiyangZhou/Dassl.pytorch"
ENGINEERING = "ours: an engineering setting that changes no result"
TRAINING_SOURCES: dict[str, str] = {
    "weight_decay": f"{DASSL} dassl/config/defaults.py (OPTIM.WEIGHT_DECAY 5e-4)",
    "momentum": f"{DASSL} dassl/config/defaults.py (OPTIM.MOMENTUM 0.9)",
    "warmup_epochs": "the hosts' released configs (OPTIM.WARMUP_EPOCH 1, WARMUP_TYPE constant)",
    "warmup_lr": "the hosts' released configs (OPTIM.WARMUP_CONS_LR 1e-5)",
    "grad_accum_steps": "ours: 1, one optimizer step a batch as in the released code",
    "seed": "the papers average seeds 1, 2 and 3 (the released scripts' SEED loop)",
    "precision": "ours: fp32 on a CPU, bf16 autocast on a GPU with an fp32 logit scale; the released code casts "
    "CLIP to fp16, which this library never does",
    "augment": f"{DASSL} dassl/data/transforms/transforms.py (random_resized_crop, random_flip)",
    "crop_scale": DASSL_CROP,
    "schedule": f"{DASSL} dassl/optim/lr_scheduler.py (cosine stepped per epoch after the warm-up)",
    "drop_last": f"{DASSL} dassl/data/data_manager.py (the training loader drops the last partial batch)",
    "select": "the released test scripts load the last epoch (LOADEP = MAX_EPOCH)",
    "max_cached_views": "ours: None draws a fresh view every epoch, as Dassl does",
    "cache_features": ENGINEERING,
    "eval_every_epochs": "ours: scoring validation during training reports only; paper keeps the last epoch",
    "checkpoint_every_epochs": ENGINEERING,
    "num_workers": ENGINEERING,
    "compile": ENGINEERING,
}
GIVEN = "given: set explicitly for this run"


def value_sources(method: MethodConfig, train: TrainConfig | None = None, dataset: str | None = None) -> dict[str, str]:
    """The source of every option of `method`'s components ("<component>.<option>") and every
    training setting ("train.<key>") under its preset, for a run on `dataset`; empty unless the
    preset is ``paper`` or a variant of it. Values set in `method.options` or `train` are ``GIVEN``."""
    preset = canonical_preset(method.preset)
    if base_preset(preset) != "paper":
        return {}
    host = HOSTS.get(method.host)
    boosters = [BOOSTERS.get(name) for name in method.boosters]
    variants = host_preset_names(method)[1:]  # the paper variants the host runs in
    layers: list[dict[str, str]] = [{f"train.{key}": source for key, source in TRAINING_SOURCES.items()}]
    layers.append(_keyed(host))
    layers += [host.variant_sources.get(variant, {}) for variant in variants]
    for booster in boosters:
        layers += [_keyed(booster), booster.host_sources.get(method.host, {})]
    sources: dict[str, str] = {}
    for layer in layers:
        sources.update({key: source for key, source in layer.items() if not key.startswith(DATASET_TRAIN)})
        if dataset is not None:
            prefix = f"{DATASET_TRAIN}{dataset}."
            sources.update(
                {f"train.{key[len(prefix) :]}": source for key, source in layer.items() if key.startswith(prefix)}
            )
    for name, options in method.options.items():
        sources.update({f"{name}.{key}": GIVEN for key in options})
    if train is not None:
        sources.update({f"train.{f.name}": GIVEN for f in dataclasses.fields(train) if _given(train, f)})
    return dict(sorted(sources.items()))


def _keyed(component: type) -> dict[str, str]:
    """`component.sources` keyed as the run's values are: an option under its component's name."""
    return {
        (key if key.startswith(("train.", DATASET_TRAIN)) else f"{component.name}.{key}"): source
        for key, source in component.sources.items()
    }


def _given(train: TrainConfig, field: dataclasses.Field) -> bool:
    """Whether `train` sets `field` to something other than its dataclass default."""
    default: Any = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    return getattr(train, field.name) != default
