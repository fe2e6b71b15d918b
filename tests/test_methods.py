"""Every registered host, alone and with every booster, on the tiny backbone (in the style of timm's
test over all registered models): a method added later is covered by being registered."""

from __future__ import annotations

import atexit
import copy
import itertools
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from specpl.backbone import Backbone
from specpl.config import DecomposerConfig, MethodConfig
from specpl.factory import build_method, check_combination, load_bundle, resolve_method_options
from specpl.frozen import flatten
from specpl.inference import Predictor
from specpl.methods import BOOSTERS, HOSTS, Batch
from specpl.methods.base import FEATURES, PROMPTS_IMAGE_TOWER, cosine_logits
from specpl.methods.deep import DeepPromptHost
from specpl.methods.mmrl import REP
from specpl.model import PromptModel

CLASSES = ["cat", "dog", "ship", "frog"]
HOST_NAMES = [h for h in HOSTS.names() if h != "zeroshot"]  # the zero-shot baseline learns nothing


def _valid(host: str, stack: tuple[str, ...]) -> bool:
    try:
        check_combination(host, list(stack))
    except ValueError:
        return False
    return True


def _stacks(host: str) -> list[tuple[str, ...]]:
    """No booster, each booster alone, and every booster the host takes at once (in name order: the
    composition order is fixed by `PromptModel.forward`, not by the order boosters are listed in),
    so the matrix grows by one row a host for a new booster, not twice over; the stacks of two are
    covered on MaPLe, which takes every booster."""
    singles = [(name,) for name in BOOSTERS.names() if _valid(host, (name,))]
    together = tuple(name for (name,) in singles)
    pairs = list(itertools.combinations(together, 2)) if host == "maple" else []
    return [(), *singles, *pairs, *([together] if len(together) > 1 and _valid(host, together) else [])]


METHODS = [(host, stack) for host in HOST_NAMES for stack in _stacks(host)]
# the subset whose step is also traced by dynamo (`test_step_cost.py`), about 1-5 s a stack on the
# CPU: every host alone, and every booster on one host of each prompt layout it can meet. A learned
# text context (CoOp; KgCoOp's is the same) and coupled deep prompts (MaPLe) meet every booster at
# once, which traces each of them in the same graph; per-image text (CoCoOp), independent deep
# prompts with PromptSRC's anchors (IVLP's layout too) and MMRL's representation space meet each
# booster alone
TOGETHER = ("coop", "maple")
ALONE = ("cocoop", "promptsrc", "mmrl")
TRACED = [
    (h, s)
    for h, s in METHODS
    if not s or (len(s) == 1 and h in ALONE) or (h in TOGETHER and len(s) == len(_stacks(h)[-1]))
]
# A short context keeps the tiny runs fast. CasPL's phase 1 distils from a tiny random teacher,
# offline; it has the student's weights (random-init models are the same in every process), so it
# reads another template: with the run's, a student whose text starts at zero-shot (the default
# init) would start at the teacher's logits, with nothing to distil.
TINY_TEACHER = {"teacher": "specpl-tiny", "teacher_pretrained": "", "teacher_template": "itap of the {} I took."}
# ISP's structural modules, which the default preset leaves out, are built wherever the host fits,
# so every property below is checked on them too (without them ISP is its sample probing, as on MMRL).
TEST_OPTIONS = {"coop": {"n_ctx": 4}, "caspl-boost": TINY_TEACHER, "isp": {"structural": "auto"}}
_PHASE_ONE: dict[str, str] = {}


def phase_one_bundle(backbone: Backbone) -> str:
    """A CasPL phase-1 bundle on the tiny backbone, the input of the `caspl` booster (built once)."""
    if "path" not in _PHASE_ONE:
        folder = Path(tempfile.mkdtemp(prefix="specpl-caspl-phase1-"))
        atexit.register(shutil.rmtree, folder, True)
        torch.manual_seed(0)
        host = MethodConfig(host="caspl-boost", options={"caspl-boost": TEST_OPTIONS["caspl-boost"]})
        build_method(host, backbone, CLASSES).save_bundle(folder / "phase1")
        _PHASE_ONE["path"] = str(folder / "phase1")
    return _PHASE_ONE["path"]


