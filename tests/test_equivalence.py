"""Step-for-step equivalence of every host with a reference forward written after its released code (issue #21).

Our hosts take shortcuts the released code does not (a truncated, shared-prefix text tower; prompt slots; the
frozen features as named inputs). `reference_clip` computes the same step the released way (77-token prompts,
the stock open_clip blocks one by one, prompts replaced in a plain loop). Here both run on a tiny random CLIP
with 12 layers in each tower (deep enough for every host's prompt depth), in float64, under the ``paper``
preset, from the same learned tensors (ours, randomly perturbed so that copies made equal at init, such as
MMRL's aligners and MaPLe's couplings, are told apart) and the same batch. The logits, the training loss (the
sum of our loss terms, as the trainer backpropagates it) and the gradient of every learned tensor must agree to
a norm-wise relative error of 1e-8.

The frozen anchors (the frozen CLIP's text and image features that regularisers and zero-shot logits use) are
stored in float32 by our hosts. They are checked against the reference's own to float32 precision
(`test_frozen_anchors_match_reference`); for the step, both sides get the reference's float64 anchors, so that
1e-8 measures the method and not the storage precision.
"""

from __future__ import annotations

import ast
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import open_clip
import pytest
import reference_clip as ref
import torch
from torch import Tensor

from specpl.backbone import Backbone, load_backbone
from specpl.config import BackboneConfig, MethodConfig
from specpl.factory import build_method
from specpl.frozen import CLIP_IMAGE, flatten
from specpl.methods import HOSTS, Batch
from specpl.methods.base import IMAGE_FEATURES
from specpl.methods.caspl import PHASE_ONE
from specpl.methods.caspl.teacher import TEACHER_LOGITS
from specpl.methods.deep import gpa_weights
from specpl.model import PromptModel

MODEL = "specpl-equivalence-12"
MODEL_CONFIG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 12, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 12},
}
CLASSNAMES = ["golden retriever", "cat", "great white shark"]
TEMPLATE = "a photo of a {}, a type of pet."  # the Oxford Pets template: MMRL's text, KgCoOp's and zero-shot's anchor
DATASET = "oxford_pets"
MMRL_REG_WEIGHT = 0.2  # the released per-dataset table (trainers/config.py): OxfordPets
MMRL_REP_LAYERS = tuple(range(6, 13))  # the released REP_LAYERS, 1-indexed blocks 6..12
TOLERANCE = 1e-8
ANCHOR_TOLERANCE = 1e-6  # float32 storage of the frozen anchors

Params = dict[str, Tensor]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from threads, and on a shared machine two threads stall on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def relative_error(ours: Tensor, reference: Tensor) -> float:
    """||ours - reference|| / ||reference|| (0 when both are zero)."""
    ours, reference = ours.detach().double(), reference.detach().double()
    scale = float(reference.norm())
    difference = float((ours - reference).norm())
    return difference / scale if scale else difference


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Backbone:
    """The tiny 12-layer CLIP, random init (seeded by load_backbone), float32 weights promoted to float64 so that
    our hosts' float32 token-embedding buffers hold them exactly."""
    config = tmp_path_factory.mktemp("model_config") / f"{MODEL}.json"
    config.write_text(json.dumps(MODEL_CONFIG))
    open_clip.add_model_config(config)
    backbone = load_backbone(BackboneConfig(name=MODEL, pretrained=None))
    backbone.model.double()
    return backbone


def build(host: str, backbone: Backbone) -> PromptModel:
    """Our host under the paper preset, in float64 and training mode, every learned tensor perturbed."""
    torch.manual_seed(0)
    config = MethodConfig(host=host, preset="paper")
    model = build_method(config, backbone, CLASSNAMES, template=TEMPLATE, dataset=DATASET)
    model.double().train()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in learned(model).values():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return model


def learned(model: PromptModel) -> Params:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def make_batch(model: PromptModel) -> Batch:
    """Three images (one augmentation view, shared by both sides), their labels, and the frozen inputs the host
    names, computed as the trainer computes them. The images go in whole (no cached image outputs). CasPL's
    teacher logits are an input of the step: a fixed tensor stands in for the teacher."""
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(3, 3, 32, 32, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 2, 1])
    if model.host.name == PHASE_ONE:
        frozen = {TEACHER_LOGITS: 5 * torch.randn(3, len(CLASSNAMES), generator=generator, dtype=torch.float64)}
    else:
        frozen = {}
        for item in model.frozen_inputs():
            if item.name != IMAGE_FEATURES:
                frozen.update(flatten(item.name, item(images)))
    return Batch(labels=labels, images=images, frozen=frozen)


