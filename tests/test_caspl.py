"""CasPL: phase 1 (`caspl-boost`, distillation from a frozen teacher) and phase 2 (the `caspl`
booster), on the tiny backbone with a tiny random teacher (offline)."""

from __future__ import annotations

import copy
import hashlib
import math

import pytest
import test_methods as method_checks
import torch
from conftest import make_image_folder

from specpl.config import BackboneConfig, DecomposerConfig, MethodConfig
from specpl.data import ImageItem
from specpl.factory import build_method, load_bundle
from specpl.features import AugmentedViews, FeatureCache, dassl_train_transform
from specpl.methods import HOSTS
from specpl.methods.base import CONTEXT_TOKENS
from specpl.methods.caspl import distillation_loss, resolve_teacher
from specpl.methods.caspl.teacher import TEACHER_LOGITS, TeacherLogits
from specpl.methods.deep import DeepPromptHost
from specpl.model import PromptModel

CLASSES = method_checks.CLASSES
CASPL_HOSTS = [host for host in HOSTS.names() if method_checks._valid(host, ("caspl",))]  # every host it boosts
TINY_TEACHER = method_checks.TINY_TEACHER  # a random tiny teacher, offline (why its template differs: there)


def build(
    backbone, host: str, boosters: tuple[str, ...] = (), options: dict | None = None, seed: int = 0
) -> PromptModel:
    torch.manual_seed(seed)
    options = dict(options or {})
    if host == "caspl-boost":
        options.setdefault(host, TINY_TEACHER)
    if host == "coop":
        options.setdefault("coop", {"n_ctx": 4})
    config = MethodConfig(host=host, boosters=list(boosters), options=options)
    return build_method(config, backbone, CLASSES, decomposer=DecomposerConfig(name="fft", image_size=32))


@pytest.fixture
def backbone(tiny_backbone):
    return copy.deepcopy(tiny_backbone)


@pytest.fixture
def inputs():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 32, 32, generator=generator), torch.tensor([0, 1, 2, 3])


def train_steps(model, inputs, steps: int = 3, lr: float = 0.5) -> None:
    """A few SGD steps on one fixed batch, so learned tensors move away from their init."""
    images, labels = inputs
    batch = method_checks.batch_for(model, images, labels)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        sum(model(batch).values()).backward()
        optimizer.step()


@pytest.fixture
def phase_one(backbone, inputs, tmp_path):
    """A phase-1 bundle after a few distillation steps (so its prompts are not the init)."""
    model = build(backbone, "caspl-boost")
    train_steps(model, inputs)
    return model.save_bundle(tmp_path / "phase1")


def test_the_kl_matches_a_hand_computation():
    student = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    teacher = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])

    def softmax(row):
        exps = [math.exp(v) for v in row]
        return [e / sum(exps) for e in exps]

    per_sample = []
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        p, q = softmax(t_row), softmax(s_row)
        per_sample.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True)))
    expected = sum(per_sample) / 2  # batchmean: summed over classes, averaged over the batch
    assert distillation_loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)
    # T^2 * KL at T = 2 on the halved logits is the same number times 4
    assert distillation_loss(2 * student, 2 * teacher, temperature=2.0).item() == pytest.approx(4 * expected, rel=1e-6)
    # per-sample weights: the weighted mean of the per-sample KLs
    weighted = distillation_loss(student, teacher, weights=torch.tensor([1.5, 0.5])).item()  # mean 1, as ISP gives them
    assert weighted == pytest.approx((3 * per_sample[0] + per_sample[1]) / 4, rel=1e-6)
    raw = distillation_loss(student, teacher, weights=torch.tensor([3.0, 1.0])).item()  # raw weights: (1/B) sum w KL
    assert raw == pytest.approx((3 * per_sample[0] + per_sample[1]) / 2, rel=1e-6)