def build(backbone: Backbone, host: str, boosters: tuple[str, ...], seed: int = 0) -> PromptModel:
    options = {k: v for k, v in TEST_OPTIONS.items() if k == host or k in boosters}
    if "caspl" in boosters:
        options["caspl"] = {"boost_bundle": phase_one_bundle(backbone)}
    torch.manual_seed(seed)
    config = MethodConfig(host=host, boosters=list(boosters), options=options)
    return build_method(config, backbone, CLASSES, decomposer=DecomposerConfig(name="fft", image_size=32))


def batch_for(model: PromptModel, images: torch.Tensor, labels: torch.Tensor) -> Batch:
    frozen: dict[str, torch.Tensor] = {}
    for frozen_input in model.frozen_inputs():
        frozen.update(flatten(frozen_input.name, frozen_input(images)))
    return Batch(labels, images if model.needs_image_grad else None, frozen)


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 32, 32, generator=generator), torch.tensor([0, 1, 2, 3])


def method_id(value) -> str:
    host, stack = value
    return "+".join([host, *stack])


def refiner_names(model) -> set[str]:
    """The parameters of SpecPL's text refiner behind its gate (the bank's MLP and LayerNorm)."""
    return {n for n, _ in model.named_parameters() if n.startswith("boosters.specpl.bank.") and not n.endswith(".gate")}


def _behind_a_shut_gate(model) -> set[str]:
    """SpecPL's refiner learns only while its gate, bounded to [0, 1], is open: steps that push the
    gate below 0 keep the host's text and pass the refiner no gradient (tests/test_step_zero.py)."""
    if "specpl" not in model.boosters or model.boosters["specpl"].bank.gate.item() > 0:
        return set()
    return refiner_names(model)


@pytest.mark.parametrize("method", METHODS, ids=method_id)
def test_every_method(method, tiny_backbone, inputs, tmp_path):
    host, boosters = method
    backbone = copy.deepcopy(tiny_backbone)  # a step must not touch the shared fixture
    clip_before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    model = build(backbone, host, boosters)
    images, labels = inputs

    # forward shapes
    model.eval()
    logits = model.logits(model.encode_image(images))
    assert logits.shape == (4, len(CLASSES)) and torch.isfinite(logits).all()

    # no CLIP tensor in the learned state, and none shares storage with the frozen model
    learned = model.learned_state_dict()
    clip_pointers = {t.data_ptr() for t in backbone.model.state_dict().values()}
    assert learned and not any(k.startswith("frozen_clip") for k in learned)
    assert not clip_pointers & {t.data_ptr() for t in learned.values()}

    # the image-gradient flag says whether any trainable tensor sits in the image path
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    image_out = model.encode_image(images)[FEATURES].sum()
    if image_out.requires_grad:
        image_out.backward()
    reached_from_image = any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    assert model.needs_image_grad == reached_from_image

    # what learns is what the bundle saves; every other parameter (frozen CLIP, SpecPL's band MLPs,
    # CasPL's phase-1 prompts, ISP's initial copies) must stay as built
    learned_names = set(learned)
    assert all(n in learned_names for n, p in model.named_parameters() if p.requires_grad)
    fixed_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}

    # gradients reach exactly the parameters meant to learn; a few steps lower the loss
    batch = batch_for(model, images, labels)
    model.prepare([batch])
    optimizer = torch.optim.Adam(trainable, lr=1e-2)
    totals = []
    reached: set[str] = set()
    for step in range(6):
        torch.manual_seed(step)  # the same counterfactual permutation draws in every run
        optimizer.zero_grad()
        total = sum(model(batch).values())
        total.backward()
        reached |= {
            n for n, p in model.named_parameters() if p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0
        }
        if step == 1:  # a zero-gated branch (SpecPL's refiner, CoCoOp's meta-net) learns from the second step
            shut = _behind_a_shut_gate(model)
            missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in reached | shut]
            assert not missing, f"no gradient reaches {missing} in two steps"
        if step == 0:
            assert all(p.grad is None for p in backbone.model.parameters())
            assert not [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
        optimizer.step()
        totals.append(total.item())
    assert totals[-1] < totals[0], f"loss did not fall: {totals}"
    model.on_epoch_end(1, 1)
    model.finalise()

    # the frozen CLIP and every other fixed parameter are bit-identical
    for key, value in backbone.model.state_dict().items():
        assert torch.equal(value, clip_before[key]), key
    for name, parameter in model.named_parameters():
        if name in fixed_before:
            assert torch.equal(parameter, fixed_before[name]), name

    # save -> load gives identical logits
    model.eval()
    expected = model.logits(model.encode_image(images))
    model.save_bundle(tmp_path / "model")
    reloaded = load_bundle(tmp_path / "model", backbone=backbone)[0].eval()
    torch.testing.assert_close(reloaded.logits(reloaded.encode_image(images)), expected, rtol=0, atol=0)


@pytest.mark.parametrize("host", HOST_NAMES)
def test_building_on_another_device_puts_every_tensor_there(tiny_backbone, host):
    backbone = copy.deepcopy(tiny_backbone)
    backbone.model.to("meta")
    model = build(backbone, host, ("specpl",) if HOSTS.get(host).accepts_boosters else ())
    misplaced = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type != "meta"]
    assert not misplaced, misplaced


