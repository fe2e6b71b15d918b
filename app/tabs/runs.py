"""The Runs tab: every run with its status, config, metrics, curves and report; download, resume,
delete, evaluate on a new test set, push to the Hub, compare, and import a bundle. It lists the
runs for every tab: built last, it redraws its table and every tab's run picker in one event."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import pandas as pd

from app.files.archives import UploadError
from app.files.bundles import export_bundle_zip, import_bundle_zip
from app.files.hub import checkpoint_bundle, push_bundle
from app.files.uploads import extract_dataset_zip
from app.runtime.jobs import RESUMABLE, JobError, RunRecord
from app.studio import Studio
from app.tabs.shared import RunPicker, Shared, user_messages
from app.views.progress import (
    RunProgress,
    chance_note,
    decomposer_line,
    read_metrics,
    read_progress,
    read_run_config,
    status_line,
)
from app.views.reports import RunSummary, compare_frames, per_class_frame, percent, ranking
from app.views.widgets import (
    LOSS_PLOT,
    LR_PLOT,
    VAL_PLOT,
    WHOLE_NUMBERS,
    hide_first,
    load_when_opened,
    no_report,
    plot,
    report_components,
    run_curves,
    run_report,
)
from specpl.config import BackboneConfig, DataConfig, MethodConfig, from_dict
from specpl.datasets import read_dataset
from specpl.factory import method_label
from specpl.inference import Predictor
from specpl.registry import UnknownNameError

# zero-shot: zero-shot CLIP on the same test images, the baseline every trained run must beat
RUN_COLUMNS = ["run", "name", "status", "method", "backbone", "accuracy", "zero-shot", "gain", "created"]


class RunsTab:
    """The tab's handlers; `pickers` are every tab's run dropdowns, listed again with the table."""

    def __init__(self, studio: Studio, pickers: list[RunPicker]) -> None:
        self.studio = studio
        self.pickers = pickers

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
        for record in self.studio.visible_runs(owner):
            run_dir = self.studio.jobs.run_dir(record.run_id)
            config = read_run_config(run_dir)
            metrics = read_metrics(run_dir)
            zero_shot = metrics.get("zero_shot") if isinstance(metrics.get("zero_shot"), dict) else {}
            gain = metrics.get("gain_over_zero_shot")
            rows.append(
                [
                    record.run_id,
                    record.name,
                    record.status + (" (imported)" if record.imported else ""),
                    self._method_text(config),
                    config.get("backbone", {}).get("name", "?"),
                    percent(metrics.get("accuracy")),
                    percent(zero_shot.get("accuracy")),
                    f"{gain:+.1f}" if isinstance(gain, (int, float)) else "",
                    pd.Timestamp(record.created, unit="s").strftime("%Y-%m-%d %H:%M"),
                ]
            )
        return pd.DataFrame(rows, columns=RUN_COLUMNS)

    def run_choices(self, owner: str, finished_only: bool) -> list[tuple[str, str]]:
        return [
            (f"{r.name} · {r.status} · {r.run_id}", r.run_id)
            for r in self.studio.visible_runs(owner)
            if not finished_only
            or (r.status == "finished" and (self.studio.jobs.run_dir(r.run_id) / "model" / "config.json").is_file())
        ]

    def refresh_runs(self, selected: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
        """The runs table, this tab's run pick (kept while that run exists), and every tab's run
        picker (`pickers`: all runs, or finished ones for the tabs that use a trained model)."""
        owner = self.studio.visitor(request, profile)
        finished = self.run_choices(owner, True)
        everything = self.run_choices(owner, False)
        keep = selected if selected in [v for _, v in everything] else None
        return (
            self.runs_table(owner),
            gr.update(choices=everything, value=keep),
            *(gr.update(choices=finished if picker.finished_only else everything) for picker in self.pickers),
        )

    def run_details(self, run_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
        """Config, metrics, curves, evaluation and status of the chosen run; the previous run's
        message and bundle are cleared, so nothing on the tab speaks of another run."""
        try:
            record = self.studio.owned(run_id, self.studio.visitor(request, profile))
        except JobError:
            return {}, {}, *run_curves(RunProgress()), *no_report(), "Choose a run.", "", None
        run_dir = self.studio.jobs.run_dir(record.run_id)
        progress = read_progress(run_dir)
        config = read_run_config(run_dir)
        line = self._status(record, progress, config)
        metrics = {k: v for k, v in read_metrics(run_dir).items() if k not in ("confusion", "misclassified")}
        return config, metrics, *run_curves(progress), *run_report(record, run_dir), line, "", None

    def _status(self, record: RunRecord, progress: RunProgress, config: dict[str, Any]) -> str:
        """The run's status line, and the band decomposer it used."""
        line = status_line(record, progress, self.studio.jobs.queue_position(record.run_id), config.get("backbone"))
        used = decomposer_line(progress) or self._recorded_decomposer(record.run_id)
        return line + (f"  \n{used}" if used else "")

    def _recorded_decomposer(self, run_id: str) -> str:
        """The decomposer line from the run's (or bundle's) config, for runs whose events are gone."""
        run_dir = self.studio.jobs.run_dir(run_id)
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
        owner = self.studio.visitor(request, profile)
        summaries = []
        for run_id in run_ids or []:
            try:
                record = self.studio.owned(run_id, owner)
            except JobError:
                continue  # another visitor's run, or a deleted one: as if it were not picked
            run_dir = self.studio.jobs.run_dir(record.run_id)
            summaries.append(
                RunSummary(
                    record.run_id,
                    record.name,
                    self._method_text(read_run_config(run_dir)),
                    read_progress(run_dir),
                    read_metrics(run_dir),
                )
            )
        losses, vals = compare_frames(summaries)
        return plot(losses, "run"), plot(vals, "run"), ranking(summaries)

    @user_messages(outputs=2)
    def export_bundle(self, run_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
        """The run's bundle as a zip: the finished model, or for a stopped run its last checkpoint."""
        if not run_id:
            raise JobError("choose a run to download")
        bundle, note = self._bundle_dir(run_id, self.studio.visitor(request, profile))
        path = export_bundle_zip(bundle, self.studio.settings.exports_dir, f"specpl-{run_id}")
        return str(path), f"Bundle ready: {path.name} (model.safetensors, config.json, README.md){note}."

    def _bundle_dir(self, run_id: str, owner: str) -> tuple[Path, str]:
        """A run's model bundle and a note on where it comes from: the finished model, else (a
        cancelled, failed or paused run) one built from its last checkpoint."""
        record = self.studio.owned(run_id, owner)
        run_dir = self.studio.jobs.run_dir(record.run_id)
        if (run_dir / "model" / "config.json").is_file():
            return run_dir / "model", ""
        if record.status not in RESUMABLE:
            raise JobError(
                f"run {run_id} is {record.status}; a bundle exists once it has finished, "
                "or has been stopped after a checkpoint"
            )
        bundle = checkpoint_bundle(run_dir, self.studio.models.backbone)
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
        bundle, note = self._bundle_dir(run_id, self.studio.visitor(request, profile))
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
        owner = self.studio.visitor(request, profile)
        if not run_id:
            raise JobError("choose a finished run")
        model_dir = self.studio.model_dir(run_id, owner)
        if not zip_path:
            raise UploadError("choose a .zip of class folders to evaluate on")
        path = Path(zip_path)
        summary = extract_dataset_zip(
            path, self.studio.fresh_user_dir(owner) / "testsets", self.studio.settings.limits, label=path.name
        )
        try:
            data = read_dataset(DataConfig(root=str(summary.root), dataset="folder", shots=None))
            items = data.test if (summary.root / "test").is_dir() else [*data.train, *data.val, *data.test]
            config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
            predictor = Predictor.from_bundle(
                model_dir, backbone=self.studio.models.backbone(from_dict(BackboneConfig, config["backbone"]))
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
        self.studio.owned(run_id, self.studio.visitor(request, profile))
        record = self.studio.jobs.resume(run_id or "")
        return f"Run {record.run_id} is queued again; it continues from its last checkpoint."

    def watch_resumed(
        self, run_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None
    ) -> tuple[Any, gr.Timer, Any]:
        """After Resume, Data & Train watches the resumed run, with live progress, and this tab's
        status line says it is queued or running again instead of how it ended before."""
        try:
            record = self.studio.owned(run_id, self.studio.visitor(request, profile))
        except JobError:
            return gr.update(), gr.Timer(), gr.update()
        run_dir = self.studio.jobs.run_dir(record.run_id)
        status = self._status(record, read_progress(run_dir), read_run_config(run_dir))
        return record.run_id, gr.Timer(active=record.active), status

    @user_messages(outputs=2)
    def ask_delete(self, run_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
        record = self.studio.owned(run_id, self.studio.visitor(request, profile))
        if record.active:
            raise JobError(f"run {record.run_id} is {record.status}; stop it before deleting it")
        return gr.update(
            visible=True
        ), f"Delete run **{record.name}** ({record.run_id}) and all its files? This cannot be undone."

    @user_messages(outputs=3)
    def confirm_delete(self, run_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple:
        """Delete the run, its exported bundle and Gradio's served copies of it: a deleted run's
        bundle must not stay downloadable."""
        record = self.studio.owned(run_id, self.studio.visitor(request, profile))
        self.studio.jobs.delete(record.run_id)
        bundle_name = f"specpl-{record.run_id}.zip"
        settings = self.studio.settings
        for copy in [settings.exports_dir / bundle_name, *settings.gradio_cache_dir.rglob(bundle_name)]:
            copy.unlink(missing_ok=True)
            if copy.parent != settings.exports_dir and not any(copy.parent.iterdir()):
                copy.parent.rmdir()
        return gr.update(visible=False), None, f"Deleted run {record.run_id} and its bundle."

    @user_messages(outputs=1)
    def import_bundle(self, zip_path: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> str:
        if not zip_path:
            raise UploadError("choose a bundle .zip first")
        path = Path(zip_path)
        staging_parent = self.studio.settings.data_dir / "imports"
        staging_parent.mkdir(parents=True, exist_ok=True)
        bundle, config = import_bundle_zip(path, staging_parent, self.studio.settings.limits, label=path.name)
        record = self.studio.jobs.add_imported(
            bundle, name=f"imported {path.stem}", owner=self.studio.visitor(request, profile)
        )
        return (
            f"Imported {path.name} as run {record.run_id} "
            f"({len(config['classnames'])} classes, {config['method']['host']})."
        )


def build(shared: Shared) -> None:
    """The tab's components and events, and the run lists of every tab (`Shared`): build it after
    the other tabs, so that their pickers and triggers are all there."""
    handlers = RunsTab(shared.studio, shared.run_pickers)
    with gr.Tab("Runs", id="runs") as runs_tab:
        refresh = gr.Button("Refresh")
        runs_table = gr.Dataframe(label="Runs", interactive=False, elem_id="runs-table")
        runs_pick = gr.Dropdown([], label="Run", allow_custom_value=True, elem_id="runs-pick")
        runs_status = gr.Markdown(elem_id="runs-status")
        with gr.Row():
            download = gr.Button("Download bundle")
            resume = gr.Button("Resume")
            delete = gr.Button("Delete…", variant="stop")
        with gr.Row(visible=False) as confirm_row:
            confirm_text = gr.Markdown()
            confirm = gr.Button("Yes, delete it", variant="stop")
            cancel = gr.Button("Keep it")
        runs_message = gr.Markdown(elem_id="runs-message")
        bundle_file = gr.File(label="Bundle (.zip)", interactive=False)
        with gr.Row():
            runs_config = gr.JSON(label="Config")
            runs_metrics = gr.JSON(label="Metrics")
        runs_curve = gr.LinePlot(**LOSS_PLOT, height=260, elem_id="runs-curve")
        with gr.Row():
            runs_val = gr.LinePlot(**VAL_PLOT, height=220, elem_id="runs-val")
            runs_lr = gr.LinePlot(**LR_PLOT, height=220, elem_id="runs-lr")
        runs_report = report_components("runs")
        gr.Markdown(
            "#### Evaluate on a new test set\n"
            "A `.zip` of class folders (or `train/` and `test/`), checked like a dataset upload; "
            "every image is scored (the `test/` folder when there is one)."
        )
        with gr.Row():
            eval_zip = gr.File(label="Test set .zip", file_types=[".zip"], elem_id="eval-zip")
            eval_go = gr.Button("Evaluate the chosen run", elem_id="eval-go")
        eval_message = gr.Markdown(elem_id="eval-message")
        eval_per_class = gr.BarPlot(
            x="class",
            y="accuracy",
            title="Per-class accuracy on the new test set",
            y_lim=[0, 100],  # from 0, so a low bar reads as low
            height=240,
            elem_id="eval-per-class",
        )
        gr.Markdown(
            "#### Push to the Hugging Face Hub\n"
            "Uploads the chosen run's bundle and its model card with your own access token "
            "(a stopped run: its last checkpoint). The token is used for this upload only and never stored."
        )
        with gr.Row():
            hub_repo = gr.Textbox(label="Repository (user/name)", elem_id="hub-repo")
            hub_token = gr.Textbox(label="Access token (write)", type="password", elem_id="hub-token")
            hub_private = gr.Checkbox(True, label="Private", elem_id="hub-private")
        push = gr.Button("Push to the Hub", elem_id="hub-push")
        hub_message = gr.Markdown(elem_id="hub-message")
        gr.Markdown(
            "#### Compare runs\n"
            "Overlay the curves of the runs you pick (validation accuracy per epoch, 0: before training); "
            "the table ranks them (HM when base/new was measured, else test accuracy) "
            "beside zero-shot CLIP on the same test images and the gain in points. "
            "For base-to-new runs, validation holds only the training (base) classes, "
            "so choosing the kept epoch on it cannot protect new-class accuracy."
        )
        compare_pick = gr.Dropdown(
            [], multiselect=True, allow_custom_value=True, label="Runs to compare", elem_id="compare-pick"
        )
        with gr.Row():
            compare_loss = gr.LinePlot(
                x="step",
                y="loss",
                color="run",
                title="Total loss",
                x_axis_format=WHOLE_NUMBERS,
                height=240,
                elem_id="compare-loss",
            )
            compare_val = gr.LinePlot(
                x="epoch",
                y="accuracy",
                color="run",
                title="Validation accuracy per epoch",
                x_axis_format=WHOLE_NUMBERS,
                height=240,
                elem_id="compare-val",
            )
        compare_rank = gr.Dataframe(label="Ranking", interactive=False, elem_id="compare-rank")
        gr.Markdown(
            "#### Import a bundle\n"
            "A `.zip` of `model.safetensors`, `config.json` and `README.md` (as downloaded above). "
            "Pickled weights are refused."
        )
        import_file = gr.File(label="Bundle .zip", file_types=[".zip"])
        import_go = gr.Button("Import")
    load_when_opened(runs_tab)
    shared.run_pickers.append(RunPicker(compare_pick, finished_only=False))
    run_lists = [runs_table, runs_pick, *(picker.dropdown for picker in shared.run_pickers)]

    def list_runs(trigger: Callable) -> Any:  # a listener (`button.click`, `tab.select`) or `event.then`
        return trigger(handlers.refresh_runs, runs_pick, run_lists, api_visibility="private")

    for trigger in (refresh.click, shared.demo.load, runs_tab.select, *shared.list_runs_after):
        list_runs(trigger)
    runs_plots = [runs_curve, runs_val, runs_lr]
    hide_first(runs_pick.change, runs_plots).then(  # redrawn from scratch: see `app.views.widgets.plot`
        handlers.run_details,
        runs_pick,
        [runs_config, runs_metrics, *runs_plots, *runs_report, runs_status, runs_message, bundle_file],
        api_visibility="private",
    )
    hide_first(compare_pick.change, [compare_loss, compare_val]).then(  # a run picked later is drawn too
        handlers.compare_runs, compare_pick, [compare_loss, compare_val, compare_rank], api_name="compare_runs"
    )
    eval_go.click(handlers.evaluate_run, [runs_pick, eval_zip], [eval_per_class, eval_message], api_name="evaluate_run")
    push.click(handlers.push_to_hub, [runs_pick, hub_repo, hub_token, hub_private], hub_message, api_name="push_to_hub")
    download.click(handlers.export_bundle, runs_pick, [bundle_file, runs_message], api_name="export_bundle")
    resumed = resume.click(handlers.resume_run, runs_pick, runs_message, api_name="resume_run")
    watching = list_runs(resumed.then).then(
        handlers.watch_resumed,
        runs_pick,
        [shared.watched_run, shared.watch_timer, runs_status],
        api_visibility="private",
    )
    shared.continue_training(watching.then)
    delete.click(handlers.ask_delete, runs_pick, [confirm_row, confirm_text], api_visibility="private")
    cancel.click(lambda: gr.update(visible=False), None, confirm_row, api_visibility="private")
    deleted = confirm.click(
        handlers.confirm_delete, runs_pick, [confirm_row, bundle_file, runs_message], api_name="delete_run"
    )
    list_runs(deleted.then)
    imported = import_go.click(handlers.import_bundle, import_file, runs_message, api_name="import_bundle")
    list_runs(imported.then)
