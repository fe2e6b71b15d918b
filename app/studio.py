"""Everything the UI's events do, as plain methods on `Studio` (settings, the job manager and the
warm model cache). The Blocks layout in `app.ui` only wires these to components.

Each event handler reports a problem the user can fix as a one-line message in its tab
(`user_messages`): bad uploads, unknown runs, an unavailable backbone or library part. An
unexpected error is logged with its traceback on the server and shown as one line, never as a
stack trace.

Every handler that touches a run asks `_owned` first. In hosted mode (`AppSettings.multi_user`) a
run that another visitor started is answered exactly like one that does not exist, so the API
refuses what the UI hides. Uploads live in the visitor's own folder (`user_dir`), which outlives
a reload, so a page can restore its dataset.
"""

from __future__ import annotations

import filecmp
import functools
import html
import json
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import pandas as pd

from app import advanced, backbones, decomposers
from app.analysis import (
    BAND_VIEWS,
    MASK_IMAGES,
    PAIRS,
    FeatureUnavailable,
    MaskView,
    band_view,
    counterfactual_view,
    image_view,
    no_masks,
)
from app.archives import UploadError
from app.bundles import export_bundle_zip, import_bundle_zip
from app.classify import classify_files
from app.hub import HubError, checkpoint_bundle, push_bundle
from app.identity import browser_token, folder_name, install_secret, owner_key
from app.jobs import ACTIVE, REQUEST_FILE, JobError, JobManager, RunRecord
from app.messages import first_sentence
from app.models import ModelCache
from app.plan import training_counts, training_plan
from app.progress import (
    VAL_COLOURS,
    RunProgress,
    chance_note,
    decomposer_line,
    loss_frame,
    lr_frame,
    progress_html,
    read_progress,
    series_colours,
    status_line,
    val_frame,
)
from app.reports import (
    RunSummary,
    compare_frames,
    confusion_html,
    misclassified_gallery,
    per_class_frame,
    ranking,
    result_html,
)
from app.settings import AppSettings
from app.uploads import DatasetSummary, add_builder_class, extract_dataset_zip, summarize_dataset
from specpl import defaults
from specpl.backbone import BackboneUnavailable
from specpl.config import BackboneConfig, DataConfig, MethodConfig, RunConfig, from_dict
from specpl.data import IMAGE_SUFFIXES, class_display_name
from specpl.datasets import read_dataset
from specpl.factory import check_combination, method_label
from specpl.inference import Predictor
from specpl.io import atomic_write_text
from specpl.methods import BOOSTERS, HOSTS, UNPUBLISHED
from specpl.registry import UnknownNameError
from specpl.resolve import resolve_run

log = logging.getLogger(__name__)

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
RUN_COLUMNS = ["run", "name", "status", "method", "backbone", "accuracy", "created"]
MAX_PICKER_CHOICES = 100  # matches listed at once; the search box reaches every image
MAX_KNOWN_DATASETS = 256  # datasets whose per-class counts are kept for the training plan
USER_DIR_TTL_S = 7 * 24 * 3600  # a visitor's uploads are removed after a week without use
DOUBLE_START_S = 2.0  # the same visitor's identical Start this soon after the last is one click, not a second run
DATASET_CLEARED = (None, "", None)  # dataset root, summary, thumbnails: what a failed upload leaves
WORLD_CAUTION = (
    " ⚠️ The SpectralWorld CLIP knows only SpectralWorld images: "
    "on photos its labels and probabilities are guesses, however confident they look."
)
CHOOSE_RUN_NOTE = "Choose a trained run to see the foreground mask its DAPT booster trains with."


def curve(progress: RunProgress) -> dict:
    """A loss-plot update: the frame and its colours (see `series_colours`), shown only once it has
    points. Gradio's plot fixes its colour scale when it is first drawn and later only swaps the
    data, so drawing an empty frame first left every line without a colour until a reload; a plot
    that appears with its first points draws them."""
    return plot(loss_frame(progress), "term")


def plot(frame: pd.DataFrame, colour: str | None = None, fixed: dict[str, str] | None = None) -> dict:
    """A plot update shown only once it has points, with a fixed colour per series (see `curve`);
    `fixed` names the colour of each known series."""
    colours = series_colours(frame, colour) if colour else None
    if colours and fixed:
        colours = {name: fixed.get(name, value) for name, value in colours.items()}
    return gr.update(value=frame, visible=not frame.empty, **({"color_map": colours} if colours else {}))


def run_curves(progress: RunProgress) -> tuple[dict, dict, dict]:
    """Loss, validation accuracy per epoch (with zero-shot CLIP's for reference), and learning rate per step."""
    return curve(progress), plot(val_frame(progress), "series", VAL_COLOURS), plot(lr_frame(progress))


