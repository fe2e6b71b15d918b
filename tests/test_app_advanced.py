"""The app's run settings and run outputs without a server: the Advanced form generated from the
registry, its CLI line (parsed back by the real CLI), presets, decomposer availability, the run
report, a stopped run's checkpoint as a bundle, and the Hub push (with a stand-in HfApi)."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import pytest
import torch

from app.files.hub import HubError, checkpoint_bundle, push_bundle
from app.runtime import decomposers
from app.views import advanced
from app.views.form import shown_value
from app.views.progress import lr_frame, read_progress, val_frame
from app.views.reports import RunSummary, confusion_html, misclassified_gallery, ranking, result_html
from specpl.cli import build_parser, run_config_from_args
from specpl.config import BackboneConfig, DataConfig, DecomposerConfig, MethodConfig, RunConfig, TrainConfig
from specpl.datasets import read_dataset
from specpl.factory import resolve_method_options
from specpl.inference import Predictor
from specpl.methods import BOOSTERS, HOSTS, Booster
from specpl.training_plan import hold_out_validation, resolved_training

TINY = BackboneConfig(name="specpl-tiny", pretrained=None)
TAEF2 = Path(__file__).resolve().parents[2] / "shared" / "weights" / "taef2"


def form(host: str = "coop", boosters: tuple[str, ...] = ("specpl",), preset: str = "default", **changes) -> dict:
    """The form as a user leaves it for this choice, with `changes` (by key) typed in; a method
    option goes into ``method.options`` as the drawn controls write it."""
    options = {
        key: value for key, value in changes.items() if key.split(".")[0] in HOSTS or key.split(".")[0] in BOOSTERS
    }
    values = advanced.effective_values(host, list(boosters), preset)
    values.update(
        {
            "method.host": host,
            "method.boosters": list(boosters),
            "method.preset": preset,
            "decomposer.name": "fft",
            "data.shots": 2,
            "train.epochs": 3,
            "train.lr": 0,
            "data.split_ratio": 0.5,
            advanced.OPTIONS_KEY: options,
        }
    )
    values.update({key: value for key, value in changes.items() if key not in options})
    return values


def test_every_option_of_every_registered_method_and_run_setting_has_a_field():
    keys = {field.key for field in advanced.form_fields()}
    for registry in (HOSTS, BOOSTERS):
        for name in registry.names():
            assert {f"{name}.{f.name}" for f in dataclasses.fields(registry.get(name).config_class)} <= keys, name
    for section, cls in advanced.SECTIONS:
        main = set(advanced.MAIN_FORM.get(section, ()))
        assert {f"{section}.{f.name}" for f in dataclasses.fields(cls) if f.name not in main} <= keys
    assert len(keys) == len(advanced.form_fields())  # no key twice
    kinds = {field.key: field.kind for field in advanced.form_fields()}
    assert kinds["coop.n_ctx"] == "int" and kinds["coop.class_specific"] == "bool" and kinds["specpl.tau"] == "float"
    assert kinds["train.augment"] == "choice" and kinds["decomposer.source"] == "str"
    # a method option typed as a Literal is offered as a choice of its values
    structural = next(field for field in advanced.form_fields() if field.key == "isp.structural")
    assert structural.kind == "choice" and structural.choices == ("auto", "on", "off") and structural.default == "auto"
    fields = {field.key: field for field in advanced.form_fields()}
    for key, choices in {
        "specpl.refiner": ("interpolate", "gated", "layernorm"),
        "cocoop.meta_init": ("zero", "pytorch"),
        "mmrl.aligner_bias_init": ("zero", "pytorch"),
        "mmrl.proj_rep_init": ("zero", "clip", "normal"),
        "mmrl.rep_branch": ("residual", "separate"),
    }.items():
        assert (fields[key].kind, fields[key].choices, fields[key].default) == ("choice", choices, choices[0]), key


def test_every_host_offers_the_two_presets_and_reference_reads_as_paper():
    for host in HOSTS.names():  # and CoOp, published in two configurations, its paper-specpl variant
        assert advanced.presets_of(host) == ["default", "paper", *(["paper-specpl"] if host == "coop" else [])], host
    assert [advanced.known_preset(name) for name in ("default", "paper", "reference", None, "nosuch")] == [
        "default",
        "paper",
        "paper",
        "default",
        "default",
    ]
    assert advanced.effective_values("coop", ["specpl"], "reference") == advanced.effective_values(
        "coop", ["specpl"], "paper"
    )


def test_the_form_shows_what_each_preset_means_and_an_untouched_form_keeps_the_preset():
    paper = advanced.effective_values("coop", ["specpl"], "paper")
    default = advanced.effective_values("coop", ["specpl"], "default")
    assert paper["specpl.bank_init_batches"] == 0 and default["specpl.bank_init_batches"] == 10
    assert (
        paper["train.batch_size"] == 32 and paper["train.eval_every_epochs"] == 1
    )  # the host's default; the app evaluates every epoch
    assert (paper["train.select"], default["train.select"]) == ("last", "val")
    assert (default["train.epochs"], default["train.batch_size"]) == (
        "auto",
        "auto",
    )  # derived from the data when the run starts
    config = advanced.run_config(form(preset="paper"), TINY)
    assert (
        config.method.options == {} and config.method.preset == "paper"
    )  # nothing typed: no override hides the preset
    assert resolve_method_options(config.method)["specpl"]["bank_init_batches"] == 0
    assert config.train == TrainConfig(epochs=3, eval_every_epochs=1)
    assert advanced.run_config(form(preset="reference"), TINY).method.preset == "paper"


def test_an_empty_or_zero_epochs_box_is_auto_and_the_cli_line_then_has_no_epochs_flag():
    for empty in (None, 0, "", "auto"):
        config = advanced.run_config(form(**{"train.epochs": empty}), TINY)
        assert config.train.epochs in (None, "auto"), empty
        assert (
            resolved_training(config, 54)["epochs"] == 75 and resolved_training(config, 54)["batch_size"] == 13
        )  # the default preset's budget
        assert "--epochs" not in advanced.cli_command(config)
    typed = advanced.run_config(form(**{"train.epochs": 7}), TINY)
    assert (
        typed.train.epochs == 7
        and resolved_training(typed, 54)["epochs"] == 7
        and "--epochs 7" in advanced.cli_command(typed)
    )  # a number typed wins
    auto_batch = next(field for field in advanced.setting_fields() if field.key == "train.batch_size")
    assert (
        shown_value(auto_batch, "auto") is None and advanced.coerce(auto_batch, None) is None
    )  # "auto": an empty number box
    with pytest.raises(ValueError, match="epochs = 2.5 is not a whole number"):
        advanced.run_config(form(**{"train.epochs": 2.5}), TINY)
    values = advanced.form_values(advanced.run_config(form(**{"train.epochs": None}), TINY))
    assert (
        values["train.epochs"] is None
        and advanced.run_config({**values, "decomposer.name": "fft"}, TINY).train.epochs is None
    )


def test_the_training_plan_line_states_what_the_trainer_will_resolve(tmp_path, cifar_root):
    """CIFAR-10's shared few-shot folder: 10 classes of 16 training images (train/ and test/)."""
    from app.files.uploads import summarize_dataset
    from app.runtime.settings import AppSettings
    from app.studio import Studio
    from app.tabs.train import TrainTab

    studio = Studio(AppSettings(data_dir=tmp_path / "data"))
    train = TrainTab(studio)
    try:
        root = str(cifar_root)
        assert (
            train.form_and_plan(None, "specpl-tiny/none", *[form().get(key) for key in advanced.form_keys()])[2] == ""
        )  # no dataset yet
        train._dataset_outputs(summarize_dataset(cifar_root), "loaded")  # what an upload leaves

        def plan(**changes) -> str:
            return train.form_and_plan(
                root,
                "specpl-tiny/none",
                *[form(**{"train.epochs": None, **changes}).get(key) for key in advanced.form_keys()],
            )[2]

        # 8 shots: 2 of each class held out, 60 left; CoOp's batch 32 cut to 60 // 4 = 15, so 4 steps an epoch and
        # 300 / 4 = 75 epochs
        assert plan(**{"data.shots": 8}) == (
            "Training plan: 75 epochs of batch 15 (300 steps) from 60 training images; "
            "2 per class held out for validation; epoch kept by validation."
        )
        config = advanced.run_config(form(**{"train.epochs": None, "data.shots": 8}), TINY)
        config.data.root = root
        kept, held = hold_out_validation(
            read_dataset(config.data).train, config.data.seed
        )  # as the trainer holds them out
        assert (len(kept), len(held)) == (60, 20)
        assert {key: resolved_training(config, len(kept))[key] for key in ("epochs", "batch_size")} == {
            "epochs": 75,
            "batch_size": 15,
        }
        assert (
            plan(**{"data.shots": 8, "train.epochs": 3})
            == "Training plan: 3 epochs of batch 15 (12 steps) from 60 training images; "
            "2 per class held out for validation; epoch kept by validation."
        )
        assert plan(**{"data.shots": 0}).startswith(
            "Training plan: 75 epochs of batch 30 (300 steps) from 120 training images; 4 per class held out"
        )  # all 16
        assert plan(**{"data.shots": 1}).endswith(
            "from 10 training images; nothing held out for validation (a class needs 2 training images to give one), "
            "so the last epoch is kept unchecked."
        )
        paper = form("coop", ("specpl",), "paper", **{"train.epochs": None, "data.shots": 8})
        epochs = 100  # with SpecPL, CoOp runs as SpecPL's paper trained it (CoOp's paper-specpl), not its own 200
        assert train.form_and_plan(root, "specpl-tiny/none", *[paper.get(key) for key in advanced.form_keys()])[2] == (
            f"Training plan (paper preset): {epochs} epochs of batch 32 ({epochs * 2} steps) from 80 training images; "
            "nothing held out for validation; last epoch kept."
        )
        assert (
            plan(**{"data.shots": 8, "coop.n_ctx": 2.5}) == ""
        )  # a setting the library refuses: the CLI box says why, no plan
    finally:
        studio.jobs.close()


