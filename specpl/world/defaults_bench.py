"""``specpl bench defaults``: the product's defaults measured against zero-shot CLIP.

Every row runs exactly what ``specpl train`` and the app run when no flag is given (the ``default``
preset: its augmentation, derived budget, validation hold-out and the epoch it keeps; no method
option), so the table says what a new user gets. Domains:
- the demo set (``assets/world-demo.zip``, the app's offline first run): test accuracy over all
  its classes, one row per seed of the shots and the validation draw;
- SpectralWorld under each camera, base-to-new: 4 shots of the 18 base classes, at least 50 test
  images per class, base / new / HM.
Cameras are split into the ones the defaults were chosen on and the ones held out to confirm them,
and the report says which is which. A row is marked when it loses to zero-shot, and a booster when
it loses to its host alone by more than one seed standard deviation (the pooled one of the two rows).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from specpl.backbone import Backbone
from specpl.bands import BandDecomposer
from specpl.config import DEFAULT_TEMPLATE, DataConfig, DecomposerConfig, MethodConfig, RunConfig
from specpl.datasets import read_dataset
from specpl.defaults import demo_data_dir
from specpl.evaluate import harmonic_mean
from specpl.factory import check_combination
from specpl.inference import Predictor
from specpl.methods.caspl import load_teacher, resolve_teacher
from specpl.world.benchmark import (
    ZERO_SHOT,
    BenchRow,
    SeedRuns,
    WorldBenchConfig,
    _provenance,
    bench_methods,
    run_world_bench,
)

DEMO = "demo set"


@dataclass
class DefaultsBenchConfig:
    hosts: tuple[str, ...]
    boosters: tuple[str, ...] = ("specpl",)
    seeds: tuple[int, ...] = (1, 2, 3)
    shots: int = 4
    test_per_class: int = 50
    # cameras the defaults were chosen on, and those held out to confirm them
    chosen_on: tuple[str, ...] = (
        "sepia",
        "dusk",
        "neon",
        "underwater",
        "canopy",
        "haze",
        "safelight",
        "sodium",
        "overcast",
        "dim",
        "glare",
        "violet",
        "olive",
        "frost",
        "ember",
    )
    held_out: tuple[str, ...] = ("rose",)
    demo: bool = True
    ablations: tuple[str, ...] = ()  # "host+booster:component.key=value" rows, on every world camera
    decomposer: DecomposerConfig = field(default_factory=lambda: DecomposerConfig(name="fft", image_size=64))


@dataclass
class DomainRow:
    """One method's per-seed results in one domain: (base, new) pairs, or accuracy alone on the demo set."""

    name: str
    baseline: str | None
    per_seed: list[tuple[float, ...]] = field(default_factory=list)

    def score(self, seed: int) -> float:
        """The headline of a seed: HM, or the accuracy on the demo set."""
        values = self.per_seed[seed]
        return harmonic_mean(*values) if len(values) == 2 else values[0]

    @property
    def scores(self) -> list[float]:
        return [self.score(i) for i in range(len(self.per_seed))]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores)

    @property
    def sd(self) -> float:
        return statistics.stdev(self.scores) if len(self.scores) > 1 else 0.0


def parse_ablation(text: str) -> tuple[str, list[str], dict[str, dict[str, object]]]:
    """``cocoop+specpl:specpl.test_blend=1`` -> ("cocoop", ["specpl"], {"specpl": {"test_blend": 1}})."""
    import json

    method, _, changes = text.partition(":")
    host, *boosters = method.split("+")
    options: dict[str, dict[str, object]] = {}
    for change in filter(None, changes.split(",")):
        target, value = change.split("=", 1)
        component, key = target.split(".", 1)
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        options.setdefault(component, {})[key] = parsed
    return host, boosters, options


def default_rows(config: DefaultsBenchConfig) -> list[BenchRow]:
    """Zero-shot, every host alone and with each booster it accepts, then the ablation rows: all
    under the default preset with no option."""
    world = WorldBenchConfig(hosts=config.hosts, boosters=config.boosters, n_ctx=None, presets=("default",))
    rows = bench_methods(world)
    for text in config.ablations:
        host, boosters, options = parse_ablation(text)
        check_combination(host, boosters)
        alone = " + ".join([host, *boosters])
        rows.append(
            BenchRow(
                f"{alone} [{text.partition(':')[2]}]",
                MethodConfig(host=host, boosters=boosters, options=options),
                baseline=alone,
            )
        )
    return rows


