"""DAPT booster: the shared method properties on IVLP and MaPLe, its refusal of hosts whose image
path does not learn, its losses by hand, the phase switch, DAPT-G masks refreshed per epoch
(attention rollout, the per-head GradCAM and the released ln_1 GradCAM by hand, how well each map
covers the object on the world CLIP), the paper preset (batch maximum, corner-aligned upsampling,
the last 25 background words), and user masks paired to their image's crop and flip."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tests import test_methods as shared  # a module import, so pytest does not collect its tests here


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 32, 32, generator=generator), torch.tensor([0, 1, 2, 3])


@pytest.mark.parametrize("host", ["ivlp", "maple"])
def test_dapt_has_every_method_property(host, tiny_backbone, inputs, tmp_path):
    shared.test_every_method((host, ("dapt",)), tiny_backbone, inputs, tmp_path)


# --- losses by hand -------------------------------------------------------------------------------
def test_triplet_pull_push_matches_a_hand_computation():
    from specpl.methods.dapt.losses import triplet_pull_push

    generator = torch.Generator().manual_seed(0)
    full, fg, bg = (torch.randn(5, 8, generator=generator) for _ in range(3))
    unit = [t / t.norm(dim=-1, keepdim=True) for t in (full, fg, bg)]
    by_hand = ((unit[0] - unit[1]).norm(dim=-1) - (unit[0] - unit[2]).norm(dim=-1) + 1.5).clamp_min(0).mean()
    torch.testing.assert_close(triplet_pull_push(full, fg, bg, margin=1.5), by_hand, atol=1e-5, rtol=0)


def test_alignment_losses_match_a_hand_computation_and_detach_the_foreground():
    from specpl.methods.dapt.losses import background_alignment, foreground_alignment

    generator = torch.Generator().manual_seed(0)
    fg = torch.randn(3, 8, generator=generator, requires_grad=True)
    bg = torch.randn(3, 8, generator=generator, requires_grad=True)
    text = torch.randn(4, 8, generator=generator, requires_grad=True)
    background_text = torch.randn(6, 8, generator=generator)
    labels = torch.tensor([0, 3, 1])
    unit = lambda t: t / t.norm(dim=-1, keepdim=True)  # noqa: E731
    similarity = unit(bg) @ unit(background_text).t()
    expected_bg = torch.nn.functional.cross_entropy(10 * similarity, similarity.argmax(dim=-1))
    expected_fg = torch.nn.functional.cross_entropy(10 * unit(fg) @ unit(text).t(), labels)
    torch.testing.assert_close(background_alignment(bg, background_text, 10.0), expected_bg)
    loss_fg = foreground_alignment(fg, text, labels, 10.0)
    torch.testing.assert_close(loss_fg, expected_fg)
    loss_fg.backward()
    assert fg.grad is None and text.grad is not None and text.grad.abs().sum() > 0  # sg(z_f): only the text side learns


# --- phases, GradCAM refresh, masks in use -------------------------------------------------------
def test_the_loss_switches_at_the_configured_epoch_and_gradcam_is_refreshed_each_epoch(
    tmp_path, cifar_root, tiny_backbone, monkeypatch
):
    import json

    import specpl.methods.dapt.masks as dapt_masks
    from specpl.config import BackboneConfig, DataConfig, DecomposerConfig, MethodConfig, RunConfig, TrainConfig
    from specpl.trainer import Trainer

    computed_at: list[int] = []
    original = dapt_masks.saliency_masks

    def counting(model, images, labels, *args):
        computed_at.append(model.epoch)
        assert labels is not None  # the cache passes the items, so GradCAM targets the true class
        return original(model, images, labels, *args)

    monkeypatch.setattr(dapt_masks, "saliency_masks", counting)
    config = RunConfig(
        backbone=BackboneConfig(name="specpl-tiny", pretrained=None),
        decomposer=DecomposerConfig(name="fft", image_size=32),
        method=MethodConfig(host="ivlp", boosters=["dapt"], options={"dapt": {"switch_epoch": 2}}),
        data=DataConfig(root=str(cifar_root), shots=1),
        train=TrainConfig(epochs=3, batch_size=4),
    )
    Trainer(config, tmp_path / "run", backbone=copy.deepcopy(tiny_backbone), progress_bar=False).fit()
    steps = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    terms = {(e["epoch"], frozenset(e["losses"])) for e in steps if e.get("event", e.get("type")) == "step"}
    host = {"cls", "text_l1", "image_l1"}  # IVLP's own terms under the default preset
    assert terms == {
        (1, frozenset(host | {"triplet"})),
        (2, frozenset(host | {"triplet"})),
        (3, frozenset(host | {"foreground", "background"})),
    }
    assert sorted(set(computed_at)) == [0, 1, 2]  # before training and after each epoch but the last, once per view


def test_the_forward_pass_uses_the_batch_masks(tiny_backbone, inputs):
    from specpl.config import MethodConfig
    from specpl.factory import build_method
    from specpl.frozen import flatten
    from specpl.methods import Batch
    from specpl.methods.dapt.losses import triplet_pull_push

    torch.manual_seed(0)
    options = {"dapt": {"switch_epoch": 1}}  # the default map: not flat on the random tiny tower (the rollout would be)
    model = build_method(
        MethodConfig(host="maple", boosters=["dapt"], options=options),
        copy.deepcopy(tiny_backbone),
        ["cat", "dog", "ship", "frog"],
    )
    images, labels = inputs
    (views,) = [i for i in model.frozen_inputs() if i.name == "dapt"]
    frozen = flatten(views.name, views(images))
    mask = frozen["dapt.mask"]
    assert mask.shape == (4, 1, 32, 32) and mask.dtype == torch.bool and 0 < mask.float().mean() < 1
    model.epoch, model.epochs = 0, 3
    with torch.no_grad():
        loss = model(Batch(labels, images, frozen))["triplet"]
        full = model.encode_image(images)["features"]
        fg = model.encode_image(images * mask)["features"]
        bg = model.encode_image(images * ~mask)["features"]
    torch.testing.assert_close(loss, 0.8 * triplet_pull_push(full, fg, bg, 1.5), atol=1e-5, rtol=1e-5)


def test_background_text_gets_the_hosts_deep_prompts_but_not_its_context(tiny_backbone):
    from specpl.config import MethodConfig
    from specpl.factory import build_method

    torch.manual_seed(0)
    model = build_method(MethodConfig(host="maple", boosters=["dapt"]), copy.deepcopy(tiny_backbone), ["cat", "dog"])
    dapt = model.boosters["dapt"]
    before = dapt.background_text()
    assert before.shape == (32, model.context.embed_dim)
    with torch.no_grad():
        model.host.prompt_learner.ctx.add_(1.0)  # layer-0 context: the background prompts keep their fixed words
    torch.testing.assert_close(dapt.background_text(), before, rtol=0, atol=0)
    with torch.no_grad():
        model.host.deep_text[0].add_(1.0)  # deep prompts: shared with the background prompts, as in the reference
    assert not torch.allclose(dapt.background_text(), before)


# --- user masks -------------------------------------------------------------------------------------
def _blocky(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 2, size=(height // 8 + 1, width // 8 + 1)).astype(bool)
    return np.kron(blocks, np.ones((8, 8), dtype=bool))[:height, :width]


def _mask_folder_run(tmp_path, tiny_backbone, width: int = 48, height: int = 40):
    """An image folder of blocky black/white images, and their masks (1 where white) elsewhere."""
    from PIL import Image

    from specpl.config import MethodConfig
    from specpl.data import ImageItem
    from specpl.factory import build_method

    items = []
    for label, name in enumerate(["cat", "dog"]):
        for index in range(2):
            pattern = _blocky(height, width, seed=10 * label + index)
            image_path = tmp_path / "data" / name / f"{index:03d}.png"
            mask_path = tmp_path / "masks" / name / f"{index:03d}.png"
            image_path.parent.mkdir(parents=True, exist_ok=True)
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.repeat(pattern[..., None] * 255, 3, axis=2).astype(np.uint8)).save(
                image_path.with_suffix(".jpg"), quality=100
            )
            Image.fromarray(pattern.astype(np.uint8)).save(mask_path)  # values 0/1, as a segmenter writes
            items.append(ImageItem(image_path.with_suffix(".jpg"), label))
    options = {"dapt": {"masks": "folder", "mask_dir": str(tmp_path / "masks")}}
    model = build_method(
        MethodConfig(host="ivlp", boosters=["dapt"], options=options), copy.deepcopy(tiny_backbone), ["cat", "dog"]
    )
    return model, items


def test_a_user_mask_gets_the_same_crop_and_flip_as_its_image(tmp_path, tiny_backbone):
    """Through the feature cache, as in training: each view's mask equals its image's white area
    (up to the bicubic/JPEG edge), and matches it better than the mirrored mask does."""
    from specpl.features import AugmentedViews, FeatureCache, dassl_train_transform

    model, items = _mask_folder_run(tmp_path, tiny_backbone)
    mean, std = tiny_backbone.normalization
    views = AugmentedViews(dassl_train_transform(32, mean, std, 0.3), tiny_backbone.preprocess_eval, seed=3)
    cache = FeatureCache(views, model.frozen_inputs(), torch.device("cpu"))
    for view in range(6):
        masks = cache.get(items, view)["dapt.mask"][:, 0]
        for item, mask in zip(items, masks, strict=True):
            image = views.load(item.path, view)
            white = (image[0] * std[0] + mean[0]) > 0.5
            agreement = (white == mask).float().mean()
            flipped = (white == mask.flip(-1)).float().mean()
            assert agreement > 0.93, (
                f"view {view} of {item.path.name}: the mask matches only {agreement:.2f} of the image"
            )
            assert agreement > flipped  # over these 24 seeded draws the flip goes both ways
    eval_masks = cache.get(items, None)["dapt.mask"][:, 0]
    image = views.load(items[0].path, None)
    assert ((image[0] * std[0] + mean[0] > 0.5) == eval_masks[0]).float().mean() > 0.93


def test_mask_binarisation_reads_the_first_channel_and_drops_the_ignore_value(tmp_path):
    from PIL import Image

    from specpl.methods.dapt import MaskFolder

    (tmp_path / "img").mkdir()
    (tmp_path / "masks").mkdir()
    Image.new("RGB", (4, 1)).save(tmp_path / "img" / "a.png")
    values = np.array([[[0, 9, 9], [1, 0, 0], [7, 0, 0], [255, 9, 9]]], dtype=np.uint8)
    Image.fromarray(values).save(tmp_path / "masks" / "a.png")
    mask = np.asarray(MaskFolder(tmp_path / "masks").read(tmp_path / "img" / "a.png"))
    assert (mask > 0).tolist() == [[False, True, True, False]]


def test_mask_folder_errors_name_the_file_and_the_reason(tmp_path, tiny_backbone):
    from PIL import Image

    from specpl.config import MethodConfig
    from specpl.data import DataError
    from specpl.factory import build_method
    from specpl.methods.dapt import MaskFolder

    _mask_folder_run(tmp_path, tiny_backbone)
    folder = MaskFolder(tmp_path / "masks")
    stray = tmp_path / "data" / "cat" / "999.jpg"
    Image.new("RGB", (48, 40)).save(stray)
    with pytest.raises(DataError, match=r"no mask for .*999\.jpg in .*masks: looked for cat/999\.\* and 999\.\*"):
        folder.read(stray)
    Image.new("L", (10, 10)).save(tmp_path / "masks" / "cat" / "999.png")
    with pytest.raises(DataError, match=r"999\.png: mask is 10x10 but its image .*999\.jpg is 48x40"):
        MaskFolder(tmp_path / "masks").read(stray)
    with pytest.raises(DataError, match="dapt mask folder .*nowhere does not exist"):
        MaskFolder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="dapt.masks='folder' needs dapt.mask_dir"):
        build_method(
            MethodConfig(host="ivlp", boosters=["dapt"], options={"dapt": {"masks": "folder"}}),
            tiny_backbone,
            ["cat", "dog"],
        )


# --- DAPT-G maps -------------------------------------------------------------------------------------
def _values_by_hand(attention: torch.nn.MultiheadAttention, normed: torch.Tensor) -> torch.Tensor:
    """The per-head values (B, heads, T, W / heads) of `attention` on its block's ln_1 output."""
    width = normed.shape[-1]
    values = torch.nn.functional.linear(
        normed, attention.in_proj_weight[2 * width :], attention.in_proj_bias[2 * width :]
    )
    return values.view(*normed.shape[:2], attention.num_heads, -1).transpose(1, 2)


