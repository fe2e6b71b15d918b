"""The Blocks layout: five tabs wired to `Studio`'s handlers. No logic lives here."""

from __future__ import annotations

import json
import os
from typing import Any

import gradio as gr
from starlette.middleware import Middleware

from app import advanced, backbones, decomposers
from app.analysis import CPU_DECOMPOSER, MASK_IMAGES, PAIRS, decomposer_names
from app.assets import BuildAssetCache
from app.identity import BrowserCookie, PrivateFiles
from app.settings import AppSettings
from app.studio import Studio, shown_value
from specpl.methods import BOOSTERS, HOSTS
from specpl.world.demo_zip import DEMO_CLASSES

POLL_SECONDS = 1.0
INTRO = (
    "# SpecPL Studio\n"
    "Teach a frozen CLIP model your own classes from a few images: upload a dataset, train in the "
    "background, look at the band maps and counterfactuals, classify, and export the model."
)
WORLD_EXAMPLES = ", ".join(DEMO_CLASSES[:3])
VAL_PLOT = {  # the validation curve: the run's accuracy on its held-out images, and zero-shot CLIP's on the same images
    "x": "epoch",
    "y": "accuracy",
    "color": "series",
    "title": "Validation accuracy per epoch",
    "y_lim": [0, 100],
    "caption": (
        "Epoch 0: the initial prompts, before training. "
        "Zero-shot: zero-shot CLIP on the same validation images, for reference."
    ),
}


