"""SpectralWorld benchmark pieces: the granularity probe and the band linear probe."""

import pytest
import torch

from specpl.bands import build_decomposer
from specpl.config import DecomposerConfig
from specpl.inference import Predictor
from specpl.world.benchmark import band_linear_probe, granularity_probe, probe_pairs
from specpl.world.generator import split_classname, world_classnames
from specpl.world.zeroshot import WORLD_TEMPLATE


@pytest.fixture(scope="module")
def fft():
    return build_decomposer(DecomposerConfig(name="fft", image_size=64))


def test_probe_pairs_differ_in_texture_and_shape():
    pairs = probe_pairs(50, seed=1)
    assert len(pairs) == 50 and pairs == probe_pairs(50, seed=1)
    for low_class, high_class in pairs:
        (texture_a, shape_a), (texture_b, shape_b) = split_classname(low_class), split_classname(high_class)
        assert texture_a != texture_b and shape_a != shape_b


def test_granularity_probe_returns_fractions(fft):
    from specpl.backbone import load_backbone
    from specpl.config import BackboneConfig

    backbone = load_backbone(BackboneConfig("world-clip", None))
    predictor = Predictor.zero_shot(backbone, world_classnames()[:3], WORLD_TEMPLATE)
    result = granularity_probe(predictor, fft, pairs=12, seed=1)
    assert set(result) == {"texture", "shape"}
    assert all(0.0 <= value <= 1.0 for value in result.values())
    assert predictor.classnames == world_classnames()  # scored over the full class set


@pytest.fixture(scope="module")
def world_clip():
    """The pretrained world CLIP (assets/world-clip), as the app and CLI load it."""
    from specpl.backbone import load_backbone
    from specpl.defaults import world_backbone_config

    return load_backbone(world_backbone_config())


@pytest.fixture(scope="module")
def band_probe(fft, world_clip):
    return band_linear_probe(fft, world_clip, train=300, test=150)


def test_band_check_texture_is_read_from_the_high_band_and_shape_and_colour_from_the_low(band_probe):
    """The band check of the world issue, on the frozen world CLIP's embedding of each band's image
    (full size in bench/WORLD.md: texture 0.18 low / 0.82 high, shape 0.89 / 0.55, colour 1.00 / 0.50).
    Measured at this size (300 training and 150 test images): texture 0.22 / 0.77, shape 0.91 / 0.51,
    colour 1.00 / 0.39; the statistic reads texture 0.15 / 0.86 and colour 0.61 / 0.36."""
    assert all(0.0 <= v <= 1.0 for bands in band_probe.values() for band in bands.values() for v in band.values())
    image = band_probe["image"]
    assert image["high"]["texture"] > image["low"]["texture"] + 0.3
    assert image["low"]["shape"] > image["high"]["shape"] + 0.2
    assert image["low"]["colour"] > image["high"]["colour"] + 0.2


def test_specpl_statistic_keeps_texture_in_the_high_band_and_colour_in_the_low(band_probe):
    """What the booster sees: the pooled statistic still separates texture and colour by band."""
    statistic = band_probe["statistic"]
    assert statistic["high"]["texture"] > statistic["low"]["texture"] + 0.3
    assert statistic["low"]["colour"] > statistic["high"]["colour"] + 0.1


def test_band_images_are_the_decoded_low_band_and_the_rest_around_mid_grey(fft):
    images = 0.5 + 0.2 * (torch.rand(2, 3, 32, 32) - 0.5)  # residuals stay inside [-0.5, 0.5]: nothing is clamped
    low, high = fft.band_images(images)
    assert low.shape == high.shape == images.shape
    assert torch.allclose(low + high - 0.5, images, atol=1e-5)
    flat = torch.full((1, 3, 32, 32), 0.3)
    assert torch.allclose(
        fft.band_images(flat)[1], torch.full_like(flat, 0.5), atol=1e-5
    )  # a flat image has no high band
    assert all(
        torch.equal(a, b) for a, b in zip(fft.band_images(images, fft.decompose(images)), (low, high), strict=True)
    )


