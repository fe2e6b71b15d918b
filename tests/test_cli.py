"""CLI smoke runs on the real CIFAR-10 few-shot photos with the tiny backbone."""

import json
from pathlib import Path

import pytest
from conftest import accelerate_launch

from specpl.cli import build_parser, main

TINY = ["--backbone", "specpl-tiny", "--pretrained", "none"]


def test_train_eval_predict(tmp_path, cifar_root, capsys):
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--data",
            str(cifar_root),
            "--out",
            str(run),
            *TINY,
            "--booster",
            "specpl",
            "--option",
            "coop.n_ctx=4",
            "--shots",
            "1",
            "--epochs",
            "1",
            "--batch-size",
            "5",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "finished" and 0 <= summary["accuracy"] <= 100
    assert main(["eval", "--model", str(run / "model"), "--data", str(cifar_root), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["count"] == 200 and set(result["per_class"]) == {p.name for p in (cifar_root / "test").iterdir()}
    image = sorted((cifar_root / "test" / "ship").iterdir())[0]
    assert main(["predict", "--model", str(run / "model"), str(image), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(image) and len(lines) == 3 and lines[1].strip().endswith(tuple(summary_classes(run)))


def summary_classes(run):
    return json.loads((run / "model" / "config.json").read_text())["classnames"]


def test_zero_shot_predict(cifar_root, capsys):
    image = sorted((cifar_root / "test" / "cat").iterdir())[0]
    assert main(["predict", *TINY, "--classes", "cat, dog", str(image)]) == 0
    out = capsys.readouterr().out
    assert "cat" in out and "dog" in out and "%" in out


def test_errors_are_one_line_without_traceback(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run"), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("specpl train: error:") and "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), *TINY, "--host", "nope"]) == 2
    assert "unknown host method 'nope'" in capsys.readouterr().err


def test_two_processes_agree_with_one(tmp_path, cifar_root):
    """The same command under `accelerate launch` on two processes, with gloo on the CPU. CoOp's loss
    is a per-sample mean, so two processes with batch 4 (gradients averaged by DDP) make the same
    updates as one with batch 8: the same metrics. (A stop asked of one process stops both:
    tests/test_data_parallel.py.)"""
    import subprocess

    from specpl.events import read_events

    common = ["--data", str(cifar_root), *TINY, "--option", "coop.n_ctx=4", "--shots", "2", "--augment", "none"]
    one = tmp_path / "one"
    assert main(["train", "--out", str(one), *common, "--epochs", "2", "--batch-size", "8"]) == 0
    two = tmp_path / "two"
    launch = accelerate_launch("-m", "specpl", "train")
    done = subprocess.run(
        [*launch, "--out", str(two), *common, "--epochs", "2", "--batch-size", "4"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = [json.loads((run / "metrics.json").read_text()) for run in (one, two)]
    assert metrics[0]["accuracy"] == metrics[1]["accuracy"] and metrics[0]["per_class"] == metrics[1]["per_class"]
    # batches are sharded over the processes and only the main one writes: 10 training images (one of
    # each class's 2 held out for validation) give one round of 2 x 4 an epoch, the uneven rest dropped
    steps = [e for e in read_events(two / "events.jsonl") if e["type"] == "step"]
    assert [e["step"] for e in steps] == [1, 2] and steps[0]["total_steps"] == 2
    assert (two / "model" / "model.safetensors").exists()


def test_bands_writes_pngs(tmp_path, cifar_root, capsys):
    image = cifar_root / "test" / "frog" / "0000.jpg"
    assert main(["bands", str(image), "--out", str(tmp_path), "--decomposer", "fft", "--size", "64"]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["0000_high.png", "0000_latents.png", "0000_low.png"]


def test_bands_offline_hub_decomposer_is_a_clear_error(tmp_path, cifar_root, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    image = cifar_root / "test" / "frog" / "0000.jpg"
    assert main(["bands", str(image), "--out", str(tmp_path / "out"), "--decomposer", "taesd"]) == 2
    err = capsys.readouterr().err
    assert "taesd" in err and "--decomposer-source" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_offline_default_falls_back_to_the_world_model_and_demo_data(tmp_path, monkeypatch, capsys):
    """No --backbone and no --data on an offline machine: the embedded world CLIP and the demo set,
    each announced in one plain line."""
    import shutil

    import open_clip
    from safetensors.torch import save_file

    from specpl import defaults
    from specpl.backbone import EMBEDDED_WEIGHTS
    from specpl.world.generator import world_classnames, write_fewshot_folder

    weights = tmp_path / "world.safetensors"
    save_file(open_clip.create_model("world-clip").state_dict(), str(weights))
    demo = write_fewshot_folder(tmp_path / "demo", shots=1, test_per_class=1, seed=0, classnames=world_classnames()[:3])
    monkeypatch.setitem(EMBEDDED_WEIGHTS, defaults.WORLD_MODEL, weights)
    monkeypatch.setattr(defaults, "DEMO_ZIP", Path(shutil.make_archive(str(tmp_path / "demo"), "zip", demo)))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--epochs", "1", "--batch-size", "4", "--option", "coop.n_ctx=2"]) == 0
    err = capsys.readouterr().err
    assert "no --data given; training on the embedded SpectralWorld demo set" in err
    assert "using the embedded SpectralWorld CLIP (world-clip) instead" in err
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["backbone"]["name"] == "world-clip" and config["backbone"]["pretrained"] == "embedded"
    assert config["classnames"] == world_classnames()[:3]


def test_train_refuses_a_host_a_booster_cannot_run_on_before_loading_a_backbone(tmp_path, monkeypatch, capsys):
    import specpl.cli

    monkeypatch.setattr(specpl.cli, "_default_backbone", lambda *a: pytest.fail("loaded a backbone first"))
    assert main(["train", "--out", str(tmp_path / "run"), "--host", "coop", "--booster", "isp"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("specpl train: error: booster 'isp' cannot run on host 'coop': it needs a host with image")
    assert err.rstrip().endswith("Hosts it can boost: ivlp, maple, mmrl, promptsrc")
    assert not (tmp_path / "run").exists()


def test_train_flags_map_onto_the_run_config(tmp_path):
    from specpl.cli import build_parser, run_config_from_args

    args = build_parser().parse_args(
        [
            "train",
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "run"),
            *TINY,
            "--epochs",
            "3",
            "--grad-accum",
            "2",
            "--no-cache",
            "--compile",
        ]
    )
    config = run_config_from_args(args)
    assert (config.train.epochs, config.train.grad_accum_steps, config.train.cache_features, config.train.compile) == (
        3,
        2,
        False,
        "on",
    )
    assert run_config_from_args(build_parser().parse_args(["train", "--out", "x", *TINY])).train.compile == "auto"
    seeded = run_config_from_args(build_parser().parse_args(["train", "--out", "x", *TINY, "--seed", "3"]))
    assert seeded.data.seed == seeded.train.seed == 3  # the few-shot draw and hold-out too, as the sweep seeds them
    flags = [
        "train",
        "--out",
        "x",
        *TINY,
        "--compile",
        "off",
        "--precision",
        "bf16",
        "--optimizer",
        "adamw",
        "--max-cached-views",
        "4",
        "--workers",
        "2",
        "--preset",
        "reference",
    ]
    config = run_config_from_args(build_parser().parse_args(flags))
    assert (
        config.train.compile,
        config.train.precision,
        config.train.optimizer,
        config.train.max_cached_views,
        config.train.num_workers,
    ) == ("off", "bf16", "adamw", 4, 2)
    assert config.method.preset == "paper"  # the old name reads as the new


def test_methods_lists_every_host_and_booster_with_its_line_and_defaults(capsys):
    from specpl.methods import BOOSTERS, HOSTS

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for registry in (HOSTS, BOOSTERS):
        for name in registry.names():
            assert f"  {name:10s} {registry.get(name).description}\n" in out, name
    assert "paper training: epochs 5, batch_size 4, lr 0.0035" in out  # MaPLe's published schedule
    assert (
        "options (default preset): linear_adapter=True, n_ctx=16" in out
        and "hosts: cocoop, coop, ivlp, kgcoop, maple, promptsrc; published on: coop, cocoop, maple, promptsrc" in out
    )
    assert (
        "paper preset (CoOp's vit_b16_ctxv1: 4 tokens from 'a photo of a', 200 epochs (the CoCoOp paper's CoOp row)): "
        "coop.n_ctx=4, coop.ctx_init=a photo of a, coop.ctx_from_template=False, coop.linear_adapter=False, "
        "train@imagenet.epochs=50" in out
    )
    assert (
        "paper-specpl preset (SpecPL's CoOp: 16 random tokens, 100 epochs (no published plain-CoOp row)): coop.n_ctx=16"
        in out
    )
    assert (
        "paper preset: specpl.bank_init_batches=0, specpl.refiner=layernorm, specpl.lambda_raw=0.0; "
        "on mmrl: specpl.bank_init_batches=10" in out
    )
    assert (  # per-host rules alone, no empty part
        "default preset: on mmrl: specpl.lambda_raw=0.0; on coop: specpl.lambda_raw=0.0, specpl.refine_novel=False; "
        "on cocoop: specpl.lambda_raw=0.0, specpl.refine_novel=False; "
        "on kgcoop: specpl.lambda_raw=0.0, specpl.refine_novel=False" in out
    )
    assert "training: default preset train.augment=clip" in out and "paper preset train.augment=dassl" in out
    assert main(["methods", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(HOSTS.names()) | set(BOOSTERS.names())
    assert next(r for r in rows if r["name"] == "isp")["options"]["structural"] == "auto"
    assert main(["methods", "--preset", "paper", "--host", "maple", "--dataset", "imagenet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("maple (paper preset on imagenet):\n")
    assert "  maple.tail = 'of a {}.'  <- muzairkhattak/multimodal-prompt-learning trainers/maple.py" in out
    assert "  train.epochs = 5  <- muzairkhattak/multimodal-prompt-learning configs/trainers/MaPLe/" in out


def test_methods_names_each_component_as_the_tables_do(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "name in tables: default: DAPT-G (per-head GradCAM, ours); paper: DAPT-G\n" in out
    assert "name in tables: default: ISP (sample probing, reconstructed); paper: ISP (reconstructed)\n" in out
    assert "name in tables: CoOp\n" in out


def test_benches_run_on_one_thread_unless_told_and_refuse_fewer():
    """Two benches side by side on a small machine each ran about 5x slower with torch's default
    threads; one is the default and is recorded in the report's provenance line."""
    parser = build_parser()
    assert parser.parse_args(["bench", "defaults"]).threads == 1
    assert parser.parse_args(["bench", "world", "--threads", "4"]).threads == 4
    with pytest.raises(SystemExit, match="--threads must be at least 1; got 0"):
        main(["bench", "defaults", "--threads", "0"])
