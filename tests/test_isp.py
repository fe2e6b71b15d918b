"""ISP booster: the structural modules start as the bare host, the probing weights match a hand
computation, the weights scale the host's loss only, and the all-methods properties hold."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_methods import CLASSES, batch_for, inputs, phase_one_bundle  # noqa: F401  (`inputs` is a fixture)
from test_methods import test_every_method as check_every_method_properties

from specpl.config import DecomposerConfig, MethodConfig
from specpl.factory import build_method
from specpl.frozen import CLIP_IMAGE
from specpl.methods import Batch, ForwardState
from specpl.methods.base import weighted_cross_entropy
from specpl.methods.isp import ISP, ISPConfig, probing_weights


def build(backbone, host: str, boosters: list[str], options: dict | None = None, seed: int = 0):
    """The method with ISP's structural modules where the host fits (`structural="auto"`): most tests
    here check them, and the default preset builds none (`test_the_default_preset_is_sample_probing_alone`)."""
    torch.manual_seed(seed)
    host_options = {"coop": {"n_ctx": 4}}.get(host, {})
    options = {host: host_options, **(options or {})}
    if "isp" in boosters:
        options["isp"] = {"structural": "auto", **options.get("isp", {})}
    config = MethodConfig(host=host, boosters=boosters, options=options)
    return build_method(config, backbone, CLASSES, decomposer=DecomposerConfig(name="fft", image_size=32))


def per_class_prefix(layer: int, prefix: torch.Tensor, suffix: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """A text hook that changes nothing but gives every class its own copy of the prefix."""
    return prefix.unsqueeze(1).expand(-1, suffix.shape[1], -1, -1) if layer == 0 else prefix


@pytest.mark.parametrize("zero_start", ["initial-difference", "output-projection"])
@pytest.mark.parametrize("host", ["mmrl", "maple"])
def test_step_zero_is_the_bare_host(tiny_backbone, inputs, host, zero_start):  # noqa: F811
    images, labels = inputs
    bare = build(tiny_backbone, host, []).eval()
    boosted = build(tiny_backbone, host, ["isp"], {"isp": {"zero_start": zero_start, "text_structural": True}}).eval()
    isp = boosted.boosters["isp"]
    # the structural modules exist exactly where the host appends prompts after the patches
    assert (isp.layers > 0) == (host == "maple")
    if isp.text_hook() is not None:
        # the text modules give every class its own prompts, so the text tower stops sharing the
        # prefix: compare with the bare host encoding its text the same way (same float order;
        # `test_text.py` pins per-class against shared within 1e-6, float order)
        bare.host.text_hook = lambda: per_class_prefix
    with torch.no_grad():
        expected = bare.logits(bare.encode_image(images))
        got = boosted.logits(boosted.encode_image(images))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)

    # the host's own gradients at step 0 are unchanged too: exactly with a zero W_o; with the
    # initial difference the module's two input gradients cancel, up to the order of summation
    exact = {"rtol": 0, "atol": 0} if zero_start == "output-projection" else {}
    bare.train(), boosted.train()
    for model in (bare, boosted):
        model.zero_grad()
        F.cross_entropy(model.logits(model.encode_image(images)), labels).backward()
    for (name, p), (_, q) in zip(bare.host.named_parameters(), boosted.host.named_parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, msg=name, **exact)


def test_the_modules_restructure_only_the_prompt_tokens_once_trained(tiny_backbone, inputs):  # noqa: F811
    images, labels = inputs
    model = build(tiny_backbone, "maple", ["isp"])
    isp = model.boosters["isp"]
    optimizer = torch.optim.SGD([p for p in isp.parameters()], lr=1.0)
    model(batch_for(model, images, labels))["cls"].backward()
    optimizer.step()
    x = torch.randn(4, isp.frozen_tokens + 2, 64)
    out = isp.restructure(0, x)
    assert torch.equal(out[:, : isp.frozen_tokens], x[:, : isp.frozen_tokens])  # [CLS] + patches untouched
    assert not torch.allclose(out[:, isp.frozen_tokens :], x[:, isp.frozen_tokens :])
    # the prompts now depend on the image: the same prompts next to other patches change differently
    y = torch.cat([torch.randn(4, isp.frozen_tokens, 64), x[:, isp.frozen_tokens :]], dim=1)
    assert not torch.allclose(isp.restructure(0, y)[:, isp.frozen_tokens :], out[:, isp.frozen_tokens :])
    assert torch.equal(isp.restructure(isp.layers, x), x)  # past the structural depth: unchanged


def test_the_text_modules_make_the_prompts_class_specific_and_read_each_class_up_to_its_end(tiny_backbone, inputs):  # noqa: F811
    images, labels = inputs
    default = build(tiny_backbone, "maple", ["isp"]).boosters["isp"]
    assert (
        len(default.vision_self) == default.layers > 0 and not len(default.text_self) and default.text_hook() is None
    )  # image tower only
    model = build(tiny_backbone, "maple", ["isp"], {"isp": {"text_structural": True}})  # the paper preset's
    isp = model.boosters["isp"]
    assert len(isp.text_self) == len(isp.text_cross) == isp.layers > 0
    optimizer = torch.optim.SGD([p for p in isp.parameters()], lr=1.0)
    model(batch_for(model, images, labels))["cls"].backward()
    optimizer.step()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in isp.text_self.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in isp.text_cross.parameters())

    torch.manual_seed(1)
    prefix, suffix = torch.randn(1, 3, 64), torch.randn(1, 3, 5, 64)
    eot = torch.tensor([[1, 4, 2]])  # class 0 ends at suffix position 1
    out = isp.restructure_text(0, prefix, suffix, eot)
    assert out.shape == (1, 3, 3, 64)  # one prefix per class
    assert torch.equal(out[:, :, 0], prefix[:, None, 0].expand(-1, 3, -1))  # [SOS] untouched
    assert not torch.allclose(out[0, 0, 1:], out[0, 1, 1:])  # the prompts now differ per class
    # class 0 never reads past its end-of-text; class 1 reads its whole sequence
    changed = suffix.clone()
    changed[:, :, 2:] = torch.randn(1, 3, 3, 64)
    again = isp.restructure_text(0, prefix, changed, eot)
    torch.testing.assert_close(again[0, 0], out[0, 0])
    assert not torch.allclose(again[0, 1], out[0, 1])
    assert torch.equal(isp.restructure_text(isp.layers, prefix, suffix, eot), prefix)  # past the depth: unchanged
    # the cross module reads the host's learned vision prompts of that layer, not the image
    torch.testing.assert_close(isp.host_vision_prompts(0), model.host.image_prompts()[0].tokens[0])


def test_next_to_caspl_the_modules_rewrite_only_the_hosts_prompts(tiny_backbone, inputs):  # noqa: F811
    """Stacked with CasPL, the boosting slots hold exactly CasPL's frozen tokens after ISP's hook at
    every layer of both towers, while the host's prompts beside them are restructured."""
    images, labels = inputs
    options = {"caspl": {"boost_bundle": phase_one_bundle(tiny_backbone)}, "isp": {"text_structural": True}}
    model = build(tiny_backbone, "maple", ["caspl", "isp"], options)
    isp, caspl, learner = model.boosters["isp"], model.boosters["caspl"], model.host.prompt_learner
    optimizer = torch.optim.SGD([p for p in isp.parameters() if p.requires_grad], lr=1.0)
    model(batch_for(model, images, labels))["cls"].backward()
    optimizer.step()  # the modules now change what they read
    seen: dict[str, list] = {"vision": [], "text": []}

    def recording(tower, hook):
        def record(layer, x, *rest):
            out = hook(layer, x, *rest)
            seen[tower].append((layer, x, out))
            return out

        return lambda: record

    isp.image_hook, isp.text_hook = recording("vision", isp.restructure), recording("text", isp.restructure_text)
    model.eval()
    with torch.no_grad():
        model.logits(model.encode_image(images))
    length, n = caspl.get_buffer("boost_vision_0").shape[0], learner.n_ctx
    text_length = caspl.get_buffer("boost_text_0").shape[0]  # phase 1's text context: the template's words
    positions = tiny_backbone.model.positional_embedding
    for layer, before, after in seen["vision"]:
        torch.testing.assert_close(after[:, -length:], before[:, -length:], rtol=0, atol=0)
        if layer:  # (layer 0's tokens have been through ln_pre)
            boost = caspl.get_buffer(f"boost_vision_{layer}")
            torch.testing.assert_close(after[:, -length:], boost.expand_as(after[:, -length:]), rtol=0, atol=0)
        assert not torch.allclose(after[:, isp.frozen_tokens : -length], before[:, isp.frozen_tokens : -length])
    for layer, before, after in seen["text"]:
        boost = caspl.get_buffer(f"boost_text_{layer}")
        if layer == 0:  # in the sequence after the host's context (CasPL's released layout)
            boost = boost + positions[1 + n : 1 + n + text_length]
        torch.testing.assert_close(after[..., 1 + n :, :], boost.expand_as(after[..., 1 + n :, :]), rtol=0, atol=0)
        host_before = before[:, 1 : 1 + n] if after.dim() == 3 else before[:, None, 1 : 1 + n]  # per class at layer 0
        assert not torch.allclose(after[..., 1 : 1 + n, :], host_before.expand_as(after[..., 1 : 1 + n, :]))
    layers = set(range(isp.layers))
    assert {layer for layer, _, _ in seen["vision"]} == {layer for layer, _, _ in seen["text"]} == layers


