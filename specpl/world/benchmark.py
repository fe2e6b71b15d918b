"""``specpl bench world``: base-to-new results and a granularity-sensitivity probe on SpectralWorld.

Classes are "<texture> <shape>"; base/new follows the standard protocol (sorted labels, the first
half is base). For each seed a fresh few-shot folder is generated, each method trains on the base
classes and is scored on base and new test images, and the summary is the HM of the mean base and
mean new accuracies.

The probe swaps the high band between two test images that differ in both texture and shape
(image space, through the decomposer) and asks which factor the prediction follows: the texture of
the image that gave the high band, or the shape of the image that gave the low band.

Rows: zero-shot; per host, the host alone and with each chosen booster that
`specpl.methods.check_combination` accepts (refused pairs are skipped and listed in the report);
then each chosen stack (``maple+caspl+specpl``). Where a row uses CasPL, its phase 1 is measured
too: the teacher's zero-shot, phase 1 alone, and how far phase 1 moves the student toward the
teacher (agreement and KL on the test images).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from specpl.backbone import Backbone
from specpl.bands import BandDecomposer
from specpl.config import DataConfig, DecomposerConfig, MethodConfig, RunConfig, TrainConfig
from specpl.data import FewShotData, base_new_split, read_fewshot_folder
from specpl.defaults import world_backbone_config
from specpl.evaluate import aggregate_base_new
from specpl.factory import check_combination, describe_stack
from specpl.inference import Predictor
from specpl.methods.caspl import PHASE_ONE, distillation_loss, load_teacher, resolve_teacher
from specpl.model import PromptModel
from specpl.resolve import resolve_run
from specpl.trainer import Trainer, TrainResult
from specpl.visualize import to_pil, to_unit_tensor
from specpl.world.generator import (
    fewshot_images,
    render,
    sample_class,
    split_classname,
    world_classnames,
    write_fewshot_folder,
)
from specpl.world.zeroshot import WORLD_TEMPLATE

ZERO_SHOT = "zero-shot"
PHASE_ONE_ROW = f"{PHASE_ONE} (phase 1 alone)"
CASPL = "caspl"


@dataclass
class WorldBenchConfig:
    shots: int = 4
    seeds: tuple[int, ...] = (1, 2, 3)
    test_per_class: int = 10
    # None: what the CLI and the app use with no flag (the preset's: `specpl.training_plan`)
    epochs: int | None = 20
    batch_size: int | None = 16
    augment: str | None = None
    max_cached_views: int | None = None
    hosts: tuple[str, ...] = ("coop",)
    n_ctx: int | None = 4  # CoOp's context length on every row (None: the preset's)
    decomposer: DecomposerConfig = field(default_factory=lambda: DecomposerConfig(name="fft", image_size=64))
    probe_pairs: int = 200
    camera: str = "default"  # the downstream domain (see generator.CAMERAS); pretraining saw "default"
    presets: tuple[str, ...] = ("default",)  # each host's named presets to run ("default", "reference")
    boosters: tuple[str, ...] = ("specpl",)  # each host is run alone and with each of these it accepts
    stacks: tuple[str, ...] = ()  # host and boosters joined by "+", e.g. "maple+caspl+specpl"
    options: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # {component: {key: value}}, on every row that has it


@dataclass
class MethodResult:
    name: str
    per_seed: list[tuple[float, float]] = field(default_factory=list)
    probes: list[dict[str, float]] = field(default_factory=list)
    baseline: str | None = None  # the row its HM is compared with (its host alone)
    label: str = ""  # what the row's stack is, in words (`specpl.factory.describe_stack`)
    teacher_fit: list[dict[str, dict[str, float]]] = field(default_factory=list)  # per seed: {split: teacher_fit(...)}

    def summary(self) -> dict[str, float]:
        row = aggregate_base_new(self.per_seed)
        for key in ("texture", "shape"):
            row[key] = float(np.mean([p[key] for p in self.probes])) if self.probes else float("nan")
        return row


def probe_pairs(count: int, seed: int) -> list[tuple[str, str]]:
    """`count` (low-band class, high-band class) pairs that differ in texture and in shape."""
    rng = np.random.default_rng([seed, 11])
    classes = world_classnames()
    pairs: list[tuple[str, str]] = []
    while len(pairs) < count:
        a, b = (classes[i] for i in rng.choice(len(classes), size=2, replace=False))
        (texture_a, shape_a), (texture_b, shape_b) = split_classname(a), split_classname(b)
        if texture_a != texture_b and shape_a != shape_b:
            pairs.append((a, b))
    return pairs


def granularity_probe(
    predictor: Predictor, decomposer: BandDecomposer, pairs: int, seed: int, camera: str = "default"
) -> dict[str, float]:
    """Fractions in [0, 1] of band-swapped images whose predicted texture is the high band's and
    whose predicted shape is the low band's, over the full class set."""
    rng = np.random.default_rng([seed, 13])
    predictor.set_classnames(world_classnames())
    size = 64 - 64 % decomposer.downsample
    swapped = []
    chosen = probe_pairs(pairs, seed)
    for low_class, high_class in chosen:
        low_image, high_image = (render(sample_class(rng, name, 1)[0], camera) for name in (low_class, high_class))
        swapped.append(to_pil(decomposer.swap(to_unit_tensor(low_image, size), to_unit_tensor(high_image, size))[0]))
    predictions = [ranked[0][0] for ranked in predictor.predict(swapped, top_k=1)]
    texture = shape = 0
    for (low_class, high_class), predicted in zip(chosen, predictions, strict=True):
        texture += split_classname(predicted)[0] == split_classname(high_class)[0]
        shape += split_classname(predicted)[1] == split_classname(low_class)[1]
    return {"texture": texture / len(chosen), "shape": shape / len(chosen)}


