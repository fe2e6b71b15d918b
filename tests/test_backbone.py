"""Backbone loading: the QuickGELU rule, local files, and the clear offline error."""

import pytest
import torch
from safetensors.torch import save_file

from specpl.backbone import EMBEDDED_WEIGHTS, BackboneUnavailable, load_backbone, resolve_quick_gelu
from specpl.config import BackboneConfig
from specpl.registry import UnknownNameError


@pytest.mark.parametrize(
    "config, expected",
    [
        (BackboneConfig("ViT-B-16", "openai"), True),  # the tag records QuickGELU
        (BackboneConfig("ViT-B-16", "laion2b_s34b_b88k"), False),
        (BackboneConfig("ViT-B-16-quickgelu", None), True),
        (BackboneConfig("ViT-B-16", "openai", quick_gelu=False), False),  # explicit wins
    ],
)
def test_quick_gelu_resolution(config, expected):
    assert resolve_quick_gelu(config) is expected


def test_local_openai_file_gets_quick_gelu(tmp_path, tiny_backbone):
    path = tmp_path / "ViT-tiny-openai.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_backbone.model.state_dict().items()}, str(path))
    assert resolve_quick_gelu(BackboneConfig("ViT-B-16", str(path))) is True
    assert resolve_quick_gelu(BackboneConfig("ViT-B-16", str(tmp_path))) is False  # not a file: config default


def test_local_checkpoint_loads_same_weights(tmp_path, tiny_backbone):
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_backbone.model.state_dict().items()}, str(path))
    loaded = load_backbone(BackboneConfig("specpl-tiny", str(path)))
    tokens = tiny_backbone.tokenizer(["a photo of a cat."])
    torch.testing.assert_close(loaded.model.encode_text(tokens), tiny_backbone.model.encode_text(tokens))
    assert loaded.config.quick_gelu is True


def test_random_init_is_reproducible(tiny_backbone):
    again = load_backbone(BackboneConfig("specpl-tiny", None))
    for a, b in zip(again.model.parameters(), tiny_backbone.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_offline_pretrained_weights_give_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneUnavailable) as info:
        load_backbone(BackboneConfig("ViT-B-16", "openai", cache_dir=str(tmp_path)))
    message = str(info.value)
    assert "ViT-B-16" in message and "openai" in message
    assert str(tmp_path) in message and "timm/vit_base_patch16_clip_224.openai" in message
    assert "--pretrained /path/to/" in message


def test_missing_local_file_and_unknown_tag(tmp_path):
    with pytest.raises(BackboneUnavailable, match="neither a known tag"):
        load_backbone(BackboneConfig("ViT-B-16", str(tmp_path / "nope.safetensors")))


def test_hf_hub_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneUnavailable, match="Hugging Face hub repo org/model"):
        load_backbone(BackboneConfig("hf-hub:org/model", None))


def test_unknown_backbone_name():
    with pytest.raises(UnknownNameError, match="unknown backbone 'ViT-Q-99'"):
        load_backbone(BackboneConfig("ViT-Q-99", None))


def test_preprocessing_comes_from_the_model(tiny_backbone):
    assert tiny_backbone.image_size == 32
    from PIL import Image

    assert tiny_backbone.preprocess_eval(Image.new("RGB", (100, 60))).shape == (3, 32, 32)


def test_embedded_tag_resolves_to_the_shipped_file(monkeypatch, tmp_path):
    import open_clip

    from specpl import defaults

    weights = tmp_path / "world.safetensors"
    save_file({k: v.contiguous() for k, v in open_clip.create_model("world-clip").state_dict().items()}, str(weights))
    monkeypatch.setitem(EMBEDDED_WEIGHTS, defaults.WORLD_MODEL, weights)
    backbone = load_backbone(defaults.world_backbone_config())
    assert backbone.config.pretrained == "embedded"  # what bundles record: portable across checkouts
    assert backbone.image_size == 64
    weights.unlink()
    with pytest.raises(BackboneUnavailable, match="embedded weights of world-clip are missing"):
        load_backbone(defaults.world_backbone_config())
    with pytest.raises(BackboneUnavailable, match="has no embedded weights"):
        load_backbone(BackboneConfig("ViT-B-16", "embedded"))
