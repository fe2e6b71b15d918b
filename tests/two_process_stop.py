"""Launched by tests/test_data_parallel.py in two processes (torch.distributed.run, gloo on the
CPU): train CoOp where only rank 1 is asked to stop, at its third step. Stopping must be agreed
through accelerate's trigger, or rank 0 waits forever in the next gradient all-reduce.

usage: python two_process_stop.py DATA RUN_DIR OUT
Each process writes OUT/stop-rank<k>.json with its status and the step it stopped at.
"""

from __future__ import annotations

import json
import sys
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


if __name__ == "__main__":
    data, run_dir, out = map(Path, sys.argv[1:])
    rank = PartialState(cpu=True).process_index
    checks, steps, stopped_at = [0], [], []

    def asked() -> bool:
        checks[0] += 1
        return rank == 1 and checks[0] >= ASKED_AT_CHECK

    def record(event: dict) -> None:
        if event["type"] == "step":
            steps.append(event["step"])
        elif event["type"] == "status" and event.get("status") == "cancelled":
            stopped_at.append(event["step"])

    result = Trainer(config(data), run_dir, callback=record, should_stop=asked, progress_bar=False).fit()
    Path(out, f"stop-rank{rank}.json").write_text(
        json.dumps({"status": result.status, "checks": checks[0], "stopped_at": stopped_at})
    )
    sys.exit(0)
