"""int8 image towers: the attention rewrite is exact, and int8 keeps the pretrained world CLIP's
predictions."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from specpl.backbone import load_backbone
from specpl.defaults import world_backbone_config
from specpl.inference import Predictor
from specpl.quantize import ClassTokenBlock, PatchLinear, SelfAttention, inference_tower, int8_image_tower
from specpl.world.generator import fewshot_images, world_classnames
from specpl.world.zeroshot import WORLD_TEMPLATE


def test_inference_rewrites_match_the_open_clip_tower(tiny_backbone):
    tower = tiny_backbone.model.visual
    rewritten = inference_tower(tower)
    kinds = {type(m) for m in rewritten.modules()}
    assert {SelfAttention, PatchLinear, ClassTokenBlock} <= kinds
    assert not {SelfAttention, PatchLinear, ClassTokenBlock} & {
        type(m) for m in tower.modules()
    }  # the original is untouched
    images = torch.randn(
        3, 3, tiny_backbone.image_size, tiny_backbone.image_size, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        torch.testing.assert_close(rewritten(images), tower(images), rtol=1e-5, atol=1e-5)


def test_class_token_shortcut_only_when_the_tower_pools_that_token(tiny_backbone):
    tower = copy.deepcopy(tiny_backbone.model.visual)
    tower.pool_type = "avg"  # mean of the patch tokens: every output of the last block is read
    rewritten = inference_tower(tower)
    assert not any(isinstance(m, ClassTokenBlock) for m in rewritten.modules())
    images = torch.randn(
        2, 3, tiny_backbone.image_size, tiny_backbone.image_size, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        torch.testing.assert_close(rewritten(images), tower(images), rtol=1e-5, atol=1e-5)


def test_traced_int8_tower_equals_the_eager_one_at_any_batch_size(tiny_backbone):
    tower = tiny_backbone.model.visual
    eager = int8_image_tower(tower)
    traced = int8_image_tower(tower, tiny_backbone.image_size)
    assert isinstance(traced, torch.jit.ScriptModule) and not isinstance(eager, torch.jit.ScriptModule)
    generator = torch.Generator().manual_seed(2)
    for batch in (1, 3, 5):  # traced with 2
        images = torch.randn(batch, 3, tiny_backbone.image_size, tiny_backbone.image_size, generator=generator)
        with torch.no_grad():
            torch.testing.assert_close(traced(images), eager(images), rtol=0, atol=0)


def test_self_attention_refuses_cross_attention(tiny_backbone):
    attention = SelfAttention(tiny_backbone.model.visual.transformer.resblocks[0].attn)
    x = torch.randn(1, 4, attention.qkv.in_features)
    with pytest.raises(ValueError, match="self-attention"):
        attention(x, x.clone(), x)


@pytest.fixture(scope="module")
def world_predictor():
    classnames = world_classnames()
    return Predictor.zero_shot(load_backbone(world_backbone_config()), classnames, WORLD_TEMPLATE)


def test_int8_tower_keeps_world_clip_predictions(world_predictor):
    classnames = world_classnames()
    images = [image for _, _, _, image in fewshot_images(classnames, shots=0, test_per_class=3, seed=321)]
    batch = world_predictor.preprocess(images)
    fp32_features = world_predictor.encode_image(batch)["features"]
    fp32_top1 = world_predictor.logits(batch).argmax(-1)
    int8 = Predictor(world_predictor.model, world_predictor.config).use_int8_image_tower()
    assert int8.precision == "int8" and world_predictor.precision == "float32"
    int8_features = int8.encode_image(batch)["features"]
    assert not torch.equal(int8_features, fp32_features)  # it really is another computation
    assert F.cosine_similarity(int8_features, fp32_features).min() > 0.98
    agreement = (int8.logits(batch).argmax(-1) == fp32_top1).float().mean()
    assert agreement >= 0.95, f"int8 changed {1 - agreement:.0%} of {len(images)} top-1 predictions"


def test_int8_refused_for_image_prompted_hosts_and_other_devices(world_predictor, monkeypatch):
    monkeypatch.setattr(
        world_predictor.model, "image_encoder", torch.nn.Identity()
    )  # as when a method prompts the tower
    with pytest.raises(ValueError, match="prompts the image tower"):
        Predictor(world_predictor.model).use_int8_image_tower()
    tower = torch.nn.Linear(2, 2, device="meta")
    with pytest.raises(ValueError, match="on the CPU"):
        int8_image_tower(tower)
