"""Run in each of two processes by tests/two_process_checks.py: train CoOp where only rank 1 is
asked to stop, at its third step. Stopping must be agreed through accelerate's trigger, or rank 0
waits forever in the next gradient all-reduce. Each process writes OUT/stop-rank<k>.json with its
status and the step it stopped at.
"""

from __future__ import annotations

import json
from pathlib import Path

from accelerate import PartialState

from specpl.config import BackboneConfig, DataConfig, MethodConfig, RunConfig, TrainConfig
from specpl.trainer import Trainer

ASKED_AT_CHECK = 3


def config(data: Path) -> RunConfig:
    return RunConfig(
        backbone=BackboneConfig(name="specpl-tiny", pretrained=None),
        method=MethodConfig(host="coop", options={"coop": {"n_ctx": 4}}),
        data=DataConfig(root=str(data), shots=4),
        train=TrainConfig(epochs=4, batch_size=2, augment="none"),
    )


def run(data: Path, run_dir: Path, out: Path) -> None:
    rank = PartialState(cpu=True).process_index
    checks, stopped_at = [0], []

    def asked() -> bool:
        checks[0] += 1
        return rank == 1 and checks[0] >= ASKED_AT_CHECK

    def record(event: dict) -> None:
        if event["type"] == "status" and event.get("status") == "cancelled":
            stopped_at.append(event["step"])

    result = Trainer(config(data), run_dir, callback=record, should_stop=asked, progress_bar=False).fit()
    Path(out, f"stop-rank{rank}.json").write_text(
        json.dumps({"status": result.status, "checks": checks[0], "stopped_at": stopped_at})
    )