def test_phase_one_trains_on_the_teacher_logits_alone(backbone, inputs):
    model = build(backbone, "caspl-boost")
    images, labels = inputs
    batch = method_checks.batch_for(model, images, labels)
    losses = model(batch)
    assert list(losses) == ["kd"]
    expected = distillation_loss(model.logits(model.encode_image(images)), batch.frozen[TEACHER_LOGITS])
    torch.testing.assert_close(losses["kd"], expected)
    shuffled = method_checks.Batch(labels.flip(0), batch.images, batch.frozen)  # labels are never read
    assert torch.equal(model(shuffled)["kd"], losses["kd"])


def test_the_teacher_runs_once_per_view(backbone, tmp_path):
    make_image_folder(tmp_path / "images", {"a": 3, "b": 2})
    items = [ImageItem(path, 0) for path in sorted((tmp_path / "images").rglob("*.png"))]
    model = build(backbone, "caspl-boost")
    teacher_input = next(i for i in model.frozen_inputs() if i.name == TEACHER_LOGITS)
    seen = []
    encode = teacher_input.teacher.model.encode_image
    teacher_input.teacher.model.encode_image = lambda images, *a, **k: (
        seen.append(len(images)),
        encode(images, *a, **k),
    )[1]
    mean, std = backbone.normalization
    views = AugmentedViews(
        dassl_train_transform(backbone.image_size, mean, std, 0.08), backbone.preprocess_eval, seed=1
    )
    cache = FeatureCache(views, [teacher_input], torch.device("cpu"), batch_size=2)

    first = cache.get(items, view=0)[TEACHER_LOGITS]
    assert sum(seen) == len(items)
    again = cache.get(items[::-1], view=0)[TEACHER_LOGITS]  # the same views in another order: no call
    assert sum(seen) == len(items) and torch.equal(again, first.flip(0))
    cache.get(items, view=1)  # a new view of every image: one call each
    assert sum(seen) == 2 * len(items)
    assert first.shape == (len(items), len(CLASSES))


def test_the_teacher_sees_the_view_at_its_own_resolution(backbone):
    teacher = copy.deepcopy(backbone)
    teacher.model.visual.image_size = (48, 48)  # only the resampling is read here
    logits = TeacherLogits(teacher, backbone, CLASSES, "a photo of a {}.", "test")
    images = torch.randn(2, 3, 32, 32)
    assert logits.to_teacher_input(images).shape == (2, 3, 48, 48)
    same = TeacherLogits(backbone, backbone, CLASSES, "a photo of a {}.", "test")
    assert same.to_teacher_input(images) is images  # same preprocessing: passed through untouched


def test_the_default_teacher():
    assert resolve_teacher(BackboneConfig(name="ViT-B-16", pretrained="openai"), None, None) == ("ViT-L-14", "openai")
    assert resolve_teacher(BackboneConfig(name="world-clip", pretrained="embedded"), None, None) == (
        "world-clip-large",
        "embedded",
    )
    assert resolve_teacher(BackboneConfig(name="ViT-B-16"), "ViT-B-32", "laion2b_s34b_b79k") == (
        "ViT-B-32",
        "laion2b_s34b_b79k",
    )


@pytest.mark.parametrize("host", ["coop", "maple"])
def test_phase_two_leaves_the_phase_one_prompts_bit_identical(backbone, inputs, phase_one, host, tmp_path):
    from specpl.bundle import read_bundle

    stored, _ = read_bundle(phase_one)
    file_hash = hashlib.sha256((phase_one / "model.safetensors").read_bytes()).hexdigest()
    model = build(backbone, host, ("caspl",), {"caspl": {"boost_bundle": str(phase_one)}})
    booster = model.boosters["caspl"]
    assert not any(p.requires_grad for p in booster.parameters())
    train_steps(model, inputs)
    model.finalise()
    text = [stored["host.prompt_learner.ctx"], *[stored[f"host.deep_text.{i}"] for i in range(booster.text_layers - 1)]]
    vision = [stored[f"host.vision.{i}"] for i in range(booster.vision_layers)]
    assert all(torch.equal(booster.get_buffer(f"boost_text_{i}"), t) for i, t in enumerate(text))
    assert all(torch.equal(booster.get_buffer(f"boost_vision_{i}"), t) for i, t in enumerate(vision))
    assert hashlib.sha256((phase_one / "model.safetensors").read_bytes()).hexdigest() == file_hash

    # the phase-2 bundle holds the boosting prompts: it loads with the phase-1 folder gone
    model.eval()
    images = inputs[0]
    expected = model.logits(model.encode_image(images))
    model.save_bundle(tmp_path / "phase2")
    (phase_one / "model.safetensors").unlink()
    (phase_one / "config.json").unlink()
    reloaded = load_bundle(tmp_path / "phase2", backbone=backbone)[0].eval()
    torch.testing.assert_close(reloaded.logits(reloaded.encode_image(images)), expected, rtol=0, atol=0)