@dataclass
class BenchRow:
    """One row of a benchmark: a method (None: zero-shot), train settings that differ from the
    benchmark's, and the decomposer it trains with (None: the benchmark's). `baseline` names the
    row its HM is compared with (its host alone); `teacher` makes a zero-shot row use CasPL's
    teacher instead of the student; `compare_to_teacher` also measures the row's agreement and KL
    with the teacher on the test images."""

    name: str
    method: MethodConfig | None
    train: dict[str, object] = field(default_factory=dict)
    decomposer: str | None = None
    baseline: str | None = None
    teacher: bool = False
    compare_to_teacher: bool = False


def ablation_rows(config: WorldBenchConfig) -> list[BenchRow]:
    """CoOp, CoOp + SpecPL as benchmarked, then each input of SpecPL changed alone (issue: which
    input costs SpecPL its new-class accuracy): the decomposer, the augmentation, the schedule, the
    bank's initialisation, the refiner on new classes, the counterfactual loss, the granule head's
    init (docs/methods/specpl.md)."""
    boosted = row_options(config, "coop", ["specpl"])  # `config.options` under each row's change

    def specpl(**changes: object) -> MethodConfig:
        return MethodConfig(
            host="coop", boosters=["specpl"], options={**boosted, "specpl": {**boosted.get("specpl", {}), **changes}}
        )

    rows = [
        BenchRow(ZERO_SHOT, None),
        BenchRow("coop", MethodConfig(host="coop", options=row_options(config, "coop", []))),
        BenchRow("coop + specpl (as benchmarked)", specpl()),
        BenchRow("decomposer: taef2", specpl(), decomposer="taef2"),
        BenchRow(
            "augmentation: dassl (Dassl crop 0.08-1 + flip, fresh each epoch)",
            specpl(),
            {"augment": "dassl", "max_cached_views": None},
        ),
        BenchRow("augmentation: clip (crop 0.9-1)", specpl(), {"augment": "clip", "max_cached_views": None}),
        BenchRow("schedule: cosine per step", specpl(), {"schedule": "step"}),
        BenchRow("bank: random (reference CoOp)", specpl(bank_init_batches=0)),
        BenchRow("refiner off for new classes", specpl(refine_novel=False)),
        BenchRow("no counterfactual loss", specpl(lambda_gcf=0.0)),
        BenchRow("granule head init std 0.02 (not 1e-3)", specpl(small_init_std=0.02)),
    ]
    return rows


def parse_stack(text: str) -> tuple[str, list[str]]:
    """``"maple+caspl+specpl"`` -> ("maple", ["caspl", "specpl"]), refused with the reason (and the
    valid hosts) when the combination cannot work."""
    host, *boosters = [part.strip() for part in text.split("+")]
    if not host or not boosters or not all(boosters):
        raise ValueError(
            f"stack {text!r}: expected a host and one or more boosters joined by '+', e.g. maple+caspl+specpl"
        )
    try:
        check_combination(host, boosters)
    except ValueError as exc:
        raise ValueError(f"stack {text!r}: {exc}") from None
    return host, boosters