def build_demo(settings: AppSettings | None = None) -> gr.Blocks:
    """The whole app. Gradio's upload cache is moved under the data directory first, so that
    nothing the app receives is written elsewhere."""
    settings = settings or AppSettings.from_env()
    settings.gradio_cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(settings.gradio_cache_dir)
    studio = Studio(settings)
    band_decomposers = decomposer_names()
    hosts = HOSTS.names()
    default_host, default_boosters = (
        ("coop" if "coop" in hosts else hosts[0]),
        [n for n in BOOSTERS.names() if n == "specpl"],
    )
    backbone_choices, default_backbone = backbones.dropdown_choices(), backbones.default_backbone_key()
    fallback = backbones.fallback_note()  # set when offline: the world CLIP is the default

    with gr.Blocks(
        title="SpecPL Studio", delete_cache=(3600, 24 * 3600)
    ) as demo:  # Gradio's cache: files older than a day
        demo.studio = studio  # type: ignore[attr-defined]  # for tests and app.py shutdown
        gr.Markdown(INTRO)
        if settings.oauth:
            gr.LoginButton()  # on a Space with OAuth: runs then follow the signed-in user
        dataset_root = gr.State(None)
        remembered_run = gr.BrowserState("", storage_key="specpl-studio-run")
        saved_dataset = gr.BrowserState(None, storage_key="specpl-studio-dataset")
        saved_form = gr.BrowserState({}, storage_key="specpl-studio-form")

        with gr.Tabs():
            with gr.Tab("Data & Train", id="train"):
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
                            class_files = gr.File(
                                label="Images of this class", file_count="multiple", file_types=["image"]
                            )
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
                            backbone_choices, value=default_backbone, label="Backbone", elem_id="backbone"
                        )
                        backbone_note = gr.Markdown(studio.backbone_note(default_backbone))
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
                        method_note = gr.Markdown(
                            studio.method_note(default_host, default_boosters), elem_id="method-note"
                        )
                        decomposer = gr.Dropdown(
                            decomposers.dropdown_choices(None, settings.multi_user),
                            value=CPU_DECOMPOSER,
                            label="Band decomposer",
                            elem_id="decomposer",
                        )
                        decomposer_note = gr.Markdown(
                            decomposers.note(CPU_DECOMPOSER, None, settings.multi_user), elem_id="decomposer-note"
                        )
                        with gr.Row():
                            shots = gr.Number(
                                16, precision=0, minimum=0, label="Shots per class (0 = all)", elem_id="shots"
                            )
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
                        run_name = gr.Textbox(label="Run name (optional)")
                        with gr.Row():
                            start = gr.Button("Start training", variant="primary", elem_id="start")
                            stop = gr.Button("Stop", variant="stop", elem_id="stop")
                        train_message = gr.Markdown(elem_id="train-message")
                        run_id = gr.Textbox(label="Watching run", interactive=False, elem_id="run-id")
                        status = gr.HTML(elem_id="run-status", visible=False)
                        curve = gr.LinePlot(
                            x="step",
                            y="loss",
                            color="term",
                            title="Loss per term",
                            height=260,
                            elem_id="loss-curve",
                            visible=False,
                        )
                        with gr.Row():
                            val_curve = gr.LinePlot(**VAL_PLOT, height=220, elem_id="val-curve", visible=False)
                            lr_curve = gr.LinePlot(
                                x="step", y="lr", title="Learning rate", height=220, elem_id="lr-curve", visible=False
                            )
                        confusion, per_class, misclassified = report_components("train")
                        with gr.Accordion("Run details", open=False, visible=False) as details_box:
                            details = gr.JSON(label="Status", visible=False)
                timer = gr.Timer(POLL_SECONDS, active=False)  # started by watching a run, stopped when it is over

            with gr.Tab("Bands", id="bands") as bands_tab:
                gr.Markdown(
                    "The low band carries the semantics, the high band the fine grain. "
                    "Pick an image and a decomposer (`fft` is weight-free and fast on CPU). "
                    "With a trained run chosen, DAPT's foreground mask for the image is shown too."
                )
                with gr.Row():
                    with gr.Column(scale=1):
                        band_input = gr.Image(type="filepath", label="Image", elem_id="band-image")
                        band_search = gr.Textbox(
                            label="Search your dataset's images",
                            placeholder="class or file name",
                            elem_id="band-search",
                        )
                        band_pick = gr.Dropdown([], label="…or pick from your dataset", elem_id="band-pick")
                        band_picked = gr.State(
                            None
                        )  # the picked image's place in its dataset (the image box holds a copy)
                        band_found = gr.Markdown(elem_id="band-found")
                        band_decomposer = gr.Dropdown(band_decomposers, value=CPU_DECOMPOSER, label="Decomposer")
                        band_size = gr.Slider(64, 512, value=224, step=32, label="Resolution (px)")
                        band_run = gr.Dropdown(
                            [],
                            label="Trained run (for its DAPT foreground mask)",
                            allow_custom_value=True,
                            elem_id="band-run",
                        )
                        band_go = gr.Button("Compute bands", variant="primary")
                        band_time = gr.Markdown()
                    with gr.Column(scale=3):
                        with gr.Row():
                            band_images = [
                                gr.Image(type="pil", label=label, interactive=False)
                                for label in (
                                    "Original",
                                    "Low band (decoded)",
                                    "High band magnitude",
                                    "Latent channels",
                                )
                            ]
                        with gr.Row():
                            mask_images = [
                                gr.Image(type="pil", label=label, interactive=False, elem_id=f"band-{name}")
                                for name, label in zip(
                                    MASK_IMAGES,
                                    (
                                        "DAPT saliency map (as the model sees the image)",
                                        "DAPT foreground (outside the mask darkened)",
                                    ),
                                    strict=True,
                                )
                            ]
                        mask_note = gr.Markdown(elem_id="band-mask-note")

            with gr.Tab("Counterfactual", id="counterfactual") as counterfactual_tab:
                gr.Markdown(
                    "Swap bands between two images and watch the prediction: "
                    "does the model follow the semantics (low band) or the grain (high band)?"
                )
                cf_run = gr.Dropdown([], label="Trained run", allow_custom_value=True)
                cf_search = gr.Textbox(label="Search the run's images", placeholder="class or file name")
                cf_found = gr.Markdown()
                with gr.Row():
                    with gr.Column():
                        cf_a = gr.Image(type="filepath", label="Image A")
                        cf_pick_a = gr.Dropdown([], label="…or pick A from the run's data")
                    with gr.Column():
                        cf_b = gr.Image(type="filepath", label="Image B")
                        cf_pick_b = gr.Dropdown([], label="…or pick B from the run's data")
                cf_top_k = gr.Slider(1, 10, value=3, step=1, label="Top-k")
                cf_go = gr.Button("Run counterfactual", variant="primary")
                cf_summary = gr.Markdown(elem_id="cf-summary")
                cf_modulation = gr.Markdown(elem_id="cf-modulation")
                cf_labels = []
                for title in ("SpecPL's granule path (as trained)", "As a decoded image-space swap"):
                    gr.Markdown(f"#### {title}")
                    with gr.Row():
                        cf_labels += [gr.Label(label=pair) for pair in PAIRS]
                with gr.Row():
                    cf_swaps = [gr.Image(type="pil", label=f"Decoded: {pair}", interactive=False) for pair in PAIRS[2:]]

            with gr.Tab("Classify", id="classify") as classify_tab:
                with gr.Row():
                    with gr.Column():
                        source = gr.Radio(
                            [("A trained run", "run"), ("Zero-shot CLIP", "zero-shot")], value="run", label="Model"
                        )
                        classify_run = gr.Dropdown([], label="Trained run", allow_custom_value=True)
                        zs_classes = gr.Textbox(
                            label="Class names for zero-shot (comma-separated)",
                            placeholder=WORLD_EXAMPLES if fallback else "cat, dog, horse",
                        )
                        zs_backbone = gr.Dropdown(
                            backbone_choices, value=default_backbone, label="Zero-shot backbone", elem_id="zs-backbone"
                        )
                        zs_note = gr.Markdown(
                            backbones.fallback_note(hint=f"type SpectralWorld class names, e.g. {WORLD_EXAMPLES}")
                            if fallback
                            else studio.backbone_note(default_backbone),
                            elem_id="zs-note",
                        )
                        zs_template = gr.Textbox("a photo of a {}.", label="Prompt template")
                        classify_files = gr.File(label="Images", file_count="multiple", file_types=["image"])
                        top_k = gr.Slider(1, 10, value=3, step=1, label="Top-k")
                        classify_go = gr.Button("Classify", variant="primary")
                        classify_message = gr.Markdown()
                    with gr.Column():
                        top_label = gr.Label(label="First image")
                        classify_gallery = gr.Gallery(label="Results", columns=4, height=260)
                        classify_table = gr.Dataframe(label="Top-k per image", interactive=False)
                        classify_csv = gr.File(label="CSV", interactive=False)

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
                runs_curve = gr.LinePlot(
                    x="step", y="loss", color="term", title="Loss per term", height=260, elem_id="runs-curve"
                )
                with gr.Row():
                    runs_val = gr.LinePlot(**VAL_PLOT, height=220, elem_id="runs-val")
                    runs_lr = gr.LinePlot(x="step", y="lr", title="Learning rate", height=220, elem_id="runs-lr")
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
                        x="step", y="loss", color="run", title="Total loss", height=240, elem_id="compare-loss"
                    )
                    compare_val = gr.LinePlot(
                        x="epoch",
                        y="accuracy",
                        color="run",
                        title="Validation accuracy per epoch",
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

        for tab in (bands_tab, counterfactual_tab, classify_tab, runs_tab):
            load_when_opened(tab)
        run_lists = [runs_table, runs_pick, classify_run, cf_run, compare_pick, band_run]
        load_when_opened(advanced_box, advanced_box.expand)

        # Data & Train
        dataset_outputs = [dataset_root, summary, thumbnails, data_message]
        dataset_zip.upload(studio.upload_zip, [dataset_zip, split_ratio], dataset_outputs, api_name="upload_dataset")
        add_class.click(
            studio.add_class, [class_name, class_files], [builder_state, data_message], api_name="add_class"
        )
        use_built.click(studio.use_builder, [split_ratio], dataset_outputs, api_name="use_builder")
        use_demo.click(studio.use_demo_set, [split_ratio], dataset_outputs, api_name="use_demo_set")
        dataset_root.change(
            studio.dataset_images, dataset_root, [band_pick, band_found], api_visibility="private"
        ).then(studio.saved_dataset, [dataset_root, split_ratio], saved_dataset, api_visibility="private")
        band_search.submit(
            studio.dataset_images,
            [dataset_root, band_search],
            [band_pick, band_found],
            api_name="search_dataset_images",
        )
        show_when_set(dataset_root, [thumbnails])
        backbone.change(studio.backbone_note, backbone, backbone_note, api_visibility="private")
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
            studio,
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
            lambda name, src: studio.decomposer_note(name, src)[1],
            [decomposer, source],
            decomposer_note,
            api_visibility="private",
        )
        source.change(
            studio.decomposer_note, [decomposer, source], [decomposer, decomposer_note], api_name="decomposer_status"
        )
        save_preset.click(studio.save_preset, [backbone, *form], [preset_file, preset_message], api_name="save_preset")
        preset_upload.upload(
            studio.load_preset,
            [preset_upload, redraw_options],
            [backbone, *form, redraw_options, preset_message],
            api_name="load_preset",
        )
        start.click(studio.form_config, [backbone, *form], [run_config, cli_command], api_name="run_config").then(
            studio.start_training,
            [dataset_root, run_config, run_name],
            [run_id, remembered_run, train_message],
            api_name="start_training",
        ).then(studio.refresh_runs, runs_pick, run_lists, api_visibility="private")
        stop.click(studio.stop_training, run_id, train_message, api_name="stop_training")
        status_outputs = [status, curve, val_curve, lr_curve, details, confusion, per_class, misclassified]
        timer.tick(
            studio.poll_run,
            run_id,
            [*status_outputs, timer, train_message],
            show_progress="hidden",
            concurrency_limit=None,
            api_visibility="private",
        )
        run_id.change(studio.run_status, run_id, status_outputs, api_name="run_status", show_progress="hidden")
        show_when_set(run_id, [status, details_box, details, timer])  # the curves show themselves once they have points

        # Bands
        band_pick.change(studio.picked_band_image, band_pick, [band_input, band_picked], api_visibility="private")
        band_go.click(
            studio.bands,
            [band_input, band_decomposer, band_size, band_run, band_picked],
            [*band_images, *mask_images, mask_note, band_time],
            api_name="bands",
        )

        # Counterfactual
        cf_run.change(
            studio.run_images, [cf_run, cf_search], [cf_pick_a, cf_pick_b, cf_found], api_visibility="private"
        )
        cf_search.submit(
            studio.run_images, [cf_run, cf_search], [cf_pick_a, cf_pick_b, cf_found], api_name="search_run_images"
        )
        cf_pick_a.change(studio.picked_image, cf_pick_a, cf_a, api_visibility="private")
        cf_pick_b.change(studio.picked_image, cf_pick_b, cf_b, api_visibility="private")
        cf_go.click(
            studio.counterfactual,
            [cf_run, cf_a, cf_b, cf_top_k],
            [*cf_labels, *cf_swaps, cf_modulation, cf_summary],
            api_name="counterfactual",
        )

        # Classify
        zs_backbone.change(studio.backbone_note, zs_backbone, zs_note, api_visibility="private")
        classify_go.click(
            studio.classify,
            [source, classify_run, zs_classes, zs_backbone, zs_template, classify_files, top_k],
            [classify_gallery, classify_table, classify_csv, top_label, classify_message],
            api_name="classify",
        )

        # Runs
        for trigger in (
            refresh.click,
            demo.load,
            runs_tab.select,
            classify_tab.select,
            counterfactual_tab.select,
            bands_tab.select,
        ):
            trigger(studio.refresh_runs, runs_pick, run_lists, api_visibility="private")
        runs_plots = [runs_curve, runs_val, runs_lr]
        runs_pick.change(
            lambda: [gr.update(visible=False)] * len(runs_plots),
            None,
            runs_plots,
            show_progress="hidden",
            api_visibility="private",
        ).then(  # redrawn from scratch: see `studio.curve`
            studio.run_details,
            runs_pick,
            [runs_config, runs_metrics, *runs_plots, *runs_report, runs_status, runs_message, bundle_file],
            api_visibility="private",
        )
        compare_pick.change(
            studio.compare_runs, compare_pick, [compare_loss, compare_val, compare_rank], api_name="compare_runs"
        )
        eval_go.click(
            studio.evaluate_run, [runs_pick, eval_zip], [eval_per_class, eval_message], api_name="evaluate_run"
        )
        push.click(
            studio.push_to_hub, [runs_pick, hub_repo, hub_token, hub_private], hub_message, api_name="push_to_hub"
        )
        download.click(studio.export_bundle, runs_pick, [bundle_file, runs_message], api_name="export_bundle")
        resume.click(studio.resume_run, runs_pick, runs_message, api_name="resume_run").then(
            studio.refresh_runs, runs_pick, run_lists, api_visibility="private"
        ).then(
            lambda: gr.Timer(active=True),
            None,
            timer,
            api_visibility="private",  # in case the watched run is the one resumed
        )
        delete.click(studio.ask_delete, runs_pick, [confirm_row, confirm_text], api_visibility="private")
        cancel.click(lambda: gr.update(visible=False), None, confirm_row, api_visibility="private")
        confirm.click(
            studio.confirm_delete, runs_pick, [confirm_row, bundle_file, runs_message], api_name="delete_run"
        ).then(studio.refresh_runs, runs_pick, run_lists, api_visibility="private")
        import_go.click(studio.import_bundle, import_file, runs_message, api_name="import_bundle").then(
            studio.refresh_runs, runs_pick, run_lists, api_visibility="private"
        )
        demo.load(studio.reattach, remembered_run, [run_id, remembered_run], api_visibility="private")
        demo.load(studio.restore_dataset, saved_dataset, dataset_outputs, api_visibility="private")
        remember_form(
            demo,
            {"backbone": backbone, "run_name": run_name, **dict(zip(advanced.form_keys(), form, strict=True))},
            saved_form,
        )
        demo.unload(studio.forget_session)
    return demo