def test_recorded_attention_is_pytorchs_own_and_rollout_matches_a_hand_computation(tiny_backbone, inputs):
    """The explicit attention equals nn.MultiheadAttention's weights, its values are ln_1's output
    through the value projection, and it leaves the features unchanged; the rollout is the
    class-token row of prod (0.5 mean_h A + 0.5 I) over the patches (not IVLP's image prompts)."""
    from specpl.config import MethodConfig
    from specpl.factory import build_method
    from specpl.methods.dapt.saliency import recorded_attention, rollout_scores

    model = build_method(
        MethodConfig(host="ivlp", boosters=["dapt"]), copy.deepcopy(tiny_backbone), ["cat", "dog", "ship", "frog"]
    )
    images, _ = inputs
    blocks = model.frozen_clip.visual.transformer.resblocks
    normed: list[torch.Tensor] = []
    handles = [block.ln_1.register_forward_hook(lambda module, args, output: normed.append(output)) for block in blocks]
    with torch.no_grad():
        plain = model.encode_image(images)["features"]
        for handle in handles:
            handle.remove()
        weights = [
            block.attn(x, x, x, need_weights=True, average_attn_weights=False)[1]
            for block, x in zip(blocks, normed, strict=True)
        ]
        with recorded_attention(model) as recorded:
            explicit = model.encode_image(images)["features"]
    torch.testing.assert_close(explicit, plain, atol=1e-5, rtol=1e-5)
    assert len(recorded) == len(blocks)
    for (probabilities, values), theirs, block, x in zip(recorded, weights, blocks, normed, strict=True):
        torch.testing.assert_close(probabilities, theirs, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(values, _values_by_hand(block.attn, x), atol=1e-6, rtol=1e-5)
    tokens = weights[0].shape[-1]
    flow = torch.eye(tokens)
    for attention in weights:
        flow = (0.5 * attention.mean(dim=1) + 0.5 * torch.eye(tokens)) @ flow
    assert tokens == 1 + 16 + model.host.config.n_ctx_vision  # [CLS], 16 patches, IVLP's prompts at the end
    torch.testing.assert_close(rollout_scores(model, images), flow[:, 0, 1:17], atol=1e-5, rtol=1e-5)


def test_recording_sees_only_its_own_threads_forwards(tiny_backbone, inputs):
    """The app serves other requests through the same frozen tower while a map is drawn: their
    forwards are neither recorded nor rerouted."""
    import threading

    from specpl.config import MethodConfig
    from specpl.factory import build_method
    from specpl.methods.dapt.saliency import recorded_attention

    model = build_method(
        MethodConfig(host="ivlp", boosters=["dapt"]), copy.deepcopy(tiny_backbone), ["cat", "dog", "ship", "frog"]
    )
    images, _ = inputs
    blocks = len(model.frozen_clip.visual.transformer.resblocks)
    with torch.no_grad(), recorded_attention(model) as recorded:
        other = threading.Thread(target=lambda: model.encode_image(images))
        other.start()
        other.join()
        assert recorded == []
        model.encode_image(images)
    assert len(recorded) == blocks


def test_head_gradcam_matches_a_hand_computation_through_the_attention(tiny_backbone, inputs):
    """On MaPLe (image prompts in the tokens): the values from the last ln_1 output, their gradient
    by the chain rule through the attention (dy/dv_h = A_h^T dy/do_h, o_h the head's output), one
    weight per head channel averaged over the patches, sum_h |w_h . (v_hj - mean_k v_hk)|."""
    from specpl.config import MethodConfig
    from specpl.factory import build_method
    from specpl.methods.dapt.saliency import head_gradcam_scores, recorded_attention

    torch.manual_seed(0)
    maple = MethodConfig(
        host="maple", boosters=["dapt"], options={"maple": {"ctx_init": "a photo"}}
    )  # 2 tokens: 2 image prompts
    model = build_method(maple, copy.deepcopy(tiny_backbone), ["cat", "dog", "ship", "frog"])
    images, labels = inputs
    block = model.frozen_clip.visual.transformer.resblocks[-1]
    captured: dict[str, torch.Tensor] = {}
    handles = [
        block.ln_1.register_forward_hook(lambda module, args, output: captured.update(normed=output)),
        block.attn.out_proj.register_forward_pre_hook(lambda module, args: captured.update(heads_out=args[0])),
    ]
    with recorded_attention(model) as recorded:
        logits = model.logits(model.encode_image(images))
    for handle in handles:
        handle.remove()
    (out_gradient,) = torch.autograd.grad(logits.gather(1, labels.view(-1, 1)).sum(), captured["heads_out"])
    x, attention = captured["normed"].detach(), recorded[-1].probabilities.detach()
    batch, tokens, _ = x.shape
    values = _values_by_hand(block.attn, x)
    value_gradient = attention.transpose(-1, -2) @ out_gradient.view(batch, tokens, attention.shape[1], -1).transpose(
        1, 2
    )
    patches = torch.tensor(
        [t for t in range(tokens) if t not in (0, *range(tokens - 2, tokens))]
    )  # [CLS] and MaPLe's 2 appended prompts
    assert model.image_prompt_groups() and len(patches) == 16  # 32 px / 8 px patches
    weights = value_gradient[:, :, patches].mean(dim=2, keepdim=True)
    deviations = values[:, :, patches] - values[:, :, patches].mean(dim=2, keepdim=True)
    by_hand = (deviations * weights).sum(dim=-1).abs().sum(dim=1)
    torch.testing.assert_close(head_gradcam_scores(model, images, labels), by_hand, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize(
    "option,value,choices",
    [
        ("cam", "saliency", "'head-gradcam', 'rollout', 'gradcam', 'grad-attention'"),
        ("masks", "files", "'gradcam', 'folder'"),
        ("gradcam_normalise", "global", "'image', 'batch'"),
    ],
)
def test_an_unknown_choice_is_refused_with_the_choices(option, value, choices):
    from specpl.config import MethodConfig
    from specpl.factory import resolve_method_options

    with pytest.raises(ValueError, match=f"dapt.{option} must be one of {choices}; got '{value}'"):
        resolve_method_options(MethodConfig(host="ivlp", boosters=["dapt"], options={"dapt": {option: value}}))


@pytest.fixture(scope="module")
def world_samples():
    """The pretrained world CLIP and 18 world images, one per second class, with their labels and
    analytic object masks."""
    from specpl.backbone import load_backbone
    from specpl.defaults import world_backbone_config
    from specpl.world.generator import class_of, render, sample_class, shape_mask, world_classnames

    backbone = load_backbone(world_backbone_config())
    classes = world_classnames()
    rng = np.random.default_rng(0)
    samples = [sample_class(rng, name, 1)[0] for name in classes[::2]]
    images = torch.stack([backbone.preprocess_eval(render(sample)) for sample in samples])
    labels = torch.tensor([classes.index(class_of(sample)) for sample in samples])
    return backbone, classes, images, labels, [shape_mask(sample) for sample in samples]


def _world_masks(world_samples, host: str, options: dict, **dapt: object) -> np.ndarray:
    """DAPT-G masks (B, H, W) on the 18 world images under the `dapt` options. The map is the host
    model's own (DAPT adds nothing to the image path or the logits), so the model is built without
    DAPT: CoOp's, whose image path is the frozen tower's, stands for the pretrained model's map."""
    from specpl.config import MethodConfig
    from specpl.factory import build_method
    from specpl.methods.dapt import DAPTConfig, saliency_masks

    backbone, classes, images, labels, _ = world_samples
    config = DAPTConfig(**dapt)
    torch.manual_seed(0)
    model = build_method(MethodConfig(host=host, options=options), backbone, classes)
    masks = saliency_masks(
        model,
        images,
        labels,
        config.gradcam_threshold,
        config.gradcam_normalise,
        config.cam,
        config.gradcam_align_corners,
    )
    return masks[:, 0].numpy()


def _mean_iou(world_samples, masks: np.ndarray) -> float:
    """Mean IoU of `masks` with the analytic object masks."""
    truths = world_samples[-1]
    return float(
        np.mean([(mask & truth).sum() / (mask | truth).sum() for mask, truth in zip(masks, truths, strict=True)])
    )


HOSTS = [
    pytest.param("coop", {"coop": {"ctx_init": "a photo of a"}}, id="coop"),
    pytest.param("maple", {}, id="maple"),
    pytest.param("ivlp", {}, id="ivlp"),
]


@pytest.mark.parametrize("cam", ["head-gradcam", "rollout"])
@pytest.mark.parametrize("host,options", HOSTS)
def test_dapt_g_maps_cover_the_world_object(world_samples, host, options, cam):
    """Measured (CoOp / MaPLe / IVLP at init): head-gradcam, the default, 0.67 / 0.66 / 0.66;
    rollout 0.62 / 0.61 / 0.61."""
    assert _mean_iou(world_samples, _world_masks(world_samples, host, options, cam=cam)) >= 0.5


@pytest.mark.xfail(
    strict=True,
    reason="measured mean IoU at threshold 0.5 (CoOp / MaPLe / IVLP): gradcam (the "
    "released code's, last block ln_1) 0.22 / 0.23 / 0.09; grad-attention (Chefer et al.) 0.16 / 0.17 / "
    "0.13: they land on the background (head-gradcam's centring, |.| and per-head maps fix it, see the "
    "module docstring)",
)
@pytest.mark.parametrize("cam", ["gradcam", "grad-attention"])
@pytest.mark.parametrize("host,options", HOSTS)
def test_gradient_maps_cover_the_world_object(world_samples, host, options, cam):
    assert _mean_iou(world_samples, _world_masks(world_samples, host, options, cam=cam)) >= 0.5


@pytest.mark.parametrize("host,options", HOSTS[1:])
def test_the_paper_masks_leave_most_of_a_world_batch_without_foreground(world_samples, host, options):
    """The released code's map and batch maximum over one batch of 18 world images: the strongest
    map sets the scale, and 16 of the 18 masks come out empty (MaPLe and IVLP at init)."""
    from specpl.methods import BOOSTERS

    masks = _world_masks(world_samples, host, options, **BOOSTERS.get("dapt").presets["paper"]["dapt"])
    empty = int((masks.reshape(len(masks), -1).sum(axis=1) == 0).sum())
    assert empty >= 14 and _mean_iou(world_samples, masks) < 0.1, (empty, _mean_iou(world_samples, masks))


def test_the_default_switch_is_seven_tenths_of_the_epochs_and_seven_reproduces_the_reference():
    from specpl.methods.dapt.config import DAPTConfig, switch_epoch

    assert [switch_epoch(DAPTConfig(), epochs) for epochs in (1, 5, 10, 20)] == [0, 3, 7, 14]
    assert switch_epoch(DAPTConfig(switch_epoch=7), 5) == 7  # the reference's `e > 6` (never reached in 5 epochs)


# --- hosts, the paper preset and its sources --------------------------------------------------------
@pytest.mark.parametrize("host", ["coop", "cocoop", "kgcoop", "zeroshot"])
def test_a_host_whose_image_path_does_not_learn_is_refused_with_the_reason_and_the_hosts(host, tiny_backbone):
    from specpl.config import MethodConfig
    from specpl.factory import build_method, check_combination

    expected = (
        rf"booster 'dapt' cannot run on host '{host}': it needs a host with image-tower prompts \(without "
        r"them nothing in the image tower learns, so DAPT's pull-push and background terms, which train the "
        r"image side, carry no gradient; .*\)\. Hosts it can boost: ivlp, maple, mmrl, promptsrc$"
    )
    with pytest.raises(ValueError, match=expected):
        check_combination(host, ["dapt"])
    with pytest.raises(ValueError, match=expected):
        build_method(MethodConfig(host=host, boosters=["dapt"]), tiny_backbone, ["cat", "dog"])
    for accepted in ("ivlp", "maple", "mmrl", "promptsrc"):
        check_combination(accepted, ["dapt"])


def test_maps_are_upsampled_and_divided_by_the_batch_maximum_by_hand():
    """Two 2x2 patch grids to 3x3: with corners aligned the grid values sit on the corners, the
    edge midpoints average two of them and the centre all four; ``batch`` divides both maps by the
    batch's maximum (4), ``image`` each by its own. To 4x4, corner alignment changes the samples."""
    from specpl.methods.dapt.saliency import normalised_maps

    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 1.0, 0.0]])
    upsampled = torch.tensor(
        [
            [[1.0, 1.5, 2.0], [2.0, 2.5, 3.0], [3.0, 3.5, 4.0]],
            [[0.0, 0.5, 1.0], [0.5, 0.5, 0.5], [1.0, 0.5, 0.0]],
        ]
    ).unsqueeze(1)
    torch.testing.assert_close(normalised_maps(scores, (3, 3), "batch", align_corners=True), upsampled / 4)
    own_maximum = torch.tensor([4.0, 1.0]).view(2, 1, 1, 1)
    torch.testing.assert_close(normalised_maps(scores, (3, 3), "image", align_corners=True), upsampled / own_maximum)
    # to 4x4 the two differ: corner-aligned samples the grid at 0, 1/3, 2/3, 1, half-pixel centres at 0, 1/4, 3/4, 1
    first_row = {True: [1.0, 4 / 3, 5 / 3, 2.0], False: [1.0, 1.25, 1.75, 2.0]}
    for corners, row in first_row.items():
        torch.testing.assert_close(normalised_maps(scores, (4, 4), "batch", corners)[0, 0, 0], torch.tensor(row) / 4)
    with pytest.raises(ValueError, match="dapt.gradcam_normalise must be one of 'image', 'batch'; got 'global'"):
        normalised_maps(scores, (3, 3), "global")


