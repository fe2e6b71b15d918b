"""Step-for-step equivalence of every booster with a reference forward written after its released code (issue #21).

Each booster runs on MaPLe, a host every booster supports and the host of SpecPL's, CasPL's and DAPT's released
trainers, under the ``paper`` preset, on the tiny 12-layer float64 CLIP of tests/test_equivalence.py.
`reference_boosters` computes the same step the released way (77-token prompts, the stock blocks one by one).
Both sides start from the same tensors (ours, randomly perturbed), batch and view; the logits, the training loss
(the sum of our loss terms) and the gradient of every learned tensor must agree to a norm-wise relative error of
1e-8. What is not the method is shared: the band statistics of the frozen decomposer (SpecPL), the counterfactual
permutation (drawn by ours, handed to the reference), and, as tests/test_equivalence.py does with the hosts'
frozen anchors, ISP's frozen class states and probing weights, computed once from the frozen CLIP (they are
checked against the reference's own separately). ISP's paper preset starts each structural update as f_theta - f_theta0
(ours' zero start); the test zeroes the frozen copy's output projection, so that f_theta0 = 0 and the update is the
notes' f_theta. What spans epochs is checked on its own: DAPT's switch between its two loss phases, and CasPL's
hand-over of phase 1's prompts to phase 2.
"""

# ruff: noqa: F811  (the tests request the `backbone` fixture imported from test_equivalence by its name)
from __future__ import annotations

import ast
import copy
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import reference_boosters as rb
import reference_clip as ref
import torch
from test_equivalence import CLASSNAMES, TEMPLATE, TOLERANCE, backbone, layers, linears, relative_error  # noqa: F401
from torch import Tensor

import specpl.methods.specpl.booster as specpl_module
from specpl.backbone import Backbone
from specpl.config import DecomposerConfig, MethodConfig
from specpl.data import ImageItem
from specpl.factory import build_method
from specpl.frozen import BANDS, flatten
from specpl.methods import BOOSTERS, HOSTS, Batch
from specpl.methods.base import IMAGE_FEATURES
from specpl.methods.caspl import PHASE_ONE
from specpl.model import PromptModel

HOST = "maple"
MAPLE_PREFIX = "a photo of a"  # the paper preset's MaPLe learns "a photo" and keeps "of a" (trainers/maple.py)
CASPL_PREFIX = ref.random_prefix(8)  # CasPL's MaPLe student: 8 random context tokens (caspl_maple.py)
ZERO = 1e-12  # a gradient below this share of the whole gradient's norm is zero up to rounding
FLOAT32_TOLERANCE = 1e-5  # ISP's step and anchors in float32 (test_isp_matches_reference_in_float32)
FLOAT32_GRADIENTS = 1e-3  # float32 gradients of small tensors lose more to cancellation
FLOAT32_ZERO = 1e-6
DAPT_SWITCH = 7  # the released alignment phase starts at the 0-based epoch index 7 (``if epoch > 6``)
DAPT_EPOCHS = 10  # the released few-shot schedule

Tensors = dict[str, Tensor]


def norm(t: Tensors, name: str) -> rb.LayerNorm:
    return t[f"{name}.weight"], t[f"{name}.bias"]


linear = norm  # an nn.Linear's (weight, bias) are read the same way


def build(
    booster: str, backbone: Backbone, options: dict | None = None, dtype: torch.dtype = torch.float64
) -> PromptModel:
    """MaPLe + `booster` under the paper preset, in `dtype` and training mode, every learned tensor perturbed."""
    torch.manual_seed(0)
    config = MethodConfig(host=HOST, boosters=[booster], preset="paper", options=options or {})
    decomposer = DecomposerConfig(name="fft", image_size=32)
    model = build_method(config, backbone, CLASSNAMES, template=TEMPLATE, decomposer=decomposer)
    model.to(dtype).train()
    perturb(model)
    return model