def test_the_boosting_prompts_change_the_hosts_features(backbone, inputs, phase_one):
    images, _ = inputs
    bare = build(backbone, "maple").eval()
    boosted = build(backbone, "maple", ("caspl",), {"caspl": {"boost_bundle": str(phase_one)}}).eval()
    raw_bare, _ = bare.text_features()
    raw_boosted, _ = boosted.text_features()
    assert raw_boosted.shape == raw_bare.shape and not torch.allclose(raw_boosted, raw_bare)
    assert not torch.allclose(boosted.encode_image(images)["features"], bare.encode_image(images)["features"])


@pytest.mark.parametrize("layout", ["sequence", "phase-one"])
@pytest.mark.parametrize("host", CASPL_HOSTS)
def test_the_text_reads_sos_adapt_boost_class(backbone, phase_one, host, layout):
    """The paper's and the released code's text order on every host, [SOS][adapt][boost][class],
    and the positions each part takes entering the first block: along one sequence, as the
    released code adds them ("sequence"), or with the boosting tokens at their phase-1 positions
    1..L and the class at the host's ("phase-one")."""
    options = {"caspl": {"boost_bundle": str(phase_one), "text_positions": layout}}
    model = build(backbone, host, ("caspl",), options).eval()
    caspl, learner = model.boosters["caspl"], model.host.prompt_learner
    entering = {}

    def record(layer, prefix, suffix, eot):
        entering.setdefault(layer, (prefix[0], suffix[0]))
        return prefix

    model.host.text_hook = lambda: record
    image = None
    if model.host.conditions_text_on_image:  # CoCoOp: a zero meta-net shift leaves its context as learned
        torch.nn.init.zeros_(model.host.meta_net[-1].weight), torch.nn.init.zeros_(model.host.meta_net[-1].bias)
        image = torch.randn(1, backbone.embed_dim)
    with torch.no_grad():
        model.text_features(image)
    prefix, suffix = entering[0]
    boost = caspl.get_buffer("boost_text_0")
    n, length, positions = learner.n_ctx, boost.shape[0], backbone.model.positional_embedding
    class_start = 1 + n + length if layout == "sequence" else 1 + n
    boost_start = 1 + n if layout == "sequence" else 1
    assert prefix.shape[0] == 1 + n + length
    torch.testing.assert_close(prefix[1 : 1 + n], learner.ctx + positions[1 : 1 + n])  # [SOS][adapt]
    torch.testing.assert_close(prefix[1 + n :], boost + positions[boost_start : boost_start + length])  # [boost]
    classes = learner.suffix_embedding  # then the class tokens, "<name>." and end-of-text
    torch.testing.assert_close(suffix, classes + positions[class_start : class_start + classes.shape[1]])