def test_a_zero_output_projection_gives_the_inner_weights_no_first_step_gradient(tiny_backbone, inputs):  # noqa: F811
    """Why `initial-difference` is the default: with W_o = 0 only W_o learns at step 0."""
    images, labels = inputs
    for zero_start, inner_learns in (("output-projection", False), ("initial-difference", True)):
        model = build(tiny_backbone, "maple", ["isp"], {"isp": {"zero_start": zero_start}})
        model(batch_for(model, images, labels))["cls"].backward()
        attention = model.boosters["isp"].vision_self[0].module
        assert attention.output.weight.grad.abs().sum() > 0
        assert (attention.query.weight.grad.abs().sum() > 0) == inner_learns, zero_start


def test_probing_weights_match_a_hand_computation():
    # two classes; scale ln 3 makes a perfect match p0 = 3 / (3 + 1) = 0.75
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    image = torch.tensor([[2.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    logits = math.log(3) * F.normalize(image, dim=-1) @ text.t()
    # d = 1 - p0 = (0.25, 0.25, 0.5); 1 + d = (1.25, 1.25, 1.5), mean 4/3
    torch.testing.assert_close(probing_weights(logits, labels), torch.tensor([0.9375, 0.9375, 1.125]))
    # joint: the prompted model gives the true class 0.5 everywhere -> d = (0.625, 0.625, 0.75)
    prompted = torch.zeros(3, 2)
    joint = torch.tensor([1.625, 1.625, 1.75]) / 5.0 * 3
    torch.testing.assert_close(probing_weights(logits, labels, "joint", prompted_logits=prompted), joint)
    # focal, gamma 2: d^2 = (1/16, 1/16, 1/4), mean 1/8
    torch.testing.assert_close(probing_weights(logits, labels, weighting="focal"), torch.tensor([0.5, 0.5, 2.0]))
    # raw (spec §7's alternative): 1 + d itself, and the host loss is (1/B) sum w CE
    raw = probing_weights(logits, labels, normalise=False)
    torch.testing.assert_close(raw, torch.tensor([1.25, 1.25, 1.5]))
    ce = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0]])
    per_sample = F.cross_entropy(ce, labels, reduction="none")
    torch.testing.assert_close(weighted_cross_entropy(ce, labels, raw), (raw * per_sample).sum() / 3)