def perturb(model: PromptModel) -> None:
    """Move every learned tensor off its init, so that tensors equal at init (MaPLe's couplings) are told apart."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in learned(model).values():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))


def learned(model: PromptModel) -> Tensors:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def method_tensors(model: PromptModel) -> Tensors:
    """Every tensor of the method (not the frozen CLIP) as a fresh copy; the learned ones are leaves of their own
    graph, so the reference's gradients land apart from ours."""
    tensors = {name: b.detach().clone() for name, b in model.named_buffers() if not name.startswith("frozen_clip.")}
    for name, p in model.named_parameters():
        if not name.startswith("frozen_clip."):
            tensors[name] = p.detach().clone().requires_grad_(p.requires_grad)
    return tensors


def make_batch(model: PromptModel, dtype: torch.dtype = torch.float64) -> Batch:
    """Three images of one view, their labels, and the frozen inputs the method names, computed as the feature
    cache computes them (with the items' labels) and put in `dtype`: one input for both sides."""
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(3, 3, 32, 32, generator=generator, dtype=dtype)
    labels = torch.tensor([0, 2, 1])
    items = [ImageItem(Path(f"{i}.png"), int(label)) for i, label in enumerate(labels)]
    frozen: Tensors = {}
    for item in model.frozen_inputs():
        if item.name != IMAGE_FEATURES:
            value = item(images, items) if getattr(item, "needs_items", False) else item(images)
            frozen.update(flatten(item.name, value))
    frozen = {k: v.to(dtype) if v.is_floating_point() else v for k, v in frozen.items()}
    return Batch(labels=labels, images=images, frozen=frozen)


def maple_prompts(t: Tensors) -> rb.MaPLePrompts:
    couplings = linears(t, "host.couplings")
    return rb.MaPLePrompts(t["host.prompt_learner.ctx"], couplings[0], layers(t, "host.deep_text"), couplings[1:])


# --- the boosters: the reference step of each ---------------------------------------------------------------------

Run = Callable[[PromptModel, Tensors, Batch, dict], ref.ReferenceStep]


def _specpl(model: PromptModel, t: Tensors, batch: Batch, seen: dict) -> ref.ReferenceStep:
    def band(name: str) -> rb.BandProjection:
        return rb.BandProjection(norm(t, f"{name}.net.0"), linear(t, f"{name}.net.1.0"), linear(t, f"{name}.net.1.2"))

    def mlp(name: str) -> tuple[ref.Linear, ref.Linear]:
        return linear(t, f"{name}.0"), linear(t, f"{name}.2")

    s = "boosters.specpl"
    specpl = rb.SpecPLTensors(
        attr_tokens=t[f"{s}.bank.bank"],
        agg=mlp(f"{s}.bank.mlp"),
        ln=norm(t, f"{s}.bank.norm"),
        proj_low=band(f"{s}.band_low"),
        proj_high=band(f"{s}.band_high"),
        fusion_ln_s=norm(t, f"{s}.fusion.norm_shared"),
        fusion_ln_a=norm(t, f"{s}.fusion.norm_granule"),
        fusion_mlp=mlp(f"{s}.fusion.mlp"),
        fusion_ln_out=norm(t, f"{s}.fusion.norm_out"),
        modulator_ln=norm(t, f"{s}.modulator.norm"),
        modulator_mlp=mlp(f"{s}.modulator.mlp"),
    )
    return rb.specpl_maple_reference(
        model.frozen_clip,
        batch.images,
        batch.labels,
        CLASSNAMES,
        MAPLE_PREFIX,
        maple_prompts(t),
        specpl,
        batch.frozen[BANDS],
        seen["perm"],
    )