def test_the_paper_preset_is_the_released_code_and_every_option_has_a_source(tiny_backbone):
    import dataclasses

    from specpl.config import MethodConfig
    from specpl.factory import build_method, resolve_method_options
    from specpl.methods import BOOSTERS
    from specpl.methods.dapt import BACKGROUND_WORDS, DAPTConfig

    paper = resolve_method_options(MethodConfig(host="maple", boosters=["dapt"], preset="paper"))["dapt"]
    default = resolve_method_options(MethodConfig(host="maple", boosters=["dapt"]))["dapt"]
    changed = {key: (default[key], value) for key, value in paper.items() if default[key] != value}
    assert changed.pop("background_words") == (list(BACKGROUND_WORDS), list(BACKGROUND_WORDS[-25:]))
    assert changed == {
        "cam": ("head-gradcam", "gradcam"),
        "gradcam_normalise": ("image", "batch"),
        "gradcam_align_corners": (False, True),
        "switch_epoch": (None, 7),
    }
    words = paper["background_words"]
    assert len(BACKGROUND_WORDS) == 32 and (words[0], words[-1]) == ("lake", "dishes")
    method = MethodConfig(host="maple", boosters=["dapt"], preset="paper")
    model = build_method(method, copy.deepcopy(tiny_backbone), ["cat", "dog"])
    assert model.boosters["dapt"].background_text().shape == (25, model.context.embed_dim)
    sources = BOOSTERS.get("dapt").sources
    assert set(sources) == {f.name for f in dataclasses.fields(DAPTConfig)}
    assert all(source.startswith(("Ferenas/DAPT@e556f17 ", "ours: ")) for source in sources.values())