def setting_controls(host: str, boosters: list[str]) -> list[gr.components.Component]:
    """The run settings' controls (training, decomposer, data, template), a group per section,
    each starting at the value it means for the default method (`advanced.effective_values`)."""
    values = advanced.effective_values(host, boosters, "default")
    controls = []
    for section in [*(name for name, _ in advanced.SECTIONS), "run"]:
        with gr.Group():
            gr.Markdown(f"**{section}** settings")
            controls += [
                option_control(field, values.get(field.key), values.get(field.key))
                for field in advanced.setting_fields()
                if field.owner == section
            ]
    return controls


def draw_method_options(
    host: gr.Dropdown, boosters: gr.CheckboxGroup, preset: gr.Dropdown, chosen: gr.JSON, triggers: list
) -> None:
    """Draw a group of controls for the chosen host and each chosen booster, generated from its
    config dataclass, when the accordion opens and when the choice changes. Only the chosen
    components are drawn: a control for every registered option made the first page load slower.
    An edit is written into `chosen` in the browser, at once, so Start never reads a stale value."""

    @gr.render(inputs=[host, boosters, preset, chosen], triggers=triggers)
    def draw(host_name: str, booster_names: list[str] | None, preset_name: str, overrides: dict | None) -> None:
        if host_name not in HOSTS:
            return
        names = [host_name, *(name for name in booster_names or [] if name in BOOSTERS)]
        effective = advanced.effective_values(host_name, names[1:], preset_name or "default")
        for name in names:
            component = HOSTS.get(name) if name == host_name else BOOSTERS.get(name)
            with gr.Group():
                gr.Markdown(f"**{name}** options — {component.description}")
                for field in advanced.option_fields(name):
                    value = (overrides or {}).get(field.key, effective.get(field.key))
                    control = option_control(field, value, effective.get(field.key))
                    control.change(
                        None,
                        [chosen, control],
                        chosen,
                        js=f"(chosen, value) => ({{...(chosen || {{}}), {json.dumps(field.key)}: value}})",
                        show_progress="hidden",
                        api_visibility="private",
                    )