def _caspl(model: PromptModel, t: Tensors, batch: Batch, seen: dict) -> ref.ReferenceStep:
    phase_one = seen["phase_one"]  # phase 1's own tensors, not what phase 2 loaded
    boost_text = [phase_one["host.prompt_learner.ctx"], *layers(phase_one, "host.deep_text")]
    return rb.caspl_maple_reference(
        model.frozen_clip,
        batch.images,
        batch.labels,
        CLASSNAMES,
        CASPL_PREFIX,
        maple_prompts(t),
        boost_text,
        layers(phase_one, "host.vision"),
    )


def _dapt(model: PromptModel, t: Tensors, batch: Batch, seen: dict) -> ref.ReferenceStep:
    clip, maple = model.frozen_clip, maple_prompts(t)
    text = rb.dapt_text_features(clip, CLASSNAMES, MAPLE_PREFIX, maple)
    _, mask = rb.dapt_gradcam_reference(clip, batch.images, batch.labels, text.detach(), maple)
    assert torch.equal(batch.frozen["dapt.mask"].to(mask.dtype), mask), "DAPT-G's masks are not the released GradCAM's"
    return rb.dapt_maple_reference(clip, batch.images, batch.labels, CLASSNAMES, MAPLE_PREFIX, maple, mask, model.epoch)


def _isp(model: PromptModel, t: Tensors, batch: Batch, seen: dict) -> ref.ReferenceStep:
    heads = model.boosters["isp"].config.heads

    def modules(kind: str) -> list[rb.StructuralAttention]:
        found = []
        while f"boosters.isp.{kind}.{len(found)}.module.output.weight" in t:
            m = f"boosters.isp.{kind}.{len(found)}.module"
            parts = (linear(t, f"{m}.{p}") for p in ("query_norm", "source_norm", "query", "key", "value", "output"))
            found.append(rb.StructuralAttention(*parts, heads=heads))
        return found

    isp = rb.ISPTensors(modules("vision_self"), modules("vision_cross"), modules("text_self"), modules("text_cross"))
    return rb.isp_maple_reference(
        model.frozen_clip,
        batch.images,
        batch.labels,
        CLASSNAMES,
        MAPLE_PREFIX,
        maple_prompts(t),
        isp,
        t["boosters.isp.class_states"],
        seen["weights"],
    )


@dataclass(frozen=True)
class Case:
    run: Run
    epoch: int = 0  # the 0-based epoch index the step runs in


CASES: dict[str, Case] = {
    "specpl": Case(_specpl),
    "caspl": Case(_caspl),
    f"dapt@{DAPT_SWITCH - 1}": Case(_dapt, DAPT_SWITCH - 1),  # the last step of the triplet phase
    f"dapt@{DAPT_SWITCH}": Case(_dapt, DAPT_SWITCH),  # the first step of the alignment phase
    "isp": Case(_isp),
}


def booster_of(case: str) -> str:
    return case.split("@")[0]


@pytest.fixture
def phase_one(backbone: Backbone, tmp_path: Path) -> tuple[Path, Tensors]:
    """A CasPL phase-1 bundle and its prompts as phase 1 has them: perturbed, then rounded to float32 (what the
    phase-2 booster stores them in), so that the hand-over is exact."""
    torch.manual_seed(0)
    model = build_method(MethodConfig(host=PHASE_ONE, preset="paper"), backbone, CLASSNAMES, template=TEMPLATE)
    model.double()
    perturb(model)
    with torch.no_grad():
        for parameter in learned(model).values():
            parameter.copy_(parameter.float())
    return model.save_bundle(tmp_path / "phase1"), {name: p.detach().clone() for name, p in learned(model).items()}