def test_the_plan_matches_the_steps_and_validation_of_a_real_run(tmp_path, cifar_root, tiny_backbone):
    """The plan's numbers are the trainer's: one epoch of CoOp on 2 shots of CIFAR-10 (1 per class
    held out, batch min(32, 10 // 4) = 2, so 5 steps), with the epoch-0 validation and zero-shot."""
    from app.files.uploads import summarize_dataset
    from app.views.plan import training_counts, training_plan
    from specpl.events import read_events
    from specpl.trainer import Trainer

    config = RunConfig(
        backbone=TINY,
        decomposer=DecomposerConfig(name="fft", image_size=32),
        method=MethodConfig(host="coop", options={"coop": {"n_ctx": 4}}),
        data=DataConfig(root=str(cifar_root), shots=2),
        train=TrainConfig(epochs=1, eval_every_epochs=1),
    )
    summary = summarize_dataset(cifar_root)
    plan = training_plan(config, training_counts(summary.counts, True, 0.5))
    assert plan.line() == (
        "Training plan: 1 epoch of batch 2 (5 steps) from 10 training images; "
        "1 per class held out for validation; epoch kept by validation."
    )
    result = Trainer(config, tmp_path / "run", backbone=tiny_backbone, progress_bar=False).fit()
    events = list(read_events(tmp_path / "run" / "events.jsonl"))
    assert max(e["total_steps"] for e in events if e["type"] == "step") == plan.steps == 5
    assert [e["epoch"] for e in events if e["type"] == "val"] == [0, 1] and result.metrics["selection"][
        "val_images"
    ] == 10