def option_control(field: advanced.OptionField, value: Any, default: Any) -> gr.components.Component:
    """One control for a generated field, labelled with its key (as ``--option`` takes it) and its default."""
    common = {
        "interactive": True,
        "label": field.key,
        "info": f"default: {default!r}",
        "elem_id": "opt-" + field.key.replace(".", "-").replace("_", "-"),
    }
    shown = shown_value(field, value)
    if field.kind == "bool":
        return gr.Checkbox(bool(shown), **common)
    if field.kind in ("int", "float"):
        return gr.Number(shown, precision=0 if field.kind == "int" else None, **common)
    if field.kind == "choice":
        return gr.Dropdown(list(field.choices), value=shown or None, **common)
    return gr.Textbox(shown, **common)


def wire_method_form(
    studio: Studio,
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
            studio.method_choice,
            [host, boosters, preset],
            [preset, note],
            show_progress="hidden",
            api_visibility="private",
        )
    gr.on(
        [host.input, boosters.input],
        studio.method_defaults,
        [host, boosters, preset, redraw, options],
        [*settings, options, redraw],
        show_progress="hidden",
        api_visibility="private",
    )
    preset.input(
        studio.preset_defaults,
        [host, boosters, preset, redraw],
        [*settings, options, redraw],
        show_progress="hidden",
        api_visibility="private",
    )
    gr.on(
        [c.change for c in [backbone, *form, dataset_root]],
        studio.form_and_plan,
        [dataset_root, backbone, *form],
        [run_config, cli, plan],
        show_progress="hidden",
        api_visibility="private",
    )
    demo.load(
        studio.form_and_plan,
        [dataset_root, backbone, *form],
        [run_config, cli, plan],
        show_progress="hidden",
        api_visibility="private",
    )