def setup(
    case: str,
    backbone: Backbone,
    phase_one: tuple[Path, Tensors],
    monkeypatch: pytest.MonkeyPatch,
    dtype: torch.dtype = torch.float64,
) -> tuple[PromptModel, dict]:
    """Our model for `case` in its epoch, and what the reference shares with it: phase 1's prompts, and what ours
    draws or stores during the step (the counterfactual permutation, ISP's probing weights), recorded as it runs."""
    booster, seen = booster_of(case), {"phase_one": phase_one[1]}
    options = {"caspl": {"boost_bundle": str(phase_one[0])}} if booster == "caspl" else None
    model = build(booster, backbone, options, dtype)
    if booster == "specpl":
        bank = model.boosters["specpl"].bank.bank  # unit rows at the model's precision (ours made them in float32)
        with torch.no_grad():
            bank.copy_(bank / bank.norm(dim=-1, keepdim=True))
        draw = specpl_module.counterfactual_permutation

        def recorded(*args: object, **kwargs: object) -> Tensor:
            return seen.setdefault("perm", draw(*args, **kwargs))

        monkeypatch.setattr(specpl_module, "counterfactual_permutation", recorded)
    if booster == "isp":
        isp = model.boosters["isp"]
        with torch.no_grad():  # the frozen copies' W_o = 0: our update f_theta - f_theta0 is then f_theta, the notes'
            for name, buffer in isp.named_buffers():
                if ".initial.output__" in name:
                    buffer.zero_()
        weights = isp.sample_weights
        monkeypatch.setattr(isp, "sample_weights", lambda state: seen.setdefault("weights", weights(state)))
    model.on_epoch_end(CASES[case].epoch, DAPT_EPOCHS)
    return model, seen


# --- the reference is independent ---------------------------------------------------------------------------------


def test_reference_imports_only_torch_and_the_clip_reference() -> None:
    """The reference must not share code with what it checks (`reference_clip` imports only torch and open_clip)."""
    tree = ast.parse(Path(rb.__file__).read_text())
    nodes = list(ast.walk(tree))
    roots = {alias.name.split(".")[0] for node in nodes if isinstance(node, ast.Import) for alias in node.names}
    roots |= {(node.module or "").split(".")[0] for node in nodes if isinstance(node, ast.ImportFrom)}
    assert roots - set(sys.stdlib_module_names) == {"torch", "reference_clip"}


def test_every_booster_has_a_case_on_a_host_it_supports() -> None:
    assert {booster_of(case) for case in CASES} == set(BOOSTERS.names())
    host = HOSTS.get(HOST)
    for name in BOOSTERS.names():
        booster = BOOSTERS.get(name)
        assert booster.supported_hosts is None or HOST in booster.supported_hosts
        assert booster.requires <= host.capabilities


# --- the step ------------------------------------------------------------------------------------------------------


def check_step(
    model: PromptModel, case: str, seen: dict, batch: Batch, tolerance: float, zero: float, gradients: float
) -> None:
    """Ours and the reference from the same tensors and batch: logits and loss within `tolerance`, the gradient of
    every learned tensor within `gradients`; one the reference finds zero up to rounding (below `zero` times the
    whole gradient's norm: an attention key bias, which shifts every score alike) must be so in ours too."""
    ours, tensors = learned(model), method_tensors(model)
    logits = model.logits(model.encode_image(batch.images))
    loss = sum(model(batch).values())
    expected = CASES[case].run(model, tensors, batch, seen)
    for what, got, want in (("logits", logits, expected.logits), ("loss", loss, expected.loss)):
        assert relative_error(got, want) <= tolerance, f"{what}: {relative_error(got, want):.2e}"
    loss.backward()
    expected.loss.backward()
    unused = [name for name in ours if tensors[name].grad is None]
    assert not unused, f"the reference does not use {unused}"
    floor = zero * math.sqrt(sum(float(tensors[name].grad.norm()) ** 2 for name in ours))
    for name, parameter in ours.items():
        if float(tensors[name].grad.norm()) <= floor:
            assert float(parameter.grad.norm()) <= floor, f"gradient of {name}: {parameter.grad.norm():.2e}, not 0"
        else:
            error = relative_error(parameter.grad, tensors[name].grad)
            assert error <= gradients, f"gradient of {name}: {error:.2e}"