def skipped_pairs(config: WorldBenchConfig) -> dict[tuple[str, str], str]:
    """The (host, booster) pairs of `config` that `check_combination` refuses, with its reason.
    An unknown name is not skipped: its `UnknownNameError` (a KeyError) goes through."""
    skipped = {}
    for host in config.hosts:
        for booster in config.boosters:
            try:
                check_combination(host, [booster])
            except ValueError as exc:
                skipped[(host, booster)] = str(exc)
    return skipped


def teacher_row_name() -> str:
    """The teacher's row: the model CasPL phase 1 distils from for the world CLIP student."""
    return f"teacher zero-shot ({resolve_teacher(world_backbone_config(), None, None)[0]})"


def phase_one_row() -> BenchRow:
    """CasPL phase 1 as a row. It trains with CasPL's own batch size (4, the released code's): the
    benchmark's batch of 16 would leave it 4 steps an epoch on 72 images."""
    return BenchRow(PHASE_ONE_ROW, MethodConfig(host=PHASE_ONE), train={"batch_size": None}, compare_to_teacher=True)


def bench_methods(config: WorldBenchConfig) -> list[BenchRow]:
    """Zero-shot; per host, the host alone and with each booster of `config.boosters` it accepts
    (`skipped_pairs` are left out); then each of `config.stacks`; each under every preset. A preset
    whose resolved options equal an earlier row's (a host alone under both presets) is run once.
    When any row uses CasPL, the teacher's zero-shot and CasPL phase 1 alone follow zero-shot."""
    skipped = skipped_pairs(config)
    groups = [
        [(host, []), *[(host, [b]) for b in config.boosters if (host, b) not in skipped]] for host in config.hosts
    ]
    groups += [[parse_stack(text)] for text in config.stacks]
    uses_caspl = any(CASPL in boosters for group in groups for _, boosters in group)
    methods = [BenchRow(ZERO_SHOT, None, compare_to_teacher=uses_caspl)]
    if uses_caspl:
        methods += [BenchRow(teacher_row_name(), None, teacher=True), phase_one_row()]
    seen: dict[str, str] = {}  # resolved options -> the name of the row that runs them
    for group in groups:
        for preset in config.presets:
            for host, boosters in group:
                method = MethodConfig(
                    host=host, boosters=boosters, options=row_options(config, host, boosters), preset=preset
                )
                key = _resolved_key(method)
                if key in seen:
                    continue
                name = " + ".join([host, *boosters]) + (f" [{preset}]" if len(config.presets) > 1 else "")
                seen[key] = name
                alone = MethodConfig(host=host, options=row_options(config, host, []), preset=preset)
                baseline = seen.get(_resolved_key(alone)) if boosters else None
                methods.append(BenchRow(name, method, baseline=baseline))
    return methods


def row_options(config: WorldBenchConfig, host: str, boosters: list[str]) -> dict[str, dict[str, Any]]:
    """The method options of a row: CoOp's short context, then `config.options` for the
    components the row has (an option for a booster it lacks does not apply)."""
    options: dict[str, dict[str, Any]] = {"coop": {"n_ctx": config.n_ctx}} if host == "coop" and config.n_ctx else {}
    for component in [host, *boosters]:
        if component in config.options:
            options[component] = {**options.get(component, {}), **config.options[component]}
    return options


def _resolved_key(method: MethodConfig) -> str:
    """What a row runs: every component's options and the preset's training settings."""
    resolved = resolve_run(RunConfig(method=method))
    return json.dumps(
        {"method": resolved.options, "train": resolved.training},
        sort_keys=True,
        default=str,
    )


def with_boost_bundle(method: MethodConfig, bundle: Path) -> MethodConfig:
    """`method` with its caspl booster reading the boosting prompts of the phase-1 `bundle`."""
    return dataclasses.replace(
        method, options={**method.options, CASPL: {**method.options.get(CASPL, {}), "boost_bundle": str(bundle)}}
    )


def row_run_config(row: BenchRow, config: WorldBenchConfig, backbone: Backbone, root: Path, seed: int) -> RunConfig:
    """The training run of a row on one seed's base classes."""
    chosen = {
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "augment": config.augment,
        "max_cached_views": config.max_cached_views,
    }
    train = {**{k: v for k, v in chosen.items() if v is not None}, "seed": seed, **row.train}
    decomposer = (
        config.decomposer if row.decomposer is None else dataclasses.replace(config.decomposer, name=row.decomposer)
    )
    return RunConfig(
        backbone=backbone.config,
        decomposer=decomposer,
        method=row.method,
        template=WORLD_TEMPLATE,
        data=DataConfig(root=str(root), shots=config.shots, subsample="base", seed=seed),
        train=TrainConfig(**train),
    )