def report_components(prefix: str) -> tuple[gr.HTML, gr.BarPlot, gr.Gallery]:
    """A finished run's evaluation: confusion matrix, per-class accuracy bars, misclassified images."""
    return (
        gr.HTML(visible=False, elem_id=f"{prefix}-confusion"),
        gr.BarPlot(
            x="class",
            y="accuracy",
            title="Per-class test accuracy",
            height=240,
            visible=False,
            elem_id=f"{prefix}-per-class",
        ),
        gr.Gallery(
            label="Misclassified test images", columns=6, height=240, visible=False, elem_id=f"{prefix}-misclassified"
        ),
    )


def remember_form(demo: gr.Blocks, form: dict[str, gr.components.Component], saved: gr.BrowserState) -> None:
    """Keep the form's values in the browser (any change is saved) and put them back on page load;
    a stored value the form no longer offers (a removed method) is left at its default."""
    keys, components = list(form), list(form.values())
    gr.on(
        [c.change for c in components],
        lambda *values: dict(zip(keys, values, strict=True)),
        components,
        saved,
        show_progress="hidden",
        api_visibility="private",
    )

    def restore(values: dict | None) -> list[Any]:
        values = values if isinstance(values, dict) else {}
        if "method.preset" in values:  # a form saved before the rename says "reference" for "paper"
            values = {**values, "method.preset": advanced.known_preset(values["method.preset"])}
        return [_restored(component, values[key]) if key in values else gr.update() for key, component in form.items()]

    demo.load(restore, saved, components, show_progress="hidden", api_visibility="private")


