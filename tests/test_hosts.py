"""Each host's own terms against hand computations, MMRL's branch routing, the empty prompt slots
against the stock towers, and bundles written before the method seams."""

from __future__ import annotations

import json
import math

import pytest
import torch

from specpl.config import DecomposerConfig, MethodConfig
from specpl.factory import build_method, load_bundle
from specpl.methods.base import FEATURES
from specpl.methods.deep import gpa_weights, self_regulating_losses
from specpl.methods.kgcoop import knowledge_guidance_loss
from specpl.methods.mmrl import REP, mmrl_logits, mmrl_regulariser
from specpl.model import PromptModel
from specpl.slots import END, PromptGroup, SlotState
from specpl.text import PromptTextEncoder
from specpl.vision import PromptImageEncoder

CLASSES = ["cat", "dog", "ship", "frog"]


def test_empty_slots_reproduce_the_stock_towers(tiny_backbone):
    model = tiny_backbone.model
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(PromptImageEncoder(model)(images).pooled, model.encode_image(images), rtol=0, atol=0)
    tokens = tiny_backbone.tokenizer([f"a photo of a {c}." for c in CLASSES])
    torch.testing.assert_close(
        PromptTextEncoder(model).encode_tokens(tokens), model.encode_text(tokens), rtol=0, atol=1e-5
    )


def test_slots_insert_then_overwrite_and_shift_later_groups():
    x = torch.zeros(1, 4, 1)  # [CLS] + 3 tokens
    end = PromptGroup([torch.full((2, 1), 1.0), torch.full((2, 1), 2.0)], first_layer=0, at=END, name="end")
    start = PromptGroup([torch.full((1, 1), 7.0), torch.full((1, 1), 8.0)], first_layer=1, name="start")
    slots = SlotState([end, start], depth=3)
    x = slots.apply(x, 0)
    assert x.flatten().tolist() == [0, 0, 0, 0, 1, 1]
    x = slots.apply(x, 1)  # end overwritten with its layer-1 tokens; start inserted after [CLS]
    assert x.flatten().tolist() == [0, 7, 0, 0, 0, 2, 2]
    x = slots.apply(x, 2)  # start overwritten; end is past its last layer and propagates
    assert x.flatten().tolist() == [0, 8, 0, 0, 0, 2, 2]
    assert slots.position("end") == slice(5, 7) and slots.position("start") == slice(1, 2)


def test_knowledge_guidance_term_by_hand():
    text = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    frozen = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # cos 1 and 1/sqrt2
    expected = 1 - (1 + 1 / math.sqrt(2)) / 2
    assert float(knowledge_guidance_loss(text, frozen)) == pytest.approx(expected, abs=1e-6)


def test_promptsrc_terms_by_hand():
    text = torch.tensor([[3.0, 4.0], [1.0, 0.0]])  # normalised (0.6, 0.8), (1, 0)
    frozen_text = torch.eye(2)
    image, frozen_image = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 5.0]])
    logits = torch.zeros(1, 2)  # prompted p = (1/2, 1/2); zero-shot q = softmax(ln3 * (0, 1)) = (1/4, 3/4)
    terms = self_regulating_losses(text, frozen_text, image, frozen_image, logits, scale=math.log(3))
    assert float(terms["text_l1"]) == pytest.approx((0.4 + 0.8 + 1 + 1) / 4, abs=1e-6)
    assert float(terms["image_l1"]) == pytest.approx(0.0, abs=1e-7)
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)  # KL(q || p), summed, / 2 logits
    assert float(terms["kl"]) == pytest.approx(kl / 2, abs=1e-6)


def test_promptsrc_frozen_text_averages_the_released_60_templates(tiny_backbone):
    import torch.nn.functional as F

    model = build_method(MethodConfig(host="promptsrc"), tiny_backbone, CLASSES)
    templates = [t("{}") for t in model.host.templates]
    assert (
        len(templates) == len(set(templates)) == 60
        and "a photo of a {}." in templates
        and "itap of a {}." not in templates
    )
    encoder = tiny_backbone.model
    per_template = [
        F.normalize(encoder.encode_text(tiny_backbone.tokenizer([t.format(c) for c in CLASSES])).float(), dim=-1)
        for t in templates
    ]
    torch.testing.assert_close(model.host.frozen_text, F.normalize(torch.stack(per_template).mean(0), dim=-1))
    one = build_method(
        MethodConfig(host="promptsrc", options={"promptsrc": {"frozen_templates": "run"}}), tiny_backbone, CLASSES
    )
    assert len(one.host.templates) == 1
    with pytest.raises(
        ValueError, match="promptsrc.frozen_templates must be one of 'promptsrc-60', 'openai-imagenet', 'run'"
    ):
        build_method(
            MethodConfig(host="promptsrc", options={"promptsrc": {"frozen_templates": "all"}}), tiny_backbone, CLASSES
        )