def test_short_coop_run_on_base_classes_beats_zero_shot_under_an_unseen_camera(tmp_path):
    """In the pretraining domain zero-shot world-CLIP is at the ceiling of its image features (a
    linear probe with 200 shots per class stays below it, see bench/WORLD.md), so the few-shot task
    is the downstream case prompt learning exists for: the same base classes seen through the
    "sepia" camera, which pretraining never saw. Measured: 46.9% zero-shot, 57.2% CoOp."""
    from specpl.backbone import load_backbone
    from specpl.config import DataConfig, MethodConfig, RunConfig, TrainConfig
    from specpl.data import read_fewshot_folder
    from specpl.defaults import world_backbone_config
    from specpl.trainer import Trainer
    from specpl.world.generator import write_fewshot_folder

    backbone = load_backbone(world_backbone_config())
    root = write_fewshot_folder(tmp_path / "data", shots=4, test_per_class=20, seed=1, camera="sepia")
    base = read_fewshot_folder(root, shots=4, seed=1, subsample="base")
    zero_shot = Predictor.zero_shot(backbone, base.classnames, WORLD_TEMPLATE).evaluate(base.test).accuracy
    run = RunConfig(
        backbone=backbone.config,
        method=MethodConfig(host="coop", options={"coop": {"n_ctx": 4}}),
        template=WORLD_TEMPLATE,
        data=DataConfig(root=str(root), shots=4, subsample="base", seed=1),
        train=TrainConfig(
            epochs=10, batch_size=16, seed=1, augment=False, max_cached_views=1, schedule="epoch", select="last"
        ),
    )
    trained = Trainer(run, tmp_path / "run", backbone=backbone, progress_bar=False).fit()
    coop = Predictor(trained.model).evaluate(base.test).accuracy
    assert len(base.classnames) == 18 and zero_shot > 100 / 18 * 3  # far above chance even so
    assert coop >= zero_shot + 5.0, f"CoOp {coop:.1f}% vs zero-shot {zero_shot:.1f}%"


def test_feature_ceiling_reports_probe_and_zero_shot_on_the_same_images():
    from specpl.backbone import load_backbone
    from specpl.defaults import world_backbone_config
    from specpl.world.benchmark import WorldBenchConfig, feature_ceiling

    backbone = load_backbone(world_backbone_config())
    result = feature_ceiling(backbone, WorldBenchConfig(test_per_class=4, camera="sepia"), shots=6)
    assert result["shots"] == 6 and 0.0 <= result["linear_probe"] <= 100.0
    assert 100 / 18 < result["zero_shot"] <= 100.0  # above chance over the 18 base classes


def test_each_ablation_row_changes_one_input_of_the_benchmarked_specpl():
    from specpl.world.benchmark import WorldBenchConfig, ablation_rows

    rows = {row.name: row for row in ablation_rows(WorldBenchConfig())}
    benchmarked = rows["coop + specpl (as benchmarked)"]
    for name, row in rows.items():
        if row.method is None or row.method.boosters != ["specpl"] or row is benchmarked:
            continue
        changes = (row.decomposer is not None) + bool(row.train) + (row.method.options["specpl"] != {})
        assert changes == 1, name
        assert row.method.options["coop"] == benchmarked.method.options["coop"]


def test_the_refiner_can_leave_new_classes_alone(tiny_backbone):
    from specpl.config import DecomposerConfig, MethodConfig
    from specpl.factory import build_method

    model = build_method(
        MethodConfig(
            host="coop", boosters=["specpl"], options={"coop": {"n_ctx": 4}, "specpl": {"refine_novel": False}}
        ),
        tiny_backbone,
        ["cat", "dog"],
        decomposer=DecomposerConfig(name="fft", image_size=32),
    ).eval()
    raw, refined = model.text_features()
    assert not torch.allclose(raw, refined)  # trained classes are refined
    model.set_classnames(["ship", "frog"], novel=True)
    raw, refined = model.text_features()
    assert torch.equal(raw, refined)  # new classes keep their raw prompted text


def _names(rows) -> list[str]:
    return [row.name for row in rows]


def test_default_rows_are_each_host_alone_and_with_specpl():
    from specpl.world.benchmark import ZERO_SHOT, WorldBenchConfig, bench_methods

    rows = bench_methods(WorldBenchConfig(hosts=("coop", "ivlp")))
    assert _names(rows) == [ZERO_SHOT, "coop", "coop + specpl", "ivlp", "ivlp + specpl"]
    assert [row.baseline for row in rows] == [None, None, "coop", None, "ivlp"]
    assert not any(row.teacher or row.compare_to_teacher for row in rows)  # no CasPL: no phase-1 rows


