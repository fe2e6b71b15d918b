"""`specpl sweep`: the cell plan, the resumable cell store (fake runners, a simulated kill), the
comparison table against the published numbers, the cross-dataset and domain-generalisation
protocols (fake runners, then real tiny runs on fixture datasets in the real layouts), one real
tiny base-to-new run, and Ray on a local CPU cluster."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
from conftest import make_image_folder

from specpl.config import RunConfig
from specpl.datasets import BASE_TO_NEW, DOMAIN_TARGETS
from specpl.datasets.published import COLUMNS, published_base_new
from specpl.evaluate import aggregate_base_new
from specpl.registry import UnknownNameError
from specpl.sweep import Cell, CellStore, DatasetChoice, add_sweep_arguments, plan_cells, render_table, run_sweep


def sweep_args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_sweep_arguments(parser)
    defaults = [
        "--datasets",
        "dtd",
        "eurosat",
        "--methods",
        "coop",
        "coop+specpl",
        "--seeds",
        "1",
        "2",
        "--data-root",
        str(tmp_path / "DATA"),
        "--out",
        str(tmp_path / "sweep"),
    ]
    return parser.parse_args(defaults + list(extra))


class FakeRunner:
    """Records the cells it runs; base = 70 + seed, new = 60 + seed (+5 with a booster)."""

    def __init__(self, fail_on: str | None = None, interrupt_at: int | None = None) -> None:
        self.calls: list[str] = []
        self.fail_on, self.interrupt_at = fail_on, interrupt_at

    def __call__(self, config: RunConfig, run_dir: Path) -> dict[str, float]:
        key = "/".join(run_dir.parts[-4:-1])
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt  # what killing the sweep does to the cell in progress
        self.calls.append(key)
        if key == self.fail_on:
            raise ValueError("out of memory")
        bonus = 5.0 * len(config.method.boosters)
        return {
            "base": 70.0 + config.data.seed + bonus,
            "new": 60.0 + config.data.seed,
            "hm": 0.0,
            "accuracy": 50.0 + config.data.seed,
        }


ALL_CELLS = [f"{d}/{m}/seed{s}" for d in ("dtd", "eurosat") for m in ("coop", "coop+specpl") for s in (1, 2)]


def test_every_cell_runs_once_with_its_config_and_is_recorded(tmp_path, capsys):
    runner = FakeRunner()
    configs = []
    assert (
        run_sweep(
            sweep_args(tmp_path), runner=lambda config, run_dir: (configs.append(config), runner(config, run_dir))[1]
        )
        == 0
    )
    assert runner.calls == ALL_CELLS
    dtd = configs[0]
    assert (dtd.data.dataset, dtd.data.root, dtd.data.subsample, dtd.data.shots, dtd.data.seed) == (
        "dtd",
        str(tmp_path / "DATA"),
        "base",
        16,
        1,
    )
    assert (
        dtd.train.seed == 1
        and dtd.template == "{} texture."
        and configs[-1].template == "a centered satellite photo of {}."
    )
    assert (configs[2].method.host, configs[2].method.boosters) == ("coop", ["specpl"])
    record = json.loads(
        (tmp_path / "sweep" / "cells" / "eurosat" / "coop+specpl" / "seed2" / "metrics.json").read_text()
    )
    assert record == {
        "dataset": "eurosat",
        "method": "coop+specpl",
        "seed": 2,
        "metrics": {"base": 77.0, "new": 62.0, "hm": 0.0, "accuracy": 52.0},
    }
    table = (tmp_path / "sweep" / "RESULTS.md").read_text()
    assert table in capsys.readouterr().out
    # coop on DTD: mean base 71.5 vs published 79.44; new 61.5 vs 41.18; HM of the means vs the published HM
    assert "| dtd | 2/2 | 71.50 (79.44, -7.94) | 61.50 (41.18, +20.32) | 66.12 (54.24, +11.88) |" in table
    # the average row compares with the published numbers of the same two datasets
    published = aggregate_base_new([published_base_new("coop", "dtd"), published_base_new("coop", "eurosat")])
    assert f"| **Average** (2 datasets) | | 71.50 ({published['base']:.2f}, {71.5 - published['base']:+.2f}) |" in table
    assert "## coop+specpl" in table and "| dtd | 2/2 | 76.50 | 61.50 | 68.18 |" in table  # nothing published for it


def test_the_base_config_carries_into_every_cell(tmp_path):
    base = RunConfig()
    base.method.preset, base.method.options = "reference", {"coop": {"n_ctx": 4}, "specpl": {"lambda_gcf": 0.2}}
    base.train.lr = 0.01
    (tmp_path / "base.json").write_text(json.dumps(base.to_dict()))
    cells = plan_cells(sweep_args(tmp_path, "--config", str(tmp_path / "base.json"), "--seeds", "1"))
    coop, booster = cells[0].config, cells[1].config
    assert (coop.method.preset, coop.method.options, coop.train.lr) == (
        "paper",
        {"coop": {"n_ctx": 4}},
        0.01,
    )  # only its own options
    assert booster.method.options == base.method.options
    # the tables compare with published numbers, so a sweep trains the paper preset unless told otherwise
    assert plan_cells(sweep_args(tmp_path, "--seeds", "1"))[0].config.method.preset == "paper"
    assert plan_cells(sweep_args(tmp_path, "--seeds", "1", "--preset", "default"))[0].config.method.preset == "default"


def test_a_killed_sweep_continues_where_it_stopped(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep_args(tmp_path), runner=FakeRunner(interrupt_at=3))
    store = tmp_path / "sweep" / "cells"
    assert {p.parent.relative_to(store).as_posix() for p in store.rglob("metrics.json")} == set(ALL_CELLS[:3])
    half_written = store / ALL_CELLS[3] / ".metrics.json.abc123.tmp"  # a record the kill cut short
    half_written.parent.mkdir(parents=True, exist_ok=True)
    half_written.write_text('{"dataset": "dt')
    runner = FakeRunner()
    assert run_sweep(sweep_args(tmp_path), runner=runner) == 0
    assert runner.calls == ALL_CELLS[3:]
    rerun = FakeRunner()
    assert run_sweep(sweep_args(tmp_path), runner=rerun) == 0 and rerun.calls == []


def test_a_failed_cell_is_reported_and_retried_next_time(tmp_path, capsys):
    assert run_sweep(sweep_args(tmp_path), runner=FakeRunner(fail_on="eurosat/coop/seed1")) == 1
    output = capsys.readouterr()
    assert "failed: eurosat/coop/seed1: ValueError: out of memory" in output.err
    assert "| eurosat | 1/2 |" in output.out
    runner = FakeRunner()
    assert run_sweep(sweep_args(tmp_path), runner=runner) == 0 and runner.calls == ["eurosat/coop/seed1"]


def test_fewshot_protocol_reports_accuracy(tmp_path):
    assert run_sweep(sweep_args(tmp_path, "--protocol", "fewshot", "--shots", "4"), runner=FakeRunner()) == 0
    table = (tmp_path / "sweep" / "RESULTS.md").read_text()
    assert table.startswith("# Sweep results (fewshot, 4 shots, seeds 1, 2)")
    assert "| dtd | 2/2 | 51.50 |" in table and "| **Average** (2 datasets) | | 51.50 |" in table


def test_average_only_numbers_compare_when_all_eleven_datasets_ran(tmp_path):
    store = CellStore(tmp_path)
    cells = [Cell(DatasetChoice(name, "", name), "mmrl", 1, RunConfig()) for name in BASE_TO_NEW]
    for cell in cells:
        store.save(cell, {"base": 85.68, "new": 77.16})
    table = render_table(cells, store, "base2new", 16)
    assert (
        "| **Average** (11 datasets) | | 85.68 (85.68, +0.00) | 77.16 (77.16, +0.00) | 81.20 (81.20, +0.00) |" in table
    )
    partial = render_table(cells[:2], store, "base2new", 16)
    assert (
        "| **Average** (2 datasets) | | 85.68 | 77.16 | 81.20 |" in partial
        and "compared only once all 11 datasets have run" in partial
    )


def test_transcribed_numbers_reproduce_the_published_averages():
    averages = {
        "zeroshot": (69.34, 74.22, 71.70),
        "coop": (82.69, 63.22, 71.66),
        "cocoop": (80.47, 71.69, 75.83),
        "maple": (82.28, 75.14, 78.55),
        "promptsrc": (84.26, 76.10, 79.97),
        "coop+caspl": (84.78, 74.49, 79.30),
        "cocoop+caspl": (83.63, 78.12, 80.78),
        "maple+caspl": (84.48, 79.59, 81.96),
        "promptsrc+caspl": (86.11, 79.54, 82.69),
    }
    assert set(averages) == set(COLUMNS)
    for method, expected in averages.items():
        row = aggregate_base_new(published_base_new(method, d) for d in BASE_TO_NEW)
        assert (row["base"], row["new"], row["hm"]) == pytest.approx(expected, abs=0.015), method


@pytest.mark.parametrize(
    "extra, error, message",
    [
        (["--methods", "coop+nothing"], UnknownNameError, "unknown booster 'nothing'"),
        (["--datasets", "imagenet_a"], ValueError, "test-only ImageNet variant"),
        (["--datasets", "cifar"], UnknownNameError, "unknown dataset 'cifar'"),
        (["--datasets", "folder=/a/birds", "split_json=/b/birds.json"], ValueError, "two datasets share a name"),
    ],
)
def test_bad_plans_fail_before_anything_runs(tmp_path, extra, error, message):
    with pytest.raises(error, match=message):
        run_sweep(sweep_args(tmp_path, *extra), runner=FakeRunner())
    assert not (tmp_path / "sweep").exists()


def test_a_user_folder_gets_its_own_root_and_label(tmp_path):
    cells = plan_cells(
        sweep_args(tmp_path, "--datasets", "folder=/data/my_birds", "oxford_pets", "--methods", "coop", "--seeds", "3")
    )
    assert [(c.key, c.config.data.root, c.config.template) for c in cells] == [
        ("my_birds/coop/seed3", "/data/my_birds", "a photo of a {}."),
        ("oxford_pets/coop/seed3", str(tmp_path / "DATA"), "a photo of a {}, a type of pet."),
    ]


def test_one_real_tiny_sweep_trains_and_then_skips(tmp_path):
    tree = make_image_folder(tmp_path / "shapes", {"red": 4, "green": 4, "blue": 4, "grey": 4}, size=16)
    args = sweep_args(
        tmp_path,
        "--datasets",
        f"folder={tree}",
        "--methods",
        "coop",
        "--seeds",
        "1",
        "--shots",
        "2",
        "--backbone",
        "specpl-tiny",
        "--pretrained",
        "none",
        "--epochs",
        "1",
        "--batch-size",
        "4",
    )
    run_dir = tmp_path / "sweep" / "cells" / "shapes" / "coop" / "seed1" / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "STOP").touch()  # the run stops at its first step, as a killed one would, leaving a checkpoint
    assert run_sweep(args) == 1 and (run_dir / "checkpoint").is_dir()
    assert not (run_dir.parent / "metrics.json").exists()
    assert run_sweep(args) == 0  # the cell resumes from its checkpoint and finishes
    assert [e["type"] for e in map(json.loads, (run_dir / "events.jsonl").read_text().splitlines())].count(
        "resumed"
    ) == 1
    record = json.loads((run_dir.parent / "metrics.json").read_text())["metrics"]
    assert set(record) >= {"base", "new", "hm", "accuracy"} and record["base"] == record["accuracy"]
    assert (run_dir / "model").is_dir()
    runner = FakeRunner()
    assert run_sweep(args, runner=runner) == 0 and runner.calls == []
    assert f"| shapes | 1/1 | {record['base']:.2f} |" in (tmp_path / "sweep" / "RESULTS.md").read_text()


try:
    import ray
except ImportError:  # the optional extra: pip install specpl[ray]
    ray = None


def crash_on_dtd_seed2(config: RunConfig, run_dir: Path) -> dict[str, float]:
    """A Ray cell runner whose worker process dies on one cell, as a killed machine would."""
    if run_dir.parts[-4:-1] == ("dtd", "coop", "seed2"):
        os._exit(1)
    return FakeRunner()(config, run_dir)


@pytest.mark.skipif(ray is None, reason="needs the optional Ray extra (pip install specpl[ray])")
def test_ray_runs_cells_on_a_local_cpu_cluster_and_resumes_after_a_kill(tmp_path):
    tests_dir = str(Path(__file__).parent)  # the workers import this module for the runner
    ray.init(
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        runtime_env={
            "env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")]))}
        },
    )
    try:
        args = sweep_args(tmp_path, "--methods", "coop", "--ray", "--gpus-per-cell", "0")
        assert run_sweep(args, runner=crash_on_dtd_seed2) == 1
        cells = tmp_path / "sweep" / "cells"
        finished = {p.parent.relative_to(cells).as_posix(): p.stat().st_mtime_ns for p in cells.rglob("metrics.json")}
        assert sorted(finished) == ["dtd/coop/seed1", "eurosat/coop/seed1", "eurosat/coop/seed2"]
        assert run_sweep(args, runner=FakeRunner()) == 0  # resumed on Ray: only the killed cell runs again
        after = {p.parent.relative_to(cells).as_posix(): p.stat().st_mtime_ns for p in cells.rglob("metrics.json")}
        assert after == {**finished, "dtd/coop/seed2": after["dtd/coop/seed2"]}
    finally:
        ray.shutdown()


# --- the transfer protocols: cross-dataset and domain generalisation --------------------------


def parse(tmp_path: Path, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_sweep_arguments(parser)
    return parser.parse_args(["--data-root", str(tmp_path / "DATA"), "--out", str(tmp_path / "sweep"), *argv])


def transfer_args(tmp_path: Path, protocol: str, *extra: str) -> argparse.Namespace:
    return parse(tmp_path, "--protocol", protocol, "--methods", "coop", "coop+specpl", "--seeds", "1", "2", *extra)


TARGET_ORDER = [*BASE_TO_NEW, *DOMAIN_TARGETS]


class FakeEvaluator:
    """Records each (cell, target) evaluation; accuracy = 30 + the target's place in TARGET_ORDER + seed."""

    def __init__(self, interrupt_at: int | None = None, accuracy: dict[str, float] | None = None) -> None:
        self.calls: list[str] = []
        self.interrupt_at, self.accuracy = interrupt_at, accuracy

    def __call__(self, run_dir: Path, target: DatasetChoice, config: RunConfig) -> dict[str, float]:
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        self.calls.append("/".join(run_dir.parts[-4:-1]) + ">" + target.label)
        if self.accuracy is not None:
            return {"accuracy": self.accuracy[target.name]}
        return {"accuracy": 30.0 + TARGET_ORDER.index(target.name) + config.data.seed, "test_images": 10}