def released_text_features(model, backbone) -> torch.Tensor:
    """The released phase-2 text path (Martinser/CasPL trainers/caspl_coop.py and the IVLP blocks of
    its clip/model.py), written out: one sequence [SOS][adapt][boost][class] plus CLIP's positional
    embedding; before each deeper block the host's deep prompts overwrite positions 1..n and the
    boosting prompts of that layer the next L; end-of-text pooling, shifted by n + L."""
    clip, host, caspl = backbone.model, model.host, model.boosters["caspl"]
    learner = host.prompt_learner
    n, classes = learner.n_ctx, len(host.classnames)
    boost = [caspl.get_buffer(f"boost_text_{i}") for i in range(caspl.text_layers)]
    deep = list(host.deep_text) if isinstance(host, DeepPromptHost) else []
    length = boost[0].shape[0]
    x = torch.cat(
        [
            learner.sos_embedding.expand(classes, -1, -1),
            learner.ctx.expand(classes, -1, -1),
            boost[0].expand(classes, -1, -1),
            learner.suffix_embedding,
        ],
        dim=1,
    )
    x = x + clip.positional_embedding[: x.shape[1]]
    for layer, block in enumerate(clip.transformer.resblocks):
        if 0 < layer <= len(deep):
            x = torch.cat([x[:, :1], deep[layer - 1].expand(classes, -1, -1), x[:, 1 + n :]], dim=1)
        if 0 < layer < len(boost):
            x = torch.cat([x[:, : 1 + n], boost[layer].expand(classes, -1, -1), x[:, 1 + n + length :]], dim=1)
        x = block(x, attn_mask=clip.attn_mask[: x.shape[1], : x.shape[1]])
    pooled = clip.ln_final(x)[torch.arange(classes), learner.eot_index + length]
    projection = clip.text_projection
    return projection(pooled) if isinstance(projection, torch.nn.Linear) else pooled @ projection


@pytest.mark.parametrize("host", ["coop", "promptsrc"])
def test_the_paper_preset_gives_the_released_text_features(backbone, phase_one, host):
    """The paper preset's layout is the released one: the same text features, one sequence
    computed the released way (the shared-prefix encoder differs in float order only)."""
    options = {"caspl": {"boost_bundle": str(phase_one)}}
    if host == "promptsrc":
        options["promptsrc"] = {"frozen_templates": "run"}  # one template keeps it fast
    torch.manual_seed(0)
    config = MethodConfig(host=host, boosters=["caspl"], preset="paper", options=options)
    model = build_method(config, backbone, CLASSES).eval()
    assert model.host.prompt_learner.n_ctx == 8 and model.boosters["caspl"].config.text_positions == "sequence"
    with torch.no_grad():
        raw, _ = model.text_features()
        expected = released_text_features(model, backbone)
    torch.testing.assert_close(raw, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("host", "options", "training"),
    [
        ("coop", {"n_ctx": 8, "ctx_init": ""}, {"epochs": 50, "batch_size": 32, "lr": 0.002}),
        ("cocoop", {"n_ctx": 8, "ctx_init": ""}, {"epochs": 10, "batch_size": 1, "lr": 0.002}),
        (
            "maple",
            {"n_ctx": 8, "ctx_init": "", "tail": "{}.", "depth": 12},
            {"epochs": 5, "batch_size": 4, "lr": 0.0035},
        ),
        (
            "promptsrc",
            {"n_ctx": 8, "n_ctx_vision": 8, "ctx_init": "", "depth": 12},
            {"epochs": 20, "batch_size": 4, "lr": 0.0025},
        ),
    ],
)
def test_the_paper_preset_runs_each_host_as_the_released_scripts(host, options, training):
    """Under the paper preset a CasPL run uses the released phase-2 host configuration; the default
    preset keeps the host's own options, and a value the user gives wins in both."""
    from specpl.config import RunConfig
    from specpl.factory import resolve_method_options
    from specpl.methods import HOSTS
    from specpl.training_plan import resolved_training

    caspl = {"caspl": {"boost_bundle": "unused"}}
    paper = MethodConfig(host=host, boosters=["caspl"], preset="paper", options=caspl)
    resolved = resolve_method_options(paper)[host]
    assert {k: resolved[k] for k in options} == options
    assert {k: resolved_training(RunConfig(method=paper))[k] for k in training} == training
    bare = resolve_method_options(MethodConfig(host=host, preset="paper"))[host]
    assert {k: bare[k] for k in options} != options  # the host's own paper values differ
    default = resolve_method_options(MethodConfig(host=host, boosters=["caspl"], options=caspl))[host]
    assert default["n_ctx"] == HOSTS.get(host).config_class().n_ctx
    given = MethodConfig(host=host, boosters=["caspl"], preset="paper", options={**caspl, host: {"n_ctx": 2}})
    assert resolve_method_options(given)[host]["n_ctx"] == 2


