"""The text-only hosts' linear adapter (specpl.methods.adapter): on by default for exactly the hosts
whose options offer it, off in ``paper``, the identity at step 0 (tests/test_methods.py checks
zero-shot logits at step 0), class-agnostic, and after the image-feature cache."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from test_methods import CLASSES, HOST_NAMES, batch_for

from specpl.config import DEFAULT_TEMPLATE, MethodConfig
from specpl.factory import build_method
from specpl.inference import Predictor
from specpl.methods import HOSTS
from specpl.methods.adapter import AdapterOptions, LinearAdapter
from specpl.methods.base import FEATURES, IMAGE_FEATURES, PROMPTS_IMAGE_TOWER

ADAPTER_HOSTS = [h for h in HOST_NAMES if issubclass(HOSTS.get(h).config_class, AdapterOptions)]
NEW_CLASSES = ["horse", "truck", "bird"]


def test_the_text_only_hosts_are_the_ones_with_the_adapter():
    text_only = {
        h for h in HOST_NAMES if HOSTS.get(h).accepts_boosters and PROMPTS_IMAGE_TOWER not in HOSTS.get(h).capabilities
    }
    assert set(ADAPTER_HOSTS) == text_only == {"coop", "cocoop", "kgcoop"}


@pytest.mark.parametrize("host", HOST_NAMES)
@pytest.mark.parametrize("preset", ["default", "paper"])
def test_the_adapter_is_built_by_default_on_its_hosts_and_never_under_paper(tiny_backbone, host, preset):
    model = build_method(MethodConfig(host=host, preset=preset), tiny_backbone, CLASSES)
    has_adapter = any(name.startswith("host.adapter.") for name in model.learned_state_dict())
    assert has_adapter == (preset == "default" and host in ADAPTER_HOSTS)
    if has_adapter:
        assert not model.host.adapter.weight.any()  # zero: the host without it at step 0


@pytest.mark.parametrize("host", ADAPTER_HOSTS)
def test_adapted_logits_match_the_formula_on_classes_never_trained(tiny_backbone, host):
    """s * cos(u + uW, t) with u the normalised image feature: W reads no class, so classes the run
    never saw get the same map over their own (here: zero-shot) text."""
    model = build_method(MethodConfig(host=host), tiny_backbone, CLASSES).eval()
    generator = torch.Generator().manual_seed(0)
    dim = tiny_backbone.embed_dim
    with torch.no_grad():
        model.host.adapter.weight.copy_(0.3 * torch.randn(dim, dim, generator=generator))
    images = torch.randn(3, 3, 32, 32, generator=generator)
    model.set_classnames(NEW_CLASSES, novel=True)
    zero_shot = Predictor.zero_shot(tiny_backbone, NEW_CLASSES, DEFAULT_TEMPLATE).model.eval()
    with torch.no_grad():
        image = zero_shot.encode_image(images)[FEATURES]
        text = F.normalize(zero_shot.text_features(None)[0], dim=-1)
        unit = image / image.norm(dim=-1, keepdim=True)
        adapted = unit + unit @ model.host.adapter.weight
        expected = model.logit_scale * (adapted / adapted.norm(dim=-1, keepdim=True)) @ text.t()
        torch.testing.assert_close(model.logits(model.encode_image(images)), expected, rtol=0, atol=1e-5)
        assert (expected - zero_shot.logits(zero_shot.encode_image(images))).abs().max() > 1e-2


@pytest.mark.parametrize("host", ADAPTER_HOSTS)
def test_the_adapter_learns_on_cached_image_features(tiny_backbone, host):
    """It sits after the cache: the image path keeps no trainable tensor, a cached batch carries the
    features, and one step moves W."""
    model = build_method(MethodConfig(host=host), copy.deepcopy(tiny_backbone), CLASSES)
    assert not model.needs_image_grad
    assert IMAGE_FEATURES in {item.name for item in model.frozen_inputs()}
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    batch = batch_for(model, images, torch.tensor([0, 1, 2, 3]))
    assert batch.images is None
    model.train()
    sum(model(batch).values()).backward()
    assert model.host.adapter.weight.grad.abs().sum() > 0


def test_the_adapter_is_the_identity_up_to_the_norm_at_zero():
    features = torch.randn(5, 8) * 4
    torch.testing.assert_close(LinearAdapter(8)(features), F.normalize(features, dim=-1), rtol=0, atol=0)