TRANSFER_CELLS = [f"imagenet/{m}/seed{s}" for m in ("coop", "coop+specpl") for s in (1, 2)]


def test_cross_dataset_trains_once_per_method_and_seed_and_evaluates_every_other_dataset(tmp_path, capsys):
    runner, evaluator, configs = FakeRunner(), FakeEvaluator(), []
    code = run_sweep(
        transfer_args(tmp_path, "cross-dataset"),
        runner=lambda c, d: (configs.append(c), runner(c, d))[1],
        evaluator=evaluator,
    )
    assert code == 0 and runner.calls == TRANSFER_CELLS
    assert {(c.data.dataset, c.data.subsample, c.data.shots, c.template) for c in configs} == {
        ("imagenet", "all", 16, "a photo of a {}.")
    }
    others = [name for name in BASE_TO_NEW if name != "imagenet"]
    assert len(others) == 10 and evaluator.calls == [f"{cell}>{target}" for cell in TRANSFER_CELLS for target in others]
    record = json.loads(
        (tmp_path / "sweep" / "cells" / "imagenet" / "coop" / "seed2" / "targets" / "dtd.json").read_text()
    )
    assert record == {
        "source": "imagenet",
        "target": "dtd",
        "method": "coop",
        "seed": 2,
        "metrics": {"accuracy": 40.0, "test_images": 10},
    }
    table = (tmp_path / "sweep" / "RESULTS.md").read_text()
    assert table in capsys.readouterr().out
    assert "| Method | Seeds | imagenet (source) | " + " | ".join(others) + " | Average |" in table
    # source: the mean of 51 and 52; the target at place i (1..10) of TARGET_ORDER: 30 + i + 1.5; their average 37.00
    assert "| coop | 2/2 | 51.50 | " + " | ".join(f"{31.5 + i:.2f}" for i in range(1, 11)) + " | 37.00 |" in table
    assert "The method specs publish no cross-dataset numbers for these methods." in table


