"""Every booster starts as the identity on its host: right after `build_method`, before any
optimizer step, host + boosters give the host's logits (fp32, within 1e-5). The branches zero-gated
for that (SpecPL's refiner gate, CoCoOp's meta-net) still learn: each gets a gradient within two
steps. The spec's forms stay available ("layernorm" refiner, "pytorch" meta-net init)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from test_methods import CLASSES, METHODS, batch_for, build, method_id, refiner_names

from specpl.config import DecomposerConfig, MethodConfig
from specpl.factory import build_method, resolve_method_options
from specpl.methods.cocoop import CoCoOpConfig
from specpl.methods.specpl import SpecPLConfig
from specpl.methods.specpl.bank import VisualSemanticBank

CASPL = "caspl"  # its frozen phase-1 prompts are part of the host's starting point, not a change to it
BOOSTED = [(host, stack) for host, stack in METHODS if stack and stack != (CASPL,)]


def _baseline(stack: tuple[str, ...]) -> tuple[str, ...]:
    return (CASPL,) if CASPL in stack else ()


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _logits(model, images: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model.logits(model.encode_image(images))


@pytest.mark.parametrize("method", BOOSTED, ids=method_id)
def test_boosters_start_as_the_identity_on_their_host(method, tiny_backbone, images):
    host, stack = method
    backbone = copy.deepcopy(tiny_backbone)
    # the same seed and build order (host first, boosters in name order) give the same host init
    expected = _logits(build(backbone, host, _baseline(stack), seed=3), images)
    boosted = _logits(build(backbone, host, stack, seed=3), images)
    torch.testing.assert_close(boosted, expected, rtol=0, atol=1e-5)


def _build(backbone, host: str, boosters: tuple[str, ...] = (), options: dict | None = None, seed: int = 0):
    torch.manual_seed(seed)
    config = MethodConfig(host=host, boosters=list(boosters), options=options or {})
    return build_method(config, backbone, CLASSES, decomposer=DecomposerConfig(name="fft", image_size=32))


def _nonzero(parameter: torch.Tensor) -> bool:
    return parameter.grad is not None and bool(parameter.grad.abs().sum() > 0)


def _two_steps(model, images: torch.Tensor) -> list[set[str]]:
    """Two Adam steps on the model's own loss; the names of the parameters with a nonzero gradient at each."""
    labels = torch.arange(images.shape[0]) % len(CLASSES)
    batch = batch_for(model, images, labels)
    model.prepare([batch])
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.Adam([p for _, p in named], lr=1e-2)
    reached = []
    for step in range(2):
        torch.manual_seed(step)  # SpecPL's counterfactual permutation
        optimizer.zero_grad()
        sum(model(batch).values()).backward()
        reached.append({n for n, p in named if _nonzero(p)})
        optimizer.step()
    return reached


@pytest.mark.parametrize("host", ["coop", "cocoop"])
def test_specpl_gate_learns_at_step_one_and_the_refiner_once_it_opens(tiny_backbone, images, host):
    """g = 0 keeps the MLP and LN out of step 1; a gate above 0 lets them learn (here opened by
    hand, as a step that lowers the loss towards the refinement does)."""
    model = _build(copy.deepcopy(tiny_backbone), host, ("specpl",))
    refiner = refiner_names(model)
    assert "boosters.specpl.bank.gate" in {n for n, p in model.named_parameters() if p.requires_grad} and refiner
    first, _ = _two_steps(model, images)
    assert "boosters.specpl.bank.gate" in first and not refiner & first
    opened = _build(copy.deepcopy(tiny_backbone), host, ("specpl",))
    with torch.no_grad():
        opened.boosters["specpl"].bank.gate.fill_(0.05)
    assert refiner <= _two_steps(opened, images)[0]


