"""The Data & Train tab: a dataset (an upload, the demo set, or one built class by class), the run
form with its Advanced options (presets, a preset file, the CLI line, the training plan), Start and
Stop, and the watched run's progress, curves and report."""

from __future__ import annotations

import html
import json
import threading
import time
from pathlib import Path
from typing import Any

import gradio as gr

from app.files.archives import UploadError
from app.files.uploads import DatasetSummary, add_builder_class, extract_dataset_zip, summarize_dataset
from app.runtime import backbones, decomposers
from app.runtime.jobs import ACTIVE, JobError
from app.studio import Studio
from app.tabs.shared import USER_ERRORS, Shared, user_messages
from app.views import advanced
from app.views.analysis import CPU_DECOMPOSER
from app.views.form import draw_method_options, keep_unset_numbers, remember_form, setting_controls, shown_value
from app.views.plan import training_counts, training_plan
from app.views.progress import RunProgress, progress_html, read_progress, read_run_config
from app.views.widgets import (
    LOSS_PLOT,
    LR_PLOT,
    VAL_PLOT,
    load_when_opened,
    no_report,
    report_components,
    run_curves,
    run_report,
    show_when_set,
)
from specpl import defaults
from specpl.config import MethodConfig, RunConfig
from specpl.factory import check_combination, method_label
from specpl.io import atomic_write_text
from specpl.methods import BOOSTERS, HOSTS, UNPUBLISHED
from specpl.registry import UnknownNameError
from specpl.resolve import resolve_run

MAX_KNOWN_DATASETS = 256  # datasets whose per-class counts are kept for the training plan
DOUBLE_START_S = 2.0  # the same visitor's identical Start this soon after the last is one click, not a second run
DATASET_CLEARED = (None, "", None)  # dataset root, summary, thumbnails: what a failed upload leaves
STARTING_HTML = "<div class='specpl-status' data-status='starting'>Starting a new run…</div>"
HIDDEN = {"__type__": "update", "visible": False}  # a Gradio update, as a browser-side handler returns it