def test_a_bundle_from_before_text_positions_keeps_its_layout(backbone, inputs, phase_one, tmp_path):
    """A phase-2 bundle written before the option existed was trained with the phase-one layout
    and is rebuilt with it; a bad layout is refused with the choices."""
    import json

    phase_one_layout = {"caspl": {"boost_bundle": str(phase_one), "text_positions": "phase-one"}}
    model = build(backbone, "coop", ("caspl",), phase_one_layout).eval()
    images = inputs[0]
    expected = model.logits(model.encode_image(images))
    folder = model.save_bundle(tmp_path / "old")
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    del config["method"]["options"]["caspl"]["text_positions"]
    config_file.write_text(json.dumps(config))
    reloaded = load_bundle(folder, backbone=backbone)[0].eval()
    assert reloaded.boosters["caspl"].config.text_positions == "phase-one"
    torch.testing.assert_close(reloaded.logits(reloaded.encode_image(images)), expected, rtol=0, atol=0)
    sequence = build(backbone, "coop", ("caspl",), {"caspl": {"boost_bundle": str(phase_one)}}).eval()
    assert not torch.allclose(sequence.logits(sequence.encode_image(images)), expected)  # the layouts differ
    with pytest.raises(ValueError, match="caspl.text_positions must be one of 'sequence', 'phase-one'; got 'middle'"):
        build(backbone, "coop", ("caspl",), {"caspl": {"boost_bundle": str(phase_one), "text_positions": "middle"}})


def test_every_paper_value_has_a_source():
    """Each option of both phases, each training value and each per-host value names where it comes from."""
    import dataclasses

    from specpl.methods.caspl import CasPL, CasPLBoost

    boost_keys = {f.name for f in dataclasses.fields(CasPLBoost.config_class)}
    boost_keys |= {f"train.{key}" for key in CasPLBoost.training_defaults}
    boost_keys |= {  # its own options by name, as in `boost_keys` already; a training value by its target
        key if target == CasPLBoost.name else f"{target}.{key}"
        for target, values in CasPLBoost.presets["paper"].items()
        for key in values
    }
    assert set(CasPLBoost.sources) == boost_keys
    assert set(CasPL.sources) == {f.name for f in dataclasses.fields(CasPL.config_class)}
    for host, values in CasPL.host_presets["paper"].items():
        keys = {f"{target}.{option}" for target, options in values.items() for option in options}
        assert set(CasPL.host_sources[host]) == keys, host
    every = [*CasPLBoost.sources.values(), *CasPL.sources.values()]
    every += [source for host in CasPL.host_sources.values() for source in host.values()]
    assert all(source.startswith(("Martinser/CasPL ", "ours: ")) for source in every)


def test_promptsrc_keeps_vanilla_clip_as_its_reference(backbone, inputs, phase_one):
    images, _ = inputs
    run_template = {
        "promptsrc": {"frozen_templates": "run"}
    }  # one template keeps it fast; the reference is what is checked
    bare = build(backbone, "promptsrc", options=run_template)
    boosted = build(backbone, "promptsrc", ("caspl",), {**run_template, "caspl": {"boost_bundle": str(phase_one)}})
    assert torch.equal(boosted.host.frozen_text, bare.host.frozen_text)
    frozen = {i.name: i for i in boosted.frozen_inputs()}
    torch.testing.assert_close(
        frozen["clip_image"](images), backbone.model.encode_image(images).float(), rtol=0, atol=0
    )


def test_caspl_boosts_every_host_with_a_learned_context_and_labels_those_outside_the_paper():
    """What phase 2 needs is a place between the host's context and the class name (`requires`),
    not a list of hosts: a host that declares a learned context is boosted with no edit to CasPL."""
    from specpl.factory import method_label

    for name in HOSTS.names():
        host = HOSTS.get(name)
        assert (name in CASPL_HOSTS) == (host.accepts_boosters and CONTEXT_TOKENS in host.capabilities), name
    assert {"ivlp", "kgcoop"} <= set(CASPL_HOSTS) and not {"mmrl", "zeroshot", "caspl-boost"} & set(CASPL_HOSTS)
    assert method_label(MethodConfig(host="maple", boosters=["caspl"])) == "MaPLe + CasPL"
    assert method_label(MethodConfig(host="ivlp", boosters=["caspl"])) == "IVLP + CasPL (unpublished combination)"