def test_the_booster_probes_with_frozen_zero_shot_clip(tiny_backbone):
    model = build(tiny_backbone, "mmrl", ["isp"], {"isp": {"probe_logit_scale": math.log(3)}})
    isp: ISP = model.boosters["isp"]
    dim = isp.probe_text.shape[1]
    # the frozen text g0 is the run's template through the frozen CLIP, unit norm
    template = torch.stack(
        [tiny_backbone.model.encode_text(tiny_backbone.tokenizer([f"a photo of a {c}."])).squeeze(0) for c in CLASSES]
    )
    torch.testing.assert_close(isp.probe_text, F.normalize(template.float(), dim=-1))
    isp.probe_text = torch.eye(len(CLASSES), dim)  # hand-chosen frozen text
    clip_image = torch.zeros(3, dim)
    clip_image[0, 0], clip_image[1, 1], clip_image[2, :2] = 2.0, 5.0, 1.0
    labels = torch.tensor([0, 1, 1])
    state = ForwardState(
        Batch(labels, frozen={CLIP_IMAGE: clip_image}), {}, None, None, torch.zeros(3, len(CLASSES)), 1.0
    )
    # four classes now: a perfect match gives 3 / (3 + 3) = 0.5, the (1, 1) image 3^.707 / (2 * 3^.707 + 2)
    p_mixed = 3**0.5**0.5 / (2 * 3**0.5**0.5 + 2)
    raw = torch.tensor([1.5, 1.5, 2 - p_mixed])
    torch.testing.assert_close(isp.sample_weights(state), raw / raw.mean())

    with pytest.raises(ValueError, match="ISP's sample probing needs the frozen input 'clip_image'"):
        isp.sample_weights(ForwardState(Batch(labels), {}, None, None, state.logits, 1.0))