def test_the_cli_line_trains_exactly_the_forms_config(tmp_path, monkeypatch):
    """Parsed by specpl's own CLI (with the saved preset for settings without a flag), the line
    gives the config the app would train, field for field."""
    config = advanced.run_config(
        form(
            **{
                "coop.n_ctx": 4,
                "coop.ctx_init": "a photo of a",
                "specpl.lambda_sem": 0.5,
                "train.batch_size": 8,
                "train.warmup_epochs": 0,
                "train.augment": "none",
                "decomposer.source": str(TAEF2),
                "data.seed": 3,
                "run.template": "a {} here.",
            }
        ),
        TINY,
    )
    line = advanced.cli_command(config)
    assert (
        "--option coop.n_ctx=4" in line
        and "--option 'coop.ctx_init=\"a photo of a\"'" in line
        and "--batch-size 8" in line
    )
    assert line.startswith("specpl train --config specpl-preset.json ")  # warm-up and data.seed have no flag
    monkeypatch.chdir(tmp_path)
    (tmp_path / advanced.PRESET_FILE).write_text(advanced.preset_json(config))
    parsed = run_config_from_args(build_parser().parse_args(shlex.split(line)[1:]))
    assert parsed.data.root == "DATASET_FOLDER"
    parsed.data.root = config.data.root
    assert parsed == config
    plain = advanced.run_config(form(), TINY)
    assert "--config" not in advanced.cli_command(plain)  # everything has a flag: no preset file needed
    seeded = advanced.run_config(form(**{"data.seed": 3, "train.seed": 3}), TINY)
    line = advanced.cli_command(seeded)
    assert "--seed 3" in line and "--config" not in line  # one seed for sampling and training: the CLI's --seed
    parsed = run_config_from_args(build_parser().parse_args(shlex.split(line)[1:]))
    assert (parsed.data.seed, parsed.train.seed) == (3, 3)