def test_boosters_a_host_refuses_are_skipped_and_listed_and_stacks_follow_the_hosts():
    from specpl.world.benchmark import PHASE_ONE_ROW, ZERO_SHOT, WorldBenchConfig, bench_methods, skipped_pairs

    config = WorldBenchConfig(
        hosts=("coop", "mmrl"), boosters=("caspl", "dapt"), stacks=("maple+caspl+specpl", "mmrl+dapt+specpl")
    )
    rows = bench_methods(config)
    assert _names(rows) == [
        ZERO_SHOT,
        "teacher zero-shot (world-clip-large)",
        PHASE_ONE_ROW,
        "coop",
        "coop + caspl",  # coop + dapt is refused: DAPT needs image-tower prompts
        "mmrl",
        "mmrl + dapt",  # mmrl + caspl is refused: CasPL needs a learned text context
        "maple + caspl + specpl",
        "mmrl + dapt + specpl",
    ]
    assert list(skipped_pairs(config)) == [("coop", "dapt"), ("mmrl", "caspl")]
    assert (
        "Hosts it can boost: cocoop, coop, ivlp, kgcoop, maple, promptsrc" in skipped_pairs(config)[("mmrl", "caspl")]
    )
    assert "Hosts it can boost: ivlp, maple, mmrl, promptsrc" in skipped_pairs(config)[("coop", "dapt")]
    by_name = {row.name: row for row in rows}
    assert by_name["mmrl + dapt + specpl"].baseline == "mmrl"
    assert by_name["maple + caspl + specpl"].baseline is None  # maple alone is not a row here
    assert by_name["maple + caspl + specpl"].method.boosters == ["caspl", "specpl"]
    assert [row.name for row in rows if row.compare_to_teacher] == [ZERO_SHOT, PHASE_ONE_ROW]
    assert [row.name for row in rows if row.teacher] == ["teacher zero-shot (world-clip-large)"]


def test_a_booster_row_under_a_second_preset_is_compared_with_its_own_presets_host_row():
    from specpl.world.benchmark import WorldBenchConfig, bench_methods

    rows = bench_methods(WorldBenchConfig(hosts=("coop",), presets=("default", "paper")))
    # the presets train differently (augmentation, schedule, selection), so coop alone runs under both
    assert _names(rows) == [
        "zero-shot",
        "coop [default]",
        "coop + specpl [default]",
        "coop [paper]",
        "coop + specpl [paper]",
    ]
    assert rows[-1].baseline == "coop [paper]"


def test_options_apply_to_the_rows_that_have_the_component_and_single_preset_rows_are_named():
    from specpl.world.benchmark import MethodResult, WorldBenchConfig, _single_preset_note, bench_methods

    config = WorldBenchConfig(
        hosts=("coop", "mmrl"),
        stacks=("mmrl+dapt+specpl",),
        presets=("default", "reference"),
        options={"specpl": {"refine_novel": False}},
    )
    rows = bench_methods(config)
    options = {row.name: row.method.options for row in rows if row.method is not None}
    assert options["coop [default]"] == {"coop": {"n_ctx": 4}}  # no SpecPL in the row: its option does not apply
    assert options["coop + specpl [reference]"] == {"coop": {"n_ctx": 4}, "specpl": {"refine_novel": False}}
    assert options["mmrl + specpl [default]"] == {"specpl": {"refine_novel": False}}
    assert options["mmrl + dapt + specpl [default]"] == {"specpl": {"refine_novel": False}}  # stacks too
    by_name = {row.name: row for row in rows}
    assert by_name["coop + specpl [reference]"].baseline == "coop [reference]"
    # the presets train differently (augmentation, schedule, budget, selection), so every method runs under both
    assert _single_preset_note([MethodResult(row.name) for row in rows], config) == []
    same_training = WorldBenchConfig(
        hosts=("coop",), presets=("default", "reference"), epochs=2, batch_size=4, augment="none"
    )
    assert {row.name for row in bench_methods(same_training)} >= {"coop [default]", "coop [reference]"}
    assert _single_preset_note([MethodResult(row.name) for row in rows], WorldBenchConfig(hosts=("coop",))) == []
    # the ablation rows change one SpecPL input on top of the options given
    from specpl.world.benchmark import ablation_rows

    ablation = {row.name: row.method for row in ablation_rows(config) if row.method is not None}
    assert ablation["coop"].options == {"coop": {"n_ctx": 4}}
    assert ablation["bank: random (reference CoOp)"].options["specpl"] == {
        "refine_novel": False,
        "bank_init_batches": 0,
    }