def test_a_combination_that_cannot_work_lists_the_valid_ones(monkeypatch):
    booster = BOOSTERS.get("specpl")
    monkeypatch.setattr(booster, "requires", frozenset({PROMPTS_IMAGE_TOWER}))
    with pytest.raises(
        ValueError,
        match=(
            r"booster 'specpl' cannot run on host 'coop': it needs a host with image-tower prompts"
            r".*Hosts it can boost: .*ivlp.*maple"
        ),
    ):
        check_combination("coop", ["specpl"])


def test_isp_structural_modules_asked_for_on_mmrl_are_refused_with_the_hosts_that_fit():
    host = "mmrl"  # the one host that takes ISP without IVLP's prompt layout
    asked = MethodConfig(host=host, boosters=["isp"], options={"isp": {"structural": "on"}})
    with pytest.raises(
        ValueError,
        match=(
            rf"isp.structural cannot run on host '{host}': it needs a host with deep text prompts\. "
            r"Hosts it fits: ivlp, maple, promptsrc$"
        ),
    ):
        resolve_method_options(asked)
    # the default preset builds none (sample probing alone), the paper preset builds them where they fit;
    # "on" fits maple
    assert resolve_method_options(MethodConfig(host=host, boosters=["isp"]))["isp"]["structural"] == "off"
    paper = MethodConfig(host=host, boosters=["isp"], preset="paper")
    assert resolve_method_options(paper)["isp"]["structural"] == "auto"
    assert (
        resolve_method_options(MethodConfig(host="maple", boosters=["isp"], options={"isp": {"structural": "on"}}))[
            "isp"
        ]["structural"]
        == "on"
    )
    # a config written before the three-way option reads True as "auto" and False as "off"
    assert [
        resolve_method_options(MethodConfig(host=host, boosters=["isp"], options={"isp": {"structural": v}}))["isp"][
            "structural"
        ]
        for v in (True, False)
    ] == ["auto", "off"]


def test_an_unknown_option_names_the_component_and_its_keys(tiny_backbone):
    with pytest.raises(
        ValueError,
        match=(
            r"unknown option\(s\) for maple: n_ctxx; "
            r"maple's options are: coupling_init, ctx_from_template, ctx_init, deep_text_init, depth"
        ),
    ):
        build_method(MethodConfig(host="maple", options={"maple": {"n_ctxx": 3}}), tiny_backbone, CLASSES)


def test_an_unknown_preset_lists_the_presets():
    with pytest.raises(
        ValueError,
        match=r"unknown preset 'ours'; the presets are: default, paper, and paper-<source> variants "
        r"where a method defines one \('reference' reads as 'paper'\)",
    ):
        MethodConfig(host="maple", preset="ours")
    assert MethodConfig(host="maple", preset="reference").preset == "paper"  # configs written before the rename
    with pytest.raises(
        ValueError, match=r"preset 'paper-specpl' is not defined by maple; the paper variants are: paper-specpl"
    ):
        resolve_method_options(MethodConfig(host="maple", preset="paper-specpl"))