def layers(params: Params, prefix: str) -> list[Tensor]:
    """``prefix.0``, ``prefix.1``, ... in order."""
    found = []
    while f"{prefix}.{len(found)}" in params:
        found.append(params[f"{prefix}.{len(found)}"])
    return found


def linears(params: Params, prefix: str) -> list[ref.Linear]:
    """(weight, bias) of ``prefix.0``, ``prefix.1``, ... in order."""
    found: list[ref.Linear] = []
    while f"{prefix}.{len(found)}.weight" in params:
        found.append((params[f"{prefix}.{len(found)}.weight"], params[f"{prefix}.{len(found)}.bias"]))
    return found


# --- the hosts: the released prompt prefix, the pinned text input, and the reference step ----------------------

Run = Callable[[PromptModel, Params, Batch, Tensor | None], ref.ReferenceStep]
PHRASE = "a photo of a"  # the released CTX_INIT of every phrase-initialised host (MaPLe learns its first two words)
SOS, EOS, CTX = "<start_of_text>", "<end_of_text>", "[ctx]"
CLASS = ("golden", "retriever")  # CLASSNAMES[0], the class whose text input is pinned


@dataclass(frozen=True)
class Case:
    """A host's released prompt (`prefix` words before the class name, of which the first `n_ctx` are learned;
    None: the fixed template) and its text input for "golden retriever" under paper: `layout`, one entry a
    position, CTX for a learned one, else the frozen word there."""

    prefix: str | None
    n_ctx: int
    layout: tuple[str, ...] | None
    run: Run


def _coop(model: PromptModel, p: Params, batch: Batch, anchor: Tensor | None) -> ref.ReferenceStep:
    ctx = p["host.prompt_learner.ctx"]
    return ref.coop_reference(model.frozen_clip, batch.images, batch.labels, CLASSNAMES, ctx, PHRASE)


def _cocoop(model: PromptModel, p: Params, batch: Batch, anchor: Tensor | None) -> ref.ReferenceStep:
    linear1, linear2 = ((p[f"host.meta_net.{i}.weight"], p[f"host.meta_net.{i}.bias"]) for i in (0, 2))  # 1 is the ReLU
    ctx = p["host.prompt_learner.ctx"]
    images, labels = batch.images, batch.labels
    return ref.cocoop_reference(model.frozen_clip, images, labels, CLASSNAMES, ctx, (linear1, linear2), PHRASE)


def _ivlp(model: PromptModel, p: Params, batch: Batch, anchor: Tensor | None) -> ref.ReferenceStep:
    return ref.ivlp_reference(
        model.frozen_clip,
        batch.images,
        batch.labels,
        CLASSNAMES,
        p["host.prompt_learner.ctx"],
        layers(p, "host.deep_text"),
        layers(p, "host.vision"),
        PHRASE,
    )


def _maple(model: PromptModel, p: Params, batch: Batch, anchor: Tensor | None) -> ref.ReferenceStep:
    couplings = linears(p, "host.couplings")
    return ref.maple_reference(
        model.frozen_clip,
        batch.images,
        batch.labels,
        CLASSNAMES,
        p["host.prompt_learner.ctx"],
        couplings[0],
        layers(p, "host.deep_text"),
        couplings[1:],
        PHRASE,
    )


def _promptsrc(model: PromptModel, p: Params, batch: Batch, anchor: Tensor | None) -> ref.ReferenceStep:
    return ref.promptsrc_reference(
        model.frozen_clip,
        batch.images,
        batch.labels,
        CLASSNAMES,
        p["host.prompt_learner.ctx"],
        layers(p, "host.deep_text"),
        layers(p, "host.vision"),
        PHRASE,
        fixed_embeddings=anchor,
        zero_shot_features=batch.frozen[CLIP_IMAGE],
    )


def _kgcoop(model: PromptModel, p: Params, batch: Batch, anchor: Tensor | None) -> ref.ReferenceStep:
    return ref.kgcoop_reference(
        model.frozen_clip,
        batch.images,
        batch.labels,
        CLASSNAMES,
        p["host.prompt_learner.ctx"],
        PHRASE,
        text_features_old=anchor,
    )


def _mmrl(model: PromptModel, p: Params, batch: Batch, anchor: Tensor | None) -> ref.ReferenceStep:
    return ref.mmrl_reference(
        model.frozen_clip,
        batch.images,
        batch.labels,
        CLASSNAMES,
        TEMPLATE,
        p["host.representation"],
        linears(p, "host.text_aligners"),
        linears(p, "host.vision_aligners"),
        p["host.proj_rep"],
        MMRL_REP_LAYERS,
        text_features_clip=anchor,
        image_features_clip=batch.frozen[CLIP_IMAGE],
        reg_weight=MMRL_REG_WEIGHT,
    )