def test_a_killed_transfer_sweep_evaluates_only_the_missing_targets(tmp_path):
    args = transfer_args(tmp_path, "domain-generalisation")
    with pytest.raises(KeyboardInterrupt):
        run_sweep(args, runner=FakeRunner(), evaluator=FakeEvaluator(interrupt_at=3))
    targets = tmp_path / "sweep" / "cells" / "imagenet" / "coop" / "seed1" / "targets"
    assert sorted(p.stem for p in targets.iterdir()) == ["imagenet_a", "imagenet_sketch", "imagenetv2"]
    runner, evaluator = FakeRunner(), FakeEvaluator()
    assert run_sweep(args, runner=runner, evaluator=evaluator) == 0
    assert runner.calls == TRANSFER_CELLS[1:]  # the first cell had trained: it is not trained again
    assert evaluator.calls[0] == "imagenet/coop/seed1>imagenet_r" and len(evaluator.calls) == 1 + 3 * 4
    rerun, reevaluated = FakeRunner(), FakeEvaluator()
    assert run_sweep(args, runner=rerun, evaluator=reevaluated) == 0 and rerun.calls == reevaluated.calls == []


def test_domain_generalisation_table_compares_with_the_published_numbers(tmp_path):
    evaluator = FakeEvaluator(
        accuracy={"imagenetv2": 64.0, "imagenet_sketch": 50.0, "imagenet_a": 51.0, "imagenet_r": 79.0}
    )
    args = parse(
        tmp_path, "--protocol", "domain-generalisation", "--methods", "mmrl", "promptsrc", "coop", "--seeds", "1", "2"
    )
    assert run_sweep(args, runner=FakeRunner(), evaluator=evaluator) == 0
    table = (tmp_path / "sweep" / "RESULTS.md").read_text()
    assert (
        "| Method | Seeds | imagenet (source) | imagenetv2 | imagenet_sketch | imagenet_a | imagenet_r | Average |"
        in table
    )
    # MMRL (docs/methods/mmrl.md): IN 72.03, V2 64.47, S 49.17, A 51.20, R 77.53; their average 60.59;
    # ours (64 + 50 + 51 + 79) / 4 = 61
    assert (
        "| mmrl | 2/2 | 51.50 (72.03, -20.53) | 64.00 (64.47, -0.47) | 50.00 (49.17, +0.83) | 51.00 (51.20, -0.20) "
        "| 79.00 (77.53, +1.47) | 61.00 (60.59, +0.41) |" in table
    )
    # CasPL publishes PromptSRC's ImageNet accuracy and an average over V2, Sketch and R only (63.90)
    assert "| promptsrc | 2/2 | 51.50 (71.27, -19.77) | 64.00 | 50.00 | 51.00 | 79.00 | 61.00 |" in table
    assert (
        "over imagenetv2, imagenet_sketch, imagenet_r only: 63.90; ours over the same targets: 64.33 (63.90, +0.43)."
        in table
    )
    assert "| coop | 2/2 | 51.50 | 64.00 | 50.00 | 51.00 | 79.00 | 61.00 |" in table


