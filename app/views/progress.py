"""What the UI shows about a run, computed from its job record and the trainer's ``events.jsonl``,
and the run's config and metrics as its folder holds them."""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from app.runtime.jobs import RunRecord
from app.runtime.worker import REQUEST_FILE
from specpl import defaults
from specpl.events import read_events
from specpl.selection import BASE_NEW_NOTE

MAX_CURVE_POINTS = 400  # per loss term; longer runs are thinned evenly
SERIES_COLOURS = (
    "#4c78a8",
    "#f58518",
    "#e45756",
    "#72b7b2",
    "#54a24b",
    "#eeca3b",
    "#b279a2",
    "#ff9da6",
    "#9d755d",
    "#bab0ac",
)
CHANCE_MARGIN = 5.0  # accuracy points above chance that still count as "learned nothing"


@dataclass
class RunProgress:
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    epochs: int = 0
    eta_s: float | None = None
    images_per_s: float | None = None
    classes: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    curve: list[dict[str, Any]] = field(default_factory=list)  # rows: step, term, loss
    val: list[dict[str, Any]] = field(default_factory=list)  # rows: epoch (0: before training), step, accuracy, split
    zero_shot_val: float | None = None  # zero-shot CLIP's validation accuracy (the epoch-0 event's)
    lr: list[dict[str, Any]] = field(default_factory=list)  # rows: step, lr
    decomposer: dict[str, Any] | None = None  # {"name", "reason"}: the band teacher used, and why
    compiled: dict[str, Any] | None = None  # {"compiled", "reason"}

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
            progress.curve += [
                {"step": event["step"], "term": term, "loss": value} for term, value in event.get("losses", {}).items()
            ]
            if event.get("lr") is not None:
                progress.lr.append({"step": event["step"], "lr": event["lr"]})
        elif kind == "val":
            progress.val.append(
                {
                    "epoch": event["epoch"],
                    "step": event.get("step", 0),
                    "accuracy": event["accuracy"],
                    "split": event.get("split", "val"),
                }
            )
            if event.get("zero_shot") is not None:
                progress.zero_shot_val = float(event["zero_shot"])
        elif kind == "decomposer":
            progress.decomposer = {"name": event.get("name"), "reason": event.get("reason")}
        elif kind == "compile":
            progress.compiled = {"compiled": event.get("compiled"), "reason": event.get("reason")}
        elif kind == "resumed":  # the old speed no longer holds: no ETA until the first new step
            progress.step = event.get("global_step", progress.step)
            progress.eta_s = progress.images_per_s = None
        elif kind == "status" and event.get("status") == "running":
            progress.eta_s = progress.images_per_s = None
        elif kind == "data":
            progress.classes = int(event.get("classes") or 0)
        elif kind == "eval":
            progress.metrics = {k: v for k, v in event.items() if k not in ("type", "time")}
    return progress


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """A trained run's request, or an imported bundle's config."""
    for path, key in ((run_dir / REQUEST_FILE, "config"), (run_dir / "model" / "config.json", None)):
        if path.is_file():
            raw = json.loads(path.read_text(encoding="utf-8"))
            return raw[key] if key else raw
    return {}


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """metrics.json of a trained run; an imported bundle carries its metrics in its config."""
    if (run_dir / "metrics.json").is_file():
        return json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    bundle_config = run_dir / "model" / "config.json"
    return json.loads(bundle_config.read_text(encoding="utf-8")).get("metrics", {}) if bundle_config.is_file() else {}


def typed_frame(rows: list[dict[str, Any]], types: dict[str, str], thin_by: str | None = None) -> pd.DataFrame:
    """A curve with fixed column types, empty or not: the plot takes its axis types from the first
    frame it gets, and an untyped empty frame made both axes categorical for good. Long curves are
    thinned evenly over `thin_by` (the last point kept) to `MAX_CURVE_POINTS`."""
    frame = pd.DataFrame(rows, columns=list(types)).astype(types)
    if frame.empty or thin_by is None:
        return frame
    steps = frame[thin_by].unique()
    if len(steps) > MAX_CURVE_POINTS:
        keep = set(steps[:: math.ceil(len(steps) / MAX_CURVE_POINTS)]) | {steps[-1]}
        frame = frame[frame[thin_by].isin(keep)]
    return frame


