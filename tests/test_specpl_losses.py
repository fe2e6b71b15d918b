"""SpecPL's loss terms against values worked out by hand on small fixed tensors."""

import math

import pytest
import torch
import torch.nn.functional as F

from specpl.config import MethodConfig
from specpl.factory import build_method
from specpl.methods import HOSTS, Batch
from specpl.methods.specpl import GranuleModulator
from specpl.methods.specpl.bank import VisualSemanticBank
from specpl.methods.specpl.losses import counterfactual_permutation, granule_logits, semantic_anchor_loss


def test_semantic_anchor_loss_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p = (1/4, 3/4)
    raw_text = torch.tensor([[2.0, 0.0], [0.0, 5.0]])  # unit directions e1, e2
    low = torch.tensor([[1.0, 0.0]])
    # e = normalise(1/4 e1 + 3/4 e2); cos(e, e1) = (1/4) / sqrt(1/16 + 9/16) = 1/sqrt(10)
    expected = 1 - 1 / math.sqrt(10)
    assert semantic_anchor_loss(logits, raw_text, low).item() == pytest.approx(expected, abs=1e-6)


def test_semantic_anchor_loss_gradient_reaches_text_not_logits():
    logits = torch.tensor([[0.3, -0.2]], requires_grad=True)
    raw_text = torch.tensor([[1.0, 0.5], [0.2, 1.0]], requires_grad=True)
    semantic_anchor_loss(logits, raw_text, torch.tensor([[1.0, 0.0]])).backward()
    assert logits.grad is None  # p is detached (spec §3.2)
    assert raw_text.grad is not None and raw_text.grad.abs().sum() > 0


def test_film_modulation_and_granule_ce_by_hand():
    modulator = GranuleModulator(dim=2, std=1e-3)
    last = modulator.mlp[2]
    torch.nn.init.zeros_(last.weight)
    with torch.no_grad():  # gamma = (atanh 0.5, 0), beta = (0, 1.5)
        last.bias.copy_(torch.tensor([math.atanh(0.5), 0.0, 0.0, 1.5]))
    image = torch.tensor([[1.0, 0.0]])
    modulated = modulator(image, torch.tensor([[0.3, -0.7]]))
    # (1 + tanh gamma) * v + beta = (1.5, 0) + (0, 1.5) -> normalised (1/sqrt2, 1/sqrt2)
    torch.testing.assert_close(modulated, torch.tensor([[1 / math.sqrt(2)] * 2]))
    logits = granule_logits(modulated, torch.tensor([[2.0, 0.0], [0.0, 3.0]]), scale=10.0)
    torch.testing.assert_close(logits, torch.tensor([[10 / math.sqrt(2)] * 2]))
    assert F.cross_entropy(logits, torch.tensor([0])).item() == pytest.approx(math.log(2), abs=1e-6)


def test_bank_refinement_by_hand():
    bank = VisualSemanticBank(dim=2, size=2, tau=1.0)
    with torch.no_grad():
        bank.bank.copy_(torch.eye(2))
        first, second = bank.mlp[0], bank.mlp[2]
        first.weight.copy_(torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]))  # pick r
        first.bias.zero_()
        second.weight.copy_(torch.eye(2))
        second.bias.zero_()
    q = torch.tensor([[3.0, 0.0]])  # normalised to e1
    w1 = math.e / (math.e + 1)  # softmax((1, 0) / tau)
    r = [w1, 1 - w1]
    gelu = [x * 0.5 * (1 + math.erf(x / math.sqrt(2))) for x in r]
    pre = torch.tensor([[1.0 + gelu[0], gelu[1]]])
    mean, var = pre.mean(), pre.var(unbiased=False)
    expected = F.normalize((pre - mean) / torch.sqrt(var + 1e-5), dim=-1)
    torch.testing.assert_close(bank(q), expected)


