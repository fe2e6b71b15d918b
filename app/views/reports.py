"""A finished run's evaluation as the UI shows it (confusion matrix, per-class bars, misclassified
images), and the compare view over several runs; all read from ``metrics.json`` and ``events.jsonl``."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from app.views.progress import (
    BASE_NEW_NOTE,
    RunProgress,
    is_base_new,
    loss_frame,
    result_text,
    typed_frame,
    val_frame,
    validation_only,
)

# "zero-shot": zero-shot CLIP on the same test images, on the ranking's measure (HM for a base-to-new
# run, else accuracy); "gain": the run's score on that measure minus zero-shot's, in points
RANK_COLUMNS = ["rank", "run", "name", "method", "test accuracy", "zero-shot", "gain", "best val", "base", "new", "hm"]


def result_html(metrics: dict[str, Any]) -> str:
    """A finished run's result as the report opens with it: the test score beside zero-shot CLIP's
    and the gain, the trainer's verdict, and for a base-to-new run why validation cannot guard the
    new classes; "" when the run has no test score (a stopped run's checkpoint)."""
    if not isinstance(metrics.get("accuracy"), (int, float)):
        return ""
    verdict = metrics.get("verdict")
    lines = [f"<p><b>Result</b>: {html.escape(result_text(metrics))}.</p>"]
    if isinstance(verdict, str) and verdict:
        lines.append(f"<p class='specpl-verdict'>{html.escape(verdict)}</p>")
    if is_base_new(metrics):
        lines.append(f"<p class='specpl-base-new'>{html.escape(BASE_NEW_NOTE)}</p>")
    return f"<div class='specpl-result'>{''.join(lines)}</div>"


# The confusion table fits a half-width column: compact cells, predicted classes written upwards,
# and a horizontal scroll bar where it still does not (many classes).
CELL_STYLE = "padding:2px 6px;"
COLUMN_HEAD_STYLE = CELL_STYLE + "writing-mode:vertical-rl;transform:rotate(180deg);text-align:left;"
MAX_HEAD_CHARS = 24  # longer class names are cut in the middle above a column; the title holds the full name


def confusion_html(metrics: dict[str, Any]) -> str:
    """The confusion matrix as a heat-map table (rows: true class, columns: predicted), each cell
    shaded by its share of the row, kept inside its column (`CELL_STYLE`), every class's full name
    on hover; "" when the run has none (an imported bundle)."""
    matrix, names = metrics.get("confusion"), list((metrics.get("per_class") or {}).keys())
    if not matrix or len(matrix) != len(names):
        return ""
    head = "".join(
        f"<th title='{html.escape(name)}' style='{COLUMN_HEAD_STYLE}'>{html.escape(_column_head(name))}</th>"
        for name in names
    )
    rows = []
    for name, row in zip(names, matrix, strict=True):
        total = max(1, sum(row))
        cells = "".join(
            f"<td style='{CELL_STYLE}background:rgba(99,102,241,{count / total:.2f});"
            f"color:{'#fff' if count / total > 0.5 else 'inherit'}'>{count}</td>"
            for count in row
        )
        rows.append(f"<tr><th title='{html.escape(name)}' style='{CELL_STYLE}'>{html.escape(name)}</th>{cells}</tr>")
    return (
        "<div class='specpl-confusion' style='max-width:100%;overflow-x:auto'>"
        "<p><b>Confusion matrix</b> (rows: true class, columns: predicted)</p>"
        f"<table style='font-size:0.85em;margin:0'><tr><th></th>{head}</tr>{''.join(rows)}</table></div>"
    )


def _column_head(name: str) -> str:
    """A class name cut in the middle: names often differ only at the end ("... number 3")."""
    half = MAX_HEAD_CHARS // 2
    return name if len(name) <= MAX_HEAD_CHARS else f"{name[:half]}…{name[1 - half :]}"


def per_class_frame(metrics: dict[str, Any]) -> pd.DataFrame:
    return typed_frame(
        [{"class": name, "accuracy": value} for name, value in (metrics.get("per_class") or {}).items()],
        {"class": "str", "accuracy": "float64"},
    )


def misclassified_gallery(metrics: dict[str, Any], run_dir: Path) -> list[tuple[str, str]]:
    """(image, "true → predicted (p)") for the recorded mistakes whose image is in the run's own
    data copy; a path elsewhere (metrics.json is a file on disk) is never served."""
    data = (run_dir / "data").resolve()
    gallery = []
    for item in metrics.get("misclassified") or []:
        path = Path(str(item.get("path", ""))).resolve()
        if path.is_relative_to(data) and path.is_file():
            gallery.append(
                (str(path), f"{item.get('label')} → {item.get('predicted')} ({float(item.get('probability', 0)):.0%})")
            )
    return gallery


@dataclass
class RunSummary:
    """What the compare view needs of one run."""

    run_id: str
    name: str
    method: str
    progress: RunProgress
    metrics: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.name} ({self.run_id[-6:]})"


def compare_frames(runs: list[RunSummary]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(total loss per step, accuracy per epoch), one series per run."""
    losses, vals = [], []
    for run in runs:
        loss = loss_frame(run.progress)
        losses += [
            {"step": step, "run": run.label, "loss": value}
            for step, value in loss[loss["term"] == "total"][["step", "loss"]].itertuples(index=False)
        ]
        vals += [
            {"epoch": epoch, "run": run.label, "accuracy": value}
            for epoch, value in validation_only(val_frame(run.progress))[["epoch", "accuracy"]].itertuples(index=False)
        ]
    return (
        typed_frame(losses, {"step": "int64", "run": "str", "loss": "float64"}),
        typed_frame(vals, {"epoch": "int64", "run": "str", "accuracy": "float64"}),
    )


def ranking(runs: list[RunSummary]) -> pd.DataFrame:
    """The runs best first: by HM when base/new was measured, else test accuracy, else best
    validation; each beside zero-shot CLIP on the same measure and the gain over it."""
    rows = []
    for run in runs:
        best_val = max((row["accuracy"] for row in run.progress.val if row.get("split", "val") == "val"), default=None)
        measure = next((key for key in ("hm", "accuracy") if isinstance(run.metrics.get(key), (int, float))), None)
        score = run.metrics[measure] if measure else best_val
        zero_shot = run.metrics.get("zero_shot") if isinstance(run.metrics.get("zero_shot"), dict) else {}
        gain = run.metrics.get("gain_over_zero_shot")
        rows.append(
            (
                score if score is not None else float("-inf"),
                [
                    run.run_id,
                    run.name,
                    run.method,
                    percent(run.metrics.get("accuracy")),
                    percent(zero_shot.get(measure) if measure else None),
                    f"{gain:+.1f}" if isinstance(gain, (int, float)) else "",
                    percent(best_val),
                    percent(run.metrics.get("base")),
                    percent(run.metrics.get("new")),
                    percent(run.metrics.get("hm")),
                ],
            )
        )
    rows.sort(key=lambda row: row[0], reverse=True)
    return pd.DataFrame([[rank, *row] for rank, (_, row) in enumerate(rows, 1)], columns=RANK_COLUMNS)


def percent(value: Any) -> str:
    """A metric as the tables show it ("85.7%"), or empty when the run has none."""
    return f"{value:.1f}%" if isinstance(value, (int, float)) else ""
