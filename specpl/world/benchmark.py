"""``specpl bench world``: base-to-new results and a granularity-sensitivity probe on SpectralWorld.

Classes are "<texture> <shape>"; base/new follows the standard protocol (sorted labels, the first
half is base). For each seed a fresh few-shot folder is generated, each method trains on the base
classes and is scored on base and new test images, and the summary is the HM of the mean base and
mean new accuracies.

The probe swaps the high band between two test images that differ in both texture and shape
(image space, through the decomposer) and asks which factor the prediction follows: the texture of
the image that gave the high band, or the shape of the image that gave the low band.
"""
from __future__ import annotations

import dataclasses
import datetime
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from specpl.backbone import Backbone
from specpl.bands import BandDecomposer
from specpl.config import DataConfig, DecomposerConfig, MethodConfig, RunConfig, TrainConfig
from specpl.data import base_new_split, read_fewshot_folder
from specpl.evaluate import aggregate_base_new
from specpl.inference import Predictor
from specpl.methods import preset_values, resolve_method_options
from specpl.trainer import Trainer
from specpl.visualize import to_pil, to_unit_tensor
from specpl.world.generator import fewshot_images, render, sample_class, split_classname, world_classnames, write_fewshot_folder
from specpl.world.zeroshot import WORLD_TEMPLATE

ZERO_SHOT = "zero-shot"


@dataclass
class WorldBenchConfig:
    shots: int = 4
    seeds: tuple[int, ...] = (1, 2, 3)
    test_per_class: int = 10
    epochs: int = 20
    batch_size: int = 16
    hosts: tuple[str, ...] = ("coop",)
    n_ctx: int = 4
    decomposer: DecomposerConfig = field(default_factory=lambda: DecomposerConfig(name="fft", image_size=64))
    probe_pairs: int = 200
    camera: str = "default"  # the downstream domain (see generator.CAMERAS); pretraining saw "default"
    presets: tuple[str, ...] = ("default",)  # each host's named presets to run ("default", "reference")


@dataclass
class MethodResult:
    name: str
    per_seed: list[tuple[float, float]] = field(default_factory=list)
    probes: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        row = aggregate_base_new(self.per_seed)
        for key in ("texture", "shape"):
            row[key] = float(np.mean([p[key] for p in self.probes]))
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


def granularity_probe(predictor: Predictor, decomposer: BandDecomposer, pairs: int, seed: int, camera: str = "default") -> dict[str, float]:
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
    for (low_class, high_class), predicted in zip(chosen, predictions):
        texture += split_classname(predicted)[0] == split_classname(high_class)[0]
        shape += split_classname(predicted)[1] == split_classname(low_class)[1]
    return {"texture": texture / len(chosen), "shape": shape / len(chosen)}


@dataclass
class BenchRow:
    """One row of a benchmark: a method (None: zero-shot), train settings that differ from the
    benchmark's, and the decomposer it trains with (None: the benchmark's)."""

    name: str
    method: MethodConfig | None
    train: dict[str, object] = field(default_factory=dict)
    decomposer: str | None = None


def ablation_rows(config: WorldBenchConfig) -> list[BenchRow]:
    """CoOp, CoOp + SpecPL as benchmarked, then each input of SpecPL changed alone (issue: which
    input costs SpecPL its new-class accuracy): the decomposer, the augmentation, the schedule, the
    bank's initialisation, the refiner on new classes, the counterfactual loss, the granule head's
    init (SPECPL.md §11)."""
    options = {"coop": {"n_ctx": config.n_ctx}}

    def specpl(**changes: object) -> MethodConfig:
        return MethodConfig(host="coop", boosters=["specpl"], options={**options, "specpl": dict(changes)})

    rows = [
        BenchRow(ZERO_SHOT, None),
        BenchRow("coop", MethodConfig(host="coop", options=options)),
        BenchRow("coop + specpl (as benchmarked)", specpl()),
        BenchRow("decomposer: taef2", specpl(), decomposer="taef2"),
        BenchRow("augmentation: reference (Dassl crop 0.08-1 + flip, fresh each epoch)", specpl(), {"augment": "reference", "max_cached_views": None}),
        BenchRow("augmentation: clip (crop 0.9-1)", specpl(), {"augment": "clip", "max_cached_views": None}),
        BenchRow("schedule: cosine per step", specpl(), {"schedule": "step"}),
        BenchRow("bank: random (reference CoOp)", specpl(bank_init_batches=0)),
        BenchRow("refiner off for new classes", specpl(refine_novel=False)),
        BenchRow("no counterfactual loss", specpl(lambda_gcf=0.0)),
        BenchRow("granule head init std 0.02 (not 1e-3)", specpl(small_init_std=0.02)),
    ]
    return rows