def test_isp_reweights_the_host_loss_and_leaves_specpl_terms_alone(tiny_backbone, inputs):  # noqa: F811
    images, labels = inputs
    plain = build(tiny_backbone, "ivlp", ["specpl"])
    # without structural modules ISP builds nothing: the same SpecPL init
    stacked = build(tiny_backbone, "ivlp", ["isp", "specpl"], {"isp": {"structural": "off"}})
    batch = batch_for(stacked, images, labels)
    torch.manual_seed(3)
    expected = plain(batch)
    torch.manual_seed(3)
    got = stacked(batch)
    for term in ("sem", "granule", "counterfactual"):
        torch.testing.assert_close(got[term], expected[term], rtol=0, atol=0)
    isp = stacked.boosters["isp"]
    logits = stacked.logits(stacked.image_from_batch(batch))
    weights = probing_weights(isp.zero_shot_logits(batch.frozen[CLIP_IMAGE]), labels)
    by_hand = (F.cross_entropy(logits, labels, reduction="none") * weights).mean()
    torch.testing.assert_close(got["cls"], by_hand)
    assert not torch.allclose(got["cls"], expected["cls"])
    torch.testing.assert_close(got["cls"], weighted_cross_entropy(logits, labels, weights))


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("difficulty", "hard", r"isp.difficulty must be one of 'zero-shot', 'joint'; got 'hard'"),
        ("zero_start", "zero", r"isp.zero_start must be one of 'initial-difference', 'output-projection'"),
        (
            "probe_templates",
            "a photo",
            r"isp.probe_templates must be 'run', 'openai-imagenet' or a template with '\{\}'",
        ),
        ("heads", 3, r"isp.attn_dim \(64\) must be divisible by isp.heads \(3\)"),
    ],
)
def test_a_bad_option_says_what_is_allowed(tiny_backbone, option, value, message):
    with pytest.raises(ValueError, match=message):
        build(tiny_backbone, "maple", ["isp"], {"isp": {option: value}})


