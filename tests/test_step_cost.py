"""CPU proxies for the GPU step cost (issue: launches are the lever on a GPU): operators one eager
step dispatches, casts, and graph breaks under torch.compile, pinned so they cannot creep back."""

from __future__ import annotations

import copy

import pytest
import torch
from test_methods import TRACED, batch_for, build, method_id
from torch.profiler import ProfilerActivity, profile

from specpl.config import BackboneConfig, DataConfig, DecomposerConfig, MethodConfig, RunConfig, TrainConfig
from specpl.factory import build_method
from specpl.trainer import Trainer, frozen_in_bf16, resolve_compile

# Measured 2026-12-06 on specpl-tiny (2+2 layers), CoOp (4 ctx) + SpecPL, 10 classes, batch 8:
# 3,304 aten operators a step with the CLIP in fp32, 3,172 with it held in bf16; the default
# linear adapter is 78 of them (3,226 and 3,094 with `coop.linear_adapter=false`).
MAX_OPS_PER_STEP = 3_400


def _profiled_step(backbone) -> list:
    torch.manual_seed(0)
    model = build_method(
        MethodConfig(host="coop", boosters=["specpl"], options={"coop": {"n_ctx": 4}}),
        backbone,
        [f"class {i}" for i in range(10)],
        decomposer=DecomposerConfig(name="fft", image_size=backbone.image_size),
    )
    images = torch.randn(8, 3, backbone.image_size, backbone.image_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        batch = batch_for(model, images, torch.arange(8))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, foreach=True)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = sum(model(batch).values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # the first step allocates optimizer state
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return [e.name for e in prof.events() if e.name.startswith("aten::")]


def test_an_eager_coop_specpl_step_stays_under_its_operator_budget(tiny_backbone):
    fp32_ops = _profiled_step(tiny_backbone)
    bf16_ops = _profiled_step(frozen_in_bf16(tiny_backbone))
    assert len(fp32_ops) <= MAX_OPS_PER_STEP and len(bf16_ops) <= MAX_OPS_PER_STEP, (len(fp32_ops), len(bf16_ops))
    # holding the frozen CLIP in bf16 removes the per-step casts of its weights
    assert bf16_ops.count("aten::_to_copy") < fp32_ops.count("aten::_to_copy")


def test_frozen_in_bf16_is_a_copy_with_fp32_norms(tiny_backbone):
    before = {k: v.clone() for k, v in tiny_backbone.model.state_dict().items()}
    held = frozen_in_bf16(tiny_backbone)
    assert held.model.visual.conv1.weight.dtype == torch.bfloat16 and held.model.ln_final.weight.dtype == torch.float32
    assert all(torch.equal(v, before[k]) for k, v in tiny_backbone.model.state_dict().items())
    # the logit scale stays fp32: CLIP's exp(log 100) is 100, its bf16 copy's 99.0
    with torch.no_grad():
        tiny_backbone.model.logit_scale.fill_(torch.tensor(100.0).log())
        held = frozen_in_bf16(tiny_backbone)
        assert held.model.logit_scale.dtype == torch.float32 and float(held.model.logit_scale.exp()) == pytest.approx(
            100.0, abs=1e-4
        )
        assert float(tiny_backbone.model.logit_scale.to(torch.bfloat16).exp()) == pytest.approx(98.9, abs=0.2)
        tiny_backbone.model.logit_scale.copy_(before["logit_scale"])


def test_a_bf16_run_on_the_cpu_trains_and_leaves_the_callers_backbone_alone(tmp_path, cifar_root, tiny_backbone):
    before = {k: v.clone() for k, v in tiny_backbone.model.state_dict().items()}
    config = RunConfig(
        backbone=BackboneConfig(name="specpl-tiny", pretrained=None),
        decomposer=DecomposerConfig(name="fft", image_size=32),
        method=MethodConfig(host="coop", boosters=["specpl"], options={"coop": {"n_ctx": 4}}),
        data=DataConfig(root=str(cifar_root), shots=2),
        train=TrainConfig(epochs=1, batch_size=8, precision="bf16"),
    )
    result = Trainer(config, tmp_path / "run", backbone=tiny_backbone, progress_bar=False).fit()
    assert result.status == "finished" and 0 <= result.metrics["accuracy"] <= 100
    assert all(torch.equal(v, before[k]) for k, v in tiny_backbone.model.state_dict().items())


@pytest.mark.parametrize(
    "setting, device, steps, compiled",
    [
        ("auto", "cpu", 10**6, False),
        ("auto", "cuda", 5_000, True),
        ("auto", "cuda", 100, False),
        ("on", "cpu", 1, True),
        ("off", "cuda", 10**6, False),
    ],
)
def test_compile_auto_compiles_on_a_gpu_when_the_steps_pay(setting, device, steps, compiled):
    used, reason = resolve_compile(setting, torch.device(device), steps)
    assert used == compiled and reason


@pytest.mark.parametrize("method", TRACED, ids=method_id)
def test_every_training_step_traces_as_one_graph(method, tiny_backbone):
    """CUDA-graph capture needs the whole step in one graph: no graph breaks for any method."""
    from torch._dynamo.utils import counters

    host, boosters = method
    model = build(copy.deepcopy(tiny_backbone), host, boosters).train()
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    batch = batch_for(model, images, labels)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    losses = compiled(batch)
    sum(losses.values()).backward()
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