def test_the_paper_gradcam_is_the_released_ln1_gradcam_by_hand(tiny_backbone, inputs):
    """As the released code forms it, with its hooks on the last block's ln_1 (a forward hook for
    the output, a backward hook for its gradient) and its objective mean(logits * onehot(y)): one
    weight per channel, the gradient averaged over the patch tokens; ReLU of the weighted channel
    sum; bilinear with corners aligned; divided by the batch's maximum; thresholded at 0.5. The
    paper preset's masks, drawn through the booster's frozen input, are exactly that."""
    from pathlib import Path

    from specpl.config import MethodConfig
    from specpl.data import ImageItem
    from specpl.factory import build_method

    torch.manual_seed(0)
    method = MethodConfig(host="ivlp", boosters=["dapt"], preset="paper")
    model = build_method(method, copy.deepcopy(tiny_backbone), ["cat", "dog", "ship", "frog"])
    images, labels = inputs
    ln_1 = model.frozen_clip.visual.transformer.resblocks[-1].ln_1
    captured: dict[str, torch.Tensor] = {}
    handles = [
        ln_1.register_forward_hook(lambda module, args, output: captured.update(activation=output.detach())),
        ln_1.register_full_backward_hook(lambda module, grad_in, grad_out: captured.update(gradient=grad_out[0])),
    ]
    logits = model.logits(model.encode_image(images))
    (logits * torch.nn.functional.one_hot(labels, logits.shape[1])).mean().backward()
    for handle in handles:
        handle.remove()
    patches = slice(1, 17)  # [CLS], 16 patches (32 px / 8 px), then IVLP's image prompts
    activation, gradient = captured["activation"][:, patches], captured["gradient"][:, patches]
    cam = torch.relu((activation * gradient.mean(dim=1, keepdim=True)).sum(dim=-1))
    maps = torch.nn.functional.interpolate(cam.view(4, 1, 4, 4), size=(32, 32), mode="bilinear", align_corners=True)
    by_hand = maps / maps.max() >= 0.5
    assert 0 < by_hand.float().mean() < 1
    (views,) = [i for i in model.frozen_inputs() if i.name == "dapt"]
    items = [ImageItem(Path(f"{index}.png"), int(label)) for index, label in enumerate(labels)]
    assert torch.equal(views(images, items)["mask"], by_hand)