def world_config(config: DefaultsBenchConfig, camera: str = "default") -> WorldBenchConfig:
    """The world bench's settings for `config` under `camera`: no epochs, batch size or context
    length of its own, so every run trains as the CLI does with no flag."""
    return WorldBenchConfig(
        shots=config.shots,
        seeds=config.seeds,
        test_per_class=config.test_per_class,
        epochs=None,
        batch_size=None,
        hosts=config.hosts,
        n_ctx=None,
        decomposer=config.decomposer,
        probe_pairs=0,
        camera=camera,
        boosters=config.boosters,
    )


def run_world_domain(
    config: DefaultsBenchConfig,
    rows: list[BenchRow],
    camera: str,
    backbone: Backbone,
    decomposer: BandDecomposer,
    workdir: Path,
    log: Callable[[str], None],
) -> list[DomainRow]:
    results = run_world_bench(
        world_config(config, camera),
        backbone,
        decomposer,
        workdir,
        log=lambda line: log(f"[{camera}] {line}"),
        rows=rows,
    )
    by_name = {row.name: row for row in rows}
    return [DomainRow(r.name, by_name[r.name].baseline, [tuple(pair) for pair in r.per_seed]) for r in results]


def demo_run_config(
    row: BenchRow, decomposer: DecomposerConfig, backbone: Backbone, root: Path, seed: int
) -> RunConfig:
    """The training run of `row` on the demo set, as `specpl train` runs it with no flag but the seed."""
    run = RunConfig(
        backbone=backbone.config,
        decomposer=decomposer,
        method=row.method,
        data=DataConfig(root=str(root), seed=seed),
    )
    run.train = dataclasses.replace(run.train, seed=seed, **row.train)
    return run


class DemoSeedRuns(SeedRuns):
    """One seed's runs on the demo set: every class, CasPL's phase 1 on its training images with
    labels unused (as `specpl train --host caspl-boost` does)."""

    def run_config(self, row: BenchRow) -> RunConfig:
        return demo_run_config(row, self.config.decomposer, self.backbone, self.root, self.seed)


def run_demo_domain(
    config: DefaultsBenchConfig,
    rows: list[BenchRow],
    backbone: Backbone,
    decomposer: BandDecomposer,
    workdir: Path,
    log: Callable[[str], None],
) -> list[DomainRow]:
    """Each row on the demo set (all classes, test accuracy), as the CLI trains it with no flag;
    CasPL's phase 1 trains once a seed and is the boost bundle of every caspl row of the seed."""
    root = demo_data_dir(workdir / "demo")
    teacher = None
    if any(row.teacher for row in rows):
        teacher = load_teacher(*resolve_teacher(backbone.config, None, None), next(backbone.model.parameters()).device)
    runs = {
        seed: DemoSeedRuns(world_config(config), backbone, decomposer, {}, root, seed, workdir) for seed in config.seeds
    }
    results = []
    for index, row in enumerate(rows):
        result = DomainRow(row.name, row.baseline)
        for seed in config.seeds:
            if row.method is None:
                test = read_dataset(DataConfig(root=str(root), seed=seed))
                predictor = Predictor.zero_shot(teacher if row.teacher else backbone, test.classnames, DEFAULT_TEMPLATE)
                accuracy = predictor.evaluate(test.test).accuracy
            else:
                accuracy = runs[seed].fit(row, workdir / f"demo-row{index}-seed{seed}").metrics["accuracy"]
            result.per_seed.append((accuracy,))
            log(f"[{DEMO}] seed {seed} {row.name:16s} accuracy {accuracy:6.2f}")
        results.append(result)
    return results