def loss_frame(progress: RunProgress) -> pd.DataFrame:
    return typed_frame(progress.curve, {"step": "int64", "term": "str", "loss": "float64"}, thin_by="step")


VAL_SERIES, ZERO_SHOT_SERIES, OLD_TEST_SERIES = "validation", "zero-shot", "test (older run)"
VAL_COLOURS = {VAL_SERIES: SERIES_COLOURS[0], ZERO_SHOT_SERIES: "#9d9d9d", OLD_TEST_SERIES: SERIES_COLOURS[1]}
VAL_TYPES = {"epoch": "int64", "step": "int64", "accuracy": "float64", "series": "str"}


def val_frame(progress: RunProgress) -> pd.DataFrame:
    """Validation accuracy per epoch (epoch 0: the initial state, before training) as the
    "validation" series, and zero-shot CLIP's validation accuracy as a constant "zero-shot" series
    over the same epochs, for reference. Runs written before validation was held out scored the
    test split: their points are the "test (older run)" series."""
    rows = [
        {
            **{k: row[k] for k in ("epoch", "step", "accuracy")},
            "series": VAL_SERIES if row.get("split", "val") == "val" else OLD_TEST_SERIES,
        }
        for row in progress.val
    ]
    if progress.zero_shot_val is not None and rows:
        steps = {row["epoch"]: row["step"] for row in rows}
        rows += [
            {"epoch": epoch, "step": step, "accuracy": progress.zero_shot_val, "series": ZERO_SHOT_SERIES}
            for epoch, step in sorted(steps.items())
        ]
    return typed_frame(rows, VAL_TYPES)


def validation_only(frame: pd.DataFrame) -> pd.DataFrame:
    """The run's own accuracy per epoch (no zero-shot reference), as the compare view overlays it."""
    return frame[frame["series"] != ZERO_SHOT_SERIES]


def lr_frame(progress: RunProgress) -> pd.DataFrame:
    return typed_frame(progress.lr, {"step": "int64", "lr": "float64"}, thin_by="step")


def series_colours(frame: pd.DataFrame, column: str = "term") -> dict[str, str]:
    """A fixed colour per series, "total" first, sent with every frame as the plot's `color_map`, so
    that a series keeps its colour from frame to frame (how the plot draws a new series:
    `app.views.widgets.plot`)."""
    names = sorted(frame[column].unique(), key=lambda name: (name != "total", name)) if not frame.empty else []
    return {name: SERIES_COLOURS[index % len(SERIES_COLOURS)] for index, name in enumerate(names)}


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def chance_note(accuracy: float, classes: int, backbone: dict[str, Any] | None) -> str:
    """A warning when `accuracy` (percent) is within `CHANCE_MARGIN` points of guessing among
    `classes`, with the likeliest reason for the run's backbone; "" otherwise."""
    if classes < 2 or accuracy > 100.0 / classes + CHANCE_MARGIN:
        return ""
    name = (backbone or {}).get("name")
    if name == defaults.WORLD_MODEL:
        why = (
            "the embedded SpectralWorld CLIP knows only SpectralWorld images, "
            "so on other images it has nothing to go on; use a pretrained CLIP for photos"
        )
    elif backbone is not None and not backbone.get("pretrained"):
        why = f"the {name} backbone is randomly initialised, not pretrained"
    else:
        why = "the backbone cannot tell these classes apart from so few images, or the training was too short"
    return (
        f" ⚠️ This is within {CHANCE_MARGIN:.0f} points of chance ({100.0 / classes:.0f}% for {classes} classes): "
        f"the model has learned almost nothing, probably because {why}."
    )


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_base_new(metrics: dict[str, Any]) -> bool:
    return all(_number(metrics.get(key)) for key in ("base", "new", "hm"))


