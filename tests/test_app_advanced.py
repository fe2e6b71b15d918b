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

from app import advanced, decomposers
from app.hub import HubError, checkpoint_bundle, push_bundle
from app.progress import lr_frame, read_progress, val_frame
from app.reports import RunSummary, confusion_html, misclassified_gallery, ranking
from specpl.cli import build_parser, run_config_from_args
from specpl.config import BackboneConfig, DataConfig, DecomposerConfig, MethodConfig, RunConfig, TrainConfig
from specpl.inference import Predictor
from specpl.methods import BOOSTERS, HOSTS, resolve_method_options

TINY = BackboneConfig(name="specpl-tiny", pretrained=None)
TAEF2 = Path(__file__).resolve().parents[2] / "shared" / "weights" / "taef2"


def form(host: str = "coop", boosters: tuple[str, ...] = ("specpl",), preset: str = "default", **changes) -> dict:
    """The form as a user leaves it for this choice, with `changes` (by key) typed in; a method
    option goes into ``method.options`` as the drawn controls write it."""
    options = {key: value for key, value in changes.items() if key.split(".")[0] in HOSTS or key.split(".")[0] in BOOSTERS}
    values = advanced.effective_values(host, list(boosters), preset)
    values.update({"method.host": host, "method.boosters": list(boosters), "method.preset": preset, "decomposer.name": "fft",
                   "data.shots": 2, "train.epochs": 3, "train.lr": 0, "data.split_ratio": 0.5, advanced.OPTIONS_KEY: options})
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


def test_the_form_shows_what_each_preset_means_and_an_untouched_form_keeps_the_preset():
    reference = advanced.effective_values("coop", ["specpl"], "reference")
    assert reference["specpl.bank_init_batches"] == 0 and advanced.effective_values("coop", ["specpl"], "default")["specpl.bank_init_batches"] == 10
    assert reference["train.batch_size"] == 32 and reference["train.eval_every_epochs"] == 1  # the host's default; the app evaluates every epoch
    config = advanced.run_config(form(preset="reference"), TINY)
    assert config.method.options == {} and config.method.preset == "reference"  # nothing typed: no override hides the preset
    assert resolve_method_options(config.method)["specpl"]["bank_init_batches"] == 0
    assert config.train == TrainConfig(epochs=3, eval_every_epochs=1)


def test_the_cli_line_trains_exactly_the_forms_config(tmp_path, monkeypatch):
    """Parsed by specpl's own CLI (with the saved preset for settings without a flag), the line
    gives the config the app would train, field for field."""
    config = advanced.run_config(form(**{
        "coop.n_ctx": 4, "coop.ctx_init": "a photo of a", "specpl.lambda_sem": 0.5, "train.batch_size": 8,
        "train.warmup_epochs": 0, "train.augment": "none", "decomposer.source": str(TAEF2), "data.seed": 3, "run.template": "a {} here.",
    }), TINY)
    line = advanced.cli_command(config)
    assert "--option coop.n_ctx=4" in line and "--option 'coop.ctx_init=\"a photo of a\"'" in line and "--batch-size 8" in line
    assert line.startswith("specpl train --config specpl-preset.json ")  # warm-up and data.seed have no flag
    monkeypatch.chdir(tmp_path)
    (tmp_path / advanced.PRESET_FILE).write_text(advanced.preset_json(config))
    parsed = run_config_from_args(build_parser().parse_args(shlex.split(line)[1:]))
    assert parsed.data.root == "DATASET_FOLDER"
    parsed.data.root = config.data.root
    assert parsed == config
    plain = advanced.run_config(form(), TINY)
    assert "--config" not in advanced.cli_command(plain)  # everything has a flag: no preset file needed


@dataclasses.dataclass
class PickyConfig:
    weight: float = 1.0


class PickyBooster:
    """A stand-in booster that only boosts IVLP, to see the library's refusal reach the user."""

    description = "Picky: boosts IVLP only"
    config_class = PickyConfig
    supported_hosts = ("ivlp",)
    requires: frozenset = frozenset()