def domain_table(domain: str, rows: list[DomainRow], role: str) -> list[str]:
    """One domain's markdown table, marking rows below zero-shot and boosters below their host."""
    zero = next(row for row in rows if row.name == ZERO_SHOT)
    by_name = {row.name: row for row in rows}
    base_to_new = len(zero.per_seed[0]) == 2
    head = (
        "| Method | Base | New | HM | HM sd | vs zero-shot | Marks |"
        if base_to_new
        else "| Method | Accuracy | sd | vs zero-shot | Marks |"
    )
    lines = [
        f"### {domain} ({role})",
        "",
        head,
        "|---|---|---|---|---|---|---|" if base_to_new else "|---|---|---|---|---|",
    ]
    for row in rows:
        marks = []
        if row.name != ZERO_SHOT and row.mean < zero.mean:
            marks.append("**below zero-shot**")
        host = by_name.get(row.baseline) if row.baseline else None
        if host is not None:
            pooled = ((row.sd**2 + host.sd**2) / 2) ** 0.5
            if row.mean < host.mean - pooled:
                marks.append(f"**loses to {host.name} by {host.mean - row.mean:.2f} (> 1 sd, {pooled:.2f})**")
        versus = "" if row.name == ZERO_SHOT else f"{row.mean - zero.mean:+.2f}"
        if base_to_new:
            base = statistics.fmean(p[0] for p in row.per_seed)
            new = statistics.fmean(p[1] for p in row.per_seed)
            lines.append(
                f"| {row.name} | {base:.2f} | {new:.2f} | {row.mean:.2f} | {row.sd:.2f} "
                f"| {versus} | {' '.join(marks)} |"
            )
        else:
            lines.append(f"| {row.name} | {row.mean:.2f} | {row.sd:.2f} | {versus} | {' '.join(marks)} |")
    return [*lines, ""]


def defaults_report(
    domains: dict[str, tuple[str, list[DomainRow]]],
    config: DefaultsBenchConfig,
    command: str,
    backbone: Backbone,
    seconds: float,
) -> str:
    lines = [
        "# The product's defaults, measured",
        "",
        *_provenance(command),
        (
            f"- Backbone: {backbone.describe()}; decomposer: {config.decomposer.name}; "
            f"seeds {', '.join(map(str, config.seeds))}; wall time {seconds / 60:.1f} min"
        ),
        (
            f"- World domains: {config.shots} shots of the 18 base classes "
            "(the default preset holds 1 per class out for validation), "
            f"{config.test_per_class} test images per class; "
            "HM of the mean base and mean new accuracy per seed, then averaged over seeds (sd: across seeds)."
        ),
        (
            "- Every row is `specpl train` with no flag beyond the method: "
            "the default preset (open_clip's mild crop, a per-step cosine, "
            "epochs and batch size derived from the training images, validation choosing the epoch kept)."
        ),
        "- Validation holds only the base classes, so selection cannot protect new-class accuracy.",
        (
            f"- Cameras the defaults were chosen on: {', '.join(config.chosen_on) or 'none'}; "
            f"held out to confirm them: {', '.join(config.held_out) or 'none'}."
        ),
        "",
    ]
    for domain, (role, rows) in domains.items():
        lines += domain_table(domain, rows, role)
    lines += ["Per seed (base / new, or accuracy):", ""]
    for domain, (_, rows) in domains.items():
        for row in rows:
            lines.append(
                f"- {domain}, {row.name}: "
                + "; ".join(" / ".join(f"{v:.2f}" for v in values) for values in row.per_seed)
            )
    return "\n".join(lines) + "\n"


def run_defaults_bench(
    config: DefaultsBenchConfig,
    backbone: Backbone,
    decomposer: BandDecomposer,
    workdir: Path,
    command: str,
    log: Callable[[str], None] = print,
) -> str:
    started = time.time()
    rows = default_rows(config)
    domains: dict[str, tuple[str, list[DomainRow]]] = {}
    if config.demo:
        demo_rows = [row for row in rows if "[" not in row.name]  # ablations are world rows
        domains[DEMO] = ("the app's first run", run_demo_domain(config, demo_rows, backbone, decomposer, workdir, log))
    for camera in (*config.chosen_on, *config.held_out):
        role = "held out: confirms the defaults" if camera in config.held_out else "the defaults were chosen on it"
        domains[f"SpectralWorld, camera {camera}"] = (
            role,
            run_world_domain(config, rows, camera, backbone, decomposer, workdir / camera, log),
        )
    return defaults_report(domains, config, command, backbone, time.time() - started)