def _restored(component: gr.components.Component, value: Any) -> Any:
    choices = [
        choice[1] if isinstance(choice, (tuple, list)) else choice
        for choice in getattr(component, "choices", None) or []
    ]
    if choices and value is not None:
        wanted = value if isinstance(value, list) else [value]
        if not all(item in choices for item in wanted):
            return gr.update()
    return value


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


def load_when_opened(tab: gr.blocks.BlockContext, opened: Any = None) -> None:
    """Keep a tab's components out of the first page load until the tab is first opened.

    Gradio's front end fetches and evaluates the code of every *visible* component in the page
    config while it builds the page, inactive tabs included; a component's own ``visible=False``
    (not its parent's) skips that. So the tab's visible components start hidden and are shown when
    the tab is selected (or `opened` fires: an accordion's expand). Measured in `bench/RESULTS.md`."""
    hidden = [component for component in _components(tab) if component.visible is True]
    for component in hidden:
        component.visible = False
    (opened or tab.select)(
        lambda: _visibility(hidden, True), None, hidden, show_progress="hidden", api_visibility="private"
    )


def launch_options(settings: AppSettings) -> dict[str, Any]:
    """`launch()` keywords: the app may return files from the data directory (Gradio serves its
    cached copies; `PrivateFiles` refuses the originals), uploads are capped, every browser gets an
    identity cookie (`app.identity`), and Gradio's hashed front-end files are served from memory
    (see `app.assets`)."""
    return {
        "allowed_paths": [str(settings.data_dir)],
        "max_file_size": settings.limits.max_upload_bytes,
        "app_kwargs": {
            "middleware": [
                Middleware(PrivateFiles, data_dir=str(settings.data_dir), cache_dir=str(settings.gradio_cache_dir)),
                Middleware(BrowserCookie, cross_site=settings.on_space),
                Middleware(BuildAssetCache),
            ]
        },
    }