def _zeroshot(model: PromptModel, p: Params, batch: Batch, anchor: Tensor | None) -> ref.ReferenceStep:
    return ref.zeroshot_reference(model.frozen_clip, batch.images, batch.labels, anchor)


def _caspl_boost(model: PromptModel, p: Params, batch: Batch, anchor: Tensor | None) -> ref.ReferenceStep:
    return ref.caspl_boost_reference(
        model.frozen_clip,
        batch.images,
        CLASSNAMES,
        p["host.prompt_learner.ctx"],
        layers(p, "host.deep_text"),
        layers(p, "host.vision"),
        batch.frozen[TEACHER_LOGITS],
    )


CASES: dict[str, Case] = {
    "coop": Case(PHRASE, 4, (SOS, *[CTX] * 4, *CLASS, ".", EOS), _coop),
    "cocoop": Case(PHRASE, 4, (SOS, *[CTX] * 4, *CLASS, ".", EOS), _cocoop),
    "ivlp": Case(PHRASE, 4, (SOS, *[CTX] * 4, *CLASS, ".", EOS), _ivlp),
    # only "a photo" is learned; "of a" stays as frozen words (trainers/maple.py, n_ctx 2)
    "maple": Case(PHRASE, 2, (SOS, CTX, CTX, "of", "a", *CLASS, ".", EOS), _maple),
    "promptsrc": Case(PHRASE, 4, (SOS, *[CTX] * 4, *CLASS, ".", EOS), _promptsrc),
    "kgcoop": Case(PHRASE, 4, (SOS, *[CTX] * 4, *CLASS, ".", EOS), _kgcoop),
    # the fixed template; the representation tokens enter inside the tower, not in the text input
    "mmrl": Case(None, 0, (SOS, "a", "photo", "of", "a", *CLASS, ",", "a", "type", "of", "pet", ".", EOS), _mmrl),
    # keeps only its template's features, no token input to read (its text is checked through them)
    "zeroshot": Case(None, 0, None, _zeroshot),
    "caspl-boost": Case(ref.random_prefix(8), 8, (SOS, *[CTX] * 8, *CLASS, ".", EOS), _caspl_boost),
}


def test_every_host_has_a_case() -> None:
    assert set(CASES) == set(HOSTS.names())