def test_options_round_trip_and_the_label(tiny_backbone):
    assert ISP.description.startswith("ISP (reconstructed from the abstract)")
    model = build(tiny_backbone, "maple", ["isp"], {"isp": {"weighting": "focal", "depth": 1}})
    assert model.resolved_options()["isp"] == {**ISPConfig().__dict__, "weighting": "focal", "depth": 1}
    assert model.boosters["isp"].layers == 1


@pytest.mark.parametrize("host", ["coop", "cocoop", "kgcoop"])
def test_a_host_with_nothing_to_learn_in_the_image_tower_is_refused_with_the_hosts_that_fit(tiny_backbone, host):
    """There ISP could only be its sample probing, which lost to the host alone wherever measured."""
    with pytest.raises(
        ValueError,
        match=(
            rf"booster 'isp' cannot run on host '{host}': it needs a host with image-tower prompts \(without them "
            r"no structural module fits.*\)\. Hosts it can boost: ivlp, maple, mmrl, promptsrc$"
        ),
    ):
        build(tiny_backbone, host, ["isp"])


@pytest.mark.parametrize("host", ["ivlp", "maple", "promptsrc"])
def test_the_default_preset_is_sample_probing_alone(tiny_backbone, host):
    """The default preset builds no structural module, even where the host fits them: ISP learns
    nothing of its own and reweights the host's loss; the paper preset builds them in both towers."""

    def built(preset: str):
        torch.manual_seed(0)
        config = MethodConfig(host=host, boosters=["isp"], preset=preset)
        return build_method(config, tiny_backbone, CLASSES, decomposer=DecomposerConfig(name="fft", image_size=32))

    isp = built("default").boosters["isp"]
    assert isp.config.structural == "off" and isp.config.sample_probing
    assert isp.layers == 0 and isp.image_hook() is None and isp.text_hook() is None
    assert not list(isp.parameters()) and not isp.trains_image_path
    paper = built("paper").boosters["isp"]
    assert paper.layers > 0 and len(paper.vision_self) == len(paper.text_self) == paper.layers


@pytest.mark.parametrize("method", [("mmrl", ("isp",)), ("maple", ("isp",))], ids=["mmrl+isp", "maple+isp"])
def test_every_method_property_holds_for_isp(method, tiny_backbone, inputs, tmp_path):  # noqa: F811
    check_every_method_properties(method, tiny_backbone, inputs, tmp_path)  # it copies the backbone itself


def test_class_states_are_the_frozen_text_towers_end_of_text_inputs(tiny_backbone):
    from specpl.methods.isp.structural import end_of_text_states

    model = tiny_backbone.model
    prompts = ["a photo of a cat.", "a photo of a big red ship."]
    captured = []
    handles = [
        b.register_forward_pre_hook(lambda m, args: captured.append(args[0].detach()))
        for b in model.transformer.resblocks
    ]
    try:
        tokens = tiny_backbone.tokenizer(prompts)
        with torch.no_grad():
            model.encode_text(tokens)  # the full 77-token pass
    finally:
        for handle in handles:
            handle.remove()
    eot = tokens.argmax(dim=-1)
    expected = torch.stack([x[torch.arange(2), eot] for x in captured])
    torch.testing.assert_close(end_of_text_states(tiny_backbone, prompts, len(captured)), expected)

    boosted = build(tiny_backbone, "maple", ["isp"])
    boosted.set_classnames(["car", "tree", "lake"], novel=True)
    isp = boosted.boosters["isp"]
    assert isp.class_states.shape == (isp.layers, 3, 64) and isp.probe_text.shape[0] == 3


def test_every_option_has_a_source_inside_the_repository():
    import dataclasses

    assert set(ISP.sources) == {f.name for f in dataclasses.fields(ISPConfig)}
    assert not any("train" in target for target in ISP.presets["paper"])  # no training values to source
    reconstructed = "ours: reconstructed from the ISP abstract (arXiv 2507.05677)"
    assert all(source.startswith(reconstructed) for source in ISP.sources.values())
    assert not any(".md" in source for source in ISP.sources.values())