def test_paper_and_default_presets_differ_only_where_documented():
    for host, paper_bank in (("coop", 0), ("maple", 0), ("mmrl", 10)):
        options = {
            p: resolve_method_options(MethodConfig(host=host, boosters=["specpl"], preset=p))
            for p in ("default", "paper")
        }
        assert (
            options["paper"]["specpl"]["bank_init_batches"] == paper_bank
        )  # SpecPL's per-host rule: its own, not the host's
        assert options["default"]["specpl"]["bank_init_batches"] == 10
        assert (options["default"]["specpl"]["refiner"], options["paper"]["specpl"]["refiner"]) == (
            "interpolate",
            "layernorm",
        )
        changed = {k for k in options["default"][host] if options["default"][host][k] != options["paper"][host][k]}
        expected = {
            "coop": {"ctx_from_template", "linear_adapter"},
            "maple": {"ctx_from_template", "tail", "deep_text_init", "coupling_init"},
            "mmrl": {"reg_weight_fallback", "init_std", "aligner_bias_init", "rep_branch", "proj_rep_init"},
        }[host]
        assert changed == expected, (host, changed)


TEXT_ONLY_HOSTS = [
    h for h in HOST_NAMES if HOSTS.get(h).accepts_boosters and PROMPTS_IMAGE_TOWER not in HOSTS.get(h).capabilities
]


@pytest.mark.parametrize("template", ["a photo of a {}.", "a photo of a {}, a type of pet.", "itap of the {} I took."])
@pytest.mark.parametrize("host", TEXT_ONLY_HOSTS)
def test_a_text_only_host_starts_as_zero_shot_with_the_run_template(tiny_backbone, inputs, host, template):
    from specpl.inference import Predictor

    model = build_method(MethodConfig(host=host), tiny_backbone, CLASSES, template).eval()
    images, _ = inputs
    zero_shot = Predictor.zero_shot(tiny_backbone, CLASSES, template).model
    torch.testing.assert_close(
        model.logits(model.encode_image(images)), zero_shot.logits(zero_shot.encode_image(images)), rtol=0, atol=1e-5
    )
    # the template's words before the class are what learns; the rest stays frozen text
    assert model.resolved_options()[host]["ctx_init"] == template.split("{}")[0].strip()
    assert model.resolved_options()[host]["tail"] == "{}" + template.split("{}")[1]


DEEP_HOSTS = [h for h in HOST_NAMES if issubclass(HOSTS.get(h), DeepPromptHost)]  # CasPL phase 1 too


@pytest.mark.parametrize("host", DEEP_HOSTS)
def test_a_deep_host_starts_with_zero_shot_text_and_the_paper_preset_with_random_deep_prompts(tiny_backbone, host):
    """Deep text prompts start as the frozen tower's own states at the context positions, so every
    class text feature is zero-shot's at step 0 (only the image-tower prompts move the logits)."""
    template = "a photo of a {}, a type of pet."
    zero_shot, _ = Predictor.zero_shot(tiny_backbone, CLASSES, template).model.text_features(None)
    model = build_method(MethodConfig(host=host), tiny_backbone, CLASSES, template).eval()
    torch.testing.assert_close(model.text_features(None)[0], zero_shot, rtol=0, atol=1e-5)
    paper = build_method(MethodConfig(host=host, preset="paper"), tiny_backbone, CLASSES, template).eval()
    assert (paper.text_features(None)[0] - zero_shot).abs().max() > 1e-3