@dataclasses.dataclass
class PickyConfig:
    weight: float = 1.0


class PickyBooster(Booster):
    """A stand-in booster that only boosts IVLP, to see the library's refusal reach the user."""

    name = "picky"
    description = "Picky: boosts IVLP only"
    config_class = PickyConfig
    supported_hosts = ("ivlp",)


def test_a_preset_file_round_trips_and_a_bad_one_says_why(tmp_path, monkeypatch):
    config = advanced.run_config(form("ivlp", (), "paper", **{"ivlp.depth": 3, "train.seed": 7}), TINY)
    path = tmp_path / "preset.json"
    path.write_text(advanced.preset_json(config))
    loaded = advanced.read_preset(path, "preset.json")
    assert loaded == config and json.loads(path.read_text())["data"]["root"] == ""  # no server path in a shared file
    values = advanced.form_values(loaded)
    assert (
        values[advanced.OPTIONS_KEY] == {"ivlp.depth": 3}
        and values["train.seed"] == 7
        and values["method.preset"] == "paper"
    )
    assert (
        advanced.run_config({**values, "decomposer.name": "fft"}, TINY) == config
    )  # the form it fills trains the same
    monkeypatch.setitem(BOOSTERS._factories, "picky", PickyBooster)
    path.write_text(json.dumps({"method": {"host": "ivlp", "preset": "reference"}}))
    assert advanced.read_preset(path, "preset.json").method.preset == "paper"  # a preset file written before the rename
    path.write_text(json.dumps({"method": {"host": "coop", "boosters": ["picky"]}}))
    with pytest.raises(
        ValueError,
        match=(
            r"^preset.json is not a usable preset: booster 'picky' cannot run on host 'coop': "
            r"it supports the hosts ivlp. Hosts it can boost: ivlp$"
        ),
    ):
        advanced.read_preset(path, "preset.json")
    path.write_text(json.dumps({"method": {"host": "coop", "boosters": ["nosuch"]}}))
    with pytest.raises(ValueError, match=r"preset.json is not a usable preset: unknown booster 'nosuch'; available: "):
        advanced.read_preset(path, "preset.json")
    path.write_text("{not json")
    with pytest.raises(ValueError, match="preset.json is not a usable preset"):
        advanced.read_preset(path, "preset.json")
    with pytest.raises(ValueError, match=r"option coop.n_ctx = 2.5 is not a valid int"):
        advanced.run_config(form(**{"coop.n_ctx": 2.5}), TINY)
    with pytest.raises(ValueError, match=r"unknown method option\(s\) coop.nctx; options are keyed component.name"):
        advanced.run_config({**form(), advanced.OPTIONS_KEY: {"coop.nctx": 4}}, TINY)
    kept = advanced.run_config({**form(), advanced.OPTIONS_KEY: {"ivlp.depth": 3, "coop.n_ctx": 16}}, TINY)
    assert kept.method.options == {}  # an option of a component not chosen, and one at its default, change nothing


