"""CasPL: phase 1 (`caspl-boost`, distillation from a frozen teacher) and phase 2 (the `caspl`
booster), on the tiny backbone with a tiny random teacher (offline)."""
from __future__ import annotations

import copy
import hashlib
import math

import pytest
import torch

import test_methods as method_checks
from conftest import make_image_folder
from specpl.config import BackboneConfig, DecomposerConfig, MethodConfig
from specpl.data import ImageItem
from specpl.features import AugmentedViews, FeatureCache, reference_train_transform
from specpl.methods import PromptModel, build_method
from specpl.methods.caspl import TEACHER_LOGITS, TeacherLogits, distillation_loss, resolve_teacher

CLASSES = method_checks.CLASSES
TINY_TEACHER = {"teacher": "specpl-tiny", "teacher_pretrained": ""}  # a random tiny teacher: offline


def build(backbone, host: str, boosters: tuple[str, ...] = (), options: dict | None = None, seed: int = 0) -> PromptModel:
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
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p, q = softmax(t_row), softmax(s_row)
        per_sample.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)))
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
    teacher_input.teacher.model.encode_image = lambda images, *a, **k: (seen.append(len(images)), encode(images, *a, **k))[1]
    mean, std = backbone.normalization
    views = AugmentedViews(reference_train_transform(backbone.image_size, mean, std, 0.08), backbone.preprocess_eval, seed=1)
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
    assert resolve_teacher(BackboneConfig(name="world-clip", pretrained="embedded"), None, None) == ("world-clip-large", "embedded")
    assert resolve_teacher(BackboneConfig(name="ViT-B-16"), "ViT-B-32", "laion2b_s34b_b79k") == ("ViT-B-32", "laion2b_s34b_b79k")


@pytest.mark.parametrize("host", ["coop", "maple"])
def test_phase_two_leaves_the_phase_one_prompts_bit_identical(backbone, inputs, phase_one, host, tmp_path):
    from specpl.checkpoint import read_bundle

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
    reloaded = PromptModel.from_bundle(tmp_path / "phase2", backbone=backbone).eval()
    torch.testing.assert_close(reloaded.logits(reloaded.encode_image(images)), expected, rtol=0, atol=0)


def test_the_boosting_prompts_change_the_hosts_features(backbone, inputs, phase_one):
    images, _ = inputs
    bare = build(backbone, "maple").eval()
    boosted = build(backbone, "maple", ("caspl",), {"caspl": {"boost_bundle": str(phase_one)}}).eval()
    raw_bare, _ = bare.text_features()
    raw_boosted, _ = boosted.text_features()
    assert raw_boosted.shape == raw_bare.shape and not torch.allclose(raw_boosted, raw_bare)
    assert not torch.allclose(boosted.encode_image(images)["features"], bare.encode_image(images)["features"])


@pytest.mark.parametrize("host", ["coop", "cocoop", "maple", "promptsrc"])
def test_the_text_reads_sos_adapt_boost_class(backbone, phase_one, host):
    """The paper's and the released code's text order on every host: the boosting tokens (with
    the positional embeddings of their phase-1 positions) sit after the host's context."""
    model = build(backbone, host, ("caspl",), {"caspl": {"boost_bundle": str(phase_one)}}).eval()
    caspl, learner = model.boosters["caspl"], model.host.prompt_learner
    entering = {}

    def record(layer, prefix, suffix, eot):
        entering.setdefault(layer, prefix[0])
        return prefix

    model.host.text_hook = lambda: record
    image = None
    if model.host.conditions_text_on_image:  # CoCoOp: a zero meta-net shift leaves its context as learned
        torch.nn.init.zeros_(model.host.meta_net[-1].weight), torch.nn.init.zeros_(model.host.meta_net[-1].bias)
        image = torch.randn(1, backbone.embed_dim)
    with torch.no_grad():
        model.text_features(image)
    boost = caspl.text_prompts()[0].tokens[0]
    n, positions = learner.n_ctx, backbone.model.positional_embedding
    torch.testing.assert_close(entering[0][1 : 1 + n], learner.ctx + positions[1 : 1 + n])  # [SOS][adapt]
    torch.testing.assert_close(entering[0][1 + n :], boost)  # then [boost], then the class tokens (the suffix)


def test_promptsrc_keeps_vanilla_clip_as_its_reference(backbone, inputs, phase_one):
    images, _ = inputs
    run_template = {"promptsrc": {"frozen_templates": "run"}}  # one template keeps it fast; the reference is what is checked
    bare = build(backbone, "promptsrc", options=run_template)
    boosted = build(backbone, "promptsrc", ("caspl",), {**run_template, "caspl": {"boost_bundle": str(phase_one)}})
    assert torch.equal(boosted.host.frozen_text, bare.host.frozen_text)
    frozen = {i.name: i for i in boosted.frozen_inputs()}
    torch.testing.assert_close(frozen["clip_image"](images), backbone.model.encode_image(images).float(), rtol=0, atol=0)


def test_bad_boost_bundles_are_refused_with_the_reason(backbone, tmp_path):
    with pytest.raises(ValueError, match="caspl needs boost_bundle"):
        build(backbone, "coop", ("caspl",))
    with pytest.raises(FileNotFoundError, match="no bundle there"):
        build(backbone, "coop", ("caspl",), {"caspl": {"boost_bundle": str(tmp_path / "nowhere")}})
    other = build(backbone, "ivlp").save_bundle(tmp_path / "ivlp")
    with pytest.raises(ValueError, match="must be a caspl-boost .phase 1. bundle, this one is 'ivlp'"):
        build(backbone, "coop", ("caspl",), {"caspl": {"boost_bundle": str(other)}})
    with pytest.raises(ValueError, match="booster 'caspl' cannot run on host 'ivlp'.*Hosts it can boost: cocoop, coop, maple, promptsrc"):
        build(backbone, "ivlp", ("caspl",))


# --- the all-methods property checks (tests/test_methods.py) for CasPL --------------------------------
@pytest.mark.parametrize("method", [("caspl-boost", ()), *[(host, ("caspl",)) for host in ("coop", "cocoop", "maple", "promptsrc")]], ids=method_checks.method_id)
def test_the_all_methods_properties_hold(method, tiny_backbone, inputs, phase_one, tmp_path, monkeypatch):
    options = {"caspl": {"boost_bundle": str(phase_one)}} if "caspl" in method[1] else {}
    monkeypatch.setattr(method_checks, "build", lambda backbone, host, boosters, seed=0: build(backbone, host, boosters, options, seed))
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
        method=MethodConfig(host="caspl-boost", options={"caspl-boost": {"teacher": "specpl-tiny", "teacher_pretrained": ""}}),
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