def test_partly_evaluated_targets_are_marked(tmp_path):
    args = transfer_args(tmp_path, "domain-generalisation", "--methods", "coop")
    with pytest.raises(KeyboardInterrupt):
        run_sweep(args, runner=FakeRunner(), evaluator=FakeEvaluator(interrupt_at=5))  # seed 2 stops after imagenetv2
    table = render_table(plan_cells(args), CellStore(tmp_path / "sweep"), "domain-generalisation", 16)
    # the variants are places 11..14 of TARGET_ORDER: seed 1 gives 42, 43, 44, 45 and seed 2 only 43 on imagenetv2
    assert "| coop | 2/2 | 51.50 | 42.50 | 43.00 [1/2] | 44.00 [1/2] | 45.00 [1/2] | 43.62 |" in table


def test_transfer_protocols_share_trained_cells_and_a_base_to_new_out_is_refused(tmp_path):
    fewshot = parse(tmp_path, "--protocol", "fewshot", "--datasets", "imagenet", "--methods", "coop", "--seeds", "1")
    assert run_sweep(fewshot, runner=FakeRunner()) == 0
    runner = FakeRunner()
    cross = parse(tmp_path, "--protocol", "cross-dataset", "--methods", "coop", "--seeds", "1", "--targets", "dtd")
    assert (
        run_sweep(cross, runner=runner, evaluator=FakeEvaluator()) == 0 and runner.calls == []
    )  # the same model: not trained again
    base_to_new = argparse.Namespace(**{**vars(sweep_args(tmp_path)), "out": str(tmp_path / "b2n")})
    assert run_sweep(base_to_new, runner=FakeRunner()) == 0
    with pytest.raises(
        ValueError,
        match=(
            r"b2n holds a base2new sweep \(16 shots, trained on base classes, paper preset\); "
            r"this cross-dataset sweep trains on all classes"
        ),
    ):
        run_sweep(
            argparse.Namespace(**{**vars(cross), "out": base_to_new.out}),
            runner=FakeRunner(),
            evaluator=FakeEvaluator(),
        )


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--protocol", "cross-dataset", "--datasets", "dtd"],
            "trains on --source \\(default imagenet\\) and evaluates on --targets",
        ),
        (["--protocol", "cross-dataset", "--source", "imagenet_a"], "imagenet_a is a test-only ImageNet variant"),
        (["--protocol", "domain-generalisation", "--targets", "imagenet_a", "imagenet"], "imagenet is the source"),
        (
            ["--protocol", "domain-generalisation", "--targets", "imagenet_a", "imagenet_a"],
            "two datasets share a name in --targets",
        ),
        (
            ["--protocol", "fewshot", "--datasets", "dtd", "--targets", "eurosat"],
            "--source and --targets belong to the cross-dataset and domain-generalisation protocols",
        ),
        (["--protocol", "base2new"], "--protocol base2new needs --datasets"),
    ],
)
def test_bad_transfer_plans_fail_before_anything_runs(tmp_path, argv, message):
    with pytest.raises(ValueError, match=message):
        run_sweep(parse(tmp_path, "--methods", "coop", *argv), runner=FakeRunner(), evaluator=FakeEvaluator())
    assert not (tmp_path / "sweep").exists()