class SeedRuns:
    """The trained models of one seed's rows. CasPL phase 1 trains once, on first need (its own
    row or any caspl row), on the seed's base-class training images with labels unused (the
    non-transductive choice; the paper uses every class), and its bundle is the ``boost_bundle``
    of every caspl row of the seed."""

    def __init__(
        self,
        config: WorldBenchConfig,
        backbone: Backbone,
        decomposer: BandDecomposer,
        decomposers: dict[str, BandDecomposer],
        root: Path,
        seed: int,
        workdir: Path,
    ) -> None:
        self.config, self.backbone, self.decomposer, self.decomposers = config, backbone, decomposer, decomposers
        self.root, self.seed, self.workdir = root, seed, workdir
        self._phase_one: TrainResult | None = None

    def phase_one(self) -> TrainResult:
        if self._phase_one is None:
            self._phase_one = self._fit(phase_one_row(), self.workdir / f"{PHASE_ONE}-seed{self.seed}")
        return self._phase_one

    def fit(self, row: BenchRow, run_dir: Path) -> TrainResult:
        """The row's trained run: phase 1's own for the phase-1 row, each caspl row reading its bundle."""
        if row.method.host == PHASE_ONE:
            return self.phase_one()
        if CASPL in row.method.boosters:
            row = dataclasses.replace(row, method=with_boost_bundle(row.method, self.phase_one().run_dir / "model"))
        return self._fit(row, run_dir)

    def model(self, row: BenchRow, run_dir: Path) -> PromptModel:
        return self.fit(row, run_dir).model

    def run_config(self, row: BenchRow) -> RunConfig:
        """The training run of `row` on this seed's data."""
        return row_run_config(row, self.config, self.backbone, self.root, self.seed)

    def row_decomposer(self, row: BenchRow) -> BandDecomposer:
        """The band decomposer `row` trains with: the bench's, or the one the row names."""
        return self.decomposer if row.decomposer is None else self.decomposers[row.decomposer]

    def trainer(self, row: BenchRow, run_dir: Path) -> Trainer:
        """The trainer of `row`'s run (a bench that also traces training overrides it)."""
        return Trainer(
            self.run_config(row),
            run_dir,
            backbone=self.backbone,
            decomposer=self.row_decomposer(row),
            progress_bar=False,
        )

    def _fit(self, row: BenchRow, run_dir: Path) -> TrainResult:
        return self.trainer(row, run_dir).fit()


def teacher_fit(student: torch.Tensor, teacher: torch.Tensor) -> dict[str, float]:
    """How close a student's logits (N, C) are to the teacher's on the same images: ``agreement``,
    the share (percent) whose argmax matches the teacher's, and ``kl``, the mean
    KL(teacher || student) at T = 1 (CasPL phase 1's loss)."""
    agreement = 100 * float((student.argmax(-1) == teacher.argmax(-1)).double().mean())
    return {"agreement": agreement, "kl": float(distillation_loss(student.float(), teacher.float()))}


def _test_logits(predictor: Predictor, data: FewShotData, novel: bool, batch_size: int = 32) -> torch.Tensor:
    """Logits (N, C) of `data`'s test images over its classes."""
    predictor.set_classnames(data.classnames, novel=novel)
    paths = [item.path for item in data.test]
    return torch.cat(
        [
            predictor.logits(predictor.preprocess(paths[start : start + batch_size]))
            for start in range(0, len(paths), batch_size)
        ]
    ).cpu()


