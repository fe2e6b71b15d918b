"""Shared fixtures. Tests are CPU-only, offline and deterministic."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
CIFAR = SHARED / "data" / "cifar10-fewshot"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    if not CIFAR.is_dir():
        pytest.skip(f"shared CIFAR-10 few-shot data not found at {CIFAR}")
    return CIFAR


@pytest.fixture(scope="session")
def tiny_backbone():
    from specpl.backbone import TINY_TEST_MODEL, load_backbone
    from specpl.config import BackboneConfig

    return load_backbone(BackboneConfig(name=TINY_TEST_MODEL, pretrained=None))


def accelerate_launch(*command: str) -> list[str]:
    """`accelerate launch` of `command` on two local processes. Without a GPU its multi-GPU
    launcher runs them on the CPU with gloo (`--cpu` alone would need MPI for two processes)."""
    with socket.socket() as probe:  # a free rendezvous port, so runs never meet an earlier one's
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        *command,
    ]


def make_image_folder(root: Path, classes: dict[str, int], size: int = 32, seed: int = 0) -> Path:
    """Write `classes[name]` random-coloured PNGs per class folder under `root`."""
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    for index, (name, count) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = (torch.rand(size, size, 3, generator=generator) * 80 + index * 40).clamp(0, 255).byte().numpy()
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, cifar_root, tiny_backbone):
    """One short CoOp + SpecPL run on real CIFAR-10 photos, shared by the tests that only read it."""
    from specpl.config import BackboneConfig, DataConfig, DecomposerConfig, MethodConfig, RunConfig, TrainConfig
    from specpl.trainer import Trainer

    config = RunConfig(
        backbone=BackboneConfig(name="specpl-tiny", pretrained=None),
        decomposer=DecomposerConfig(name="fft", image_size=32),
        method=MethodConfig(host="coop", boosters=["specpl"], options={"coop": {"n_ctx": 4}}),
        data=DataConfig(root=str(cifar_root), shots=2),
        train=TrainConfig(epochs=2, batch_size=8),
    )
    return Trainer(config, tmp_path_factory.mktemp("trained") / "run", backbone=tiny_backbone, progress_bar=False).fit()