def bench_methods(config: WorldBenchConfig) -> list[BenchRow]:
    """Zero-shot, then every host alone and with SpecPL under each preset; a preset whose resolved
    options equal an earlier row's (a host alone under both presets) is run once."""
    methods: list[BenchRow] = [BenchRow(ZERO_SHOT, None)]
    seen: list[dict] = []
    for host in config.hosts:
        options = {host: {"n_ctx": config.n_ctx}} if host == "coop" else {}
        for preset in config.presets:
            for boosters in ([], ["specpl"]):
                method = MethodConfig(host=host, boosters=boosters, options=options, preset=preset)
                resolved = {"method": resolve_method_options(method), "preset_train": preset_values(method).get("train", {})}
                if resolved in seen:
                    continue
                seen.append(resolved)
                name = " + ".join([host, *boosters]) + (f" [{preset}]" if len(config.presets) > 1 else "")
                methods.append(BenchRow(name, method))
    return methods


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
    results = {row.name: MethodResult(row.name) for row in methods}
    for seed in config.seeds:
        root = write_fewshot_folder(workdir / f"data-seed{seed}", config.shots, config.test_per_class, seed, camera=config.camera)
        base = read_fewshot_folder(root, shots=config.shots, seed=seed, subsample="base")
        new = read_fewshot_folder(root, shots=config.shots, seed=seed, subsample="new")
        for index, row in enumerate(methods):
            name, method = row.name, row.method
            if method is None:
                predictor = Predictor.zero_shot(backbone, base.classnames, WORLD_TEMPLATE)
            else:
                # no random resized crop by default: resampling 64 px images blurs the 2-4 px textures away
                train = {"augment": "none", "max_cached_views": 1, **row.train}
                run_decomposer = config.decomposer if row.decomposer is None else dataclasses.replace(config.decomposer, name=row.decomposer)
                run = RunConfig(
                    backbone=backbone.config, decomposer=run_decomposer, method=method, template=WORLD_TEMPLATE,
                    data=DataConfig(root=str(root), shots=config.shots, subsample="base", seed=seed),
                    train=TrainConfig(epochs=config.epochs, batch_size=config.batch_size, seed=seed, **train),
                )
                built = decomposer if row.decomposer is None else (decomposers or {})[row.decomposer]
                trained = Trainer(run, workdir / f"row{index}-seed{seed}", backbone=backbone, decomposer=built, progress_bar=False).fit()
                predictor = Predictor(trained.model)
            predictor.set_classnames(base.classnames)
            base_acc = predictor.evaluate(base.test).accuracy
            predictor.set_classnames(new.classnames, novel=True)
            new_acc = predictor.evaluate(new.test).accuracy
            probe = granularity_probe(predictor, decomposer, config.probe_pairs, seed, config.camera)
            results[name].per_seed.append((base_acc, new_acc))
            results[name].probes.append(probe)
            log(f"seed {seed} {name:16s} base {base_acc:6.2f} new {new_acc:6.2f} probe texture {probe['texture']:.2f} shape {probe['shape']:.2f}")
    return list(results.values())