def run_world_bench(
    config: WorldBenchConfig,
    backbone: Backbone,
    decomposer: BandDecomposer,
    workdir: Path,
    log: Callable[[str], None] = print,
    rows: list[BenchRow] | None = None,
    decomposers: dict[str, BandDecomposer] | None = None,
) -> list[MethodResult]:
    """Every row (default: `bench_methods`) over every seed; `workdir` receives the generated data
    and run folders; `decomposers` holds any other decomposer a row names, built."""
    methods = rows or bench_methods(config)
    results = {
        row.name: MethodResult(row.name, baseline=row.baseline, label=describe_stack(row.method) if row.method else "")
        for row in methods
    }
    teacher = None
    if any(row.teacher or row.compare_to_teacher for row in methods):
        teacher = load_teacher(*resolve_teacher(backbone.config, None, None), next(backbone.model.parameters()).device)
    for seed in config.seeds:
        root = write_fewshot_folder(
            workdir / f"data-seed{seed}", config.shots, config.test_per_class, seed, camera=config.camera
        )
        base = read_fewshot_folder(root, shots=config.shots, seed=seed, subsample="base")
        new = read_fewshot_folder(root, shots=config.shots, seed=seed, subsample="new")
        splits = {"base": (base, False), "new": (new, True)}
        runs = SeedRuns(config, backbone, decomposer, decomposers or {}, root, seed, workdir)
        reference = {}
        if teacher is not None:
            teacher_predictor = Predictor.zero_shot(teacher, base.classnames, WORLD_TEMPLATE)
            reference = {split: _test_logits(teacher_predictor, data, novel) for split, (data, novel) in splits.items()}
        for index, row in enumerate(methods):
            name, method = row.name, row.method
            if method is None:
                predictor = Predictor.zero_shot(teacher if row.teacher else backbone, base.classnames, WORLD_TEMPLATE)
            else:
                predictor = Predictor(runs.model(row, workdir / f"row{index}-seed{seed}"))
            accuracy = {}
            for split, (data, novel) in splits.items():
                predictor.set_classnames(data.classnames, novel=novel)
                accuracy[split] = predictor.evaluate(data.test).accuracy
            if row.compare_to_teacher:
                results[name].teacher_fit.append(
                    {
                        split: teacher_fit(_test_logits(predictor, data, novel), reference[split])
                        for split, (data, novel) in splits.items()
                    }
                )
            results[name].per_seed.append((accuracy["base"], accuracy["new"]))
            if config.probe_pairs:
                probe = granularity_probe(predictor, decomposer, config.probe_pairs, seed, config.camera)
                results[name].probes.append(probe)
                log(
                    f"seed {seed} {name:16s} base {accuracy['base']:6.2f} new {accuracy['new']:6.2f} "
                    f"probe texture {probe['texture']:.2f} shape {probe['shape']:.2f}"
                )
            else:
                log(f"seed {seed} {name:16s} base {accuracy['base']:6.2f} new {accuracy['new']:6.2f}")
    return list(results.values())


def _single_preset_note(results: list[MethodResult], config: WorldBenchConfig) -> list[str]:
    """Why a method has a row under one preset only: its options are the same under the others."""
    if len(config.presets) < 2:
        return []
    first, others = config.presets[0], config.presets[1:]
    names, suffix = {result.name for result in results}, f" [{first}]"
    methods = [result.name.removesuffix(suffix) for result in results if result.name.endswith(suffix)]
    once = [method for method in methods if not any(f"{method} [{other}]" in names for other in others)]
    if not once:
        return []
    return [
        f"Presets: a method is run once, under [{first}], "
        "where its resolved options and preset training settings are the same "
        f"under {', '.join(f'[{o}]' for o in others)}: {', '.join(once)}."
    ]


def _options_text(options: dict[str, dict[str, Any]]) -> str:
    return ", ".join(
        f"{component}.{key}={json.dumps(value)}" for component, keys in options.items() for key, value in keys.items()
    )