def result_text(metrics: dict[str, Any]) -> str:
    """A finished run's test result beside zero-shot CLIP's on the same test images and the gain in
    points (on the HM for a base-to-new run), e.g. "test accuracy 91.0% (zero-shot CLIP 89.0%, +2.0
    points)"; zero-shot is left out when the run did not score it (the paper preset)."""
    zero = metrics.get("zero_shot") if isinstance(metrics.get("zero_shot"), dict) else {}
    gain = metrics.get("gain_over_zero_shot")
    if is_base_new(metrics):
        text = f"base {metrics['base']:.1f}%, new {metrics['new']:.1f}%, HM {metrics['hm']:.1f}% on the test split"
        if all(_number(zero.get(key)) for key in ("base", "new", "hm")):
            text += f" (zero-shot CLIP: base {zero['base']:.1f}%, new {zero['new']:.1f}%, HM {zero['hm']:.1f}%" + (
                f"; HM {gain:+.1f} points)" if _number(gain) else ")"
            )
        return text
    text = f"test accuracy {metrics['accuracy']:.1f}%"
    if _number(zero.get("accuracy")):
        text += f" (zero-shot CLIP {zero['accuracy']:.1f}%" + (f", {gain:+.1f} points)" if _number(gain) else ")")
    return text


def verdict_text(metrics: dict[str, Any]) -> str:
    """The trainer's verdict sentence (how the kept model compares with zero-shot on validation) and,
    for a base-to-new run, why selection cannot guard the new classes; each after a space."""
    verdict = metrics.get("verdict")
    text = f" {verdict}" if isinstance(verdict, str) and verdict else ""
    return text + (f" {BASE_NEW_NOTE}" if is_base_new(metrics) else "")


def status_line(
    record: RunRecord, progress: RunProgress, queue_position: int | None, backbone: dict[str, Any] | None = None
) -> str:
    """One plain line: state, and what the user can expect next; `backbone` (the run's backbone
    config) names the likely reason for a near-chance result."""
    if record.status == "queued":
        return f"Queued: position {queue_position or 1} in line; it starts when the training ahead of it ends."
    if record.status == "running":
        if record.stop_requested_at:
            return "Stopping: saving a checkpoint, then the process ends."
        if not progress.total_steps:
            return "Running: loading the backbone and reading the data…"
        if progress.eta_s is None:
            return (
                f"Running: step {progress.step}/{progress.total_steps}, epoch {progress.epoch}/{progress.epochs}, "
                "ETA: measuring…"
            )
        return (
            f"Running: step {progress.step}/{progress.total_steps}, epoch {progress.epoch}/{progress.epochs}, "
            f"ETA {format_duration(progress.eta_s)}, {progress.images_per_s or 0:.0f} images/s."
        )
    if record.status == "finished":
        accuracy = progress.metrics.get("accuracy")
        if accuracy is None:
            return "Finished."
        return f"Finished: {result_text(progress.metrics)}.{verdict_text(progress.metrics)}" + chance_note(
            accuracy, progress.classes, backbone
        )
    return f"{record.status.capitalize()}" + (f": {record.cause}" if record.cause else ".")


def progress_html(
    record: RunRecord | None,
    progress: RunProgress | None,
    queue_position: int | None,
    backbone: dict[str, Any] | None = None,
) -> str:
    """A progress bar and the status line, as HTML (escaped; causes may quote user file names)."""
    if record is None or progress is None:
        return "<div class='specpl-status'>No run yet. Upload a dataset and press Start.</div>"
    percent = 100.0 if record.status == "finished" else 100.0 * progress.fraction
    return (
        f"<div class='specpl-status' data-status='{record.status}'>"
        f"<div class='specpl-bar' style='background:#e5e7eb;border-radius:6px;height:14px;overflow:hidden'>"
        f"<div class='specpl-fill' style='width:{percent:.1f}%;height:100%;background:#6366f1'></div></div>"
        f"<p><b>{html.escape(record.name)}</b> <code>{record.run_id}</code></p>"
        f"<p class='specpl-line'>{html.escape(status_line(record, progress, queue_position, backbone))}</p>"
        f"{decomposer_html(progress)}</div>"
    )


def decomposer_line(progress: RunProgress) -> str:
    """Which band decomposer the run uses and why ("" when no component needs one)."""
    if not progress.decomposer:
        return ""
    return (
        f"Band decomposer: {progress.decomposer.get('name')} "
        f"({progress.decomposer.get('reason') or 'no reason recorded'})"
    )


def decomposer_html(progress: RunProgress) -> str:
    line = decomposer_line(progress)
    return f"<p class='specpl-decomposer'>{html.escape(line)}</p>" if line else ""