@pytest.mark.parametrize("host", ["coop", "ivlp"])
def test_a_gate_the_first_steps_push_shut_keeps_the_host_text(tiny_backbone, images, host):
    """On the tiny model the first steps move away from the random refinement: the bounded gate
    reads 0, the refined text stays exactly the host's direction, the refiner gets no gradient,
    and the raw gate keeps its gradient, so it can open again."""
    model = _build(copy.deepcopy(tiny_backbone), host, ("specpl",))
    reached = _two_steps(model, images)
    bank = model.boosters["specpl"].bank
    assert bank.gate.item() < 0
    assert all("boosters.specpl.bank.gate" in step for step in reached)
    assert not refiner_names(model) & (reached[0] | reached[1])
    text = torch.randn(len(CLASSES), tiny_backbone.embed_dim) * 3
    with torch.no_grad():
        torch.testing.assert_close(bank(text), F.normalize(text, dim=-1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("boosters", [(), ("specpl",)], ids=["cocoop", "cocoop+specpl"])
def test_cocoop_meta_net_last_layer_learns_at_step_one_and_the_first_at_step_two(tiny_backbone, images, boosters):
    model = _build(copy.deepcopy(tiny_backbone), "cocoop", boosters)
    last = model.host.meta_net[-1]
    assert not last.weight.any() and not last.bias.any()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    first, second = _two_steps(model, images)
    assert {"host.meta_net.2.weight", "host.meta_net.2.bias"} <= first
    assert not {"host.meta_net.0.weight", "host.meta_net.0.bias"} & first  # a zero last layer passes no gradient back
    assert {"host.meta_net.0.weight", "host.meta_net.0.bias"} <= second
    untouched = trainable - (first | second) - (refiner_names(model) if boosters else set())  # a shut gate's
    assert not untouched, f"no gradient in two steps: {sorted(untouched)}"


def test_cocoop_zero_meta_init_is_a_zero_shift_and_pytorch_init_draws_the_same_numbers(tiny_backbone):
    zero = _build(copy.deepcopy(tiny_backbone), "cocoop", seed=5).host
    default = _build(copy.deepcopy(tiny_backbone), "cocoop", options={"cocoop": {"meta_init": "pytorch"}}, seed=5).host
    features = torch.randn(3, tiny_backbone.embed_dim)
    with torch.no_grad():
        assert not zero.meta_net(features).any()
        assert default.meta_net(features).abs().sum() > 0  # PyTorch's init shifts every image's context
    zero_state, default_state = zero.state_dict(), default.state_dict()
    assert zero_state.keys() == default_state.keys()
    for name, value in zero_state.items():
        if not name.startswith("meta_net.2."):
            torch.testing.assert_close(value, default_state[name], rtol=0, atol=0, msg=name)


def _random_bank(refiner: str, generator: torch.Generator, dim: int = 8) -> VisualSemanticBank:
    bank = VisualSemanticBank(dim, size=5, tau=0.5, refiner=refiner)
    with torch.no_grad():
        for parameter in [*bank.mlp.parameters(), *bank.norm.parameters()]:
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
        bank.bank.copy_(F.normalize(torch.randn(bank.bank.shape, generator=generator), dim=-1))
    return bank


def _spec_by_hand(bank: VisualSemanticBank, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, LN(q + MLP([q; r]))) written out from the SpecPL paper's refiner."""
    q = text / text.norm(dim=-1, keepdim=True)
    w = torch.softmax(q @ bank.bank.t() / 0.5, dim=-1)
    r = w @ bank.bank
    first, second = bank.mlp[0], bank.mlp[2]
    hidden = torch.cat([q, r], dim=-1) @ first.weight.t() + first.bias
    hidden = 0.5 * hidden * (1 + torch.erf(hidden / 2**0.5))  # exact GELU
    x = q + hidden @ second.weight.t() + second.bias
    mean, var = x.mean(dim=-1, keepdim=True), x.var(dim=-1, unbiased=False, keepdim=True)
    return q, (x - mean) / torch.sqrt(var + bank.norm.eps) * bank.norm.weight + bank.norm.bias


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def test_layernorm_refiner_is_the_spec_formula_and_has_no_gate():
    generator = torch.Generator().manual_seed(0)
    bank = _random_bank("layernorm", generator)
    assert not hasattr(bank, "gate") and "gate" not in dict(bank.named_parameters())
    text = torch.randn(6, 8, generator=generator) * 3
    _, spec = _spec_by_hand(bank, text)
    with torch.no_grad():
        torch.testing.assert_close(bank(text), _normalise(spec), rtol=0, atol=1e-6)


@pytest.mark.parametrize("refiner", ["interpolate", "gated"])
def test_gated_refiners_are_the_raw_direction_at_zero_and_the_spec_formula_at_one(refiner):
    generator = torch.Generator().manual_seed(1)
    gated = _random_bank(refiner, generator)
    layernorm = VisualSemanticBank(8, size=5, tau=0.5, refiner="layernorm")
    missing, unexpected = layernorm.load_state_dict(gated.state_dict(), strict=False)
    assert (missing, unexpected) == ([], ["gate"])  # the gate is the one tensor the gated forms add
    text = torch.randn(6, 8, generator=generator) * 3
    q, spec = _spec_by_hand(gated, text)
    with torch.no_grad():
        assert gated.gate.item() == 0.0
        torch.testing.assert_close(gated(text), _normalise(q), rtol=0, atol=1e-6)  # step 0: the host's direction
        gated.gate.fill_(1.0)  # normalise(q + (x - q)) = normalise(x)
        torch.testing.assert_close(gated(text), _normalise(spec), rtol=0, atol=1e-6)
        torch.testing.assert_close(gated(text), layernorm(text), rtol=0, atol=1e-6)
        gated.gate.fill_(0.3)
        torch.testing.assert_close(gated(text), _normalise(q + 0.3 * (spec - q)), rtol=0, atol=1e-6)


def test_the_default_gate_stays_between_the_host_text_and_the_refinement_and_can_reopen():
    """The unbounded form extrapolates past the host's text (below 0) or the refinement (above 1);
    "interpolate" reads a gate below 0 as 0 (the host's text) and above 1 as 1 (the spec's form),
    while the gradient still reaches the raw gate, so a gate pushed shut can open again."""
    generator = torch.Generator().manual_seed(2)
    bounded = _random_bank("interpolate", generator)
    unbounded = _random_bank("gated", torch.Generator().manual_seed(2))
    text = torch.randn(6, 8, generator=generator) * 3
    with torch.no_grad():
        q, spec = _spec_by_hand(bounded, text)
    for value, expected in ((-0.7, _normalise(q)), (1.4, _normalise(spec))):
        with torch.no_grad():
            bounded.gate.fill_(value)
            unbounded.gate.fill_(value)
            torch.testing.assert_close(bounded(text), expected, rtol=0, atol=1e-6)
            turned = _normalise(q + value * (spec - q))
            torch.testing.assert_close(unbounded(text), turned, rtol=0, atol=1e-6)
        bounded.gate.grad = None
        (bounded(text) * spec).sum().backward()
        assert bounded.gate.grad.abs() > 0


def test_cocoop_test_blend_with_a_closed_gate_is_the_raw_direction(tiny_backbone):
    specpl = (
        _build(copy.deepcopy(tiny_backbone), "cocoop", ("specpl",), {"specpl": {"test_blend": 0.5}})
        .boosters["specpl"]
        .eval()
    )
    assert specpl.test_blend == 0.5
    raw = torch.randn(2, len(CLASSES), tiny_backbone.embed_dim) * 4  # CoCoOp's per-image text
    with torch.no_grad():
        torch.testing.assert_close(specpl.refine_text(raw), F.normalize(raw, dim=-1), rtol=0, atol=1e-6)


def test_a_layernorm_specpl_has_the_tensors_and_draws_of_the_gated_one_but_the_gate(tiny_backbone):
    gated = _build(copy.deepcopy(tiny_backbone), "coop", ("specpl",), seed=2).learned_state_dict()
    layernorm = _build(
        copy.deepcopy(tiny_backbone), "coop", ("specpl",), {"specpl": {"refiner": "layernorm"}}, seed=2
    ).learned_state_dict()
    assert set(gated) - set(layernorm) == {"boosters.specpl.bank.gate"} and set(layernorm) <= set(gated)
    for name, value in layernorm.items():
        torch.testing.assert_close(gated[name], value, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: SpecPLConfig(refiner="paper"),
            r"specpl\.refiner must be one of 'interpolate', 'gated', 'layernorm'; got 'paper'",
        ),
        (
            lambda: VisualSemanticBank(4, refiner="LN"),
            r"specpl\.refiner must be one of 'interpolate', 'gated', 'layernorm'; got 'LN'",
        ),
        (lambda: CoCoOpConfig(meta_init="xavier"), r"cocoop\.meta_init must be one of 'zero', 'pytorch'; got 'xavier'"),
        (
            lambda: resolve_method_options(
                MethodConfig(host="coop", boosters=["specpl"], options={"specpl": {"refiner": "none"}})
            ),
            r"specpl\.refiner must be one of 'interpolate', 'gated', 'layernorm'; got 'none'",
        ),
        (
            lambda: resolve_method_options(MethodConfig(host="cocoop", options={"cocoop": {"meta_init": "random"}})),
            r"cocoop\.meta_init must be one of 'zero', 'pytorch'; got 'random'",
        ),
        (
            lambda: resolve_method_options(MethodConfig(host="maple", options={"maple": {"coupling_init": "tied"}})),
            r"maple\.coupling_init must be one of 'independent', 'shared'; got 'tied'",
        ),
        (
            lambda: resolve_method_options(
                MethodConfig(host="promptsrc", options={"promptsrc": {"frozen_text_average": "mean"}})
            ),
            r"promptsrc\.frozen_text_average must be one of 'normalised', 'raw'; got 'mean'",
        ),
        (
            lambda: resolve_method_options(
                MethodConfig(host="kgcoop", options={"kgcoop": {"guidance_templates": "dtd"}})
            ),
            r"kgcoop\.guidance_templates must be one of 'run', 'released'; got 'dtd'",
        ),
    ],
    ids=[
        "specpl-config",
        "bank",
        "cocoop-config",
        "specpl-option",
        "cocoop-option",
        "maple-coupling",
        "promptsrc-average",
        "kgcoop-guidance",
    ],
)
def test_an_unknown_init_option_names_the_allowed_values(make, message):
    with pytest.raises(ValueError, match=message):
        make()