def markdown_report(
    results: list[MethodResult],
    config: WorldBenchConfig,
    command: str,
    backbone: Backbone,
    seconds: float,
    band_probe: dict[str, dict[str, dict[str, float]]],
    ceiling: dict[str, float],
) -> str:
    lines = [
        "# SpectralWorld benchmark",
        "",
        *_provenance(command),
        (
            f"- Backbone: {backbone.describe()}; decomposer: {config.decomposer.name}; "
            f"{config.shots} shots, seeds {', '.join(map(str, config.seeds))}, "
            f"{config.epochs} epochs, {config.test_per_class} test images per class; "
            f"camera: {config.camera}; wall time {seconds / 60:.1f} min"
        ),
        f"- Boosters: {', '.join(config.boosters) or 'none'}; stacks: {', '.join(config.stacks) or 'none'}",
        *(
            [f"- Options on every row that has the component: {_options_text(config.options)}"]
            if config.options
            else []
        ),
        "",
        (
            'Base/new: 36 "<texture> <shape>" classes, the first 18 (sorted) are base. '
            "HM is the HM of the mean base and mean new accuracy."
        ),
        (
            "HM vs host: the row's HM minus its host's alone (same preset); "
            "above zero, the boosters raise their host's HM."
        ),
        "Probe: images with one image's low band and another's high band (different texture and shape);",
        (
            "`texture` = share predicted with the high band's texture, "
            "`shape` = share predicted with the low band's shape."
        ),
        *_single_preset_note(results, config),
        "",
        "| Method | Base | New | HM | HM vs host | Probe: texture follows high | Probe: shape follows low |",
        "|---|---|---|---|---|---|---|",
    ]
    summaries = {result.name: result.summary() for result in results}
    for result in results:
        row = summaries[result.name]
        versus = f"{row['hm'] - summaries[result.baseline]['hm']:+.2f}" if result.baseline in summaries else "—"
        lines.append(
            f"| {result.name} | {row['base']:.2f} | {row['new']:.2f} | {row['hm']:.2f} | {versus} "
            f"| {row['texture']:.2f} | {row['shape']:.2f} |"
        )
    named = [f"- {result.name}: {result.label}" for result in results if result.label]
    lines += ["", "What each row is:", "", *named] if named else []
    skipped = skipped_pairs(config)
    if skipped:
        lines += ["", "Not run: pairs that `check_combination` refuses:", ""]
        lines += [f"- {host} + {booster}: {reason}" for (host, booster), reason in skipped.items()]
    lines += ["", "Per seed (base / new):", ""]
    for result in results:
        lines.append(
            f"- {result.name}: "
            + "; ".join(f"seed {s}: {b:.2f} / {n:.2f}" for s, (b, n) in zip(config.seeds, result.per_seed, strict=True))
        )
    lines += _phase_one_section(results, config)
    lines += [
        "",
        "## Room above zero-shot",
        "",
        (
            "A ridge linear probe on the frozen, L2-normalised image features of the base classes "
            f"with {ceiling['shots']:.0f} images per class "
            f"(camera: {config.camera}, same test images): {ceiling['linear_probe']:.2f}%, "
            f"against zero-shot {ceiling['zero_shot']:.2f}%. "
            "Where the probe is not above zero-shot, the image features, not the prompt, "
            "limit what a prompt method can add."
        ),
        "",
        "## Band check",
        "",
        (
            "Linear probes (ridge, held-out accuracy) of each factor from each band of random world images "
            f"(default camera, {config.decomposer.name} decomposer); "
            "chance is 1/6 for each factor. "
            "*Band image*: the band rendered as an image (the decoded low band; the rest of the image "
            "around mid-grey) and embedded by the frozen CLIP image tower, i.e. what the band holds. "
            "*SpecPL statistic*: the spec's "
            "per-channel mean |.| through the frozen band MLP, i.e. what the booster sees of the band; "
            "it pools away where things are, "
            "so shape shows only through edge statistics."
        ),
        "",
        "| Reading | Band | Texture | Shape | Colour |",
        "|---|---|---|---|---|",
    ]
    titles = {"image": "band image", "statistic": "SpecPL statistic"}
    for reading, bands in band_probe.items():
        for band, accuracy in bands.items():
            lines.append(
                f"| {titles[reading]} | {band} | {accuracy['texture']:.2f} | {accuracy['shape']:.2f} "
                f"| {accuracy['colour']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def _phase_one_section(results: list[MethodResult], config: WorldBenchConfig) -> list[str]:
    """How far CasPL phase 1 moves the student toward its teacher, where the run measured it."""
    measured = [result for result in results if result.teacher_fit]
    if not measured:
        return []
    lines = [
        "",
        "## CasPL phase 1: does the student move toward the teacher?",
        "",
        (
            f"Phase 1 (`{PHASE_ONE}`) trains once per seed, "
            "on that seed's base-class training images with their labels unused, "
            "and its bundle is the `boost_bundle` of every `caspl` row of the seed. "
            "That is the non-transductive choice: the paper "
            "(and its released code) distils on the training images of all classes with every class name, "
            "which is transductive toward the new classes. "
            "The teacher's and phase 1's base/new accuracies are their rows in the table above."
        ),
        (
            "Agreement: share of test images whose top class is the teacher's. "
            "KL: mean KL(teacher || student) at T = 1 over the "
            "test images (the phase-1 loss). "
            "Phase 1 moves the student toward the teacher where agreement rises and KL falls."
        ),
        "",
        "| Student | Base agreement | Base KL | New agreement | New KL |",
        "|---|---|---|---|---|",
    ]
    for result in measured:
        mean = {
            split: {
                key: float(np.mean([seed[split][key] for seed in result.teacher_fit])) for key in ("agreement", "kl")
            }
            for split in ("base", "new")
        }
        lines.append(
            f"| {result.name} | {mean['base']['agreement']:.2f} | {mean['base']['kl']:.3f} "
            f"| {mean['new']['agreement']:.2f} | {mean['new']['kl']:.3f} |"
        )
    lines += ["", "Per seed (agreement / KL):", ""]
    for result in measured:
        lines.append(
            f"- {result.name}: "
            + "; ".join(
                f"seed {s}: base {fit['base']['agreement']:.2f} / {fit['base']['kl']:.3f}, "
                f"new {fit['new']['agreement']:.2f} / {fit['new']['kl']:.3f}"
                for s, fit in zip(config.seeds, result.teacher_fit, strict=True)
            )
        )
    return lines


def _provenance(command: str) -> list[str]:
    """The date, machine and command lines every report starts with."""
    device = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return [
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {platform.machine()}, {torch.get_num_threads()} CPU threads{device}",
        f"- Command: `{command}`",
    ]


def ablation_report(
    results: list[MethodResult], config: WorldBenchConfig, command: str, backbone: Backbone, seconds: float
) -> str:
    """Base/new/HM of each ablation row, and its HM against CoOp alone and against SpecPL as benchmarked."""
    rows = {r.name: r.summary() for r in results}
    coop, benchmarked = rows["coop"]["hm"], rows["coop + specpl (as benchmarked)"]["hm"]
    lines = [
        "# SpectralWorld ablation: which input of SpecPL moves its new-class accuracy",
        "",
        *_provenance(command),
        (
            f"- Backbone: {backbone.describe()}; CoOp with {config.n_ctx} context tokens; "
            f"{config.shots} shots, seeds {', '.join(map(str, config.seeds))}, "
            f"{config.epochs} epochs, batch {config.batch_size}, {config.test_per_class} test images per class; "
            f"camera: {config.camera}; wall time {seconds / 60:.1f} min"
        ),
        (
            f"- As benchmarked: decomposer {config.decomposer.name} at {config.decomposer.image_size} px, "
            "no resampling crop (the eval transform), "
            "cosine per epoch after one warm-up epoch, the last partial batch dropped, "
            "bank from 10 low-band batches. Each row below changes one input."
        ),
        "",
        "| Row | Base | New | HM | HM vs CoOp | HM vs SpecPL as benchmarked |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        row = rows[result.name]
        lines.append(
            f"| {result.name} | {row['base']:.2f} | {row['new']:.2f} | {row['hm']:.2f} "
            f"| {row['hm'] - coop:+.2f} | {row['hm'] - benchmarked:+.2f} |"
        )
    lines += ["", "Per seed (base / new):", ""]
    for result in results:
        lines.append(
            f"- {result.name}: "
            + "; ".join(f"seed {s}: {b:.2f} / {n:.2f}" for s, (b, n) in zip(config.seeds, result.per_seed, strict=True))
        )
    return "\n".join(lines) + "\n"


def temporary_workdir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="specpl-world-bench-")


FACTORS = ("texture", "shape", "colour")


def _ridge_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    classes: int,
    ridge: float = 1e-2,
) -> float:
    """A closed-form ridge-regression linear probe on one-hot targets; accuracy in [0, 1]."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    design = torch.cat([(train_x - mean) / std, torch.ones(len(train_x), 1)], dim=1).double()
    targets = torch.nn.functional.one_hot(train_y, classes).double()
    weights = torch.linalg.solve(
        design.T @ design + ridge * len(train_x) * torch.eye(design.shape[1], dtype=torch.float64), design.T @ targets
    )
    test = torch.cat([(test_x - mean) / std, torch.ones(len(test_x), 1)], dim=1).double()
    return float(((test @ weights).argmax(1) == test_y).double().mean())


def feature_ceiling(backbone: Backbone, config: WorldBenchConfig, shots: int = 200, seed: int = 0) -> dict[str, float]:
    """How much room the frozen image features leave a prompt method on the base classes: a ridge
    linear probe on L2-normalised image features with `shots` images per class, against zero-shot,
    on the same test images (percent)."""
    base, _ = base_new_split(len(world_classnames()))
    classnames = [world_classnames()[i] for i in base]
    predictor = Predictor.zero_shot(backbone, classnames, WORLD_TEMPLATE)
    splits: dict[str, tuple[list, list[int]]] = {"train": ([], []), "test": ([], [])}
    for split, classname, _, image in fewshot_images(classnames, shots, config.test_per_class, seed, config.camera):
        splits[split][0].append(image)
        splits[split][1].append(classnames.index(classname))
    features = {split: _image_features(backbone, images) for split, (images, _) in splits.items()}
    labels = {split: torch.tensor(targets) for split, (_, targets) in splits.items()}
    zero_shot = (
        (predictor.logits_from_features({"features": features["test"]}).argmax(-1) == labels["test"]).double().mean()
    )
    probe = _ridge_accuracy(
        features["train"], labels["train"], features["test"], labels["test"], len(classnames), ridge=0.1
    )
    return {"shots": shots, "linear_probe": 100 * probe, "zero_shot": 100 * float(zero_shot)}


def band_linear_probe(
    decomposer: BandDecomposer,
    backbone: Backbone,
    embed_dim: int | None = None,
    train: int = 1200,
    test: int = 600,
    seed: int = 0,
    image_size: int = 64,
) -> dict[str, dict[str, dict[str, float]]]:
    """Held-out linear-probe accuracy of each world factor from each band, in two readings:

    - ``image``: what the band holds. Each band is rendered as an image (`BandDecomposer.band_images`)
      and embedded by the frozen CLIP image tower, the same encoder the prompts are learned on.
    - ``statistic``: what SpecPL's booster sees of the band: the spec's per-channel mean |.|
      through the frozen random band MLP, exactly as the booster computes it. It pools away where
      things are, so a factor that lives in layout (shape) cannot show up in it, whichever band
      carries it.

    World images are rendered at 64 px and resized to `image_size` (rounded down to the
    decomposer's stride) before the split. Returns ``{reading: {band: {factor: accuracy}}}``.
    """
    from specpl.methods.specpl import BandEmbedding
    from specpl.world.generator import COLOURS, SHAPES, TEXTURES, sample_world

    samples = sample_world(np.random.default_rng([seed, 17]), train + test)
    size = image_size - image_size % decomposer.downsample
    images = torch.cat([to_unit_tensor(render(s), size) for s in samples])
    chunks = images.split(128)
    bands = [decomposer.decompose(chunk) for chunk in chunks]
    band_images = [decomposer.band_images(chunk, chunk_bands) for chunk, chunk_bands in zip(chunks, bands, strict=True)]
    stats = [decomposer.band_statistics(chunk_bands) for chunk_bands in bands]
    low, high = torch.cat([s[0] for s in stats]).float(), torch.cat([s[1] for s in stats]).float()
    torch.manual_seed(seed)
    embed_dim = embed_dim or backbone.embed_dim
    embed = {"low": BandEmbedding(low.shape[1], embed_dim, 1e-3), "high": BandEmbedding(high.shape[1], embed_dim, 1e-3)}
    with torch.no_grad():
        features = {
            "image": {
                band: _image_features(backbone, [to_pil(image) for pair in band_images for image in pair[i]])
                for i, band in enumerate(("low", "high"))
            },
            "statistic": {"low": embed["low"](low), "high": embed["high"](high)},
        }
    vocab = {"texture": TEXTURES, "shape": SHAPES, "colour": tuple(COLOURS)}
    labels = {factor: torch.tensor([vocab[factor].index(getattr(s, factor)) for s in samples]) for factor in FACTORS}
    return {
        reading: {
            band: {
                factor: _ridge_accuracy(x[:train], y[:train], x[train:], y[train:], len(vocab[factor]), ridge=0.1)
                for factor, y in labels.items()
            }
            for band, x in by_band.items()
        }
        for reading, by_band in features.items()
    }


@torch.no_grad()
def _image_features(backbone: Backbone, images: list[Image.Image], batch: int = 256) -> torch.Tensor:
    """L2-normalised CLIP image features, through the backbone's own eval preprocessing."""
    parameter = next(backbone.model.parameters())
    features = []
    for start in range(0, len(images), batch):
        pixels = torch.stack([backbone.preprocess_eval(image) for image in images[start : start + batch]]).to(
            parameter.device, parameter.dtype
        )
        features.append(torch.nn.functional.normalize(backbone.model.encode_image(pixels).float(), dim=-1))
    return torch.cat(features)