def test_ivlp_learns_with_promptsrcs_two_l1_terms_by_default_and_plain_under_paper(tiny_backbone):
    """Default IVLP adds 25 L1(prompted text, g0) + 10 L1(prompted image, frozen image) to its
    cross-entropy, and no KL; ``paper`` IVLP has the cross-entropy alone and reads no frozen feature."""
    import torch.nn.functional as F
    from test_methods import batch_for

    from specpl.frozen import CLIP_IMAGE

    images, labels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 1, 2, 3])
    model = build_method(MethodConfig(host="ivlp"), tiny_backbone, CLASSES)
    batch = batch_for(model, images, labels)
    model.train()
    losses = model(batch)
    assert set(losses) == {"cls", "text_l1", "image_l1"}
    with torch.no_grad():
        raw_text = model.text_features(None)[0]
        image = model.image_from_batch(batch)[FEATURES]
    text_l1 = F.l1_loss(F.normalize(raw_text, dim=-1), model.host.frozen_text)
    image_l1 = F.l1_loss(F.normalize(image, dim=-1), F.normalize(batch.frozen[CLIP_IMAGE], dim=-1))
    torch.testing.assert_close(losses["text_l1"].detach(), 25 * text_l1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["image_l1"].detach(), 10 * image_l1, rtol=1e-5, atol=1e-6)
    assert float(losses["image_l1"].detach()) > 0  # the vision prompts move the image feature off the frozen one

    paper = build_method(MethodConfig(host="ivlp", preset="paper"), tiny_backbone, CLASSES)
    assert paper.frozen_inputs() == [] and not hasattr(paper.host, "frozen_text")
    paper.train()
    assert set(paper(batch_for(paper, images, labels))) == {"cls"}


def test_gpa_weights_and_aggregate(tiny_backbone):
    weights = gpa_weights(20, mean=15, std=1)
    assert sum(weights) == pytest.approx(1.0) and max(range(20), key=weights.__getitem__) == 14
    assert weights[13] / weights[14] == pytest.approx(math.exp(-0.5)) and weights[13] == pytest.approx(weights[15])
    model = build_method(
        MethodConfig(host="promptsrc", options={"promptsrc": {"gpa_mean": 2.0}}), tiny_backbone, CLASSES
    )
    host = model.host
    ctx = host.prompt_learner.ctx
    for epoch, value in enumerate((1.0, 2.0, 4.0), start=1):
        with torch.no_grad():
            ctx.fill_(value)
        model.on_epoch_end(epoch, 3)
    model.finalise()
    w = gpa_weights(3, mean=2.0, std=1.0)
    torch.testing.assert_close(ctx.detach(), torch.full_like(ctx, w[0] * 1 + w[1] * 2 + w[2] * 4))


def test_mmrl_fusion_and_regulariser_by_hand():
    f_c, f_r = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    refined = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    # class branch: 100 * (1, 0); representation branch on the refined text: 100 * (1, 0)
    torch.testing.assert_close(mmrl_logits(f_c, f_r, text, refined, alpha=0.7), torch.tensor([[100.0, 0.0]]))
    torch.testing.assert_close(mmrl_logits(f_c, f_r, text, text, alpha=0.7), torch.tensor([[70.0, 30.0]]))
    frozen_image = torch.tensor([[1.0, 1.0]])  # cos 1/sqrt2
    frozen_text = torch.tensor([[1.0, 0.0], [0.0, -1.0]])  # cos 1 and -1
    expected = (1 - 1 / math.sqrt(2)) + (1 - 0.0)
    assert float(mmrl_regulariser(f_c, frozen_image, text, frozen_text)) == pytest.approx(expected, abs=1e-6)


def test_mmrl_routes_base_and_novel_classes(tiny_backbone):
    torch.manual_seed(0)
    model = build_method(
        MethodConfig(host="mmrl", boosters=["specpl"]),
        tiny_backbone,
        CLASSES,
        decomposer=DecomposerConfig(name="fft", image_size=32),
    ).eval()
    images = torch.randn(2, 3, 32, 32)
    image = model.encode_image(images)
    assert set(image) == {FEATURES, REP}
    raw, refined = model.text_features()
    assert not torch.allclose(raw, refined)  # SpecPL refines the text of the representation branch
    alpha = model.host.config.alpha
    expected_base = alpha * 100 * _cos(image[FEATURES], raw) + (1 - alpha) * 100 * _cos(image[REP], refined)
    torch.testing.assert_close(model.logits(image), expected_base)
    model.set_classnames(CLASSES, novel=True)  # new classes: the class branch alone, raw text, no bank
    image = model.encode_image(images)
    torch.testing.assert_close(model.logits(image), 100 * _cos(image[FEATURES], model.text_features()[0]))