def test_a_preset_file_round_trips_and_a_bad_one_says_why(tmp_path, monkeypatch):
    config = advanced.run_config(form("ivlp", (), "reference", **{"ivlp.depth": 3, "train.seed": 7}), TINY)
    path = tmp_path / "preset.json"
    path.write_text(advanced.preset_json(config))
    loaded = advanced.read_preset(path, "preset.json")
    assert loaded == config and json.loads(path.read_text())["data"]["root"] == ""  # no server path in a shared file
    values = advanced.form_values(loaded)
    assert values[advanced.OPTIONS_KEY] == {"ivlp.depth": 3} and values["train.seed"] == 7 and values["method.preset"] == "reference"
    assert advanced.run_config({**values, "decomposer.name": "fft"}, TINY) == config  # the form it fills trains the same
    monkeypatch.setitem(BOOSTERS._factories, "picky", PickyBooster)
    path.write_text(json.dumps({"method": {"host": "coop", "boosters": ["picky"]}}))
    with pytest.raises(ValueError, match=r"^preset.json is not a usable preset: booster 'picky' cannot run on host 'coop': it supports the hosts ivlp. Hosts it can boost: ivlp$"):
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
    monkeypatch.setattr("app.decomposers.cached_model_folder", lambda repo: None)
    assert decomposers.status("fft").usable
    taef2 = decomposers.status("taef2")
    assert not taef2.usable and "set the decomposer source (Advanced)" in taef2.reason and "taef2_encoder.pth" in taef2.reason
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
        *({"type": "step", "step": s, "total_steps": 4, "epoch": 1 + (s > 2), "epochs": 2, "loss": 1.0, "losses": {}, "lr": 0.002 / s} for s in (1, 2, 3, 4)),
        {"type": "val", "epoch": 1, "epochs": 2, "step": 2, "accuracy": 40.0, "split": "test"},
        {"type": "val", "epoch": 2, "epochs": 2, "step": 4, "accuracy": 55.0, "split": "test"},
    ]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    progress = read_progress(tmp_path)
    assert val_frame(progress)[["epoch", "accuracy"]].values.tolist() == [[1, 40.0], [2, 55.0]]
    assert lr_frame(progress)["lr"].tolist() == [0.002, 0.001, 0.002 / 3, 0.0005]
    assert progress.decomposer == {"name": "fft", "reason": "fft, as the config names it."}

    data = tmp_path / "data" / "cat"
    data.mkdir(parents=True)
    (data / "1.png").write_bytes(b"png")
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"png")
    metrics = {
        "accuracy": 50.0, "per_class": {"cat": 100.0, "<b>dog</b>": 0.0}, "confusion": [[3, 0], [3, 0]],
        "misclassified": [{"path": str(data / "1.png"), "label": "cat", "predicted": "<b>dog</b>", "probability": 0.75},
                          {"path": str(outside), "label": "cat", "predicted": "dog", "probability": 0.5}],
    }
    table = confusion_html(metrics)
    assert "&lt;b&gt;dog&lt;/b&gt;" in table and "<b>dog</b>" not in table.replace("<b>Confusion matrix</b>", "")
    assert table.count("rgba(99,102,241,1.00)") == 2 and table.count("rgba(99,102,241,0.00)") == 2  # shaded by row share
    assert misclassified_gallery(metrics, tmp_path) == [(str((data / "1.png").resolve()), "cat → <b>dog</b> (75%)")]  # nothing outside data/

    summaries = [RunSummary("r1", "low", "coop", progress, {"accuracy": 30.0}), RunSummary("r2", "high", "coop", progress, {"accuracy": 70.0}),
                 RunSummary("r3", "base-new", "coop", progress, {"accuracy": 90.0, "base": 90.0, "new": 10.0, "hm": 18.0})]
    ranked = ranking(summaries)
    assert ranked["run"].tolist() == ["r2", "r1", "r3"] and ranked["best val"].tolist() == ["55.0%"] * 3  # HM ranks a base/new run


def test_a_stopped_runs_checkpoint_becomes_a_bundle_that_predicts_as_the_model_did(tmp_path, cifar_root, tiny_backbone):
    from specpl.trainer import Trainer

    config = RunConfig(
        backbone=TINY, decomposer=DecomposerConfig(name="fft", image_size=32),
        method=MethodConfig(host="coop", boosters=["specpl"], options={"coop": {"n_ctx": 4}, "specpl": {"bank_init_batches": 1}}),
        data=DataConfig(root=str(cifar_root), shots=2), train=TrainConfig(epochs=5, batch_size=4),
    )
    steps = iter(range(1000))
    run_dir = tmp_path / "run"
    result = Trainer(config, run_dir, backbone=tiny_backbone, progress_bar=False, should_stop=lambda: next(steps) >= 7).fit()
    assert result.status == "cancelled" and not (run_dir / "model").exists()
    bundle = checkpoint_bundle(run_dir, lambda backbone_config: tiny_backbone)
    saved = json.loads((bundle / "config.json").read_text())
    assert saved["checkpoint"]["global_step"] == 7 and "not a finished training" in saved["checkpoint"]["note"]
    images = sorted((cifar_root / "test" / "cat").iterdir())[:3]
    loaded = Predictor.from_bundle(bundle, backbone=tiny_backbone)
    assert loaded.classnames == result.model.classnames
    torch.testing.assert_close(loaded.logits(loaded.preprocess(images)), Predictor(result.model).logits(loaded.preprocess(images)))
    assert checkpoint_bundle(run_dir, lambda backbone_config: pytest.fail("rebuilt although the checkpoint is unchanged")) == bundle


