"""Command line: ``specpl train | eval | predict | bands`` (also ``python -m specpl``)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from specpl.config import BackboneConfig, DecomposerConfig, RunConfig, canonical_preset, from_dict
from specpl.world.generator import CAMERAS


def _parse_option(text: str) -> tuple[str, str, Any]:
    """``coop.n_ctx=4`` -> ("coop", "n_ctx", 4); values are parsed as JSON when they can be."""
    try:
        target, value = text.split("=", 1)
        component, key = target.split(".", 1)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--option expects COMPONENT.KEY=VALUE (e.g. coop.n_ctx=4), got {text!r}"
        ) from None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return component, key, parsed


def options_by_component(parsed: list[tuple[str, str, Any]]) -> dict[str, dict[str, Any]]:
    """[("coop", "n_ctx", 4), ...] (from `_parse_option`) -> {"coop": {"n_ctx": 4}}."""
    options: dict[str, dict[str, Any]] = {}
    for component, key, value in parsed:
        options.setdefault(component, {})[key] = value
    return options


def _add_backbone_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("backbone")
    group.add_argument("--backbone", default=None, help="open_clip model name or hf-hub:org/repo (default ViT-B-16)")
    group.add_argument(
        "--pretrained", default=None, help="pretrained tag (openai), a local checkpoint file, or 'none' for random init"
    )
    group.add_argument(
        "--quick-gelu",
        choices=["auto", "yes", "no"],
        default="auto",
        help="activation override; auto infers it from the weights' origin",
    )


def _backbone_config(args: argparse.Namespace, base: BackboneConfig) -> BackboneConfig:
    if args.backbone:
        base.name = args.backbone
    if args.pretrained:
        base.pretrained = None if args.pretrained.lower() == "none" else args.pretrained
    if args.quick_gelu != "auto":
        base.quick_gelu = args.quick_gelu == "yes"
    return base


THREADS_HELP = (
    "torch CPU threads for the run (default 1: on a small shared machine, spare OpenMP threads spin "
    "and two benches side by side each run several times slower)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specpl", description="Prompt learning for frozen CLIP models (CoOp + SpecPL and friends)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train",
        help="learn prompts on a few-shot image folder",
        description="Train a host (+ boosters) on DATA and export a model bundle to OUT/model.",
    )
    train.add_argument(
        "--data",
        required=False,
        help=(
            "folder with <class>/ sub-folders, or train/ and test/ each holding them "
            "(default: the embedded SpectralWorld demo set)"
        ),
    )
    train.add_argument("--out", required=True, help="run folder (events.jsonl, checkpoint/, model/, metrics.json)")
    train.add_argument("--config", help="a run config JSON (e.g. a previous run's config.json); flags override it")
    _add_backbone_args(train)
    train.add_argument("--host", help="host method (default coop; `specpl methods` lists them)")
    train.add_argument(
        "--preset",
        help=(
            "default (the product's: measured, starts at zero-shot, validation chooses the epoch kept) "
            "or paper (the published settings; 'reference' is read as paper)"
        ),
    )
    train.add_argument(
        "--dataset", help="a registered dataset layout for --data (default: folder; e.g. oxford_pets, imagenet)"
    )
    train.add_argument(
        "--unlabeled", help="a folder of unlabeled images to train on, for a label-free host (caspl-boost)"
    )
    train.add_argument(
        "--template",
        help="hand-crafted prompt template with {} for the class (default: the dataset's, else 'a photo of a {}.')",
    )
    train.add_argument(
        "--booster", action="append", default=None, help="booster to add, repeatable (e.g. --booster specpl)"
    )
    train.add_argument(
        "--option",
        action="append",
        type=_parse_option,
        default=[],
        help="method option COMPONENT.KEY=VALUE, repeatable (e.g. coop.n_ctx=4)",
    )
    train.add_argument(
        "--decomposer",
        help=(
            "band decomposer: auto, qwen-vae, fft, taef2, taesd, sd-vae "
            "(default auto: the reference VAE when its weights can be had, else fft)"
        ),
    )
    train.add_argument(
        "--augment",
        choices=["dassl", "clip", "none", "reference"],
        help=(
            "augmentation: clip (open_clip's mild crop; the default preset's), "
            "dassl (Dassl's random resized crop and flip; the paper preset's; 'reference' is read as dassl) or none"
        ),
    )
    train.add_argument("--schedule", choices=["epoch", "step"], help="cosine stepped per epoch (reference) or per step")
    train.add_argument(
        "--eval-every",
        type=int,
        help="accuracy on the validation split every N epochs (the default preset scores every epoch to keep the best)",
    )
    train.add_argument(
        "--select",
        choices=["val", "last"],
        help=(
            "let validation choose the epoch kept: the last unless another is clearly better, "
            "or zero-shot CLIP itself when the run cannot be seen to beat it (the default preset's); "
            "or keep the last (the paper preset's)"
        ),
    )
    train.add_argument("--decomposer-source", help="hub id or local folder with the decomposer's weights")
    train.add_argument("--shots", type=int, help="training images per class (default 16; 0 keeps all)")
    train.add_argument(
        "--split-ratio", type=float, help="train share per class for a folder without train/ and test/ (default 0.5)"
    )
    train.add_argument(
        "--subsample",
        choices=["all", "base", "new"],
        help="train on all classes, or the base half (reports base/new/HM)",
    )
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument(
        "--seed",
        type=int,
        help="seeds the few-shot sample, the validation hold-out and training, as `specpl sweep` does (default 1)",
    )
    train.add_argument("--grad-accum", type=int)
    train.add_argument("--no-cache", action="store_true", help="recompute frozen image features every epoch")
    train.add_argument(
        "--compile",
        nargs="?",
        const="on",
        choices=["auto", "on", "off"],
        help=(
            "torch.compile the training step (CUDA graphs on a GPU; the first steps compile); "
            "default auto: on a GPU when the run is long enough to pay"
        ),
    )
    train.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        help="auto: bf16 on a GPU (the frozen CLIP held in bf16), fp32 on a CPU",
    )
    train.add_argument("--optimizer", choices=["sgd", "adamw"], help="default: the host's")
    train.add_argument(
        "--max-cached-views",
        type=int,
        help="distinct augmentation views kept per image (default: a fresh one every epoch)",
    )
    train.add_argument(
        "--workers", type=int, help="DataLoader workers that decode images for the feature cache and the image tower"
    )
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")

    evaluate = sub.add_parser("eval", help="accuracy of a model bundle on a folder's test split")
    evaluate.add_argument("--model", required=True, help="a model bundle folder (RUN/model)")
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument(
        "--dataset", default="folder", help="a registered dataset layout for --data (default: folder)"
    )
    evaluate.add_argument("--subsample", choices=["all", "base", "new"], default="all")
    evaluate.add_argument("--json", action="store_true", help="print the full result as JSON")

    predict = sub.add_parser("predict", help="top-k labels for images")
    predict.add_argument("images", nargs="+")
    predict.add_argument("--model", help="a model bundle folder; omit for zero-shot with --classes")
    predict.add_argument("--classes", help="comma-separated class names for zero-shot CLIP")
    predict.add_argument("--template", default="a photo of a {}.")
    predict.add_argument("--top-k", type=int, default=5)
    _add_backbone_args(predict)

    methods = sub.add_parser("methods", help="every host and booster, with a line each and its defaults")
    methods.add_argument("--json", action="store_true", help="print the registry as JSON")
    methods.add_argument(
        "--preset", help="show every value of this preset (paper, or a paper-<source> variant) with its source"
    )
    methods.add_argument(
        "--host",
        help="with --preset: resolve this host only (default: every host, and every booster on its first host)",
    )
    methods.add_argument(
        "--booster", action="append", default=[], help="with --preset and --host: a booster to stack, repeatable"
    )
    methods.add_argument(
        "--dataset", help="with --preset: the dataset whose own published schedule applies (e.g. imagenet)"
    )

    sweep = sub.add_parser(
        "sweep",
        help=(
            "the benchmark tables (base-to-new, few-shot, cross-dataset, domain generalisation): "
            "datasets x methods x seeds, resumable"
        ),
    )
    from specpl.sweep import add_sweep_arguments

    add_sweep_arguments(sweep)

    bench = sub.add_parser("bench", help="benchmarks (offline)")
    bench_sub = bench.add_subparsers(dest="benchmark", required=True)
    world = bench_sub.add_parser(
        "world",
        help="SpectralWorld: base/new/HM per method and the granularity probe",
        description=(
            "Train every host alone, with each booster it accepts and in the given stacks "
            "on SpectralWorld base classes over several seeds and write a markdown table."
        ),
    )
    world.add_argument("--shots", type=int, default=4)
    world.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    world.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    world.add_argument("--epochs", type=int, default=20)
    world.add_argument("--test-per-class", type=int, default=10)
    world.add_argument("--hosts", nargs="+", help="hosts to run (default: every registered host)")
    world.add_argument("--decomposer", default="fft")
    world.add_argument("--decomposer-source")
    world.add_argument("--probe-pairs", type=int, default=200)
    world.add_argument(
        "--camera",
        default="default",
        choices=list(CAMERAS),
        help="downstream domain: default (as in pretraining) or sepia (unseen warm, low-contrast cast)",
    )
    world.add_argument(
        "--preset",
        nargs="+",
        default=["default"],
        choices=["default", "paper", "reference"],
        help="presets to run (both: a row for each where they differ; reference reads as paper)",
    )
    world.add_argument(
        "--boosters",
        nargs="+",
        default=["specpl"],
        help=(
            "boosters to run on each host that accepts them (default: specpl); "
            "pairs a host refuses are skipped and listed in the report"
        ),
    )
    world.add_argument(
        "--stacks",
        nargs="+",
        default=[],
        help="host and boosters joined by '+' to run as rows, e.g. maple+caspl+specpl ivlp+dapt+specpl",
    )
    world.add_argument(
        "--option",
        action="append",
        type=_parse_option,
        default=[],
        help=(
            "method option COMPONENT.KEY=VALUE on every row that has the component, repeatable "
            "(e.g. specpl.refine_novel=false)"
        ),
    )
    world.add_argument(
        "--ablate",
        action="store_true",
        help=(
            "CoOp + SpecPL with each input changed alone "
            "(decomposer, augmentation, schedule, bank, refiner, losses) instead of every host"
        ),
    )
    world.add_argument(
        "--taef2-source", help="with --ablate: a folder with TAEF2 weights for the decomposer row (skipped without it)"
    )
    world.add_argument("--out", default="bench/WORLD.md", help="markdown report (written atomically)")

    defaults = bench_sub.add_parser(
        "defaults",
        help=(
            "the defaults against zero-shot: every host alone and with each booster, "
            "as `specpl train` runs them with no flag"
        ),
        description=(
            "Train every host alone and with each booster under the default preset, "
            "exactly as the CLI and the app do with no flag, "
            "on the demo set and on SpectralWorld under each camera, and write a markdown table against zero-shot."
        ),
    )
    defaults.add_argument("--hosts", nargs="+", help="hosts to run (default: every registered host)")
    defaults.add_argument(
        "--boosters",
        nargs="*",
        default=["specpl", "dapt", "isp"],
        help="boosters to run on each host that accepts them (none: the hosts alone)",
    )
    defaults.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    defaults.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    defaults.add_argument("--test-per-class", type=int, default=50)
    defaults.add_argument(
        "--domains",
        nargs="+",
        default=["demo", *CAMERAS],
        choices=["demo", *CAMERAS],
        help="the demo set and SpectralWorld cameras to run",
    )
    defaults.add_argument(
        "--held-out",
        nargs="*",
        choices=list(CAMERAS),
        help="cameras the defaults were not chosen on (they confirm them); default: the bench's own held-out cameras",
    )
    defaults.add_argument(
        "--ablation",
        nargs="*",
        default=[],
        help="extra world rows HOST+BOOSTER:COMPONENT.KEY=VALUE[,...], e.g. cocoop+specpl:specpl.refiner=layernorm",
    )
    defaults.add_argument("--out", default="bench/DEFAULTS.md", help="markdown report (written atomically)")

    bands = sub.add_parser("bands", help="write the low/high band maps of an image as PNGs")
    bands.add_argument("image")
    bands.add_argument("--out", required=True, help="folder for <name>_low.png, <name>_high.png, <name>_latents.png")
    bands.add_argument("--decomposer", default="fft")
    bands.add_argument("--decomposer-source")
    bands.add_argument("--size", type=int, default=256, help="square resolution fed to the decomposer")
    return parser


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    config = RunConfig()
    if args.config:
        raw = json.loads(Path(args.config).read_text(encoding="utf-8"))
        known = {k: raw[k] for k in ("backbone", "decomposer", "method", "data", "train", "template") if k in raw}
        config = from_dict(RunConfig, known)
    config.backbone = _backbone_config(args, config.backbone)
    if args.host:
        config.method.host = args.host
    if args.preset:
        config.method.preset = canonical_preset(args.preset)
    if args.dataset:
        config.data.dataset = args.dataset
    if args.template:
        config.template = args.template
    if args.unlabeled:
        config.data.unlabeled_root = args.unlabeled
    if args.augment:
        config.train.augment = args.augment
    if args.schedule:
        config.train.schedule = args.schedule
    if args.eval_every is not None:
        config.train.eval_every_epochs = args.eval_every
    if args.select:
        config.train.select = args.select
    if args.booster is not None:
        config.method.boosters = args.booster
    for component, options in options_by_component(args.option).items():
        config.method.options.setdefault(component, {}).update(options)
    if args.decomposer:
        config.decomposer.name = args.decomposer
    if args.decomposer_source:
        config.decomposer.source = args.decomposer_source
    if args.data:
        config.data.root = args.data
    if args.shots is not None:
        config.data.shots = args.shots or None
    if args.subsample:
        config.data.subsample = args.subsample
    if args.split_ratio is not None:
        config.data.split_ratio = args.split_ratio
    if args.seed is not None:  # one number draws the shots, holds out validation and seeds training
        config.data.seed = config.train.seed = args.seed
    for flag, field in (
        ("epochs", "epochs"),
        ("batch_size", "batch_size"),
        ("lr", "lr"),
        ("grad_accum", "grad_accum_steps"),
    ):
        if getattr(args, flag) is not None:
            setattr(config.train, field, getattr(args, flag))
    if args.no_cache:
        config.train.cache_features = False
    if args.compile:
        config.train.compile = args.compile
    for flag, field in (
        ("precision", "precision"),
        ("optimizer", "optimizer"),
        ("max_cached_views", "max_cached_views"),
        ("workers", "num_workers"),
    ):
        if getattr(args, flag) is not None:
            setattr(config.train, field, getattr(args, flag))
    return config


def _explicit_backbone(args: argparse.Namespace) -> bool:
    return bool(args.backbone or args.pretrained or getattr(args, "config", None))


def _default_backbone(config: BackboneConfig, explicit: bool):
    """The backbone the user asked for; when they asked for none and the default can't be loaded,
    the embedded SpectralWorld CLIP, with a plain note on stderr."""
    from specpl.backbone import load_backbone
    from specpl.defaults import load_backbone_or_world

    if explicit:
        return load_backbone(config)
    backbone, note = load_backbone_or_world(config)
    if note:
        print(f"note: {note}", file=sys.stderr)
    return backbone


def cmd_train(args: argparse.Namespace) -> int:
    from specpl.defaults import demo_data_dir
    from specpl.evaluate import metrics_summary
    from specpl.factory import resolve_method_options
    from specpl.trainer import Trainer

    config = run_config_from_args(args)
    resolve_method_options(config.method)  # a refused host/booster pair or a bad option fails before any download
    if not config.data.root:
        config.data.root = str(demo_data_dir())
        print(
            f"note: no --data given; training on the embedded SpectralWorld demo set ({config.data.root})",
            file=sys.stderr,
        )
    backbone = _default_backbone(config.backbone, _explicit_backbone(args))
    result = Trainer(config, args.out, backbone=backbone).fit(resume=args.resume)
    summary = metrics_summary(result.metrics)
    print(json.dumps({"status": result.status, "run_dir": str(result.run_dir), **summary}, indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from specpl.config import DataConfig
    from specpl.datasets import read_dataset
    from specpl.inference import Predictor

    predictor = Predictor.from_bundle(args.model)
    data = read_dataset(DataConfig(root=args.data, dataset=args.dataset, shots=None, subsample=args.subsample))
    predictor.set_classnames(data.classnames, novel=args.subsample == "new")
    result = predictor.evaluate(data.test or data.train)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"accuracy {result.accuracy:.2f}% on {result.count} images")
        for name, value in result.per_class.items():
            print(f"  {name:30s} {value:6.2f}%")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from specpl.inference import Predictor

    if args.model:
        predictor = Predictor.from_bundle(args.model)
    elif args.classes:
        backbone = _default_backbone(_backbone_config(args, BackboneConfig()), _explicit_backbone(args))
        predictor = Predictor.zero_shot(
            backbone, [c.strip() for c in args.classes.split(",") if c.strip()], args.template
        )
    else:
        raise SystemExit("specpl predict: give --model BUNDLE, or --classes a,b,c for zero-shot")
    for path, ranked in zip(args.images, predictor.predict(args.images, top_k=args.top_k), strict=True):
        print(path)
        for label, prob in ranked:
            print(f"  {prob:7.2%}  {label}")
    return 0


def cmd_bands(args: argparse.Namespace) -> int:
    from specpl.bands import build_decomposer, save_band_pngs

    decomposer = build_decomposer(
        DecomposerConfig(name=args.decomposer, source=args.decomposer_source, image_size=args.size)
    )
    for path in save_band_pngs(decomposer, Path(args.image), Path(args.out), args.size):
        print(path)
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from specpl.factory import describe_methods
    from specpl.training_plan import PRESET_TRAINING

    if args.preset:
        return _print_preset_values(args)
    rows = describe_methods()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for kind in ("host", "booster"):
        print(f"{kind}s:")
        for row in (r for r in rows if r["kind"] == kind):
            print(f"  {row['name']:10s} {row['description']}")
            names = row["names"]
            shown = (
                names["default"] if len(set(names.values())) == 1 else "; ".join(f"{p}: {n}" for p, n in names.items())
            )
            print(f"  {'':10s} name in tables: {shown}")
            if kind == "host":
                training = ", ".join(f"{k} {v}" for k, v in row["training"].items())
                print(f"  {'':10s} paper training: {training}")
            else:
                published = ", ".join(row["published_hosts"]) or "none (any stack of it is an unpublished combination)"
                print(f"  {'':10s} hosts: {', '.join(row['hosts'])}; published on: {published}")
            options = ", ".join(f"{k}={v}" for k, v in row["options"].items())
            print(f"  {'':10s} options (default preset): {options or 'none'}")
            for preset, values in row["presets"].items():
                per_host = row.get("host_presets", {}).get(preset, {})
                changes = "; ".join(
                    [
                        *([_preset_text(values)] if values else []),
                        *(f"on {host}: {_preset_text(v)}" for host, v in per_host.items()),
                    ]
                )
                note = f" ({row['preset_notes'][preset]})" if preset in row["preset_notes"] else ""
                if values or per_host:
                    print(f"  {'':10s} {preset} preset{note}: {changes}")
    print(
        f"training: default preset {_preset_text({'train': PRESET_TRAINING['default']})} "
        "(epochs and batch size derived from the data); "
        f"paper preset {_preset_text({'train': PRESET_TRAINING['paper']})} with each host's paper training"
    )
    return 0


def _print_preset_values(args: argparse.Namespace) -> int:
    """Every value a preset resolves to, for a host alone and every booster on a host it fits (or
    the one stack `--host`/`--booster` names), each with its source (`specpl.sources`)."""
    from specpl.config import DataConfig, MethodConfig, RunConfig, canonical_preset
    from specpl.factory import describe_methods
    from specpl.methods import HOSTS
    from specpl.resolve import resolve_run

    preset = canonical_preset(args.preset)
    if args.host:
        stacks = [(args.host, list(args.booster))]
    else:
        rows = describe_methods()
        stacks = [(name, []) for name in HOSTS.names()]
        stacks += [(row["hosts"][0], [row["name"]]) for row in rows if row["kind"] == "booster" and row["hosts"]]
    report = {}
    for host, boosters in stacks:
        method = MethodConfig(host=host, boosters=boosters, preset=preset)
        resolved = resolve_run(RunConfig(method=method, data=DataConfig(dataset=args.dataset or "folder")))
        values = {f"{name}.{key}": value for name, opts in resolved.options.items() for key, value in opts.items()}
        values.update({f"train.{key}": value for key, value in resolved.training.items()})
        report["+".join([host, *boosters])] = {
            key: {"value": value, "source": resolved.sources.get(key, "")} for key, value in values.items()
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    where = f" on {args.dataset}" if args.dataset else ""
    for stack, values in report.items():
        print(f"{stack} ({preset} preset{where}):")
        for key, entry in values.items():
            print(
                f"  {key} = {entry['value']!r}  <- {entry['source'] or 'no source (only the paper preset has sources)'}"
            )
    return 0


def _preset_text(values: dict[str, dict[str, Any]]) -> str:
    """{"coop": {"n_ctx": 4}, "train": {...}} -> "coop.n_ctx=4, train.augment=clip"."""
    return ", ".join(f"{target}.{key}={value}" for target, options in values.items() for key, value in options.items())


def cmd_sweep(args: argparse.Namespace) -> int:
    from specpl.sweep import run_sweep

    return run_sweep(args)


def cmd_bench(args: argparse.Namespace) -> int:
    import dataclasses
    import time

    import torch

    from specpl.backbone import load_backbone
    from specpl.bands import build_decomposer
    from specpl.defaults import world_backbone_config
    from specpl.io import atomic_write_text
    from specpl.methods import HOSTS
    from specpl.world.benchmark import (
        WorldBenchConfig,
        ablation_report,
        ablation_rows,
        band_linear_probe,
        feature_ceiling,
        markdown_report,
        run_world_bench,
        temporary_workdir,
    )

    if args.threads < 1:
        raise SystemExit(f"--threads must be at least 1; got {args.threads}")
    torch.set_num_threads(args.threads)  # the report's provenance line records it
    # every host that can be boosted: not the zero-shot baseline, not a phase of a booster (CasPL's)
    hosts = tuple(
        args.hosts or [name for name in HOSTS.names() if name != "zeroshot" and HOSTS.get(name).accepts_boosters]
    )
    if args.benchmark == "defaults":
        return _bench_defaults(args, hosts)
    decomposer_config = DecomposerConfig(name=args.decomposer, source=args.decomposer_source, image_size=64)
    config = WorldBenchConfig(
        shots=args.shots,
        seeds=tuple(args.seeds),
        test_per_class=args.test_per_class,
        epochs=args.epochs,
        hosts=hosts,
        decomposer=decomposer_config,
        probe_pairs=args.probe_pairs,
        camera=args.camera,
        presets=tuple(args.preset),
        boosters=tuple(args.boosters),
        stacks=tuple(args.stacks),
        options=options_by_component(args.option),
    )
    started = time.time()
    backbone = load_backbone(world_backbone_config())
    decomposer = build_decomposer(decomposer_config)
    if args.ablate:
        rows = ablation_rows(config)
        others = {}
        if args.taef2_source:
            others["taef2"] = build_decomposer(
                dataclasses.replace(decomposer_config, name="taef2", source=args.taef2_source)
            )
        rows = [row for row in rows if row.decomposer is None or row.decomposer in others]
        with temporary_workdir() as workdir:
            results = run_world_bench(config, backbone, decomposer, Path(workdir), rows=rows, decomposers=others)
        report = ablation_report(results, config, "specpl " + " ".join(args.argv), backbone, time.time() - started)
        atomic_write_text(Path(args.out), report)
        print(report)
        return 0
    with temporary_workdir() as workdir:
        results = run_world_bench(config, backbone, decomposer, Path(workdir))
    probe = band_linear_probe(decomposer, backbone, image_size=decomposer_config.image_size)
    ceiling = feature_ceiling(backbone, config)
    report = markdown_report(
        results, config, "specpl " + " ".join(args.argv), backbone, time.time() - started, probe, ceiling
    )
    atomic_write_text(Path(args.out), report)
    print(report)
    return 0


def _bench_defaults(args: argparse.Namespace, hosts: tuple[str, ...]) -> int:
    from specpl.backbone import load_backbone
    from specpl.bands import build_decomposer
    from specpl.defaults import world_backbone_config
    from specpl.io import atomic_write_text
    from specpl.world.benchmark import temporary_workdir
    from specpl.world.defaults_bench import DefaultsBenchConfig, run_defaults_bench

    cameras = [d for d in args.domains if d != "demo"]
    held_out = DefaultsBenchConfig.held_out if args.held_out is None else args.held_out
    config = DefaultsBenchConfig(
        hosts=hosts,
        boosters=tuple(args.boosters),
        seeds=tuple(args.seeds),
        test_per_class=args.test_per_class,
        chosen_on=tuple(c for c in cameras if c not in held_out),
        held_out=tuple(c for c in cameras if c in held_out),
        demo="demo" in args.domains,
        ablations=tuple(args.ablation),
    )
    backbone = load_backbone(world_backbone_config())
    decomposer = build_decomposer(config.decomposer)
    with temporary_workdir() as workdir:
        report = run_defaults_bench(config, backbone, decomposer, Path(workdir), "specpl " + " ".join(args.argv))
    atomic_write_text(Path(args.out), report)
    print(report)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])  # recorded in reports
    handlers = {
        "train": cmd_train,
        "eval": cmd_eval,
        "predict": cmd_predict,
        "bands": cmd_bands,
        "bench": cmd_bench,
        "methods": cmd_methods,
        "sweep": cmd_sweep,
    }
    from specpl.backbone import BackboneUnavailable
    from specpl.bands import DecomposerUnavailable
    from specpl.data import DataError
    from specpl.registry import UnknownNameError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return handlers[args.command](args)
    except (
        BackboneUnavailable,
        DecomposerUnavailable,
        DataError,
        UnknownNameError,
        FileNotFoundError,
        ValueError,
    ) as exc:
        print(f"specpl {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