def test_decomposers_that_cannot_load_are_marked_with_the_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("specpl.bands.auto._hub_cache_dir", lambda: tmp_path / "empty-cache")
    monkeypatch.setattr("app.runtime.decomposers.cached_model_folder", lambda repo: None)
    assert decomposers.status("fft").usable
    taef2 = decomposers.status("taef2")
    assert (
        not taef2.usable
        and "set the decomposer source (Advanced)" in taef2.reason
        and "taef2_encoder.pth" in taef2.reason
    )
    assert not decomposers.status("taef2", str(tmp_path)).usable
    if TAEF2.is_dir():
        assert decomposers.status("taef2", str(TAEF2)).usable
    auto = decomposers.status("auto")
    assert auto.usable and auto.reason.startswith("auto uses fft, because the hub is offline")
    qwen = decomposers.status("qwen-vae")
    assert not qwen.usable and "HF_HUB_OFFLINE" in qwen.reason
    hosted = decomposers.status("taef2", str(TAEF2), hosted=True)
    assert not hosted.usable and "cannot be used on a shared server" in hosted.reason
    labels = dict((name, label) for label, name in decomposers.dropdown_choices())
    assert labels["fft"] == "fft — ready" and labels["taef2"] == "taef2 — can't load here"


def test_validation_and_lr_curves_and_the_report_come_from_the_run(tmp_path):
    events = [
        {"type": "decomposer", "name": "fft", "reason": "fft, as the config names it."},
        *(
            {
                "type": "step",
                "step": s,
                "total_steps": 4,
                "epoch": 1 + (s > 2),
                "epochs": 2,
                "loss": 1.0,
                "losses": {},
                "lr": 0.002 / s,
            }
            for s in (1, 2, 3, 4)
        ),
        {"type": "val", "epoch": 0, "epochs": 2, "step": 0, "accuracy": 30.0, "zero_shot": 45.0, "split": "val"},
        {"type": "val", "epoch": 1, "epochs": 2, "step": 2, "accuracy": 40.0, "split": "val", "best": True},
        {"type": "val", "epoch": 2, "epochs": 2, "step": 4, "accuracy": 55.0, "split": "val", "best": True},
    ]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    progress = read_progress(tmp_path)
    frame = val_frame(progress)
    assert frame[frame["series"] == "validation"][["epoch", "accuracy"]].values.tolist() == [
        [0, 30.0],
        [1, 40.0],
        [2, 55.0],
    ]  # epoch 0: before training
    assert frame[frame["series"] == "zero-shot"][["epoch", "accuracy"]].values.tolist() == [
        [0, 45.0],
        [1, 45.0],
        [2, 45.0],
    ]  # the reference line
    older = tmp_path / "older"
    older.mkdir()
    (older / "events.jsonl").write_text(
        json.dumps({"type": "val", "epoch": 1, "epochs": 1, "step": 2, "accuracy": 40.0, "split": "test"}) + "\n"
    )
    assert val_frame(read_progress(older))["series"].tolist() == [
        "test (older run)"
    ]  # an older run scored the test split: never called validation
    assert lr_frame(progress)["lr"].tolist() == [0.002, 0.001, 0.002 / 3, 0.0005]
    assert progress.decomposer == {"name": "fft", "reason": "fft, as the config names it."}

    data = tmp_path / "data" / "cat"
    data.mkdir(parents=True)
    (data / "1.png").write_bytes(b"png")
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"png")
    metrics = {
        "accuracy": 50.0,
        "per_class": {"cat": 100.0, "<b>dog</b>": 0.0},
        "confusion": [[3, 0], [3, 0]],
        "misclassified": [
            {"path": str(data / "1.png"), "label": "cat", "predicted": "<b>dog</b>", "probability": 0.75},
            {"path": str(outside), "label": "cat", "predicted": "dog", "probability": 0.5},
        ],
    }
    table = confusion_html(metrics)
    assert "&lt;b&gt;dog&lt;/b&gt;" in table and "<b>dog</b>" not in table.replace("<b>Confusion matrix</b>", "")
    assert (
        table.count("rgba(99,102,241,1.00)") == 2 and table.count("rgba(99,102,241,0.00)") == 2
    )  # shaded by row share
    long_name = "a very long class name number 10"  # above its column, cut in the middle; whole on hover
    table = confusion_html({"per_class": {long_name: 50.0, "cat": 50.0}, "confusion": [[1, 1], [1, 1]]})
    assert table.count(f"title='{long_name}'") == 2 and ">a very long …e number 10</th>" in table
    assert "overflow-x:auto" in table  # many classes scroll inside the column instead of overflowing it
    assert misclassified_gallery(metrics, tmp_path) == [
        (str((data / "1.png").resolve()), "cat → <b>dog</b> (75%)")
    ]  # nothing outside data/

    summaries = [
        RunSummary(
            "r1",
            "low",
            "coop",
            progress,
            {"accuracy": 30.0, "zero_shot": {"accuracy": 35.0}, "gain_over_zero_shot": -5.0},
        ),
        RunSummary(
            "r2",
            "high",
            "coop",
            progress,
            {"accuracy": 70.0, "zero_shot": {"accuracy": 60.0}, "gain_over_zero_shot": 10.0},
        ),
        RunSummary(
            "r3",
            "base-new",
            "coop",
            progress,
            {
                "accuracy": 90.0,
                "base": 90.0,
                "new": 10.0,
                "hm": 18.0,
                "zero_shot": {"accuracy": 80.0, "base": 80.0, "new": 60.0, "hm": 68.6},
                "gain_over_zero_shot": -50.6,
            },
        ),
        RunSummary("r4", "paper", "coop", progress, {"accuracy": 10.0}),
    ]
    ranked = ranking(summaries)
    assert (
        ranked["run"].tolist() == ["r2", "r1", "r3", "r4"] and ranked["best val"].tolist() == ["55.0%"] * 4
    )  # HM ranks a base/new run
    assert ranked["zero-shot"].tolist() == ["60.0%", "35.0%", "68.6%", ""] and ranked["gain"].tolist() == [
        "+10.0",
        "-5.0",
        "-50.6",
        "",
    ]  # HM's for base/new
    report = result_html(
        summaries[2].metrics
        | {
            "verdict": (
                "The kept model (epoch 2 of 2) scores 55.0% on validation, +10.0 points over zero-shot CLIP (45.0%)."
            )
        }
    )
    assert (
        "base 90.0%, new 10.0%, HM 18.0% on the test split "
        "(zero-shot CLIP: base 80.0%, new 60.0%, HM 68.6%; HM -50.6 points)" in report
    )
    assert "+10.0 points over zero-shot CLIP (45.0%)" in report and "cannot protect new-class accuracy" in report
    assert result_html({}) == "" and "cannot protect" not in result_html(summaries[1].metrics)


