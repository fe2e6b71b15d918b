"""Gradio components and updates that more than one tab draws: a run's curves and its finished
report, image boxes and pickers (and the page's style rule for them, `PAGE_CSS`), and the two ways
a component stays out of the first page load (shown once it has a value, or once its tab is opened)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import gradio as gr
import pandas as pd

from app.runtime.jobs import RunRecord
from app.views.progress import VAL_COLOURS, RunProgress, loss_frame, lr_frame, read_metrics, series_colours, val_frame
from app.views.reports import confusion_html, misclassified_gallery, per_class_frame, result_html
from specpl.data import IMAGE_SUFFIXES

MAX_PICKER_CHOICES = 100  # matches listed at once; the search box reaches every image
# The x axis of every curve counts steps or epochs. Vega-Lite gives an axis formatted "d" a tick step
# of at least 1, so a short run gets whole ticks ("9", "10") instead of crowded halves ("9.510.0").
WHOLE_NUMBERS = "d"
LOSS_PLOT = {"x": "step", "y": "loss", "color": "term", "title": "Loss per term", "x_axis_format": WHOLE_NUMBERS}
LR_PLOT = {"x": "step", "y": "lr", "title": "Learning rate", "x_axis_format": WHOLE_NUMBERS}
VAL_PLOT = {  # the validation curve: the run's accuracy on its held-out images, and zero-shot CLIP's on the same images
    "x": "epoch",
    "y": "accuracy",
    "color": "series",
    "title": "Validation accuracy per epoch",
    "y_lim": [0, 100],
    "x_axis_format": WHOLE_NUMBERS,
    "caption": (
        "Epoch 0: the initial prompts, before training. "
        "Zero-shot: zero-shot CLIP on the same validation images, for reference."
    ),
}


# ----- a run's curves and report ---------------------------------------------------------------


def curve(progress: RunProgress) -> dict:
    """A loss-plot update: the frame and its colours (see `series_colours`), shown only once it has
    points (see `plot`)."""
    return plot(loss_frame(progress), "term")


def plot(frame: pd.DataFrame, colour: str | None = None, fixed: dict[str, str] | None = None) -> dict:
    """A plot update shown only once it has points, with a fixed colour per series; `fixed` names
    the colour of each known series.

    Gradio's plot builds its colour scale from the series of the frame it holds when it draws, and
    later only swaps the data: a series that was not in that frame is never drawn. It draws again
    when a setting such as `color_map` changes, but an update's settings are applied before its
    value, so that drawing still uses the previous frame (and the new one goes to the view being
    replaced). A plot drawn with a new set of series must therefore be hidden first (`hide_first`):
    a plot that appears mounts with its new frame, as one shown with its first points does."""
    colours = series_colours(frame, colour) if colour else None
    if colours and fixed:
        colours = {name: fixed.get(name, value) for name, value in colours.items()}
    return gr.update(value=frame, visible=not frame.empty, **({"color_map": colours} if colours else {}))


def run_curves(progress: RunProgress) -> tuple[dict, dict, dict]:
    """Loss, validation accuracy per epoch (with zero-shot CLIP's for reference), and learning rate per step."""
    return curve(progress), plot(val_frame(progress), "series", VAL_COLOURS), plot(lr_frame(progress))


def report_components(prefix: str) -> tuple[gr.HTML, gr.BarPlot, gr.Gallery]:
    """A finished run's evaluation: confusion matrix, per-class accuracy bars, misclassified images."""
    return (
        gr.HTML(visible=False, elem_id=f"{prefix}-confusion"),
        gr.BarPlot(
            x="class",
            y="accuracy",
            title="Per-class test accuracy",
            y_lim=[0, 100],  # a scale fitted to the bars started at about 60, so 62.5% looked like 0%
            height=240,
            visible=False,
            elem_id=f"{prefix}-per-class",
        ),
        gr.Gallery(
            label="Misclassified test images", columns=6, height=240, visible=False, elem_id=f"{prefix}-misclassified"
        ),
    )


def no_report() -> tuple[dict, dict, dict]:
    """Confusion matrix, per-class bars and misclassified gallery, hidden (no finished run)."""
    return (
        gr.update(value="", visible=False),
        gr.update(value=None, visible=False),
        gr.update(value=None, visible=False),
    )


def run_report(record: RunRecord, run_dir: Path) -> tuple[dict, dict, dict]:
    """The `report_components` of a finished run, filled from its metrics; hidden for any other run."""
    if record.status != "finished":
        return no_report()
    metrics = read_metrics(run_dir)
    confusion = result_html(metrics) + confusion_html(metrics)
    per_class = per_class_frame(metrics)
    gallery = misclassified_gallery(metrics, run_dir)
    return (
        gr.update(value=confusion, visible=bool(confusion)),
        gr.update(value=per_class, visible=not per_class.empty),
        gr.update(value=gallery, visible=bool(gallery), label=f"Misclassified test images ({len(gallery)} shown)"),
    )


# ----- image pickers -----------------------------------------------------------------------------

PICTURE_HEIGHT = 260  # px: an image box keeps this height, whatever the picture's own size
# a 32 px dataset image is enlarged to fill its box (Gradio's own rule only shrinks pictures)
PAGE_CSS = ".specpl-picture img { object-fit: contain; }"


def image_input(label: str, elem_id: str | None = None) -> gr.Image:
    """An image box for a picture to analyse, uploaded or picked from a dataset, shown at a readable
    size: without a height the box shrank to the picture, a thumbnail for a 32 px CIFAR image."""
    return gr.Image(type="filepath", label=label, height=PICTURE_HEIGHT, elem_id=elem_id, elem_classes="specpl-picture")


def dataset_images(root: str | None, query: str = "") -> tuple[dict, str]:
    """Picker choices ("class/file") for a dataset or run data folder: every image whose path
    contains each word of `query`, the first `MAX_PICKER_CHOICES` of them listed."""
    if not root or not Path(root).is_dir():
        return gr.update(choices=[], value=None), ""
    files = sorted(
        p.relative_to(root).as_posix()
        for p in Path(root).rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    words = (query or "").lower().split()
    matches = [name for name in files if all(word in name.lower() for word in words)]
    choices = [(name, str(Path(root) / name)) for name in matches[:MAX_PICKER_CHOICES]]
    found = f"{len(matches)} of {len(files)} images match {query.strip()!r}" if words else f"{len(files)} images"
    more = (
        f"; the first {MAX_PICKER_CHOICES} are listed, type part of a class or file name to narrow them"
        if len(matches) > MAX_PICKER_CHOICES
        else ""
    )
    return gr.update(choices=choices, value=None), f"{found}{more}."


# ----- out of the first page load ----------------------------------------------------------------


def show_when_set(source: gr.components.Component, outputs: list[gr.components.Component]) -> None:
    """Show `outputs` (and start the timers among them) once `source` holds a value (a dataset, a
    watched run); hide and stop them when it is cleared. Hidden components cost nothing on the first
    page load (see `load_when_opened`)."""
    source.change(
        lambda value: _visibility(outputs, bool(value)),
        source,
        outputs,
        show_progress="hidden",
        api_visibility="private",
    )


def hide_first(trigger: Callable, plots: list[gr.LinePlot]) -> Any:
    """`trigger` (a listener such as `dropdown.change`) hiding `plots`, for a `.then` that draws them
    again from scratch with the series it picks (see `plot`)."""
    return trigger(lambda: _visibility(plots, False), None, plots, show_progress="hidden", api_visibility="private")


def _visibility(outputs: list[gr.components.Component], visible: bool) -> Any:
    updates = [
        gr.Timer(active=visible) if isinstance(output, gr.Timer) else gr.update(visible=visible) for output in outputs
    ]
    return updates[0] if len(updates) == 1 else updates  # Gradio takes one output's value unwrapped


def _components(block: gr.blocks.BlockContext) -> list[gr.components.Component]:
    found: list[gr.components.Component] = []
    for child in block.children:
        if isinstance(child, gr.blocks.BlockContext):
            found += _components(child)
        elif isinstance(child, gr.components.Component):
            found.append(child)
    return found


def load_when_opened(tab: gr.blocks.BlockContext, opened: Any = None) -> Any:
    """Keep a tab's components out of the first page load until the tab is first opened.

    Gradio's front end fetches and evaluates the code of every *visible* component in the page
    config while it builds the page, inactive tabs included; a component's own ``visible=False``
    (not its parent's) skips that. So the tab's visible components start hidden and are shown when
    the tab is selected (or `opened` fires: an accordion's expand); returns that event, for a `.then`.
    Measured in `bench/RESULTS.md`."""
    hidden = [component for component in _components(tab) if component.visible is True]
    for component in hidden:
        component.visible = False
    return (opened or tab.select)(
        lambda: _visibility(hidden, True), None, hidden, show_progress="hidden", api_visibility="private"
    )