class FakeHfApi:
    """Records what a push asks of the Hub; `fail` makes the upload fail with a message naming the token."""

    calls: list = []
    fail = False

    def __init__(self, token: str) -> None:
        self.token = token

    def create_repo(self, repo_id: str, repo_type: str, private: bool, exist_ok: bool) -> str:
        FakeHfApi.calls.append(("create_repo", repo_id, private, self.token))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, folder_path: str, repo_id: str, repo_type: str, commit_message: str, allow_patterns: list[str]) -> None:
        if FakeHfApi.fail:
            raise RuntimeError(f"401 Unauthorized for token {self.token}")
        FakeHfApi.calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir()), allow_patterns))


def test_a_push_creates_a_private_repo_uploads_the_bundle_and_never_echoes_the_token(trained_run):
    FakeHfApi.calls = []
    url = push_bundle(trained_run.run_dir / "model", "alice/cats", "hf_secret", api_factory=FakeHfApi)
    assert url == "https://huggingface.co/alice/cats"
    assert FakeHfApi.calls == [
        ("create_repo", "alice/cats", True, "hf_secret"),
        ("upload_folder", "alice/cats", ["README.md", "config.json", "model.safetensors"], ["model.safetensors", "config.json", "README.md"]),
    ]
    FakeHfApi.fail = True
    try:
        with pytest.raises(HubError) as refused:
            push_bundle(trained_run.run_dir / "model", "alice/cats", "hf_secret", api_factory=FakeHfApi)
    finally:
        FakeHfApi.fail = False
    assert "hf_secret" not in str(refused.value) and str(refused.value) == "the Hub refused the push to alice/cats: 401 Unauthorized for token ***"
    with pytest.raises(HubError, match="not a Hub repository id"):
        push_bundle(trained_run.run_dir / "model", "../etc", "hf_secret", api_factory=FakeHfApi)
    with pytest.raises(HubError, match="give a Hugging Face access token"):
        push_bundle(trained_run.run_dir / "model", "alice/cats", "", api_factory=FakeHfApi)


def test_the_method_picker_describes_each_choice_and_refuses_a_combination_with_the_librarys_message(tmp_path, monkeypatch):
    from app.settings import AppSettings
    from app.studio import Studio

    studio = Studio(AppSettings(data_dir=tmp_path / "data"))
    try:
        assert studio.method_note("coop", ["specpl"]) == f"**coop**: {HOSTS.get('coop').description}  \n**+ specpl**: {BOOSTERS.get('specpl').description}"
        monkeypatch.setitem(BOOSTERS._factories, "picky", PickyBooster)
        assert studio.method_note("coop", ["picky"]) == "⚠️ booster 'picky' cannot run on host 'coop': it supports the hosts ivlp. Hosts it can boost: ivlp"
        presets, note = studio.method_choice("ivlp", ["picky"], "reference")
        assert presets["choices"] == advanced.presets_of("ivlp") and presets["value"] == "reference" and note.startswith("**ivlp**")
        *settings, options, redraw = studio.method_defaults("ivlp", ["specpl"], "default", 4, {"coop.n_ctx": 4, "specpl.lambda_sem": 0.5})
        assert options == {"specpl.lambda_sem": 0.5} and redraw == 5 and len(settings) == len(advanced.setting_fields())  # CoOp's option went with CoOp
        assert studio.preset_defaults("ivlp", ["specpl"], "reference", 5)[-2:] == [{}, 6]  # a preset shows its own values
        batch = settings[[field.key for field in advanced.setting_fields()].index("train.batch_size")]
        assert batch["value"] == HOSTS.get("ivlp").training_defaults["batch_size"] and batch["info"] == f"default: {batch['value']!r}"
        config, line = studio.form_config("specpl-tiny/none", *[form(boosters=("picky",)).get(key) for key in advanced.form_keys()])
        assert config == {"error": "booster 'picky' cannot run on host 'coop': it supports the hosts ivlp. Hosts it can boost: ivlp"} and line.startswith("# booster 'picky'")
    finally:
        studio.jobs.close()