def test_the_model_card_compares_the_run_with_zero_shot_and_names_its_preset(trained_run):
    from specpl.model_card import render_model_card

    card = (trained_run.run_dir / "model" / "README.md").read_text()
    config = json.loads((trained_run.run_dir / "model" / "config.json").read_text())
    metrics = config["metrics"]
    assert config["method"]["preset"] == "default" and "Preset: `default`, the product's settings" in card
    section = card.split("## Compared with zero-shot CLIP\n")[1].split("\n\n")[0].splitlines()
    assert section == [
        f"- Zero-shot CLIP (same backbone, template and test images): accuracy {metrics['zero_shot']['accuracy']:.1f}%",
        f"- Gain over zero-shot: {metrics['gain_over_zero_shot']:+.1f} points (accuracy)",
        f"- {metrics['verdict']}",
    ]
    assert metrics["verdict"].startswith(
        ("The kept model (epoch", "Training was not seen to improve on the initial prompts")
    )
    assert "- zero_shot:" not in card and "- verdict:" not in card  # not repeated raw in the evaluation list

    base_new = {
        **config,
        "method": {**config["method"], "preset": "reference"},
        "metrics": {
            "accuracy": 80.0,
            "base": 80.0,
            "new": 40.0,
            "hm": 53.3,
            "zero_shot": {"accuracy": 70.0, "base": 70.0, "new": 70.0, "hm": 70.0},
            "gain_over_zero_shot": -16.7,
            "verdict": (
                "The kept model (epoch 3 of 8) scores 91.0% on validation, +2.0 points over zero-shot CLIP (89.0%)."
            ),
        },
    }
    card = render_model_card(base_new)
    assert "Preset: `paper`, the published papers' settings" in card  # a bundle written before the rename
    assert (
        "accuracy 70.0%, base 70.0%, new 70.0%, hm 70.0%" in card and "- Gain over zero-shot: -16.7 points (HM)" in card
    )
    assert (
        "- Validation holds only the training (base) classes, "
        "so choosing the kept epoch on it cannot protect new-class accuracy." in card
    )
    assert "Compared with zero-shot" not in render_model_card({**config, "metrics": {}})  # a stopped run's checkpoint