def test_real_transfer_runs_score_one_model_with_each_targets_names_and_template(tmp_path, monkeypatch):
    """Zero-shot CLIP as the cell (nothing to train, so fast and deterministic): each target's
    record must equal zero-shot CLIP scored directly with that target's class names and template;
    ImageNet-A and -R classify among only the classes they hold."""
    from test_datasets import IMAGENET_NAMES, write_dataset

    from specpl.backbone import load_backbone
    from specpl.config import BackboneConfig, DataConfig
    from specpl.datasets import read_dataset
    from specpl.inference import Predictor, score_split

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the few-shot sample cache
    data = tmp_path / "DATA"
    for name in ("imagenet", "dtd", "eurosat", *DOMAIN_TARGETS):
        write_dataset(data, name)
    tiny = [
        "--methods",
        "zeroshot",
        "--seeds",
        "1",
        "--shots",
        "2",
        "--backbone",
        "specpl-tiny",
        "--pretrained",
        "none",
    ]
    assert run_sweep(parse(tmp_path, "--protocol", "domain-generalisation", *tiny)) == 0

    def no_training(config: RunConfig, run_dir: Path) -> dict[str, float]:
        raise AssertionError(f"{run_dir} has trained already")

    assert (
        run_sweep(
            parse(tmp_path, "--protocol", "cross-dataset", "--targets", "dtd", "eurosat", *tiny), runner=no_training
        )
        == 0
    )
    cell = tmp_path / "sweep" / "cells" / "imagenet" / "zeroshot" / "seed1"
    backbone = load_backbone(BackboneConfig(name="specpl-tiny", pretrained=None))
    scored = {}
    for name in ("dtd", "eurosat", *DOMAIN_TARGETS):
        target = read_dataset(DataConfig(root=str(data), dataset=name, shots=None))
        scored[name] = json.loads((cell / "targets" / f"{name}.json").read_text())["metrics"]
        expected = score_split(Predictor.zero_shot(backbone, target.classnames, target.template), target.test)
        assert scored[name] == json.loads(json.dumps(expected)), name
    plain = read_dataset(DataConfig(root=str(data), dataset="dtd", shots=None))
    assert (
        score_split(Predictor.zero_shot(backbone, plain.classnames, "a photo of a {}."), plain.test)["confusion"]
        != scored["dtd"]["confusion"]
    )
    assert (
        set(scored["imagenet_a"]["per_class"]) == {IMAGENET_NAMES[1], IMAGENET_NAMES[3]}
        and scored["imagenet_a"]["test_images"] == 4
    )
    assert len(scored["imagenet_r"]["confusion"]) == 3 and scored["dtd"]["test_images"] == 10
    assert "| zeroshot | 1/1 |" in (tmp_path / "sweep" / "RESULTS.md").read_text()


