"""What the tabs share: `Shared`, the state and components more than one tab uses, handed to every
tab's `build`; and `user_messages`, which turns a handler's errors into the one line its tab shows.

Each event handler reports a problem the user can fix as a one-line message in its tab: bad
uploads, unknown runs, an unavailable backbone or library part. An unexpected error is logged with
its traceback on the server and shown as one line, never as a stack trace.
"""

from __future__ import annotations

import functools
import html
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import gradio as gr

from app.files.archives import UploadError
from app.files.hub import HubError
from app.runtime.jobs import JobError
from app.studio import Studio
from app.views.analysis import FeatureUnavailable
from specpl.backbone import BackboneUnavailable
from specpl.registry import UnknownNameError

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
USER_ERRORS = (
    UploadError,
    JobError,
    FeatureUnavailable,
    UnknownNameError,
    BackboneUnavailable,
    FileNotFoundError,
    HubError,
    ValueError,
)


@dataclass(frozen=True)
class RunPicker:
    """A dropdown of the visitor's runs, in any tab."""

    dropdown: gr.Dropdown
    finished_only: bool  # only finished runs with a model (the tabs that use a trained model)


@dataclass
class Shared:
    """The handlers' shared state, and the components that more than one tab reads or updates.
    They are made before the tabs, since an event's inputs and outputs must exist when it is wired.

    Run lists: a tab adds its run dropdowns to `run_pickers` and the events after which runs may
    have changed (its `tab.select`, an `event.then`) to `list_runs_after`. The Runs tab, built last,
    redraws its table and every picker after each of them, in one event."""

    studio: Studio
    demo: gr.Blocks
    dataset_root: gr.State  # the active dataset's folder: Data & Train sets it, Bands lists its images
    watch_timer: gr.Timer  # polls the run Data & Train watches; a resume in the Runs tab starts it again
    watched_run: gr.Textbox  # the run Data & Train watches (placed there); a resume in the Runs tab sets it
    run_pickers: list[RunPicker] = field(default_factory=list)
    list_runs_after: list[Callable] = field(default_factory=list)

    @classmethod
    def create(cls, studio: Studio, demo: gr.Blocks) -> Shared:
        return cls(
            studio,
            demo,
            dataset_root=gr.State(None),
            watch_timer=gr.Timer(POLL_SECONDS, active=False),  # started by watching a run, stopped when it is over
            watched_run=gr.Textbox(label="Watching run", interactive=False, elem_id="run-id", render=False),
        )

    def continue_training(self, after: Callable, api_name: str | None = None) -> None:
        """After the event `after` (a Start, a page load, a Resume), lend the visitor's request to the
        watched run's training (`Studio.continue_training`; ZeroGPU trains inside it). It runs beside
        every other event, so one visitor's GPU calls never hold up another's. With `api_name` it is
        also an endpoint (API clients on a ZeroGPU Space call it with their run id)."""
        after(
            self.studio.continue_training,
            self.watched_run,
            None,
            show_progress="hidden",
            concurrency_limit=None,
            **({"api_name": api_name} if api_name else {"api_visibility": "private"}),
        )


def markdown_text(text: str) -> str:
    """`text` shown as written in a Markdown output: "<class>/<image>" would otherwise be read as
    two HTML tags and vanish, cutting the message at "(expected". Only HTML is escaped, so an API
    client reads the message as the library wrote it, `&lt;` aside."""
    return html.escape(text, quote=False)


def user_messages(outputs: int, cleared: tuple | None = None) -> Callable:
    """Turn a handler's errors into its last output (the tab's message); the other outputs keep
    their value, or take `cleared` (so that a failed upload leaves no dataset active)."""

    def decorate(handler: Callable) -> Callable:
        @functools.wraps(handler)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return handler(*args, **kwargs)
            except USER_ERRORS as exc:
                message = f"⚠️ {markdown_text(str(exc))}"
            except Exception as exc:  # noqa: BLE001 - the UI gets one line; the log keeps the traceback
                log.exception("%s failed", handler.__name__)
                first = str(exc).splitlines()[0] if str(exc) else "no details"
                message = (
                    f"⚠️ Something went wrong ({type(exc).__name__}: {markdown_text(first)}); "
                    "the server log has details."
                )
            return (
                message
                if outputs == 1
                else (*(cleared if cleared is not None else [gr.update()] * (outputs - 1)), message)
            )

        return wrapper

    return decorate