def test_reference_imports_only_torch_and_open_clip() -> None:
    """The reference must not share code with what it checks."""
    tree = ast.parse(Path(ref.__file__).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add((node.module or "").split(".")[0])
    assert roots - set(sys.stdlib_module_names) == {"torch", "open_clip"}


# --- the frozen anchors ----------------------------------------------------------------------------------------


def _template_text(model: PromptModel) -> Tensor:
    return ref.clip_text_features(model.frozen_clip, [TEMPLATE.format(name) for name in CLASSNAMES])


def _promptsrc_text(model: PromptModel) -> Tensor:
    return ref.normalise(ref.promptsrc_fixed_embeddings(model.frozen_clip, CLASSNAMES))


# the host's frozen text anchor: our buffer's name, and the reference's own value
ANCHORS: dict[str, tuple[str, Callable[[PromptModel], Tensor]]] = {
    "promptsrc": ("frozen_text", _promptsrc_text),
    "kgcoop": ("frozen_text", _template_text),
    "mmrl": ("frozen_text", _template_text),
    "zeroshot": ("text", _template_text),
}


@pytest.mark.parametrize("host", sorted(ANCHORS))
def test_frozen_anchors_match_reference(host: str, backbone: Backbone) -> None:
    """The frozen text anchors (PromptSRC: the 60 templates' raw features averaged, then normalised) and the
    frozen image feature of the view agree with the reference's own to float32 precision."""
    model = build(host, backbone)
    buffer, reference = ANCHORS[host]
    ours, expected = getattr(model.host, buffer), reference(model)
    assert relative_error(ours, expected) <= ANCHOR_TOLERANCE, f"text anchor: {relative_error(ours, expected):.2e}"
    batch = make_batch(model)
    if CLIP_IMAGE in batch.frozen:
        image = ref.clip_image_features(model.frozen_clip, batch.images)
        assert relative_error(batch.frozen[CLIP_IMAGE], image) <= ANCHOR_TOLERANCE


# --- the step --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", sorted(CASES))
def test_step_matches_reference(host: str, backbone: Backbone) -> None:
    """Logits, loss and every learned tensor's gradient of one training step, from the same tensors, batch and
    (the reference's, float64) frozen anchors."""
    model = build(host, backbone)
    batch = make_batch(model)
    anchor = None
    if host in ANCHORS:
        buffer, reference = ANCHORS[host]
        anchor = reference(model)
        getattr(model.host, buffer).copy_(anchor)
    if CLIP_IMAGE in batch.frozen:
        batch.frozen[CLIP_IMAGE] = ref.clip_image_features(model.frozen_clip, batch.images)
    ours = learned(model)
    leaves = {name: p.detach().clone().requires_grad_() for name, p in ours.items()}
    logits = model.logits(model.encode_image(batch.images))
    loss = sum(model(batch).values())
    expected = CASES[host].run(model, leaves, batch, anchor)
    for what, ours_value, reference_value in (("logits", logits, expected.logits), ("loss", loss, expected.loss)):
        error = relative_error(ours_value, reference_value)
        assert error <= TOLERANCE, f"{what}: {error:.2e}"
    if not ours:
        return
    loss.backward()
    expected.loss.backward()
    for name, parameter in ours.items():
        assert leaves[name].grad is not None, f"the reference does not use {name}"
        error = relative_error(parameter.grad, leaves[name].grad)
        assert error <= TOLERANCE, f"gradient of {name}: {error:.2e}"


# --- the text input --------------------------------------------------------------------------------------------


def _words(rows: Tensor, table: Tensor, tokenizer: open_clip.SimpleTokenizer) -> list[str]:
    """The words whose frozen embeddings are `rows` (exact rows of the embedding table)."""
    ids = torch.cdist(rows, table, compute_mode="donot_use_mm_for_euclid_dist").argmin(dim=-1)
    assert torch.equal(table[ids], rows), "a frozen position does not hold a token embedding"
    return [tokenizer.decoder[int(i)].removesuffix("</w>") for i in ids]


def our_layout(model: PromptModel, index: int, tokenizer: open_clip.SimpleTokenizer) -> list[str]:
    """Our text input of class `index`, read from our buffers: [SOS], the learned context, the frozen rest to EOS."""
    table, host = model.frozen_clip.token_embedding.weight, model.host
    if host.name == "mmrl":
        sos, rest = host.text_prefix[0], host.text_suffix[index, : int(host.text_eot[index]) + 1]
        return _words(sos, table, tokenizer) + _words(rest, table, tokenizer)
    learner = host.prompt_learner
    rest = learner.suffix_embedding[index, : int(learner.eot_index[index]) - learner.n_ctx]
    return _words(learner.sos_embedding[0], table, tokenizer) + [CTX] * learner.n_ctx + _words(rest, table, tokenizer)


def reference_layout(case: Case, tokenizer: open_clip.SimpleTokenizer) -> list[str]:
    """The released text input: the prompt string tokenised, positions 1..n_ctx learned."""
    text = ref.class_prompts(case.prefix, CLASSNAMES[:1])[0] if case.prefix else TEMPLATE.format(CLASSNAMES[0])
    ids = open_clip.tokenize([text])[0]
    words = [tokenizer.decoder[int(i)].removesuffix("</w>") for i in ids[: int(ids.argmax()) + 1]]
    return [words[0], *[CTX] * case.n_ctx, *words[1 + case.n_ctx :]]


@pytest.mark.parametrize("host", sorted(h for h, case in CASES.items() if case.layout is not None))
def test_text_input_is_pinned(host: str, backbone: Backbone) -> None:
    """Which positions of "golden retriever"'s prompt are learned, which are frozen words, and which words."""
    model = build(host, backbone)
    case = CASES[host]
    assert our_layout(model, 0, backbone.tokenizer) == list(case.layout)
    assert reference_layout(case, backbone.tokenizer) == list(case.layout)


# --- PromptSRC's Gaussian prompt aggregation --------------------------------------------------------------------


def test_promptsrc_gpa_is_the_gaussian_weighted_sum(backbone: Backbone) -> None:
    """The released GPA over 20 epochs (mean 15, std 1): the final prompts are sum_e w_e theta_e with w_e the
    normal density at e normalised over epochs 1..20, theta_e the prompts at the end of epoch e."""
    epochs, mean, std = 20, 15.0, 1.0
    density = [math.exp(-0.5 * ((e - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi)) for e in range(1, epochs + 1)]
    total = sum(density)
    weights = [d / total for d in density]
    assert max(abs(a - b) for a, b in zip(gpa_weights(epochs, mean, std), weights, strict=True)) <= 1e-15
    model = build("promptsrc", backbone)
    ours = learned(model)
    generator = torch.Generator().manual_seed(3)
    history = []
    for epoch in range(1, epochs + 1):
        state = {name: torch.randn(p.shape, generator=generator, dtype=p.dtype) for name, p in ours.items()}
        with torch.no_grad():
            for name, parameter in ours.items():
                parameter.copy_(state[name])
        model.on_epoch_end(epoch, epochs)
        history.append(state)
    model.finalise()
    for name, parameter in ours.items():
        expected = sum(w * state[name] for w, state in zip(weights, history, strict=True))
        assert relative_error(parameter, expected) <= 1e-12, name