class TrainTab:
    """The tab's handlers, and what they keep between events: each loaded dataset's per-class
    counts (for its training plan) and each visitor's last Start (a double click starts one run)."""

    def __init__(self, studio: Studio) -> None:
        self.studio = studio
        self._dataset_counts: dict[
            str, tuple[dict[str, tuple[int, int]], bool]
        ] = {}  # root -> (class counts, has train/ and test/)
        self._last_start: dict[str, tuple[str, float, str]] = {}  # owner -> (request, time, run id)
        self._start_lock = threading.Lock()

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
        datasets = self.studio.fresh_user_dir(self.studio.visitor(request, profile)) / "datasets"
        return extract_dataset_zip(path, datasets, self.studio.settings.limits, label=label, split_ratio=split_ratio)

    @user_messages(outputs=2)
    def add_class(
        self, class_name: str, files: list[str] | None, request: gr.Request, profile: gr.OAuthProfile | None = None
    ) -> tuple:
        if not files:
            raise UploadError("add one or more images for this class")
        builder = self.studio.fresh_user_dir(self.studio.visitor(request, profile)) / "builder"
        skipped = add_builder_class(builder, class_name, [Path(f) for f in files], self.studio.settings.limits)
        classes = sorted(p.name for p in builder.iterdir() if p.is_dir())
        counts = ", ".join(f"{name.replace('_', ' ')} ({len(list((builder / name).iterdir()))})" for name in classes)
        note = f" Skipped: {'; '.join(skipped)}." if skipped else ""
        return f"Classes so far: {counts}.", f"Added class {class_name.strip()!r}.{note}"

    @user_messages(outputs=4, cleared=DATASET_CLEARED)
    def use_builder(self, split_ratio: float, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
        builder = self.studio.user_dir(self.studio.visitor(request, profile)) / "builder"
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
        batch size and steps, training images, validation held out and the epoch kept (`app.views.plan`);
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
        nothing = (gr.skip(),) * (len(DATASET_CLEARED) + 1)  # a fresh page is empty already; clearing
        # it would undo a dataset chosen before this event ran ("Use the demo set" clicked at once)
        if not (
            saved
            and root.is_dir()
            and root.resolve().is_relative_to(self.studio.user_dir(self.studio.visitor(request, profile)).resolve())
        ):
            return nothing
        try:
            summary = summarize_dataset(root, float(saved.get("split_ratio") or 0.5), label="the dataset")
        except UploadError:
            return nothing
        return self._dataset_outputs(summary, "Dataset restored from your last visit.")

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
        folder = self.studio.fresh_user_dir(self.studio.visitor(request)) / "presets"
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
        hosted = self.studio.settings.multi_user
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
        owner = self.studio.visitor(request, profile)
        root = Path(dataset_root) if dataset_root else None
        if (
            root is None
            or not root.is_dir()
            or not root.resolve().is_relative_to(self.studio.user_dir(owner).resolve())
        ):
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
        paths = advanced.server_paths(config) if self.studio.settings.multi_user else []
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
            record = self.studio.jobs.submit(config, root, label, owner=owner)
            self._last_start[owner] = (request_key, time.monotonic(), record.run_id)
        position = self.studio.jobs.queue_position(record.run_id)
        running = sum(r.status == "running" for r in self.studio.jobs.list())
        waiting = (
            f" It waits at queue position {position} while {running} training(s) run." if position and running else ""
        )
        return record.run_id, record.run_id, f"Started run {record.run_id}.{waiting}"

    @user_messages(outputs=1)
    def stop_training(self, run_id: str, request: gr.Request, profile: gr.OAuthProfile | None = None) -> str:
        self.studio.owned(run_id, self.studio.visitor(request, profile))
        record = self.studio.jobs.stop(run_id)
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
            record = self.studio.owned(run_id, self.studio.visitor(request, profile))
        except JobError:
            return (
                f"<div class='specpl-status'>Run {html.escape(run_id)} no longer exists.</div>",
                *run_curves(RunProgress()),
                {},
                *no_report(),
            )
        run_dir = self.studio.jobs.run_dir(run_id)
        progress = read_progress(run_dir)
        position = self.studio.jobs.queue_position(run_id)
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
        backbone = read_run_config(run_dir).get("backbone")
        return (
            progress_html(record, progress, position, backbone),
            *run_curves(progress),
            details,
            *run_report(record, run_dir),
        )

    def poll_run(self, run_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
        """One tick of the status timer: `run_status`, and the timer itself, which stops once the
        watched run is over, so an idle page polls nothing. The Start/Stop message is cleared when
        the run ends, so that "Stopping…" never sits above "Cancelled" or "Finished"; Stop can be
        clicked only while the run is active."""
        outputs = self.run_status(run_id, request, profile)
        active = outputs[4].get("status") in ACTIVE
        return *outputs, gr.Timer(active=active), gr.update() if active else "", gr.update(interactive=active)

    def reattach(
        self, remembered: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None
    ) -> tuple[str, str]:
        """On page load: the run this browser started while it is active, else the one training
        now (hosted: only the visitor's own), else the remembered run's result."""
        owner = self.studio.visitor(request, profile)
        visible = self.studio.visible_runs(owner)
        known = next((r for r in visible if r.run_id == remembered), None) if remembered else None
        if known and known.active:
            return known.run_id, known.run_id
        active = sorted(
            (r for r in visible if r.active), key=lambda r: (r.status != "running", r.queued_at or r.created)
        )
        chosen = active[0].run_id if active else (known.run_id if known else "")
        return chosen, chosen


def build(shared: Shared) -> None:
    """The tab's components and events."""
    handlers = TrainTab(shared.studio)
    studio, demo, dataset_root, timer = shared.studio, shared.demo, shared.dataset_root, shared.watch_timer
    hosts = HOSTS.names()
    default_host, default_boosters = (
        ("coop" if "coop" in hosts else hosts[0]),
        [n for n in BOOSTERS.names() if n == "specpl"],
    )
    default_backbone = backbones.default_backbone_key()
    fallback = backbones.fallback_note()  # set when offline: the world CLIP is the default
    with gr.Tab("Data & Train", id="train"):
        remembered_run = gr.BrowserState("", storage_key="specpl-studio-run")
        saved_dataset = gr.BrowserState(None, storage_key="specpl-studio-dataset")
        saved_form = gr.BrowserState({}, storage_key="specpl-studio-form")
        gr.Markdown(fallback or "", visible=bool(fallback), elem_id="fallback-note")
        with gr.Row():
            with gr.Column():
                gr.Markdown(
                    "### 1. Data\nA `.zip` with one folder per class (`cat/1.jpg`, …), "
                    "or `train/` and `test/` each holding class folders."
                )
                dataset_zip = gr.File(label="Dataset .zip", file_types=[".zip"], elem_id="dataset-zip")
                use_demo = gr.Button(
                    "Use the demo set (SpectralWorld images)",
                    variant="primary" if fallback else "secondary",
                    elem_id="use-demo",
                )
                split_ratio = gr.Slider(
                    0.1,
                    0.9,
                    value=0.5,
                    step=0.05,
                    label="Train share per class (when there is no test/ folder)",
                )
                with gr.Accordion("…or build one here, class by class", open=False):
                    class_name = gr.Textbox(label="Class name", placeholder="golden retriever")
                    class_files = gr.File(label="Images of this class", file_count="multiple", file_types=["image"])
                    with gr.Row():
                        add_class = gr.Button("Add class")
                        use_built = gr.Button("Use these classes")
                    builder_state = gr.Markdown("No classes yet.")
                data_message = gr.Markdown(elem_id="data-message")
                summary = gr.Markdown(elem_id="dataset-summary")
                thumbnails = gr.Gallery(
                    label="Sample images", columns=6, height=220, elem_id="thumbnails", visible=False
                )
            with gr.Column():
                gr.Markdown("### 2. Train")
                backbone = gr.Dropdown(
                    backbones.dropdown_choices(), value=default_backbone, label="Backbone", elem_id="backbone"
                )
                backbone_note = gr.Markdown(backbones.note(default_backbone))
                with gr.Row():
                    host = gr.Dropdown(
                        [(HOSTS.get(n).description, n) for n in hosts],
                        value=default_host,
                        label="Host method",
                        elem_id="host",
                    )
                    boosters = gr.CheckboxGroup(
                        [(BOOSTERS.get(n).description, n) for n in BOOSTERS.names()],
                        value=default_boosters,
                        label="Boosters",
                        elem_id="boosters",
                    )
                method_note = gr.Markdown(handlers.method_note(default_host, default_boosters), elem_id="method-note")
                decomposer = gr.Dropdown(
                    decomposers.dropdown_choices(None, studio.settings.multi_user),
                    value=CPU_DECOMPOSER,
                    label="Band decomposer",
                    elem_id="decomposer",
                )
                decomposer_note = gr.Markdown(
                    decomposers.note(CPU_DECOMPOSER, None, studio.settings.multi_user), elem_id="decomposer-note"
                )
                with gr.Row():
                    shots = gr.Number(16, precision=0, minimum=0, label="Shots per class (0 = all)", elem_id="shots")
                    epochs = gr.Number(
                        0,
                        precision=0,
                        minimum=0,
                        label="Epochs (0 or empty = auto)",
                        placeholder="auto",
                        elem_id="epochs",
                    )
                    lr = gr.Number(0, minimum=0, label="Learning rate (0 = method default)", elem_id="lr")
                training_plan = gr.Markdown(
                    elem_id="training-plan"
                )  # the epochs, batch and held-out validation the run will use
                with gr.Accordion("Advanced", open=False, elem_id="advanced") as advanced_box:
                    preset = gr.Dropdown(
                        advanced.presets_of(default_host),
                        value="default",
                        label=(
                            "Preset (default: measured, validation chooses the epoch kept; "
                            "paper: the published settings, the last epoch)"
                        ),
                        elem_id="preset",
                    )
                    method_options = gr.JSON(
                        {}, visible=False, elem_id="method-options"
                    )  # the options the user set, by key
                    redraw_options = gr.State(0)  # bumped when the options must be drawn again
                    draw_method_options(
                        host, boosters, preset, method_options, [advanced_box.expand, redraw_options.change]
                    )
                    setting_fields = setting_controls(default_host, default_boosters)
                    with gr.Row():
                        save_preset = gr.Button("Save preset", elem_id="save-preset")
                        preset_upload = gr.File(
                            label="Load a preset (.json)", file_types=[".json"], elem_id="preset-upload"
                        )
                    preset_file = gr.File(label="Preset file", interactive=False, elem_id="preset-file")
                    preset_message = gr.Markdown(elem_id="preset-message")
                    run_config = gr.JSON(label="Run config (what Start trains)", elem_id="run-config")
                    cli_command = gr.Textbox(
                        label="CLI command (settings without a flag come from the saved preset, --config)",
                        lines=3,
                        interactive=False,
                        buttons=["copy"],
                        elem_id="cli-command",
                    )
                    keep_unset_numbers(  # the accordion's contents load when it first opens
                        advanced_box.expand, lambda: load_when_opened(advanced_box, advanced_box.expand), setting_fields
                    )
                run_name = gr.Textbox(label="Run name (optional)")
                with gr.Row():
                    start = gr.Button("Start training", variant="primary", elem_id="start")
                    stop = gr.Button(  # enabled by the status timer while the watched run is active
                        "Stop", variant="stop", interactive=False, elem_id="stop"
                    )
                train_message = gr.Markdown(elem_id="train-message")
                run_id = shared.watched_run.render()
                status = gr.HTML(elem_id="run-status", visible=False)
                curve = gr.LinePlot(**LOSS_PLOT, height=260, elem_id="loss-curve", visible=False)
                with gr.Row():
                    val_curve = gr.LinePlot(**VAL_PLOT, height=220, elem_id="val-curve", visible=False)
                    lr_curve = gr.LinePlot(**LR_PLOT, height=220, elem_id="lr-curve", visible=False)
                confusion, per_class, misclassified = report_components("train")
                with gr.Accordion("Run details", open=False, visible=False) as details_box:
                    details = gr.JSON(label="Status", visible=False)

    dataset_outputs = [dataset_root, summary, thumbnails, data_message]
    dataset_zip.upload(handlers.upload_zip, [dataset_zip, split_ratio], dataset_outputs, api_name="upload_dataset")
    add_class.click(handlers.add_class, [class_name, class_files], [builder_state, data_message], api_name="add_class")
    use_built.click(handlers.use_builder, [split_ratio], dataset_outputs, api_name="use_builder")
    use_demo.click(handlers.use_demo_set, [split_ratio], dataset_outputs, api_name="use_demo_set")
    dataset_root.change(handlers.saved_dataset, [dataset_root, split_ratio], saved_dataset, api_visibility="private")
    show_when_set(dataset_root, [thumbnails])
    backbone.change(backbones.note, backbone, backbone_note, api_visibility="private")
    form = [
        host,
        boosters,
        preset,
        decomposer,
        shots,
        epochs,
        lr,
        split_ratio,
        *setting_fields,
        method_options,
    ]  # `advanced.form_keys()` order
    wire_method_form(
        handlers,
        demo,
        backbone,
        form,
        redraw_options,
        method_note,
        run_config,
        cli_command,
        dataset_root,
        training_plan,
    )
    source = setting_fields[[field.key for field in advanced.setting_fields()].index("decomposer.source")]
    decomposer.change(
        lambda name, src: handlers.decomposer_note(name, src)[1],
        [decomposer, source],
        decomposer_note,
        api_visibility="private",
    )
    source.change(
        handlers.decomposer_note, [decomposer, source], [decomposer, decomposer_note], api_name="decomposer_status"
    )
    save_preset.click(handlers.save_preset, [backbone, *form], [preset_file, preset_message], api_name="save_preset")
    preset_upload.upload(
        handlers.load_preset,
        [preset_upload, redraw_options],
        [backbone, *form, redraw_options, preset_message],
        api_name="load_preset",
    )
    run_views = [curve, val_curve, lr_curve, confusion, per_class, misclassified]
    status_outputs = [status, curve, val_curve, lr_curve, details, confusion, per_class, misclassified]
    start.click(  # in the browser, at once: the new run's status comes seconds later, the old result must not stay
        None, None, [status, *run_views], js=f"() => {json.dumps([STARTING_HTML, *[HIDDEN] * len(run_views)])}"
    )
    started = start.click(
        handlers.form_config, [backbone, *form], [run_config, cli_command], api_name="run_config"
    ).then(
        handlers.start_training,
        [dataset_root, run_config, run_name],
        [run_id, remembered_run, train_message],
        api_name="start_training",
    )
    shared.list_runs_after.append(started.then)
    shared.continue_training(started.then, api_name="continue_training")
    stop.click(handlers.stop_training, run_id, train_message, api_name="stop_training")
    timer.tick(
        handlers.poll_run,
        run_id,
        [*status_outputs, timer, train_message, stop],
        show_progress="hidden",
        concurrency_limit=None,
        api_visibility="private",
    )
    run_id.change(handlers.run_status, run_id, status_outputs, api_name="run_status", show_progress="hidden")
    started.then(  # the watched run drawn again after the click cleared it: the new run, or the one a refused
        # Start leaves (wired after the named event above: Gradio names an unnamed event after its function)
        handlers.run_status,
        run_id,
        status_outputs,
        show_progress="hidden",
        api_visibility="private",
    )
    show_when_set(run_id, [status, details_box, details, timer])  # the curves show themselves once they have points
    reattached = demo.load(handlers.reattach, remembered_run, [run_id, remembered_run], api_visibility="private")
    shared.continue_training(reattached.then)  # after a reload, this page's requests carry a ZeroGPU run on
    demo.load(handlers.restore_dataset, saved_dataset, dataset_outputs, api_visibility="private")
    remember_form(
        demo,
        {"backbone": backbone, "run_name": run_name, **dict(zip(advanced.form_keys(), form, strict=True))},
        saved_form,
    )


def wire_method_form(
    handlers: TrainTab,
    demo: gr.Blocks,
    backbone: gr.Dropdown,
    form: list,
    redraw: gr.State,
    note: gr.Markdown,
    run_config: gr.JSON,
    cli: gr.Textbox,
    dataset_root: gr.State,
    plan: gr.Markdown,
) -> None:
    """The method picker drives the Advanced form: any change (a reload's restore included) offers
    the host's presets and describes the choice (or the library's refusal of it); a choice the user
    makes also resets the settings to what they mean for it (a preset: the options too) and redraws
    the options.
    Every change of the form or the dataset redraws the run config, the CLI line and the training plan."""
    host, boosters, preset = form[:3]
    settings, options = form[len(advanced.MAIN_KEYS) : -1], form[-1]
    for trigger in (host.change, boosters.change):
        trigger(
            handlers.method_choice,
            [host, boosters, preset],
            [preset, note],
            show_progress="hidden",
            api_visibility="private",
        )
    gr.on(
        [host.input, boosters.input],
        handlers.method_defaults,
        [host, boosters, preset, redraw, options],
        [*settings, options, redraw],
        show_progress="hidden",
        api_visibility="private",
    )
    preset.input(
        handlers.preset_defaults,
        [host, boosters, preset, redraw],
        [*settings, options, redraw],
        show_progress="hidden",
        api_visibility="private",
    )
    gr.on(
        [c.change for c in [backbone, *form, dataset_root]],
        handlers.form_and_plan,
        [dataset_root, backbone, *form],
        [run_config, cli, plan],
        show_progress="hidden",
        api_visibility="private",
    )
    demo.load(
        handlers.form_and_plan,
        [dataset_root, backbone, *form],
        [run_config, cli, plan],
        show_progress="hidden",
        api_visibility="private",
    )