def no_report() -> tuple[dict, dict, dict]:
    """Confusion matrix, per-class bars and misclassified gallery, hidden (no finished run)."""
    return (
        gr.update(value="", visible=False),
        gr.update(value=None, visible=False),
        gr.update(value=None, visible=False),
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


def modulation_note(cosines: dict[str, float] | None) -> str:
    """cos(image feature before FiLM, after) for each pair of the granule path; 1.0 means unmoved."""
    if not cosines:
        return "No granule path: this run has no booster that trains on band swaps."
    pairs = "; ".join(f"{pair}: {value:.4f}" for pair, value in cosines.items())
    return f"**Modulation cosine** (image feature before vs. after FiLM, 1 = not moved): {pairs}."


def shown_value(field: advanced.OptionField, value: Any) -> Any:
    """A config value as its generated control holds it (JSON as text, no value as an empty box)."""
    if field.kind == "json":
        return json.dumps(value)
    if value is None and field.kind in ("str", "choice"):
        return ""
    if field.kind in ("int", "float") and isinstance(value, str):
        return None  # "auto" (epochs, batch size derived from the data): an empty number box
    return value


def shown_pick(image_path: Path, picked: str | None) -> Path | None:
    """The picked dataset image, when it is the one shown: the handler gets Gradio's copy of the
    image, so the two files are compared (an image uploaded after a pick is not the picked one)."""
    if not picked or not Path(picked).is_file():
        return None
    return Path(picked) if filecmp.cmp(picked, image_path, shallow=False) else None


class Studio:
    def __init__(self, settings: AppSettings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.jobs = JobManager(settings.runs_dir, settings.training_slots, settings.stop_grace_s)
        self.models = ModelCache(int8=self.settings.cpu_int8)
        self._secret = install_secret(settings.data_dir)
        self._dataset_counts: dict[
            str, tuple[dict[str, tuple[int, int]], bool]
        ] = {}  # root -> (class counts, has train/ and test/)
        self._last_start: dict[str, tuple[str, float, str]] = {}  # owner -> (request, time, run id)
        self._start_lock = threading.Lock()

    # ----- who is asking ---------------------------------------------------------------------

    def visitor(self, request: gr.Request | None, profile: gr.OAuthProfile | None = None) -> str:
        """The owner key of this request: the signed-in user, else the browser, else the page session."""
        return owner_key(
            getattr(profile, "username", None), browser_token(request), getattr(request, "session_hash", None)
        )

    def user_dir(self, owner: str) -> Path:
        """The visitor's own folder for uploads; it survives a reload (runs copy what they train on)."""
        return self.settings.sessions_dir / folder_name(self._secret, owner)

    def forget_session(self, request: gr.Request) -> None:
        """A closed tab whose only identity was its page session can never come back: drop its uploads.
        A browser's folder stays for its next visit and goes after `USER_DIR_TTL_S` without use."""
        owner = self.visitor(request)
        if owner.startswith("session:"):
            shutil.rmtree(self.user_dir(owner), ignore_errors=True)

    def _prune_user_dirs(self) -> None:
        if not self.settings.sessions_dir.is_dir():
            return
        cutoff = time.time() - USER_DIR_TTL_S
        for folder in self.settings.sessions_dir.iterdir():
            if folder.is_dir() and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)

    def _fresh_user_dir(self, owner: str) -> Path:
        self._prune_user_dirs()
        folder = self.user_dir(owner)
        folder.mkdir(parents=True, exist_ok=True)
        folder.touch()  # marks it as in use
        return folder

    def _may_see(self, record: RunRecord, owner: str) -> bool:
        return not self.settings.multi_user or record.owner == owner

    def _owned(self, run_id: str | None, owner: str) -> RunRecord:
        """The run, if this visitor may see it; another visitor's run reads as no run at all."""
        record = self.jobs.get(run_id or "")
        if not self._may_see(record, owner):
            raise JobError(f"there is no run {run_id!r}")
        return record

    def _visible_runs(self, owner: str) -> list[RunRecord]:
        return [r for r in self.jobs.list() if self._may_see(r, owner)]

    # ----- Data & Train ----------------------------------------------------------------------

    @user_messages(outputs=4, cleared=DATASET_CLEARED)
    def upload_zip(
        self, zip_path: str | None, split_ratio: float, request: gr.Request, profile: gr.OAuthProfile | None = None
    ) -> tuple:
        """Unpack a zipped few-shot folder into this visitor's space and summarise it. A refused
        upload clears the active dataset, so Start never trains on an earlier one by mistake."""
        if not zip_path:
            raise UploadError("choose a .zip of class folders first")
        path = Path(zip_path)
        return self._dataset_outputs(
            self._unpack_zip(path, path.name, split_ratio, request, profile), f"Dataset ready: {path.name}."
        )

    @user_messages(outputs=4, cleared=DATASET_CLEARED)
    def use_demo_set(self, split_ratio: float, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
        """The embedded SpectralWorld demo set, unpacked and checked exactly as an uploaded zip, so
        that a fresh offline install has data one click away."""
        path = Path(defaults.DEMO_ZIP)  # read at call time: tests substitute a stand-in
        if not path.is_file():
            raise UploadError(f"the demo set {path} is missing from this installation")
        summary = self._unpack_zip(path, "the demo set", split_ratio, request, profile)
        return self._dataset_outputs(
            summary,
            f"Demo set ready: {len(summary.classnames)} SpectralWorld classes, "
            "which the embedded SpectralWorld CLIP knows.",
        )

    def _unpack_zip(
        self, path: Path, label: str, split_ratio: float, request: gr.Request, profile: gr.OAuthProfile | None
    ) -> DatasetSummary:
        datasets = self._fresh_user_dir(self.visitor(request, profile)) / "datasets"
        return extract_dataset_zip(path, datasets, self.settings.limits, label=label, split_ratio=split_ratio)

    @user_messages(outputs=2)
    def add_class(
        self, class_name: str, files: list[str] | None, request: gr.Request, profile: gr.OAuthProfile | None = None
    ) -> tuple:
        if not files:
            raise UploadError("add one or more images for this class")
        builder = self._fresh_user_dir(self.visitor(request, profile)) / "builder"
        skipped = add_builder_class(builder, class_name, [Path(f) for f in files], self.settings.limits)
        classes = sorted(p.name for p in builder.iterdir() if p.is_dir())
        counts = ", ".join(f"{name.replace('_', ' ')} ({len(list((builder / name).iterdir()))})" for name in classes)
        note = f" Skipped: {'; '.join(skipped)}." if skipped else ""
        return f"Classes so far: {counts}.", f"Added class {class_name.strip()!r}.{note}"

    @user_messages(outputs=4, cleared=DATASET_CLEARED)
    def use_builder(self, split_ratio: float, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
        builder = self.user_dir(self.visitor(request, profile)) / "builder"
        if not builder.is_dir():
            raise UploadError("the builder is empty: add at least 2 classes with images")
        return self._dataset_outputs(
            summarize_dataset(builder, split_ratio, label="the builder"), "Using the classes built here."
        )

    def _dataset_outputs(self, summary: DatasetSummary, message: str) -> tuple:
        self._remember_counts(summary)
        return str(summary.root), summary.markdown(), summary.gallery, message

    def _remember_counts(self, summary: DatasetSummary) -> tuple[dict[str, tuple[int, int]], bool]:
        """Keep a loaded dataset's per-class counts for its training plan (`training_plan_line`)."""
        while len(self._dataset_counts) >= MAX_KNOWN_DATASETS:
            self._dataset_counts.pop(next(iter(self._dataset_counts)), None)
        known = self._dataset_counts[str(summary.root)] = (dict(summary.counts), (summary.root / "train").is_dir())
        return known

    def training_plan_line(self, dataset_root: str | None, config: RunConfig | None) -> str:
        """The plan line beside the Epochs box for the form's `config` on the loaded dataset: epochs,
        batch size and steps, training images, validation held out and the epoch kept (`app.plan`);
        "" before a dataset is loaded or while the form holds a setting the library refuses."""
        if not dataset_root or config is None or not Path(dataset_root).is_dir():
            return ""
        known = self._dataset_counts.get(str(dataset_root))
        try:
            if known is None:  # a dataset loaded before a restart of the server: read its counts once
                known = self._remember_counts(
                    summarize_dataset(Path(dataset_root), config.data.split_ratio, label="the dataset")
                )
            counts, has_splits = known
            return training_plan(config, training_counts(counts, has_splits, config.data.split_ratio)).line()
        except USER_ERRORS:
            return ""

    def saved_dataset(self, root: str | None, split_ratio: float) -> dict:
        """What the browser keeps of the active dataset, to restore it after a reload; {} for none
        (the browser would not overwrite its stored value with a null)."""
        return {"root": root, "split_ratio": split_ratio} if root else {}

    def restore_dataset(self, saved: dict | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
        """On page load: the dataset this browser had, if it is still on disk and in its own folder
        (the stored path comes from the browser, so it is checked like any input)."""
        root = Path(str((saved or {}).get("root") or ""))
        if not (
            saved
            and root.is_dir()
            and root.resolve().is_relative_to(self.user_dir(self.visitor(request, profile)).resolve())
        ):
            return (*DATASET_CLEARED, "")
        try:
            summary = summarize_dataset(root, float(saved.get("split_ratio") or 0.5), label="the dataset")
        except UploadError:
            return (*DATASET_CLEARED, "")
        return self._dataset_outputs(summary, "Dataset restored from your last visit.")

    def backbone_note(self, key: str) -> str:
        return (
            backbones.unavailable_message(key)
            or f"{backbones.option(key).title}: {backbones.availability(key).status}."
        )

    # ----- the run's settings (main form + Advanced) -------------------------------------------

    def _form(self, values: tuple) -> dict[str, Any]:
        return dict(zip(advanced.form_keys(), values, strict=True))

    def form_config(self, backbone_key: str, *values: Any) -> tuple[dict, str]:
        """The run config the form describes, and its ``specpl train`` line. A setting the library
        refuses yields ``{"error": why}``, which Start then refuses with that reason."""
        return self._form_outputs(backbone_key, values)[:2]

    def form_and_plan(self, dataset_root: str | None, backbone_key: str, *values: Any) -> tuple[dict, str, str]:
        """`form_config` and the training plan line, after any change of the form or the dataset."""
        config_json, line, config = self._form_outputs(backbone_key, values)
        return config_json, line, self.training_plan_line(dataset_root, config)

    def _form_outputs(self, backbone_key: str, values: tuple) -> tuple[dict, str, RunConfig | None]:
        try:
            config = advanced.run_config(self._form(values), backbones.resolve_backbone(backbone_key))
        except USER_ERRORS as exc:
            return {"error": str(exc)}, f"# {exc}", None
        return json.loads(advanced.preset_json(config)), advanced.cli_command(config), config

    def method_note(self, host: str, boosters: list[str] | None) -> str:
        """The chosen host's and boosters' descriptions, or the library's refusal of the combination."""
        boosters = list(boosters or [])
        try:
            check_combination(host, boosters)
        except (ValueError, UnknownNameError) as exc:
            return f"⚠️ {exc}"
        lines = [f"**{host}**: {HOSTS.get(host).description}"] + [
            f"**+ {name}**: {BOOSTERS.get(name).description}" for name in boosters
        ]
        label = method_label(MethodConfig(host=host, boosters=boosters))
        if label.endswith(f"({UNPUBLISHED})"):
            lines.append(
                f"**{label}**: no paper reports this stack; under the paper preset each part runs its own paper values"
            )
        return "  \n".join(lines)

    def method_choice(self, host: str, boosters: list[str] | None, preset: str) -> tuple[dict, str]:
        """The host's presets (the current one kept when it has it) and the method note."""
        presets = advanced.presets_of(host) if host in HOSTS else ["default"]
        return gr.update(choices=presets, value=advanced.known_preset(preset)), self.method_note(host, boosters)

    def method_defaults(
        self, host: str, boosters: list[str] | None, preset: str, redraw: int, options: dict | None
    ) -> list[Any]:
        """After the user picks a host or boosters: each setting takes the value it means for that
        choice (the host's training defaults, its preset's), options set for a component that is
        still chosen are kept, and the options are drawn again."""
        chosen = {host, *(boosters or [])}
        kept = {key: value for key, value in (options or {}).items() if key.split(".", 1)[0] in chosen}
        return self._defaults(host, boosters, preset, redraw, kept)

    def preset_defaults(self, host: str, boosters: list[str] | None, preset: str, redraw: int) -> list[Any]:
        """After the user picks a preset: every setting and option shows the preset's value."""
        return self._defaults(host, boosters, preset, redraw, {})

    def _defaults(self, host: str, boosters: list[str] | None, preset: str, redraw: int, options: dict) -> list[Any]:
        if host not in HOSTS:
            return [*(gr.update() for _ in advanced.setting_fields()), gr.update(), gr.update()]
        values = advanced.effective_values(host, list(boosters or []), preset or "default")
        settings = [
            gr.update(value=shown_value(field, values.get(field.key)), info=f"default: {values.get(field.key)!r}")
            for field in advanced.setting_fields()
        ]
        return [*settings, options, (redraw or 0) + 1]

    @user_messages(outputs=2)
    def save_preset(self, request: gr.Request, backbone_key: str, *values: Any) -> tuple:
        """The form's full run config as a JSON file (also what ``specpl train --config`` reads),
        written in this browser's folder (the request comes first: the form's values follow)."""
        config = advanced.run_config(self._form(values), backbones.resolve_backbone(backbone_key))
        folder = self._fresh_user_dir(self.visitor(request)) / "presets"
        path = folder / advanced.PRESET_FILE
        atomic_write_text(path, advanced.preset_json(config))
        return (
            str(path),
            f"Preset saved: {config.method.host}{''.join('+' + b for b in config.method.boosters)}, "
            f"preset {config.method.preset}.",
        )

    def load_preset(self, file_path: str | None, redraw: int) -> list[Any]:
        """Fill the whole form from a preset file (and draw its options again); a bad file changes
        nothing and says why."""
        keep = [gr.update() for _ in range(2 + len(advanced.form_keys()))]
        if not file_path:
            return [*keep, "⚠️ choose a preset .json file first"]
        try:
            config = advanced.read_preset(Path(file_path), Path(file_path).name)
            backbone_key = backbones.key_for(config.backbone)
        except USER_ERRORS as exc:
            return [*keep, f"⚠️ {exc}"]
        values = advanced.form_values(config)
        fields = {field.key: field for field in advanced.setting_fields()}
        shown = [
            shown_value(fields[key], values.get(key)) if key in fields else values.get(key)
            for key in advanced.form_keys()
        ]
        return [backbone_key, *shown, (redraw or 0) + 1, f"Preset loaded: {Path(file_path).name}."]

    def decomposer_note(self, name: str, source: str | None) -> tuple[dict, str]:
        """The decomposer dropdown, each entry marked usable or not, and the chosen one's reason."""
        hosted = self.settings.multi_user
        return gr.update(choices=decomposers.dropdown_choices(source, hosted)), decomposers.note(name, source, hosted)

    @user_messages(outputs=3)
    def start_training(
        self,
        dataset_root: str | None,
        run_config: dict | None,
        name: str,
        request: gr.Request,
        profile: gr.OAuthProfile | None = None,
    ) -> tuple:
        """Queue a training of `run_config` (the form's config, or a preset file's JSON) on the
        visitor's dataset; the worker process picks it up. Returns (run id, run id to remember, message)."""
        owner = self.visitor(request, profile)
        root = Path(dataset_root) if dataset_root else None
        if root is None or not root.is_dir() or not root.resolve().is_relative_to(self.user_dir(owner).resolve()):
            raise UploadError("upload a dataset (.zip) or build one before starting")
        if not isinstance(run_config, dict) or not run_config:
            raise UploadError("the run config is empty")
        if "error" in run_config:
            raise UploadError(f"fix the settings first: {run_config['error']}")
        config = RunConfig.from_dict(
            {
                **run_config,
                "data": {**(run_config.get("data") or {}), "root": str(root), "dataset": "folder"},
                "train": {**advanced.APP_TRAIN_DEFAULTS, **(run_config.get("train") or {})},
            }
        )
        backbone_key = backbones.key_for(config.backbone)
        config.backbone = backbones.resolve_backbone(backbone_key)  # only what the app offers, nothing a caller adds
        problem = backbones.unavailable_message(backbone_key)
        if problem:
            raise UploadError(problem)
        paths = advanced.server_paths(config) if self.settings.multi_user else []
        if paths:
            raise UploadError(
                f"{'; '.join(paths)}: a local folder or file cannot be used on a shared server; "
                "give a Hugging Face hub id (org/name) or leave it unset"
            )
        resolve_run(config)  # unknown methods or options fail here, not in the worker
        label = name.strip() or "+".join([config.method.host, *config.method.boosters])
        request_key = json.dumps([config.to_dict(), label], sort_keys=True, default=str)
        with self._start_lock:  # a double click sends the same request twice: one run, answered twice
            key, when, run_id = self._last_start.get(owner, ("", 0.0, ""))
            if key == request_key and time.monotonic() - when < DOUBLE_START_S:
                return run_id, run_id, f"Started run {run_id}."
            record = self.jobs.submit(config, root, label, owner=owner)
            self._last_start[owner] = (request_key, time.monotonic(), record.run_id)
        position = self.jobs.queue_position(record.run_id)
        running = sum(r.status == "running" for r in self.jobs.list())
        waiting = (
            f" It waits at queue position {position} while {running} training(s) run." if position and running else ""
        )
        return record.run_id, record.run_id, f"Started run {record.run_id}.{waiting}"

    @user_messages(outputs=1)
    def stop_training(self, run_id: str, request: gr.Request, profile: gr.OAuthProfile | None = None) -> str:
        self._owned(run_id, self.visitor(request, profile))
        record = self.jobs.stop(run_id)
        return (
            "Cancelled before it started."
            if record.status == "cancelled"
            else "Stopping: the run saves a checkpoint, then its process ends."
        )

    def run_status(self, run_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
        """Progress bar + status, the loss, validation and lr curves, the details, and once the run
        has finished its evaluation (confusion matrix, per-class bars, misclassified images); read
        from disk every tick."""
        if not run_id:
            return progress_html(None, None, None), *run_curves(RunProgress()), {}, *no_report()
        try:
            record = self._owned(run_id, self.visitor(request, profile))
        except JobError:
            return (
                f"<div class='specpl-status'>Run {html.escape(run_id)} no longer exists.</div>",
                *run_curves(RunProgress()),
                {},
                *no_report(),
            )
        progress = read_progress(self.jobs.run_dir(run_id))
        position = self.jobs.queue_position(run_id)
        details = {
            "run_id": run_id,
            "status": record.status,
            "cause": record.cause,
            "queue_position": position,
            "step": progress.step,
            "total_steps": progress.total_steps,
            "eta_s": progress.eta_s,
            "metrics": progress.metrics,
            "decomposer": progress.decomposer,
            "compile": progress.compiled,
        }
        backbone = self._run_config(run_id).get("backbone")
        return (
            progress_html(record, progress, position, backbone),
            *run_curves(progress),
            details,
            *self._report(record),
        )

    def poll_run(self, run_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
        """One tick of the status timer: `run_status`, and the timer itself, which stops once the
        watched run is over, so an idle page polls nothing. The Start/Stop message is cleared when
        the run ends, so that "Stopping…" never sits above "Cancelled" or "Finished"."""
        outputs = self.run_status(run_id, request, profile)
        active = outputs[4].get("status") in ACTIVE
        return *outputs, gr.Timer(active=active), gr.update() if active else ""

    def _report(self, record: RunRecord) -> tuple:
        if record.status != "finished":
            return no_report()
        metrics = self._metrics(record.run_id)
        confusion = result_html(metrics) + confusion_html(metrics)
        per_class = per_class_frame(metrics)
        gallery = misclassified_gallery(metrics, self.jobs.run_dir(record.run_id))
        return (
            gr.update(value=confusion, visible=bool(confusion)),
            gr.update(value=per_class, visible=not per_class.empty),
            gr.update(value=gallery, visible=bool(gallery), label=f"Misclassified test images ({len(gallery)} shown)"),
        )

    def reattach(
        self, remembered: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None
    ) -> tuple[str, str]:
        """On page load: the run this browser started while it is active, else the one training
        now (hosted: only the visitor's own), else the remembered run's result."""
        owner = self.visitor(request, profile)
        visible = self._visible_runs(owner)
        known = next((r for r in visible if r.run_id == remembered), None) if remembered else None
        if known and known.active:
            return known.run_id, known.run_id
        active = sorted(
            (r for r in visible if r.active), key=lambda r: (r.status != "running", r.queued_at or r.created)
        )
        chosen = active[0].run_id if active else (known.run_id if known else "")
        return chosen, chosen

    # ----- Bands ---------------------------------------------------------------------------

    @user_messages(outputs=len(BAND_VIEWS) + len(MASK_IMAGES) + 2)
    def bands(
        self,
        image_path: str | None,
        decomposer: str,
        size: float,
        run_id: str | None,
        picked: str | None,
        request: gr.Request,
        profile: gr.OAuthProfile | None = None,
    ) -> tuple:
        """The band maps of the image and, with a trained run, the foreground mask its DAPT booster
        would train with (or a note why there is none). `picked` is the dataset image last picked
        (`picked_band_image`; the API has none). Returns the band maps, the mask pictures, the
        mask note and the timing line."""
        if not image_path:
            raise UploadError("upload an image or pick one from the dataset")
        view = band_view(self.models, Path(image_path), decomposer, int(size))
        timing = f"{decomposer} at {int(size)} px: {view.compute_s * 1000:.0f} ms" + (
            f" (loading it first took {view.load_s * 1000:.0f} ms)" if view.load_s > 0.05 else ""
        )
        masks = self._image_view(run_id, Path(image_path), picked, self.visitor(request, profile))
        return (
            *[view.images[name] for name in BAND_VIEWS],
            *[masks.images[name] for name in MASK_IMAGES],
            masks.note,
            timing,
        )

    def _image_view(self, run_id: str | None, image_path: Path, picked: str | None, owner: str) -> MaskView:
        """The chosen run's image view (DAPT's mask) of the image. An image picked from a dataset is
        read at its place there, which gives its class (its folder) and its mask file's name."""
        if not run_id:
            return no_masks(CHOOSE_RUN_NOTE)
        model_dir = self._model_dir(run_id, owner)
        source = shown_pick(image_path, picked)
        class_name = class_display_name(source.parent.name) if source else None
        return image_view(
            self.models, model_dir, source or image_path, class_name, read_mask_files=not self.settings.multi_user
        )

    def dataset_images(self, root: str | None, query: str = "") -> tuple[dict, str]:
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

    def picked_image(self, path: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> str | None:
        """A picker's choice, only if it is an image in this visitor's uploads or in a run they may see."""
        if not path or not Path(path).is_file():
            return None
        resolved = Path(path).resolve()
        owner = self.visitor(request, profile)
        if resolved.is_relative_to(self.user_dir(owner).resolve()):
            return path
        runs = self.settings.runs_dir.resolve()
        if (
            resolved.is_relative_to(runs)
            and len(resolved.relative_to(runs).parts) > 2
            and resolved.relative_to(runs).parts[1] == "data"
        ):
            try:
                self._owned(resolved.relative_to(runs).parts[0], owner)
                return path
            except JobError:
                return None
        return None

    def picked_band_image(
        self, path: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None
    ) -> tuple[str | None, str | None]:
        """A pick in the Bands tab, for the image box and kept as the image's place in its dataset
        (the box hands the handler a copy), both set at once so that a click that follows has both."""
        picked = self.picked_image(path, request, profile)
        return picked, picked

    def run_images(
        self, run_id: str | None, query: str, request: gr.Request, profile: gr.OAuthProfile | None = None
    ) -> tuple[dict, dict, str]:
        try:
            root = (
                str(self.jobs.run_dir(self._owned(run_id, self.visitor(request, profile)).run_id) / "data")
                if run_id
                else None
            )
        except JobError:
            root = None
        picker, found = self.dataset_images(root, query)
        return picker, picker, found

    # ----- Counterfactual ----------------------------------------------------------------------

    @user_messages(outputs=12)
    def counterfactual(
        self,
        run_id: str | None,
        image_a: str | None,
        image_b: str | None,
        top_k: float,
        request: gr.Request,
        profile: gr.OAuthProfile | None = None,
    ) -> tuple:
        """Both paths for A, B and their band swaps; the granule path's modulation cosine per pair
        (how far FiLM moves the image feature) is stated in the modulation note."""
        if not run_id:
            raise JobError("choose a finished run")
        if not image_a or not image_b:
            raise UploadError("give both image A and image B")
        view = counterfactual_view(
            self.models,
            self._model_dir(run_id, self.visitor(request, profile)),
            Path(image_a),
            Path(image_b),
            int(top_k),
        )
        embedding = [view.embedding[pair] if view.embedding else None for pair in PAIRS]
        summary = (
            view.summary
            if view.embedding
            else f"{view.summary} (This run has no SpecPL booster, so only the image-space swap is shown.)"
        )
        return (
            *embedding,
            *[view.image_space[pair] for pair in PAIRS],
            *[view.swaps[pair] for pair in PAIRS[2:]],
            modulation_note(view.modulation_cosine),
            summary,
        )

    # ----- Classify ----------------------------------------------------------------------------

    @user_messages(outputs=5)
    def classify(
        self,
        source: str,
        run_id: str | None,
        classnames: str,
        backbone_key: str,
        template: str,
        files: list[str] | None,
        top_k: float,
        request: gr.Request,
        profile: gr.OAuthProfile | None = None,
    ) -> tuple:
        """Top-k for each image, with a trained run or zero-shot CLIP on typed class names; the
        message warns when the model is known to guess (near-chance run, or the SpectralWorld CLIP)."""
        owner = self.visitor(request, profile)
        if source == "zero-shot":
            names = [c.strip() for c in (classnames or "").replace("\n", ",").split(",") if c.strip()]
            if len(names) < 2:
                raise UploadError("type at least 2 class names, separated by commas")
            if "{}" not in (template or ""):
                raise UploadError("the template needs a {} where the class name goes, e.g. 'a photo of a {}.'")
            problem = backbones.unavailable_message(backbone_key)
            if problem:
                raise UploadError(problem)
            backbone = backbones.resolve_backbone(backbone_key)
            try:
                predictor = self.models.zero_shot_predictor(backbone, names, template)
            except BackboneUnavailable as exc:
                raise UploadError(
                    backbones.unavailable_message(
                        backbone_key, reason=f"loading failed ({first_sentence(str(exc)).rstrip('.')})"
                    )
                ) from None
            caution = WORLD_CAUTION if backbone.name == defaults.WORLD_MODEL else ""
        else:
            if not run_id:
                raise JobError("choose a finished run, or switch to zero-shot")
            predictor = self.models.bundle_predictor(self._model_dir(run_id, owner))
            caution = self._run_caution(run_id)
        out_dir = self._fresh_user_dir(owner) / "classify"
        result = classify_files(predictor, [Path(f) for f in files or []], int(top_k), self.settings.limits, out_dir)
        note = f" Skipped: {'; '.join(result.skipped)}." if result.skipped else ""
        message = (
            f"Classified {len(result.gallery)} image(s) with the {predictor.precision} image tower.{note}{caution}"
        )
        return result.gallery, result.table, str(result.csv_path), result.first, message

    def _run_caution(self, run_id: str) -> str:
        """The chance warning of a run's test accuracy, or the SpectralWorld note, for Classify."""
        metrics = self._metrics(run_id)
        backbone = self._run_config(run_id).get("backbone")
        accuracy, classes = (
            metrics.get("accuracy"),
            len(metrics.get("per_class") or self._run_config(run_id).get("classnames") or []),
        )
        if isinstance(accuracy, (int, float)):
            warning = chance_note(float(accuracy), classes, backbone)
            if warning:
                return f" This run's test accuracy was {accuracy:.1f}%.{warning}"
        return WORLD_CAUTION if (backbone or {}).get("name") == defaults.WORLD_MODEL else ""

    # ----- Runs ----------------------------------------------------------------------------------

    def _method_text(self, config: dict) -> str:
        """A run's method as the library names it ("IVLP + SpecPL (unpublished combination)"), from
        its recorded options; the host+boosters string when the record predates them or is damaged."""
        method = config.get("method", {})
        plain = "+".join([method.get("host", "?"), *method.get("boosters", [])])
        try:
            stack = MethodConfig(host=method["host"], boosters=list(method.get("boosters", [])))
            return f"{plain}: {method_label(stack, config.get('resolved_method_options'))}"
        except (KeyError, ValueError, TypeError, UnknownNameError):
            return plain

    def runs_table(self, owner: str) -> pd.DataFrame:
        rows = []
        for record in self._visible_runs(owner):
            config = self._run_config(record.run_id)
            accuracy = self._metrics(record.run_id).get("accuracy")
            rows.append(
                [
                    record.run_id,
                    record.name,
                    record.status + (" (imported)" if record.imported else ""),
                    self._method_text(config),
                    config.get("backbone", {}).get("name", "?"),
                    f"{accuracy:.1f}%" if isinstance(accuracy, (int, float)) else "",
                    pd.Timestamp(record.created, unit="s").strftime("%Y-%m-%d %H:%M"),
                ]
            )
        return pd.DataFrame(rows, columns=RUN_COLUMNS)

    def run_choices(self, owner: str, finished_only: bool) -> list[tuple[str, str]]:
        return [
            (f"{r.name} · {r.status} · {r.run_id}", r.run_id)
            for r in self._visible_runs(owner)
            if not finished_only
            or (r.status == "finished" and (self.jobs.run_dir(r.run_id) / "model" / "config.json").is_file())
        ]

    def refresh_runs(self, selected: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
        """The runs table and the run pickers (Runs and Compare: all runs; Classify, Counterfactual,
        Bands: finished)."""
        owner = self.visitor(request, profile)
        finished = self.run_choices(owner, True)
        everything = self.run_choices(owner, False)
        keep = selected if selected in [v for _, v in everything] else None
        return (
            self.runs_table(owner),
            gr.update(choices=everything, value=keep),
            gr.update(choices=finished),
            gr.update(choices=finished),
            gr.update(choices=everything),
            gr.update(choices=finished),
        )

    def run_details(self, run_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
        """Config, metrics, curves, evaluation and status of the chosen run; the previous run's
        message and bundle are cleared, so nothing on the tab speaks of another run."""
        try:
            record = self._owned(run_id, self.visitor(request, profile))
        except JobError:
            return {}, {}, *run_curves(RunProgress()), *no_report(), "Choose a run.", "", None
        progress = read_progress(self.jobs.run_dir(record.run_id))
        config = self._run_config(record.run_id)
        line = status_line(record, progress, self.jobs.queue_position(record.run_id), config.get("backbone"))
        used = decomposer_line(progress) or self._recorded_decomposer(record.run_id)
        line += f"  \n{used}" if used else ""
        metrics = {k: v for k, v in self._metrics(record.run_id).items() if k not in ("confusion", "misclassified")}
        return config, metrics, *run_curves(progress), *self._report(record), line, "", None

    def _recorded_decomposer(self, run_id: str) -> str:
        """The decomposer line from the run's (or bundle's) config, for runs whose events are gone."""
        run_dir = self.jobs.run_dir(run_id)
        for path in (run_dir / "config.json", run_dir / "model" / "config.json"):
            if path.is_file():
                record = json.loads(path.read_text(encoding="utf-8"))
                decomposer = record.get("decomposer")
                if isinstance(decomposer, dict):
                    return (
                        f"Band decomposer: {decomposer.get('name')} "
                        f"({record.get('decomposer_reason') or 'no reason recorded'})"
                    )
        return ""

    def compare_runs(
        self, run_ids: list[str] | None, request: gr.Request, profile: gr.OAuthProfile | None = None
    ) -> tuple:
        """The picked runs' loss and validation curves overlaid, and the runs ranked (best first)."""
        owner = self.visitor(request, profile)
        summaries = []
        for run_id in run_ids or []:
            try:
                record = self._owned(run_id, owner)
            except JobError:
                continue  # another visitor's run, or a deleted one: as if it were not picked
            summaries.append(
                RunSummary(
                    record.run_id,
                    record.name,
                    self._method_text(self._run_config(record.run_id)),
                    read_progress(self.jobs.run_dir(record.run_id)),
                    self._metrics(record.run_id),
                )
            )
        losses, vals = compare_frames(summaries)
        return plot(losses, "run"), plot(vals, "run"), ranking(summaries)

    @user_messages(outputs=2)
    def export_bundle(self, run_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
        """The run's bundle as a zip: the finished model, or for a stopped run its last checkpoint."""
        if not run_id:
            raise JobError("choose a run to download")
        bundle, note = self._bundle_dir(run_id, self.visitor(request, profile))
        path = export_bundle_zip(bundle, self.settings.exports_dir, f"specpl-{run_id}")
        return str(path), f"Bundle ready: {path.name} (model.safetensors, config.json, README.md){note}."

    def _bundle_dir(self, run_id: str, owner: str) -> tuple[Path, str]:
        """A run's model bundle and a note on where it comes from: the finished model, else (a
        cancelled or failed run) one built from its last checkpoint."""
        record = self._owned(run_id, owner)
        run_dir = self.jobs.run_dir(record.run_id)
        if (run_dir / "model" / "config.json").is_file():
            return run_dir / "model", ""
        if record.status not in ("cancelled", "failed"):
            raise JobError(
                f"run {run_id} is {record.status}; a bundle exists once it has finished, "
                "or has been stopped after a checkpoint"
            )
        bundle = checkpoint_bundle(run_dir, self.models.backbone)
        saved = json.loads((bundle / "config.json").read_text(encoding="utf-8")).get("checkpoint", {})
        return (
            bundle,
            f", from its last checkpoint (epoch {saved.get('epoch')}, step {saved.get('global_step')}), "
            "not a finished training",
        )

    @user_messages(outputs=1)
    def push_to_hub(
        self,
        run_id: str | None,
        repo_id: str,
        token: str,
        private: bool,
        request: gr.Request,
        profile: gr.OAuthProfile | None = None,
        oauth_token: gr.OAuthToken | None = None,
    ) -> str:
        """Upload the run's bundle (with its model card) to the Hub under the user's own token:
        the one typed, else the signed-in user's. Private unless unticked."""
        if not run_id:
            raise JobError("choose a run to push")
        bundle, note = self._bundle_dir(run_id, self.visitor(request, profile))
        url = push_bundle(
            bundle, repo_id, (token or "").strip() or getattr(oauth_token, "token", None), private=bool(private)
        )
        return f"Pushed run {run_id} to {url} ({'private' if private else 'public'}){note}."

    @user_messages(outputs=2)
    def evaluate_run(
        self, run_id: str | None, zip_path: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None
    ) -> tuple:
        """Accuracy of a finished run on a new test set: a zip checked exactly like a dataset
        upload, unpacked in the visitor's folder and removed afterwards. Every image counts (the
        test/ folder when the zip has train/ and test/)."""
        owner = self.visitor(request, profile)
        if not run_id:
            raise JobError("choose a finished run")
        model_dir = self._model_dir(run_id, owner)
        if not zip_path:
            raise UploadError("choose a .zip of class folders to evaluate on")
        path = Path(zip_path)
        summary = extract_dataset_zip(
            path, self._fresh_user_dir(owner) / "testsets", self.settings.limits, label=path.name
        )
        try:
            data = read_dataset(DataConfig(root=str(summary.root), dataset="folder", shots=None))
            items = data.test if (summary.root / "test").is_dir() else [*data.train, *data.val, *data.test]
            config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
            predictor = Predictor.from_bundle(
                model_dir, backbone=self.models.backbone(from_dict(BackboneConfig, config["backbone"]))
            )
            trained = set(predictor.classnames)
            predictor.set_classnames(data.classnames, novel=not set(data.classnames) <= trained)
            result = predictor.evaluate(items)
        finally:
            shutil.rmtree(summary.root, ignore_errors=True)
        unseen = sorted(set(data.classnames) - trained)
        note = f" Classes the run was not trained on: {', '.join(unseen)}." if unseen else ""
        warning = chance_note(result.accuracy, len(data.classnames), config.get("backbone"))
        frame = per_class_frame({"per_class": result.per_class})
        message = (
            f"Accuracy {result.accuracy:.1f}% on {result.count} images of {len(data.classnames)} classes "
            f"({path.name}).{note}{warning}"
        )
        return gr.update(value=frame, visible=not frame.empty), message

    @user_messages(outputs=1)
    def resume_run(self, run_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> str:
        self._owned(run_id, self.visitor(request, profile))
        record = self.jobs.resume(run_id or "")
        return f"Run {record.run_id} is queued again; it continues from its last checkpoint."

    @user_messages(outputs=2)
    def ask_delete(self, run_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
        record = self._owned(run_id, self.visitor(request, profile))
        if record.active:
            raise JobError(f"run {record.run_id} is {record.status}; stop it before deleting it")
        return gr.update(
            visible=True
        ), f"Delete run **{record.name}** ({record.run_id}) and all its files? This cannot be undone."

    @user_messages(outputs=3)
    def confirm_delete(self, run_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
        """Delete the run, its exported bundle and Gradio's served copies of it: a deleted run's
        bundle must not stay downloadable."""
        record = self._owned(run_id, self.visitor(request, profile))
        self.jobs.delete(record.run_id)
        bundle_name = f"specpl-{record.run_id}.zip"
        for copy in [self.settings.exports_dir / bundle_name, *self.settings.gradio_cache_dir.rglob(bundle_name)]:
            copy.unlink(missing_ok=True)
            if copy.parent != self.settings.exports_dir and not any(copy.parent.iterdir()):
                copy.parent.rmdir()
        return gr.update(visible=False), None, f"Deleted run {record.run_id} and its bundle."

    @user_messages(outputs=1)
    def import_bundle(self, zip_path: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> str:
        if not zip_path:
            raise UploadError("choose a bundle .zip first")
        path = Path(zip_path)
        staging_parent = self.settings.data_dir / "imports"
        staging_parent.mkdir(parents=True, exist_ok=True)
        bundle, config = import_bundle_zip(path, staging_parent, self.settings.limits, label=path.name)
        record = self.jobs.add_imported(bundle, name=f"imported {path.stem}", owner=self.visitor(request, profile))
        return (
            f"Imported {path.name} as run {record.run_id} "
            f"({len(config['classnames'])} classes, {config['method']['host']})."
        )

    # ----- helpers -----------------------------------------------------------------------------

    def _model_dir(self, run_id: str, owner: str) -> Path:
        model_dir = self.jobs.run_dir(self._owned(run_id, owner).run_id) / "model"
        if not (model_dir / "config.json").is_file():
            raise JobError(f"run {run_id} has no trained model yet")
        return model_dir

    def _run_config(self, run_id: str) -> dict[str, Any]:
        """A trained run's request, or an imported bundle's config."""
        run_dir = self.jobs.run_dir(run_id)
        for path, key in ((run_dir / REQUEST_FILE, "config"), (run_dir / "model" / "config.json", None)):
            if path.is_file():
                raw = json.loads(path.read_text(encoding="utf-8"))
                return raw[key] if key else raw
        return {}

    def _metrics(self, run_id: str) -> dict[str, Any]:
        """metrics.json of a trained run; an imported bundle carries its metrics in its config."""
        run_dir = self.jobs.run_dir(run_id)
        if (run_dir / "metrics.json").is_file():
            return json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        bundle_config = run_dir / "model" / "config.json"
        return (
            json.loads(bundle_config.read_text(encoding="utf-8")).get("metrics", {}) if bundle_config.is_file() else {}
        )