def test_mmrl_specpl_modulates_the_class_token_feature(tiny_backbone):
    """The released MMRL + SpecPL code: SpecPL's FiLM acts on MMRL's class-token feature f_c, not the representation
    feature, with the refined text of the representation branch: the granule term by hand."""
    import torch.nn.functional as F

    from specpl.frozen import flatten
    from specpl.methods import Batch

    torch.manual_seed(0)
    model = build_method(
        MethodConfig(host="mmrl", boosters=["specpl"]),
        tiny_backbone,
        CLASSES,
        decomposer=DecomposerConfig(name="fft", image_size=32),
    ).train()
    with torch.no_grad():  # as after some training: the residual representation branch starts equal to f_c
        model.host.proj_rep.normal_(0, 0.1)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    frozen = {}
    for frozen_input in model.frozen_inputs():
        frozen.update(flatten(frozen_input.name, frozen_input(images)))
    batch = Batch(labels, images, frozen)
    specpl = model.boosters["specpl"]
    with torch.no_grad():
        granule = model(batch)["granule"]
        image = model.encode_image(images)
        raw, refined = model.text_features()
        _, high = specpl.band_embeddings(batch.require("bands", "test"))

        def term(feature: torch.Tensor) -> torch.Tensor:
            logits = specpl.modulated_logits(feature, raw[labels], high, refined, model.logit_scale)
            return specpl.config.lambda_gf * F.cross_entropy(logits, labels)

        torch.testing.assert_close(granule, term(image[FEATURES]))
        assert not torch.allclose(granule, term(image[REP]))


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(b, dim=-1).t()


def _saved(tiny_backbone, tmp_path):
    torch.manual_seed(0)
    options = {"coop": {"n_ctx": 4}}
    model = build_method(
        MethodConfig(host="coop", boosters=["specpl"], options=options),
        tiny_backbone,
        CLASSES,
        decomposer=DecomposerConfig(name="fft", image_size=32),
    ).eval()
    model.save_bundle(tmp_path / "model")
    return model, tmp_path / "model" / "config.json"


def test_a_bundle_of_format_1_still_loads_with_identical_logits(tiny_backbone, tmp_path):
    """Format 1 (before the seams) kept SpecPL's statistic size at the top level and had no preset
    or the options added since; the upgrade step moves and fills them."""
    model, config_path = _saved(tiny_backbone, tmp_path)
    config = json.loads(config_path.read_text())
    specpl = config["method"]["options"]["specpl"]
    config["band_stat_dim"] = specpl.pop("band_stat_dim")
    specpl.pop("test_blend")
    config["method"].pop("preset")
    config["format"] = "specpl-bundle/1"
    config_path.write_text(json.dumps(config))
    reloaded = load_bundle(tmp_path / "model", backbone=tiny_backbone)[0].eval()
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(
        reloaded.logits(reloaded.encode_image(images)), model.logits(model.encode_image(images)), rtol=0, atol=0
    )


def test_a_bundle_from_a_newer_version_says_what_to_do(tiny_backbone, tmp_path):
    _, config_path = _saved(tiny_backbone, tmp_path)
    config = json.loads(config_path.read_text())
    config["format"] = "specpl-bundle/9"
    config_path.write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"format 'specpl-bundle/9'.*written by a newer SpecPL: upgrade with `pip install -U specpl`"
    ):
        load_bundle(tmp_path / "model", backbone=tiny_backbone)


def test_cocoop_chunked_evaluation_matches_one_pass(tiny_backbone):
    torch.manual_seed(0)
    classes = [f"class {i}" for i in range(7)]
    model = build_method(
        MethodConfig(host="cocoop", options={"cocoop": {"eval_pairs_per_chunk": 3}}), tiny_backbone, classes
    )
    features = torch.randn(5, tiny_backbone.embed_dim)
    model.train()
    whole = model.host.encode_text(features)
    model.eval()
    chunked = model.host.encode_text(features)  # blocks of 3 classes x 1 image
    assert chunked.shape == (5, 7, tiny_backbone.embed_dim)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)


