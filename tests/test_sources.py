"""Every value of the paper preset names its source (#21): each option of every host and booster,
each training setting, and each dataset's own schedule."""

from __future__ import annotations

import dataclasses

import pytest

from specpl.config import DataConfig, MethodConfig, RunConfig, TrainConfig
from specpl.factory import DATASET_TRAIN, describe_methods, resolve_method_options
from specpl.methods import BOOSTERS, HOSTS
from specpl.sources import GIVEN, value_sources
from specpl.training_plan import resolved_training

DATASETS = (
    "imagenet",
    "caltech101",
    "oxford_pets",
    "stanford_cars",
    "oxford_flowers",
    "food101",
    "fgvc_aircraft",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
)
STACKS = [(host, []) for host in HOSTS.names()] + [
    (host, [row["name"]]) for row in describe_methods() if row["kind"] == "booster" for host in row["hosts"]
]


@pytest.mark.parametrize(("host", "boosters"), STACKS, ids=["+".join([h, *b]) for h, b in STACKS])
def test_every_paper_value_has_a_source(host: str, boosters: list[str]) -> None:
    method = MethodConfig(host=host, boosters=boosters, preset="paper")
    options = resolve_method_options(method)
    for dataset in (None, "imagenet"):
        sources = value_sources(method, dataset=dataset)
        keys = {f"{name}.{key}" for name, opts in options.items() for key in opts}
        keys |= {f"train.{f.name}" for f in dataclasses.fields(TrainConfig)}
        missing = sorted(key for key in keys if not sources.get(key, "").strip())
        assert not missing, f"{host}+{boosters} on {dataset}: no source for {missing}"


def test_sources_name_real_options_only() -> None:
    """A source for an option that does not exist is a stale entry."""
    train = {f.name for f in dataclasses.fields(TrainConfig)}
    for registry in (HOSTS, BOOSTERS):
        for name in registry.names():
            component = registry.get(name)
            options = {f.name for f in dataclasses.fields(component.config_class)}
            for key in component.sources:
                target, _, option = key.partition(".")
                if target == "train" or target.startswith(DATASET_TRAIN):
                    assert option in train, f"{name}.sources[{key!r}]: no training setting {option!r}"
                else:
                    assert key in options, f"{name}.sources[{key!r}]: {name} has no option {key!r}"


def test_a_dataset_schedule_names_its_own_source_and_explicit_values_say_given() -> None:
    coop = MethodConfig(host="coop", preset="paper")
    assert "vit_b16_ep50_ctxv1" in value_sources(coop, dataset="imagenet")["train.epochs"]
    assert "vit_b16_ctxv1.yaml" in value_sources(coop, dataset="dtd")["train.epochs"]
    given = value_sources(
        MethodConfig(host="coop", preset="paper", options={"coop": {"n_ctx": 8}}), TrainConfig(epochs=3)
    )
    assert given["coop.n_ctx"] == given["train.epochs"] == GIVEN
    assert value_sources(MethodConfig(host="coop")) == {}  # the default preset is ours: docs/defaults.md


def test_the_paper_schedules_per_dataset() -> None:
    """ImageNet's published schedules differ; the other datasets keep each host's (#21 row 3)."""

    def plan(host: str, boosters: list[str], dataset: str, preset: str = "paper") -> tuple[int, int]:
        train = resolved_training(
            RunConfig(
                method=MethodConfig(host=host, boosters=boosters, preset=preset), data=DataConfig(dataset=dataset)
            )
        )
        return train["epochs"], train["batch_size"]

    assert [plan("coop", [], d) for d in ("imagenet", "dtd")] == [(50, 32), (200, 32)]  # vit_b16_ctxv1
    assert [plan("coop", [], d, "paper-specpl") for d in ("imagenet", "dtd")] == [(10, 32), (100, 32)]
    assert [plan("coop", ["specpl"], d) for d in ("imagenet", "dtd")] == [(10, 32), (100, 32)]  # SpecPL's CoOp
    assert [plan("mmrl", [], d) for d in ("imagenet", "eurosat")] == [(5, 32), (10, 4)]
    assert {plan("maple", [], d) for d in DATASETS} == {(5, 4)}


def test_coop_paper_is_the_published_ctxv1_row_and_specpl_runs_its_own_coop() -> None:
    def coop(preset: str, boosters: list[str] = []) -> tuple[int, str]:  # noqa: B006
        options = resolve_method_options(MethodConfig(host="coop", boosters=boosters, preset=preset))["coop"]
        return options["n_ctx"], options["ctx_init"]

    assert coop("paper") == (4, "a photo of a")
    assert coop("paper-specpl") == coop("paper", ["specpl"]) == (16, "")


def test_names_say_what_a_row_is() -> None:
    """Our variants, reconstructions and unpublished stacks say so wherever results appear (#21 item 4)."""
    from specpl.factory import method_label

    def label(host: str, boosters: list[str], preset: str = "default", **options: dict) -> str:
        return method_label(MethodConfig(host=host, boosters=boosters, preset=preset, options=options))

    assert label("maple", ["specpl"]) == "MaPLe + SpecPL"
    assert label("coop", ["specpl"], specpl={"refine_novel": False}) == "CoOp + SpecPL (new classes unrefined, ours)"
    assert (
        label("maple", ["dapt"]) == "MaPLe + DAPT-G (per-head GradCAM, ours)"
        and label("maple", ["dapt"], "paper") == "MaPLe + DAPT-G"
    )
    assert label("ivlp", ["specpl"]) == "IVLP + SpecPL (unpublished combination)"
    assert label("maple", ["caspl", "specpl"]).endswith("(unpublished combination)")  # no paper stacks two boosters
    assert label("maple", ["isp"]).startswith("MaPLe + ISP (sample probing, reconstructed)")
    assert label("maple", ["isp"], "paper").startswith("MaPLe + ISP (reconstructed)")