def markdown_report(
    results: list[MethodResult], config: WorldBenchConfig, command: str, backbone: Backbone, seconds: float, band_probe: dict[str, dict[str, dict[str, float]]],
    ceiling: dict[str, float],
) -> str:
    lines = [
        "# SpectralWorld benchmark",
        "",
        *_provenance(command),
        f"- Backbone: {backbone.describe()}; decomposer: {config.decomposer.name}; {config.shots} shots, seeds {', '.join(map(str, config.seeds))}, "
        f"{config.epochs} epochs, {config.test_per_class} test images per class; camera: {config.camera}; wall time {seconds / 60:.1f} min",
        "",
        "Base/new: 36 \"<texture> <shape>\" classes, the first 18 (sorted) are base. HM is the HM of the mean base and mean new accuracy.",
        "Probe: images with one image's low band and another's high band (different texture and shape);",
        "`texture` = share predicted with the high band's texture, `shape` = share predicted with the low band's shape.",
        "",
        "| Method | Base | New | HM | Probe: texture follows high | Probe: shape follows low |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        row = result.summary()
        lines.append(f"| {result.name} | {row['base']:.2f} | {row['new']:.2f} | {row['hm']:.2f} | {row['texture']:.2f} | {row['shape']:.2f} |")
    lines += ["", "Per seed (base / new):", ""]
    for result in results:
        lines.append(f"- {result.name}: " + "; ".join(f"seed {s}: {b:.2f} / {n:.2f}" for s, (b, n) in zip(config.seeds, result.per_seed)))
    lines += [
        "",
        "## Room above zero-shot",
        "",
        f"A ridge linear probe on the frozen, L2-normalised image features of the base classes with {ceiling['shots']:.0f} images per class "
        f"(camera: {config.camera}, same test images): {ceiling['linear_probe']:.2f}%, against zero-shot {ceiling['zero_shot']:.2f}%. "
        "Where the probe is not above zero-shot, the image features, not the prompt, limit what a prompt method can add.",
        "",
        "## Band check",
        "",
        f"Linear probes (ridge, held-out accuracy) of each factor from each band of random world images (default camera, {config.decomposer.name} decomposer); "
        "chance is 1/6 for each factor. *Band image*: the band rendered as an image (the decoded low band; the rest of the image "
        "around mid-grey) and embedded by the frozen CLIP image tower, i.e. what the band holds. *SpecPL statistic*: the spec's "
        "per-channel mean |.| through the frozen band MLP, i.e. what the booster sees of the band; it pools away where things are, "
        "so shape shows only through edge statistics.",
        "",
        "| Reading | Band | Texture | Shape | Colour |",
        "|---|---|---|---|---|",
    ]
    titles = {"image": "band image", "statistic": "SpecPL statistic"}
    for reading, bands in band_probe.items():
        for band, accuracy in bands.items():
            lines.append(f"| {titles[reading]} | {band} | {accuracy['texture']:.2f} | {accuracy['shape']:.2f} | {accuracy['colour']:.2f} |")
    return "\n".join(lines) + "\n"


def _provenance(command: str) -> list[str]:
    """The date, machine and command lines every report starts with."""
    device = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return [
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {platform.machine()}, {torch.get_num_threads()} CPU threads{device}",
        f"- Command: `{command}`",
    ]


def ablation_report(results: list[MethodResult], config: WorldBenchConfig, command: str, backbone: Backbone, seconds: float) -> str:
    """Base/new/HM of each ablation row, and its HM against CoOp alone and against SpecPL as benchmarked."""
    rows = {r.name: r.summary() for r in results}
    coop, benchmarked = rows["coop"]["hm"], rows["coop + specpl (as benchmarked)"]["hm"]
    lines = [
        "# SpectralWorld ablation: which input of SpecPL moves its new-class accuracy",
        "",
        *_provenance(command),
        f"- Backbone: {backbone.describe()}; CoOp with {config.n_ctx} context tokens; {config.shots} shots, seeds {', '.join(map(str, config.seeds))}, "
        f"{config.epochs} epochs, batch {config.batch_size}, {config.test_per_class} test images per class; camera: {config.camera}; wall time {seconds / 60:.1f} min",
        f"- As benchmarked: decomposer {config.decomposer.name} at {config.decomposer.image_size} px, no resampling crop (the eval transform), "
        "cosine per epoch after one warm-up epoch, the last partial batch dropped, bank from 10 low-band batches. Each row below changes one input.",
        "",
        "| Row | Base | New | HM | HM vs CoOp | HM vs SpecPL as benchmarked |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        row = rows[result.name]
        lines.append(f"| {result.name} | {row['base']:.2f} | {row['new']:.2f} | {row['hm']:.2f} | {row['hm'] - coop:+.2f} | {row['hm'] - benchmarked:+.2f} |")
    lines += ["", "Per seed (base / new):", ""]
    for result in results:
        lines.append(f"- {result.name}: " + "; ".join(f"seed {s}: {b:.2f} / {n:.2f}" for s, (b, n) in zip(config.seeds, result.per_seed)))
    return "\n".join(lines) + "\n"


def temporary_workdir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="specpl-world-bench-")


FACTORS = ("texture", "shape", "colour")


def _ridge_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, classes: int, ridge: float = 1e-2) -> float:
    """A closed-form ridge-regression linear probe on one-hot targets; accuracy in [0, 1]."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    design = torch.cat([(train_x - mean) / std, torch.ones(len(train_x), 1)], dim=1).double()
    targets = torch.nn.functional.one_hot(train_y, classes).double()
    weights = torch.linalg.solve(design.T @ design + ridge * len(train_x) * torch.eye(design.shape[1], dtype=torch.float64), design.T @ targets)
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
    zero_shot = (predictor.logits_from_features({"features": features["test"]}).argmax(-1) == labels["test"]).double().mean()
    probe = _ridge_accuracy(features["train"], labels["train"], features["test"], labels["test"], len(classnames), ridge=0.1)
    return {"shots": shots, "linear_probe": 100 * probe, "zero_shot": 100 * float(zero_shot)}


def band_linear_probe(
    decomposer: BandDecomposer, backbone: Backbone, embed_dim: int | None = None, train: int = 1200, test: int = 600, seed: int = 0,
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
    band_images = [decomposer.band_images(chunk, chunk_bands) for chunk, chunk_bands in zip(chunks, bands)]
    stats = [decomposer.band_statistics(chunk_bands) for chunk_bands in bands]
    low, high = torch.cat([s[0] for s in stats]).float(), torch.cat([s[1] for s in stats]).float()
    torch.manual_seed(seed)
    embed_dim = embed_dim or backbone.embed_dim
    embed = {"low": BandEmbedding(low.shape[1], embed_dim, 1e-3), "high": BandEmbedding(high.shape[1], embed_dim, 1e-3)}
    with torch.no_grad():
        features = {
            "image": {band: _image_features(backbone, [to_pil(image) for pair in band_images for image in pair[i]]) for i, band in enumerate(("low", "high"))},
            "statistic": {"low": embed["low"](low), "high": embed["high"](high)},
        }
    vocab = {"texture": TEXTURES, "shape": SHAPES, "colour": tuple(COLOURS)}
    labels = {factor: torch.tensor([vocab[factor].index(getattr(s, factor)) for s in samples]) for factor in FACTORS}
    return {
        reading: {
            band: {factor: _ridge_accuracy(x[:train], y[:train], x[train:], y[train:], len(vocab[factor]), ridge=0.1) for factor, y in labels.items()}
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
        pixels = torch.stack([backbone.preprocess_eval(image) for image in images[start : start + batch]]).to(parameter.device, parameter.dtype)
        features.append(torch.nn.functional.normalize(backbone.model.encode_image(pixels).float(), dim=-1))
    return torch.cat(features)
