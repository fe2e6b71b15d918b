"""world-CLIP: the open_clip config builds, and the committed weights load with stock open_clip and
solve the world zero-shot."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch

from specpl.world.model import CONFIG_DIR, MODEL_NAME, WEIGHTS_PATH, load_world_clip, register_config
from specpl.world.zeroshot import WORLD_TEMPLATE, world_zero_shot_accuracy


@pytest.fixture(scope="module")
def pretrained():
    torch.set_num_threads(1)
    return load_world_clip(WEIGHTS_PATH)


def test_config_builds_with_random_init():
    register_config()
    register_config()  # idempotent
    config = json.loads((CONFIG_DIR / f"{MODEL_NAME}.json").read_text())
    model = open_clip.create_model(MODEL_NAME)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    tokens = tokenizer([WORLD_TEMPLATE.format("striped circle"), "a red dotted star on a grey background."])
    assert tokens.shape == (2, config["text_cfg"]["context_length"])
    with torch.no_grad():
        image = model.encode_image(torch.zeros(2, 3, 64, 64))
        text = model.encode_text(tokens)
    assert image.shape == text.shape == (2, config["embed_dim"])
    assert config["text_cfg"]["vocab_size"] == 49408


def test_weights_are_small_and_load_through_plain_open_clip():
    assert WEIGHTS_PATH.stat().st_size <= 20 * 1024 * 1024
    assert (WEIGHTS_PATH.parent / "README.md").is_file()
    register_config()
    # The same call a user makes, with strict state-dict loading inside open_clip.
    model = open_clip.create_model(MODEL_NAME, pretrained=str(WEIGHTS_PATH))
    random_init = open_clip.create_model(MODEL_NAME)
    assert not torch.equal(model.visual.conv1.weight, random_init.visual.conv1.weight)


def test_pretrained_zero_shot_accuracy(pretrained):
    model, preprocess, tokenizer = pretrained
    # 6 images x 36 classes = 216 fresh test images (seed unused in training and in the model card).
    accuracy = world_zero_shot_accuracy(model, tokenizer, preprocess, per_class=6, seed=123)
    assert accuracy >= 0.60