def test_a_stopped_runs_checkpoint_becomes_a_bundle_that_predicts_as_the_model_did(tmp_path, cifar_root, tiny_backbone):
    from specpl.trainer import Trainer

    config = RunConfig(
        backbone=TINY,
        decomposer=DecomposerConfig(name="fft", image_size=32),
        method=MethodConfig(
            host="coop", boosters=["specpl"], options={"coop": {"n_ctx": 4}, "specpl": {"bank_init_batches": 1}}
        ),
        data=DataConfig(root=str(cifar_root), shots=2),
        train=TrainConfig(epochs=5, batch_size=4),
    )
    steps = iter(range(1000))
    run_dir = tmp_path / "run"
    result = Trainer(
        config, run_dir, backbone=tiny_backbone, progress_bar=False, should_stop=lambda: next(steps) >= 7
    ).fit()
    assert result.status == "cancelled" and not (run_dir / "model").exists()
    bundle = checkpoint_bundle(run_dir, lambda backbone_config: tiny_backbone)
    saved = json.loads((bundle / "config.json").read_text())
    assert saved["checkpoint"]["global_step"] == 7 and "not a finished training" in saved["checkpoint"]["note"]
    images = sorted((cifar_root / "test" / "cat").iterdir())[:3]
    loaded = Predictor.from_bundle(bundle, backbone=tiny_backbone)
    assert loaded.classnames == result.model.classnames
    torch.testing.assert_close(
        loaded.logits(loaded.preprocess(images)), Predictor(result.model).logits(loaded.preprocess(images))
    )
    assert (
        checkpoint_bundle(run_dir, lambda backbone_config: pytest.fail("rebuilt although the checkpoint is unchanged"))
        == bundle
    )