def test_a_dry_run_resolves_every_datasets_paper_schedule_with_no_extra_flags(tmp_path, capsys):
    """Synthetic CoOp layouts of the 11 datasets: ImageNet gets its own published schedule, the
    others the host's, and every value names a source; nothing is trained (#21 item 1)."""
    from test_datasets import write_dataset

    for name in BASE_TO_NEW:
        write_dataset(tmp_path / "DATA", name)
    args = sweep_args(
        tmp_path, "--datasets", *BASE_TO_NEW, "--methods", "coop", "coop+specpl", "mmrl", "--seeds", "1", "--dry-run"
    )
    assert run_sweep(args, runner=FakeRunner()) == 0
    cells = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    schedule = {
        (c["dataset"], c["cell"].split("/")[1]): (c["training"]["epochs"], c["training"]["batch_size"]) for c in cells
    }
    assert len(cells) == 33 and not (tmp_path / "sweep").exists()
    assert schedule["imagenet", "coop"] == (50, 32) and schedule["dtd", "coop"] == (200, 32)
    assert schedule["imagenet", "coop+specpl"] == (10, 32) and schedule["eurosat", "coop+specpl"] == (100, 32)
    assert schedule["imagenet", "mmrl"] == (5, 32) and schedule["ucf101", "mmrl"] == (10, 4)
    assert all(c["preset"] == "paper" and c["train_images"] > 0 and c["sources"]["train.epochs"] for c in cells)
    assert (
        "vit_b16_ep50_ctxv1"
        in next(c for c in cells if c["cell"].startswith("imagenet/coop/"))["sources"]["train.epochs"]
    )