def test_bad_boost_bundles_are_refused_with_the_reason(backbone, tmp_path):
    with pytest.raises(ValueError, match="caspl needs boost_bundle"):
        build(backbone, "coop", ("caspl",))
    with pytest.raises(FileNotFoundError, match="no bundle there"):
        build(backbone, "coop", ("caspl",), {"caspl": {"boost_bundle": str(tmp_path / "nowhere")}})
    other = build(backbone, "ivlp").save_bundle(tmp_path / "ivlp")
    with pytest.raises(ValueError, match="must be a caspl-boost .phase 1. bundle, this one is 'ivlp'"):
        build(backbone, "coop", ("caspl",), {"caspl": {"boost_bundle": str(other)}})
    with pytest.raises(
        ValueError,
        match=(
            r"booster 'caspl' cannot run on host 'mmrl': it needs a host with a learned text context "
            r"\(its frozen boosting prompts go between the host's context and the class name.*\)\. "
            r"Hosts it can boost: cocoop, coop, ivlp, kgcoop, maple, promptsrc$"
        ),
    ):
        build(backbone, "mmrl", ("caspl",))


# --- the all-methods property checks (tests/test_methods.py) for CasPL --------------------------------
@pytest.mark.parametrize(
    "method",
    [("caspl-boost", ()), *[(host, ("caspl",)) for host in ("coop", "cocoop", "maple", "promptsrc")]],
    ids=method_checks.method_id,
)
def test_the_all_methods_properties_hold(method, tiny_backbone, inputs, phase_one, tmp_path, monkeypatch):
    options = {"caspl": {"boost_bundle": str(phase_one)}} if "caspl" in method[1] else {}
    monkeypatch.setattr(
        method_checks, "build", lambda backbone, host, boosters, seed=0: build(backbone, host, boosters, options, seed)
    )
    method_checks.test_every_method(method, tiny_backbone, inputs, tmp_path / "checks")


def test_phase_one_trains_on_a_users_unlabeled_folder(tmp_path, cifar_root):
    """Images of any depth, no labels; a host that learns from labels refuses the folder."""
    import shutil

    from specpl.config import BackboneConfig, DataConfig, MethodConfig, RunConfig, TrainConfig
    from specpl.events import read_events
    from specpl.trainer import Trainer

    unlabeled = tmp_path / "unlabeled" / "deeper"
    unlabeled.mkdir(parents=True)
    for index, path in enumerate(sorted((cifar_root / "test" / "cat").iterdir())[:5]):
        shutil.copy(path, unlabeled / f"{index}.jpg")
    (unlabeled / "notes.txt").write_text("not an image")
    config = RunConfig(
        backbone=BackboneConfig(name="specpl-tiny", pretrained=None),
        method=MethodConfig(
            host="caspl-boost", options={"caspl-boost": {"teacher": "specpl-tiny", "teacher_pretrained": ""}}
        ),
        data=DataConfig(root=str(cifar_root), shots=1, unlabeled_root=str(tmp_path / "unlabeled")),
        train=TrainConfig(epochs=1, batch_size=2),
    )
    result = Trainer(config, tmp_path / "run", progress_bar=False).fit()
    assert result.status == "finished"
    data = next(e for e in read_events(tmp_path / "run" / "events.jsonl") if e["type"] == "data")
    assert data["train_images"] == 5 and all(v["train"] == 0 for v in data["per_class"].values())
    config.method = MethodConfig(host="coop", options={"coop": {"n_ctx": 2}})
    with pytest.raises(ValueError, match="host 'coop' learns from labels; only a label-free host"):
        Trainer(config, tmp_path / "coop", progress_bar=False).fit()