def test_bank_initialisation_fills_then_pulls_nearest_row():
    bank = VisualSemanticBank(dim=2, size=2, momentum=0.05)
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    bank.initialise(features)
    # the third feature is nearest to row 1 (cos 0.8 > 0.6): b1 <- normalise(0.95 b1 + 0.05 f)
    expected_row1 = F.normalize(torch.tensor([0.05 * 0.6, 0.95 + 0.05 * 0.8]), dim=0)
    torch.testing.assert_close(bank.bank[0], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(bank.bank[1], expected_row1)


def _specpl_model(backbone, stat_dim=6, **specpl_options):
    torch.manual_seed(0)
    options = {"coop": {"n_ctx": 4}, "specpl": {"band_stat_dim": stat_dim, **specpl_options}}
    return build_method(
        MethodConfig(host="coop", boosters=["specpl"], options=options), backbone, ["cat", "dog", "ship", "frog"]
    )


def _batch(labels, features, low, high) -> Batch:
    return Batch(labels=labels, frozen={"image.features": features, "bands": torch.stack([low, high], dim=1)})


def test_counterfactual_uses_permuted_high_bands_and_labels(tiny_backbone):
    model = _specpl_model(tiny_backbone)
    specpl = model.boosters["specpl"]
    labels = torch.tensor([0, 1, 2, 3])
    features = torch.randn(4, tiny_backbone.embed_dim)
    low, high = torch.rand(4, 6), torch.rand(4, 6)
    torch.manual_seed(3)
    perm = counterfactual_permutation(4)
    assert not torch.equal(labels[perm], labels)  # this seed's permutation moves labels
    torch.manual_seed(3)
    losses = model(_batch(labels, features, low, high))
    raw, refined = model.text_features()
    _, high_embedding = specpl.band_embeddings(torch.stack([low, high], dim=1))
    logits = specpl.modulated_logits(features, raw[labels], high_embedding[perm], refined, model.logit_scale)
    expected = specpl.config.lambda_gcf * F.cross_entropy(logits, labels[perm])
    torch.testing.assert_close(losses["counterfactual"], expected)
    factual_targets = specpl.config.lambda_gcf * F.cross_entropy(logits, labels)
    assert not torch.allclose(expected, factual_targets)  # the permuted targets change the loss


def test_specpl_total_loss_weights(tiny_backbone):
    model = _specpl_model(tiny_backbone, lambda_raw=1.0)  # the deep hosts' default; off on CoOp by default
    labels, features = torch.tensor([0, 1]), torch.randn(2, tiny_backbone.embed_dim)
    losses = model(_batch(labels, features, torch.rand(2, 6), torch.rand(2, 6)))
    assert set(losses) == {"cls", "sem", "granule", "counterfactual", "raw"}
    config = model.boosters["specpl"].config
    assert (config.lambda_sem, config.lambda_gf, config.lambda_gcf, config.lambda_raw) == (0.1, 0.1, 0.1, 1.0)
    # the raw term: cross-entropy of s * cos(image, raw text), the text before SpecPL refines it
    raw, refined = model.text_features()
    cosine = F.normalize(features, dim=-1) @ F.normalize(raw, dim=-1).t()
    torch.testing.assert_close(losses["raw"], F.cross_entropy(model.logit_scale * cosine, labels))
    refined_cosine = F.normalize(features, dim=-1) @ F.normalize(refined, dim=-1).t()
    torch.testing.assert_close(losses["cls"], F.cross_entropy(model.logit_scale * refined_cosine, labels))


@pytest.mark.parametrize("host", sorted(h for h in HOSTS.names() if HOSTS.get(h).accepts_boosters and h != "zeroshot"))
@pytest.mark.parametrize("preset", ["default", "paper"])
def test_the_per_host_defaults_of_specpl(host, preset):
    """The released code has no raw-text term and refines every class (paper preset). MMRL's class
    branch is a raw-text cross-entropy of its own, and on the text-only hosts the term cost HM, so
    the default has it on IVLP, MaPLe and PromptSRC alone; on the text-only hosts the default
    leaves new classes unrefined."""
    from specpl.factory import resolve_method_options

    options = resolve_method_options(MethodConfig(host=host, boosters=["specpl"], preset=preset))
    on = preset == "default" and host in ("ivlp", "maple", "promptsrc")
    assert options["specpl"]["lambda_raw"] == (1.0 if on else 0.0)
    text_only = preset == "default" and host in ("coop", "cocoop", "kgcoop")
    assert options["specpl"]["refine_novel"] is not text_only


def test_band_projections_are_frozen_and_refiner_trains(tiny_backbone):
    model = _specpl_model(tiny_backbone)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any("band_low" in n or "band_high" in n for n in trainable)
    assert "boosters.specpl.bank.mlp.0.weight" in trainable
    assert "host.prompt_learner.ctx" in trainable
    assert not any(n.startswith("frozen_clip") for n in trainable)


@pytest.mark.parametrize(
    "host, preset, tau, blend",
    [
        ("cocoop", "paper", 0.02, 0.5),
        ("cocoop", "default", 0.02, 1.0),
        ("coop", "paper", 0.07, 1.0),
        ("maple", "default", 0.07, 1.0),
    ],
)
def test_per_host_bank_temperature_and_test_blend(tiny_backbone, host, preset, tau, blend):
    """The SpecPL release (docs/methods/specpl.md): on CoCoOp the bank's tau is 0.02, and the paper preset tests it on
    normalise(0.5 raw + 0.5 refined); the default preset tests every host on the refined text it
    trained on. Training always refines."""
    config = MethodConfig(host=host, boosters=["specpl"], options={"specpl": {"band_stat_dim": 6}}, preset=preset)
    specpl = build_method(config, tiny_backbone, ["cat", "dog"]).boosters["specpl"]
    assert specpl.bank.tau == tau and specpl.test_blend == blend
    raw = F.normalize(torch.randn(3, tiny_backbone.embed_dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    with torch.no_grad():
        refined = specpl.bank(raw)
        specpl.train()
        torch.testing.assert_close(specpl.refine_text(raw), refined, rtol=0, atol=0)
        specpl.eval()
        torch.testing.assert_close(
            specpl.refine_text(raw), F.normalize((1 - blend) * raw + blend * refined, dim=-1) if blend < 1 else refined
        )
