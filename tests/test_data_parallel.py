"""Data parallel within a cell, on two CPU processes (gloo) started by `accelerate launch`: each
process fills only its share of the feature cache and ends up holding all of it, and a
cross-dataset cell trained and scored by two processes gives the metrics of one, every test image
counted once (the sharded loader pads the last round by repeating images); a stop asked of one
process stops both at the same step."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import accelerate_launch, make_image_folder
from test_datasets import write_dataset, write_split_file_dataset
from two_process_cell import fill_cache
from two_process_stop import ASKED_AT_CHECK
from two_process_stop import config as stop_config

from specpl.cli import main
from specpl.config import RunConfig
from specpl.events import read_events
from specpl.trainer import Trainer

TESTS = Path(__file__).parent


def checkout_path() -> str:
    """PYTHONPATH for the launched processes: this checkout, whether or not it is installed."""
    return os.pathsep.join(filter(None, [str(TESTS.parent), os.environ.get("PYTHONPATH")]))


@pytest.fixture(scope="module")
def launched(tmp_path_factory, cifar_root) -> SimpleNamespace:
    """One `accelerate launch` of both checks (`two_process_checks.py`): the processes start once."""
    root = tmp_path_factory.mktemp("two-processes")
    data = root / "DATA"
    write_dataset(data, "imagenet")  # 5 classes: 2 shots each to train on, 10 test images
    write_split_file_dataset(
        data, "dtd", per_split={"train": 2, "val": 1, "test": 7}
    )  # 35 test images: over one batch of 32
    make_image_folder(root / "seven", {"x": 7}, size=8)
    config = RunConfig()
    config.train.augment, config.method.options = "none", {"coop": {"n_ctx": 4}}
    (root / "base.json").write_text(json.dumps(config.to_dict()))
    sweep = [
        "sweep",
        "--protocol",
        "cross-dataset",
        "--targets",
        "dtd",
        "--methods",
        "coop",
        "--seeds",
        "1",
        "--shots",
        "2",
        "--epochs",
        "2",
        "--data-root",
        str(data),
        "--backbone",
        "specpl-tiny",
        "--pretrained",
        "none",
        "--config",
        str(root / "base.json"),
    ]
    # the cell: two processes of batch 4 make the updates of one of batch 8 (CoOp's loss is a per-sample mean)
    images, stop_run = root / "seven" / "x", root / "stop-run"
    launch = accelerate_launch(
        str(TESTS / "two_process_checks.py"), str(root), str(images), str(cifar_root), str(stop_run)
    )
    cache = root / "cache"  # the few-shot sample cache, shared with the one-process sweep of the test
    done = subprocess.run(
        [*launch, *sweep, "--out", str(root / "two"), "--batch-size", "4"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
        env={**os.environ, "PYTHONPATH": checkout_path(), "XDG_CACHE_HOME": str(cache)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return SimpleNamespace(root=root, sweep=sweep, images=sorted(images.iterdir()), cache=cache, stop_run=stop_run)


def test_two_processes_share_the_cache_fill_and_score_each_image_once(launched, monkeypatch):
    root, images = launched.root, launched.images
    monkeypatch.setenv("XDG_CACHE_HOME", str(launched.cache))
    assert main([*launched.sweep, "--out", str(root / "one"), "--batch-size", "8"]) == 0

    # the cache: 7 images split 4 + 3, the shorter share padded with its last image; all 7 held by both
    names = [path.name for path in images]
    ranks = [json.loads((root / f"cache-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["computed"] == names[:4] and ranks[1]["computed"] == names[4:] + names[6:]
    alone = fill_cache(images, None)
    assert alone["computed"] == names
    for rank in ranks:
        assert (
            rank["values"] == rank["again"] == alone["values"] and rank["entries"] == 7 and rank["computed_again"] == []
        )

    # the cell: the same source metrics and the same target metrics, each image scored once
    cell = Path("cells") / "imagenet" / "coop" / "seed1"
    source = [json.loads((root / out / cell / "run" / "metrics.json").read_text()) for out in ("one", "two")]
    target = [json.loads((root / out / cell / "targets" / "dtd.json").read_text())["metrics"] for out in ("one", "two")]
    assert source[0]["test_images"] == source[1]["test_images"] == 10
    assert source[0]["accuracy"] == source[1]["accuracy"] and source[0]["confusion"] == source[1]["confusion"]
    assert target[0]["test_images"] == target[1]["test_images"] == 35 and sum(map(sum, target[1]["confusion"])) == 35
    # DDP averages the two halves' gradients in another order than one batch sums them: equal up to rounding
    details = [[(m["path"], m["label"], m["predicted"]) for m in t.pop("misclassified")] for t in target]
    losses = [t.pop("loss") for t in target]  # the cross-entropy is a float mean: equal up to rounding too
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert (
        target[0] == target[1]
        and details[0] == details[1]
        and len(details[0]) == 35 - round(target[0]["accuracy"] * 35 / 100)
    )


def test_a_stop_seen_by_one_process_stops_both_at_the_same_step_and_resumes(launched, cifar_root):
    """Only rank 1 is asked to stop (at its third check): through accelerate's trigger both stop
    before the same step, the checkpoint holds that step, and a resumed run finishes from it."""
    root, run = launched.root, launched.stop_run
    ranks = [json.loads((root / f"stop-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["status"] for r in ranks] == ["cancelled", "cancelled"]
    assert ranks[0]["checks"] == ranks[1]["checks"] == ASKED_AT_CHECK  # rank 0 never asked, stopped at the same check
    assert ranks[0]["stopped_at"] == ranks[1]["stopped_at"] == [ASKED_AT_CHECK - 1]  # two steps done
    counters = json.loads((run / "checkpoint" / "trainer_state.json").read_text())["counters"]
    assert counters["global_step"] == ASKED_AT_CHECK - 1
    statuses = [e["status"] for e in read_events(run / "events.jsonl") if e["type"] == "status"]
    assert statuses == ["running", "cancelled"]  # one writer, not a line per process

    resumed = Trainer(stop_config(cifar_root), run, progress_bar=False).fit(resume=True)
    assert resumed.status == "finished"
    steps = [e["step"] for e in read_events(run / "events.jsonl") if e["type"] == "step"]
    assert steps[:2] == [1, 2] and steps[2] == ASKED_AT_CHECK and steps == sorted(steps)  # continued, never repeated