def test_bad_stacks_and_boosters_are_refused_with_the_reason():
    from specpl.registry import UnknownNameError
    from specpl.world.benchmark import WorldBenchConfig, bench_methods, parse_stack

    assert parse_stack(" maple + caspl+specpl") == ("maple", ["caspl", "specpl"])
    with pytest.raises(ValueError, match=r"^stack 'maple': expected a host and one or more boosters joined by '\+'"):
        parse_stack("maple")
    with pytest.raises(
        ValueError,
        match=(
            r"^stack 'mmrl\+caspl': booster 'caspl' cannot run on host 'mmrl'"
            r".*Hosts it can boost: cocoop, coop, ivlp, kgcoop, maple, promptsrc$"
        ),
    ):
        bench_methods(WorldBenchConfig(hosts=("coop",), stacks=("mmrl+caspl",)))
    with pytest.raises(UnknownNameError, match="nosuch"):
        bench_methods(WorldBenchConfig(hosts=("coop",), boosters=("nosuch",)))


def test_teacher_fit_matches_a_hand_computation():
    import math

    from specpl.world.benchmark import teacher_fit

    student = torch.tensor([[0.0, math.log(3.0)], [math.log(2.0), 0.0]])  # softmax (1/4, 3/4) and (2/3, 1/3)
    teacher = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0]])  # (3/4, 1/4) twice
    # KL((3/4, 1/4) || (1/4, 3/4)) = 3/4 ln 3 + 1/4 ln(1/3); KL((3/4, 1/4) || (2/3, 1/3)) = 3/4 ln(9/8) + 1/4 ln(3/4)
    expected = (0.75 * math.log(3) + 0.25 * math.log(1 / 3) + 0.75 * math.log(9 / 8) + 0.25 * math.log(3 / 4)) / 2
    fit = teacher_fit(student, teacher)
    assert fit["agreement"] == 50.0  # the second image's top class is the teacher's, the first's is not
    assert fit["kl"] == pytest.approx(expected, rel=1e-6)


class FakeTrainer:
    """Stands in for `Trainer` in the world benchmark: records each run's method and returns the
    untrained zero-shot model, so the row plumbing runs without training."""

    runs: list = []

    def __init__(self, config, run_dir, backbone, decomposer, progress_bar) -> None:
        self.config, self.run_dir, self.backbone = config, run_dir, backbone

    def fit(self):
        from specpl.config import MethodConfig
        from specpl.factory import build_method
        from specpl.trainer import TrainResult

        FakeTrainer.runs.append((self.config.train.seed, self.config.method, self.run_dir))
        zero_shot = MethodConfig(host="zeroshot", options={"zeroshot": {"template": WORLD_TEMPLATE}})
        return TrainResult(
            "finished", self.run_dir, {}, build_method(zero_shot, self.backbone, world_classnames(), WORLD_TEMPLATE)
        )


def test_phase_one_trains_once_per_seed_and_every_caspl_row_gets_that_seeds_bundle(
    monkeypatch, tmp_path, world_clip, fft
):
    from specpl.world import benchmark
    from specpl.world.benchmark import PHASE_ONE_ROW, ZERO_SHOT, WorldBenchConfig, run_world_bench

    monkeypatch.setattr(benchmark, "Trainer", FakeTrainer)
    monkeypatch.setattr(FakeTrainer, "runs", [])
    config = WorldBenchConfig(
        shots=1,
        seeds=(1, 2),
        test_per_class=1,
        hosts=("coop",),
        boosters=("caspl",),
        stacks=("coop+caspl+specpl",),
        probe_pairs=2,
    )
    results = run_world_bench(config, world_clip, fft, tmp_path, log=lambda line: None)
    for seed in (1, 2):
        runs = [(method, run_dir) for run_seed, method, run_dir in FakeTrainer.runs if run_seed == seed]
        phase_one = [run_dir for method, run_dir in runs if method.host == "caspl-boost"]
        assert phase_one == [tmp_path / f"caspl-boost-seed{seed}"]  # once, before the rows that need it
        assert runs[0][0].host == "caspl-boost"
        bundles = [method.options["caspl"]["boost_bundle"] for method, _ in runs if "caspl" in method.boosters]
        assert bundles == [str(phase_one[0] / "model")] * 2  # coop + caspl and the stack
        assert len(runs) == 1 + 3  # phase 1, coop, coop + caspl, the stack: the phase-1 row reuses the phase-1 run
    by_name = {result.name: result for result in results}
    assert [len(result.per_seed) for result in results] == [2] * len(results)
    assert {name for name, result in by_name.items() if result.teacher_fit} == {ZERO_SHOT, PHASE_ONE_ROW}
    fit = by_name[ZERO_SHOT].teacher_fit[0]
    assert set(fit) == {"base", "new"} and all(
        0.0 <= split["agreement"] <= 100.0 and split["kl"] >= 0.0 for split in fit.values()
    )


