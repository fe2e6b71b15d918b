"""What the UI shows about a run, computed from its job record and the trainer's ``events.jsonl``."""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from app.jobs import RunRecord
from specpl.events import read_events

MAX_CURVE_POINTS = 400  # per loss term; longer runs are thinned evenly


@dataclass
class RunProgress:
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    epochs: int = 0
    eta_s: float | None = None
    images_per_s: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    curve: list[dict[str, Any]] = field(default_factory=list)  # rows: step, term, loss

    @property
    def fraction(self) -> float:
        return self.step / self.total_steps if self.total_steps else 0.0


def read_progress(run_dir: Path) -> RunProgress:
    progress = RunProgress()
    for event in read_events(run_dir / "events.jsonl"):
        kind = event.get("type")
        if kind == "step":
            progress.step, progress.total_steps = event["step"], event["total_steps"]
            progress.epoch, progress.epochs = event["epoch"], event["epochs"]
            progress.eta_s, progress.images_per_s = event.get("eta_s"), event.get("images_per_s")
            progress.curve.append({"step": event["step"], "term": "total", "loss": event["loss"]})
            progress.curve += [{"step": event["step"], "term": term, "loss": value} for term, value in event.get("losses", {}).items()]
        elif kind == "resumed":
            progress.step = event.get("global_step", progress.step)
        elif kind == "eval":
            progress.metrics = {k: v for k, v in event.items() if k not in ("type", "time")}
    return progress


def loss_frame(progress: RunProgress) -> pd.DataFrame:
    frame = pd.DataFrame(progress.curve, columns=["step", "term", "loss"])
    if frame.empty:
        return frame
    steps = frame["step"].unique()
    if len(steps) > MAX_CURVE_POINTS:
        keep = set(steps[:: math.ceil(len(steps) / MAX_CURVE_POINTS)]) | {steps[-1]}
        frame = frame[frame["step"].isin(keep)]
    return frame


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def status_line(record: RunRecord, progress: RunProgress, queue_position: int | None) -> str:
    """One plain line: state, and what the user can expect next."""
    if record.status == "queued":
        return f"Queued: position {queue_position or 1} in line; it starts when the training ahead of it ends."
    if record.status == "running":
        if record.stop_requested_at:
            return "Stopping: saving a checkpoint, then the process ends."
        if not progress.total_steps:
            return "Running: loading the backbone and reading the data…"
        return (
            f"Running: step {progress.step}/{progress.total_steps}, epoch {progress.epoch}/{progress.epochs}, "
            f"ETA {format_duration(progress.eta_s)}, {progress.images_per_s or 0:.0f} images/s."
        )
    if record.status == "finished":
        accuracy = progress.metrics.get("accuracy")
        return "Finished" + (f": test accuracy {accuracy:.1f}%." if accuracy is not None else ".")
    return f"{record.status.capitalize()}" + (f": {record.cause}" if record.cause else ".")


def progress_html(record: RunRecord | None, progress: RunProgress | None, queue_position: int | None) -> str:
    """A progress bar and the status line, as HTML (escaped; causes may quote user file names)."""
    if record is None or progress is None:
        return "<div class='specpl-status'>No run yet. Upload a dataset and press Start.</div>"
    percent = 100.0 if record.status == "finished" else 100.0 * progress.fraction
    return (
        f"<div class='specpl-status' data-status='{record.status}'>"
        f"<div class='specpl-bar' style='background:#e5e7eb;border-radius:6px;height:14px;overflow:hidden'>"
        f"<div class='specpl-fill' style='width:{percent:.1f}%;height:100%;background:#6366f1'></div></div>"
        f"<p><b>{html.escape(record.name)}</b> <code>{record.run_id}</code></p>"
        f"<p class='specpl-line'>{html.escape(status_line(record, progress, queue_position))}</p></div>"
    )