def test_mmrl_starts_with_near_zero_tokens_and_its_class_branch_and_the_paper_preset_as_released(tiny_backbone):
    """Default: R at std 1e-4 and zero aligner biases put nearly-zero tokens into the towers (each
    block's LayerNorm maps them to one fixed token, whatever the draw), and the representation
    branch is a residual on the class branch whose projection starts at zero, so at step 0 the
    fused logits are the class branch's exactly. Paper: R ~ N(0, 0.02), nn.Linear's biases, a
    separate branch with a random projection."""
    torch.manual_seed(0)
    model = build_method(MethodConfig(host="mmrl"), tiny_backbone, CLASSES).eval()
    host = model.host
    with torch.no_grad():
        tokens = torch.stack([aligner(host.representation) for aligner in host.vision_aligners])
        image = model.encode_image(torch.randn(3, 3, 32, 32))
        text = model.text_features(None)[0]
    assert tokens.abs().max() < 1e-3
    assert not any(aligner.bias.any() for aligner in [*host.vision_aligners, *host.text_aligners])
    assert not host.proj_rep.any() and host.proj_rep.requires_grad
    torch.testing.assert_close(image[REP], image[FEATURES], rtol=0, atol=0)
    torch.testing.assert_close(model.logits(image), cosine_logits(image[FEATURES], text, 100.0), rtol=0, atol=1e-4)
    torch.manual_seed(0)
    paper = build_method(MethodConfig(host="mmrl", preset="paper"), tiny_backbone, CLASSES).eval()
    assert float(paper.host.representation.detach().std()) == pytest.approx(0.02, rel=0.1)
    assert all(aligner.bias.abs().sum() > 0 for aligner in paper.host.vision_aligners)
    with torch.no_grad():
        paper_image = paper.encode_image(torch.randn(3, 3, 32, 32))
    assert (paper_image[REP] - paper_image[FEATURES]).abs().max() > 1e-2


def test_mmrl_copies_clips_projection_into_a_trained_branch_when_asked(tiny_backbone):
    options = {"mmrl": {"rep_branch": "separate", "proj_rep_init": "clip"}}
    host = build_method(MethodConfig(host="mmrl", options=options), tiny_backbone, CLASSES).host
    visual_proj = tiny_backbone.model.visual.proj
    torch.testing.assert_close(host.proj_rep.detach(), visual_proj, rtol=0, atol=0)
    assert host.proj_rep.data_ptr() != visual_proj.data_ptr()  # a trained copy, CLIP's own stays frozen


def test_an_unknown_mmrl_init_names_the_option_and_the_allowed_values(tiny_backbone):
    with pytest.raises(ValueError, match=r"mmrl\.proj_rep_init must be one of 'zero', 'clip', 'normal'; got 'eye'"):
        build_method(MethodConfig(host="mmrl", options={"mmrl": {"proj_rep_init": "eye"}}), tiny_backbone, CLASSES)
    with pytest.raises(ValueError, match=r"mmrl\.rep_branch must be one of 'residual', 'separate'; got 'both'"):
        build_method(MethodConfig(host="mmrl", options={"mmrl": {"rep_branch": "both"}}), tiny_backbone, CLASSES)
    with pytest.raises(ValueError, match=r"mmrl\.proj_rep_init 'zero' needs mmrl\.rep_branch 'residual'"):
        build_method(MethodConfig(host="mmrl", options={"mmrl": {"rep_branch": "separate"}}), tiny_backbone, CLASSES)


def test_an_unknown_deep_text_init_names_the_host_and_the_allowed_values(tiny_backbone):
    with pytest.raises(ValueError, match=r"ivlp\.deep_text_init must be one of 'template', 'normal'; got 'zeros'"):
        build_method(MethodConfig(host="ivlp", options={"ivlp": {"deep_text_init": "zeros"}}), tiny_backbone, CLASSES)


def test_a_template_with_no_words_before_the_class_learns_a_photo_of_a_before_it(tiny_backbone):
    model = build_method(MethodConfig(host="coop"), tiny_backbone, CLASSES, "{} texture.")
    assert (model.resolved_options()["coop"]["ctx_init"], model.resolved_options()["coop"]["tail"]) == (
        "a photo of a",
        "{} texture.",
    )


def test_a_template_derived_context_rebuilds_from_its_bundle_under_another_template(tiny_backbone, inputs, tmp_path):
    model = build_method(MethodConfig(host="coop"), tiny_backbone, CLASSES, "a photo of a {}, a type of pet.").eval()
    images, _ = inputs
    expected = model.logits(model.encode_image(images))
    model.save_bundle(tmp_path / "model")

    reloaded, _ = load_bundle(tmp_path / "model", backbone=tiny_backbone, template="a centered satellite photo of {}.")
    torch.testing.assert_close(reloaded.eval().logits(reloaded.encode_image(images)), expected, rtol=0, atol=0)