class FakeDemoTrainer(FakeTrainer):
    """Stands in for `Trainer` on the demo set: records each run and reports as its test accuracy
    the number of runs so far, so each row's score names the run it came from."""

    def fit(self):
        from specpl.trainer import TrainResult

        FakeTrainer.runs.append((self.config.train.seed, self.config.method, self.run_dir))
        return TrainResult("finished", self.run_dir, {"accuracy": float(len(FakeTrainer.runs))}, None)


def test_demo_set_trains_caspl_phase_one_once_a_seed_and_scores_the_teacher_row_with_the_teacher(
    monkeypatch, tmp_path, world_clip, fft
):
    from specpl.world import benchmark, defaults_bench
    from specpl.world.benchmark import PHASE_ONE_ROW
    from specpl.world.defaults_bench import DefaultsBenchConfig, default_rows, run_demo_domain

    monkeypatch.setattr(benchmark, "Trainer", FakeDemoTrainer)  # the demo set's runs go through `SeedRuns`
    monkeypatch.setattr(FakeTrainer, "runs", [])
    teachers = []
    monkeypatch.setattr(defaults_bench, "load_teacher", lambda *args: teachers.append(args) or world_clip)
    config = DefaultsBenchConfig(hosts=("coop",), boosters=("caspl",), seeds=(1, 2))
    rows = default_rows(config)
    results = {row.name: row for row in run_demo_domain(config, rows, world_clip, fft, tmp_path, lambda line: None)}
    assert len(teachers) == 1  # loaded once, for the teacher's zero-shot row
    for seed in (1, 2):
        runs = [(method, run_dir) for run_seed, method, run_dir in FakeTrainer.runs if run_seed == seed]
        assert [method.host for method, _ in runs] == ["caspl-boost", "coop", "coop"]  # phase 1 once, first
        assert runs[2][0].options["caspl"]["boost_bundle"] == str(runs[0][1] / "model")
    phase_one_scores = [run[0] for run in results[PHASE_ONE_ROW].per_seed]
    assert phase_one_scores == [1.0, 2.0]  # the phase-1 row reports the run the caspl rows read (rows run seed by seed)
    assert [run[0] for run in results["coop + caspl"].per_seed] == [5.0, 6.0]


def test_report_gives_each_booster_row_its_hm_against_its_host_and_the_phase_one_section(tiny_backbone):
    from specpl.world.benchmark import MethodResult, WorldBenchConfig, markdown_report

    probe = [{"texture": 0.5, "shape": 0.25}]
    fit = [{"base": {"agreement": 75.0, "kl": 0.5}, "new": {"agreement": 50.0, "kl": 1.25}}]
    results = [
        MethodResult("zero-shot", [(50.0, 50.0)], probe, teacher_fit=fit),
        MethodResult("coop", [(60.0, 40.0)], probe),  # HM 48
        MethodResult("coop + specpl", [(70.0, 50.0)], probe, baseline="coop"),  # HM 58.33
    ]
    config = WorldBenchConfig(seeds=(1,), hosts=("coop", "mmrl"), boosters=("specpl", "caspl"))
    report = markdown_report(
        results,
        config,
        "specpl bench world",
        tiny_backbone,
        60.0,
        {},
        {"shots": 4, "linear_probe": 70.0, "zero_shot": 50.0},
    )
    assert (
        "| Method | Base | New | HM | HM vs host | Probe: texture follows high | Probe: shape follows low |" in report
    )
    assert "| coop + specpl | 70.00 | 50.00 | 58.33 | +10.33 | 0.50 | 0.25 |" in report
    assert "| coop | 60.00 | 40.00 | 48.00 | — | 0.50 | 0.25 |" in report
    assert "- mmrl + caspl: booster 'caspl' cannot run on host 'mmrl'" in report
    assert "| zero-shot | 75.00 | 0.500 | 50.00 | 1.250 |" in report
    assert "transductive toward the new classes" in report