@pytest.mark.parametrize("case", list(CASES))
def test_step_matches_reference(
    case: str, backbone: Backbone, phase_one: tuple[Path, Tensors], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, seen = setup(case, backbone, phase_one, monkeypatch)
    check_step(model, case, seen, make_batch(model), TOLERANCE, ZERO, TOLERANCE)


def test_isp_matches_reference_in_float32(
    backbone: Backbone, phase_one: tuple[Path, Tensors], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ISP in float32, the precision it trains in, agrees to float32 precision too, and its frozen anchors (the
    template prompts' end-of-text states, the probing weights of frozen zero-shot CLIP) agree with the reference's
    own."""
    single = copy.deepcopy(backbone)
    single.model.float()  # exact: the float64 weights were promoted from float32
    model, seen = setup("isp", single, phase_one, monkeypatch, torch.float32)
    batch = make_batch(model, torch.float32)
    check_step(model, "isp", seen, batch, FLOAT32_TOLERANCE, FLOAT32_ZERO, FLOAT32_GRADIENTS)
    isp, clip, texts = model.boosters["isp"], model.frozen_clip, [TEMPLATE.format(name) for name in CLASSNAMES]
    assert relative_error(isp.class_states, rb.end_of_text_states(clip, texts, isp.layers)) <= FLOAT32_TOLERANCE
    image, text = ref.clip_image_features(clip, batch.images), ref.clip_text_features(clip, texts)
    weights = rb.probing_weights(image, text, batch.labels, clip.logit_scale.exp())
    assert relative_error(seen["weights"], weights) <= FLOAT32_TOLERANCE


# --- what spans epochs ---------------------------------------------------------------------------------------------


def test_dapt_switches_from_triplet_to_alignment_after_epoch_index_6(backbone: Backbone) -> None:
    """The released schedule, by hand: the 0-based epoch index e trains CE + triplet while e <= 6 and
    CE + foreground + background alignment from e = 7 on (``if epoch > 6``)."""
    model = build("dapt", backbone)
    batch = make_batch(model)
    for epoch in range(DAPT_EPOCHS):
        model.on_epoch_end(epoch, DAPT_EPOCHS)  # after `epoch` finished epochs, the next one has index `epoch`
        expected = {"cls", "foreground", "background"} if epoch > 6 else {"cls", "triplet"}
        assert set(model(batch)) == expected, f"epoch index {epoch}"


def test_caspl_hands_phase_one_prompts_to_phase_two_frozen(backbone: Backbone, phase_one: tuple[Path, Tensors]) -> None:
    """Phase 2 holds phase 1's prompts exactly (layer 0's text context, the deeper text prompts, every vision
    prompt), learns none of them, and still holds them after a training step, an epoch end and the finalisation."""
    path, prompts = phase_one
    model = build("caspl", backbone, {"caspl": {"boost_bundle": str(path)}})
    booster = model.boosters["caspl"]
    text = [prompts["host.prompt_learner.ctx"], *layers(prompts, "host.deep_text")]
    vision = layers(prompts, "host.vision")
    assert (booster.text_layers, booster.vision_layers) == (len(text), len(vision)) == (12, 12)  # every layer
    expected = text + vision

    def held() -> list[Tensor]:
        text = [booster.get_buffer(f"boost_text_{i}") for i in range(booster.text_layers)]
        return text + [booster.get_buffer(f"boost_vision_{i}") for i in range(booster.vision_layers)]

    assert not any(p.requires_grad for p in booster.parameters()) and not any(t.requires_grad for t in held())
    assert all(torch.equal(got, want) for got, want in zip(held(), expected, strict=True))
    optimizer = torch.optim.SGD(learned(model).values(), lr=0.1)
    sum(model(make_batch(model)).values()).backward()
    optimizer.step()
    model.on_epoch_end(1, 5)
    model.finalise()
    assert all(torch.equal(got, want) for got, want in zip(held(), expected, strict=True))