def test_cocoop_evaluates_1000_classes_in_blocks_of_bounded_size(tiny_backbone):
    """Evaluation never encodes more than `eval_pairs_per_chunk` (image, class) prompts at once,
    so the text activations of a 1,000-class list stay bounded whatever the batch."""
    classes = [f"class {i}" for i in range(1000)]
    model = build_method(MethodConfig(host="cocoop"), tiny_backbone, classes).eval()
    learner, pairs = model.host.prompt_learner, []
    encode = learner.forward

    def counting(shift, *args, **kwargs):
        out = encode(shift, *args, **kwargs)
        pairs.append(out.shape[0] * out.shape[1])
        return out

    learner.forward = counting
    with torch.no_grad():
        text = model.host.encode_text(torch.randn(10, tiny_backbone.embed_dim))
    assert text.shape == (10, 1000, tiny_backbone.embed_dim) and torch.isfinite(text).all()
    assert sum(pairs) == 10_000 and max(pairs) <= model.host.config.eval_pairs_per_chunk == 4096


def _reloaded_as_written_by(fmt: str, model: PromptModel, removed: dict[str, tuple[str, ...]], tmp_path) -> PromptModel:
    """`model` saved, then read back as bundle format `fmt` wrote it: without the `removed`
    options (component -> names), which that format did not have."""
    model.save_bundle(tmp_path / "model")
    config_path = tmp_path / "model" / "config.json"
    config = json.loads(config_path.read_text())
    for component, names in removed.items():
        for name in names:
            del config["method"]["options"][component][name]
    config["format"] = fmt
    config_path.write_text(json.dumps(config))
    return load_bundle(tmp_path / "model", backbone=model.backbone)[0].eval()


def _logits(model: PromptModel, images: torch.Tensor) -> torch.Tensor:
    return model.logits(model.encode_image(images))


def test_a_format_3_coop_bundle_loads_without_the_linear_adapter_it_predates(tiny_backbone, tmp_path):
    """Format 3 had no `linear_adapter` option and no adapter tensor: the upgrade builds CoOp
    without it, with identical logits (the default since format 4 would build one and refuse the
    bundle for the missing tensor)."""
    torch.manual_seed(0)
    model = build_method(
        MethodConfig(host="coop", options={"coop": {"linear_adapter": False}}), tiny_backbone, CLASSES
    ).eval()
    reloaded = _reloaded_as_written_by("specpl-bundle/3", model, {"coop": ("linear_adapter",)}, tmp_path)
    assert reloaded.host.adapter is None and reloaded.resolved_options()["coop"]["linear_adapter"] is False
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_logits(reloaded, images), _logits(model, images), rtol=0, atol=0)


def test_a_format_5_mmrl_bundle_keeps_its_separate_representation_branch(tiny_backbone, tmp_path):
    """Format 5 built MMRL's representation branch apart from its class branch and recorded no
    `rep_branch`: the upgrade reads it as "separate" (the default since format 6 would add the
    class feature to it), with identical logits."""
    torch.manual_seed(0)
    options = {"mmrl": {"rep_branch": "separate", "proj_rep_init": "clip"}}
    model = build_method(MethodConfig(host="mmrl", options=options), tiny_backbone, CLASSES).eval()
    reloaded = _reloaded_as_written_by("specpl-bundle/5", model, {"mmrl": ("rep_branch",)}, tmp_path)
    assert reloaded.resolved_options()["mmrl"]["rep_branch"] == "separate"
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_logits(reloaded, images), _logits(model, images), rtol=0, atol=0)
    residual = build_method(
        MethodConfig(host="mmrl", options={"mmrl": {"proj_rep_init": "clip"}}), tiny_backbone, CLASSES
    ).eval()
    residual.load_learned_state_dict(model.learned_state_dict())
    assert (_logits(residual, images) - _logits(model, images)).abs().max() > 1e-3


def test_a_format_4_ivlp_bundle_records_that_it_trained_without_the_l1_terms(tiny_backbone, tmp_path):
    """Format 4 trained IVLP without PromptSRC's terms and wrote no weights for them: the upgrade
    records them as 0 (the default since format 5 would claim 25 and 10), with identical logits."""
    torch.manual_seed(0)
    model = build_method(MethodConfig(host="ivlp"), tiny_backbone, CLASSES).eval()
    added = ("text_l1_weight", "image_l1_weight", "kl_weight", "frozen_templates", "frozen_text_average")
    reloaded = _reloaded_as_written_by("specpl-bundle/4", model, {"ivlp": added}, tmp_path)
    options = reloaded.resolved_options()["ivlp"]
    assert (options["text_l1_weight"], options["image_l1_weight"], options["kl_weight"]) == (0.0, 0.0, 0.0)
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_logits(reloaded, images), _logits(model, images), rtol=0, atol=0)