class FakeHfApi:
    """Records what a push asks of the Hub; `fail` makes the upload fail with a message naming the token."""

    calls: list = []
    fail = False

    def __init__(self, token: str) -> None:
        self.token = token

    def create_repo(self, repo_id: str, repo_type: str, private: bool, exist_ok: bool) -> str:
        FakeHfApi.calls.append(("create_repo", repo_id, private, self.token))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(
        self, folder_path: str, repo_id: str, repo_type: str, commit_message: str, allow_patterns: list[str]
    ) -> None:
        if FakeHfApi.fail:
            raise RuntimeError(f"401 Unauthorized for token {self.token}")
        FakeHfApi.calls.append(
            ("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir()), allow_patterns)
        )


def test_a_push_creates_a_private_repo_uploads_the_bundle_and_never_echoes_the_token(trained_run):
    FakeHfApi.calls = []
    url = push_bundle(trained_run.run_dir / "model", "alice/cats", "hf_secret", api_factory=FakeHfApi)
    assert url == "https://huggingface.co/alice/cats"
    assert FakeHfApi.calls == [
        ("create_repo", "alice/cats", True, "hf_secret"),
        (
            "upload_folder",
            "alice/cats",
            ["README.md", "config.json", "model.safetensors"],
            ["model.safetensors", "config.json", "README.md"],
        ),
    ]
    FakeHfApi.fail = True
    try:
        with pytest.raises(HubError) as refused:
            push_bundle(trained_run.run_dir / "model", "alice/cats", "hf_secret", api_factory=FakeHfApi)
    finally:
        FakeHfApi.fail = False
    assert (
        "hf_secret" not in str(refused.value)
        and str(refused.value) == "the Hub refused the push to alice/cats: 401 Unauthorized for token ***"
    )
    with pytest.raises(HubError, match="not a Hub repository id"):
        push_bundle(trained_run.run_dir / "model", "../etc", "hf_secret", api_factory=FakeHfApi)
    with pytest.raises(HubError, match="give a Hugging Face access token"):
        push_bundle(trained_run.run_dir / "model", "alice/cats", "", api_factory=FakeHfApi)


def test_the_method_picker_describes_each_choice_and_refuses_a_combination_with_the_librarys_message(
    tmp_path, monkeypatch
):
    from app.runtime.settings import AppSettings
    from app.studio import Studio
    from app.tabs.train import TrainTab

    studio = Studio(AppSettings(data_dir=tmp_path / "data"))
    train = TrainTab(studio)
    try:
        assert (
            train.method_note("coop", ["specpl"])
            == f"**coop**: {HOSTS.get('coop').description}  \n**+ specpl**: {BOOSTERS.get('specpl').description}"
        )
        monkeypatch.setitem(BOOSTERS._factories, "picky", PickyBooster)
        assert (
            train.method_note("coop", ["picky"])
            == "⚠️ booster 'picky' cannot run on host 'coop': it supports the hosts ivlp. Hosts it can boost: ivlp"
        )
        presets, note = train.method_choice("ivlp", ["picky"], "reference")
        assert (
            presets["choices"] == ["default", "paper"] and presets["value"] == "paper" and note.startswith("**ivlp**")
        )  # a stored old name
        assert train.method_choice("coop", [], "paper-specpl")[0]["choices"] == [
            "default",
            "paper",
            "paper-specpl",
        ]  # CoOp's two papers
        assert train.method_note("ivlp", ["specpl"]).endswith(
            "**IVLP + SpecPL (unpublished combination)**: no paper reports this stack; "
            "under the paper preset each part runs its own paper values"
        )
        *settings, options, redraw = train.method_defaults(
            "ivlp", ["specpl"], "default", 4, {"coop.n_ctx": 4, "specpl.lambda_sem": 0.5}
        )
        assert (
            options == {"specpl.lambda_sem": 0.5} and redraw == 5 and len(settings) == len(advanced.setting_fields())
        )  # CoOp's option went with CoOp
        batch_index = [field.key for field in advanced.setting_fields()].index("train.batch_size")
        assert (settings[batch_index]["value"], settings[batch_index]["info"]) == (
            None,
            "default: 'auto'",
        )  # the default preset derives it from the data
        *paper, options, redraw = train.preset_defaults("ivlp", ["specpl"], "paper", 5)
        assert [options, redraw] == [{}, 6]  # a preset shows its own values
        batch = paper[batch_index]
        assert (
            batch["value"] == HOSTS.get("ivlp").training_defaults["batch_size"]
            and batch["info"] == f"default: {batch['value']!r}"
        )
        config, line = train.form_config(
            "specpl-tiny/none", *[form(boosters=("picky",)).get(key) for key in advanced.form_keys()]
        )
        assert config == {
            "error": "booster 'picky' cannot run on host 'coop': it supports the hosts ivlp. Hosts it can boost: ivlp"
        } and line.startswith("# booster 'picky'")
    finally:
        studio.jobs.close()