def test_paper_maple_learns_a_photo_and_keeps_of_a_as_frozen_words(tiny_backbone):
    model = build_method(MethodConfig(host="maple", preset="paper"), tiny_backbone, CLASSES)
    learner = model.host.prompt_learner
    assert learner.n_ctx == 2 and learner.tail == "of a {}."
    tokens = tiny_backbone.tokenizer(["a photo of a cat."])[0]
    expected = model.host.text_encoder.embed_tokens(tokens[3 : 3 + learner.suffix_embedding.shape[1]]).float()
    torch.testing.assert_close(learner.suffix_embedding[0], expected)  # "of a cat." then the end token, frozen


def test_a_context_the_user_sets_is_the_one_trained():
    assert resolve_method_options(MethodConfig(host="coop"))["coop"]["ctx_from_template"] is True
    assert (
        resolve_method_options(MethodConfig(host="coop", options={"coop": {"n_ctx": 4}}))["coop"]["ctx_from_template"]
        is False
    )
    assert (
        resolve_method_options(MethodConfig(host="maple", options={"maple": {"ctx_init": "a photo"}}))["maple"][
            "ctx_from_template"
        ]
        is False
    )
    both = MethodConfig(host="ivlp", options={"ivlp": {"n_ctx": 4, "ctx_from_template": True}})
    assert resolve_method_options(both)["ivlp"]["ctx_from_template"] is True  # said both: as said


def test_paper_maple_starts_its_deeper_couplings_equal_as_the_released_code():
    from specpl.backbone import load_backbone
    from specpl.config import BackboneConfig

    four_layers = load_backbone(
        BackboneConfig(name="world-clip", pretrained=None)
    )  # random weights: the tiny model has 2 layers
    couplings = build_method(MethodConfig(host="maple", preset="paper"), four_layers, CLASSES).host.couplings
    assert len(couplings) == 4
    for later in couplings[2:]:  # layers 1..J-1 are copies of one Linear; layer 0 has its own
        assert torch.equal(later.weight, couplings[1].weight) and later.weight is not couplings[1].weight
    assert not torch.equal(couplings[0].weight, couplings[1].weight)
    default = build_method(MethodConfig(host="maple"), four_layers, CLASSES).host.couplings
    assert not torch.equal(default[1].weight, default[2].weight)


def test_paper_promptsrc_averages_the_raw_template_features_then_normalises_once(tiny_backbone):
    import torch.nn.functional as F

    model = tiny_backbone.model
    templates = ["a photo of a {}.", "a sketch of the {}."]
    options = {"promptsrc": {"frozen_templates": "run"}}
    host = build_method(MethodConfig(host="promptsrc", preset="paper", options=options), tiny_backbone, CLASSES).host
    host.templates = [t.format for t in templates]
    host.set_classnames(CLASSES)
    with torch.no_grad():
        raw = torch.stack(
            [model.encode_text(tiny_backbone.tokenizer([t.format(c) for c in CLASSES])).float() for t in templates]
        )
    torch.testing.assert_close(host.frozen_text, F.normalize(raw.mean(0), dim=-1))
    host.config.frozen_text_average = "normalised"
    host.set_classnames(CLASSES)
    torch.testing.assert_close(host.frozen_text, F.normalize(F.normalize(raw, dim=-1).mean(0), dim=-1))


def test_mmrl_takes_lambda_from_the_dataset_table_and_the_paper_preset_falls_back_to_the_released_1(tiny_backbone):
    from specpl.methods.mmrl import REG_WEIGHTS

    def reg_weight(preset: str, dataset: str | None) -> float:
        return build_method(
            MethodConfig(host="mmrl", preset=preset), tiny_backbone, CLASSES, dataset=dataset
        ).host.config.reg_weight

    assert reg_weight("paper", "dtd") == reg_weight("default", "dtd") == REG_WEIGHTS["dtd"]
    assert (reg_weight("paper", None), reg_weight("default", None)) == (1.0, 0.5)


def test_paper_kgcoop_guides_dtd_with_the_released_codes_template(tiny_backbone):
    def guidance(preset: str, dataset: str) -> str:
        return build_method(
            MethodConfig(host="kgcoop", preset=preset), tiny_backbone, CLASSES, "{} texture.", dataset=dataset
        ).host.template

    assert guidance("paper", "dtd") == "a photo of a {}, a type of texture."
    assert guidance("default", "dtd") == guidance("paper", "eurosat") == "{} texture."
