"""Time one training step of any host (+ boosters): a naive reference step against ours, in one run.

Naive (the reference repos' style): the whole CLIP cast with ``.half()`` on a GPU, every image and
every frozen input (band statistics, frozen CLIP features) recomputed every step. For CoOp it is
the reference's own step (all 77 token positions per class prompt); for the other hosts it is our
method with those costs put back, but with our truncated text, so the baseline is, if anything,
faster than the real reference.
Ours: frozen inputs computed once per (image, view) (`FeatureCache`), images re-encoded only when
a trainable tensor sits in the image path, the text cut to the longest prompt, the shared prefix
encoded once, bf16 autocast on a GPU.

    python bench/train_step.py --model ViT-B-32 --device cpu
    python bench/train_step.py --model ViT-B-16 --device cuda --booster specpl
    python bench/train_step.py --model ViT-B-16 --device cuda --host maple --booster specpl --batch 4
    # an untrained phase-1 bundle:
    python bench/train_step.py --model ViT-B-16 --device cuda --host maple --booster caspl --batch 4
    # ours eager (default: auto, as a run decides):
    python bench/train_step.py --model ViT-B-16 --device cuda --compile off

Weights are random (the cost is the same), so it runs offline. Prints both medians and the ratio;
``--markdown`` prints one table row instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import tempfile
import time
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from specpl.backbone import load_backbone
from specpl.config import BackboneConfig, DecomposerConfig, MethodConfig
from specpl.factory import build_method
from specpl.frozen import flatten
from specpl.methods import Batch
from specpl.methods.caspl import PHASE_ONE
from specpl.trainer import _build_optimizer, compiled_step, frozen_in_bf16, resolve_compile

CLASSNAMES = [f"class {i}" for i in range(1000)]  # "class N" tokenises to 2 tokens, like most names


class NaiveCoOpStep(nn.Module):
    """The reference implementation's step, kept here only as the baseline to beat."""

    def __init__(self, clip: nn.Module, tokenizer, classnames: list[str], n_ctx: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.clip = clip.to(dtype)  # the reference code's `.half()` cast (or fp32 where asked)
        self.dtype = dtype
        tokens = tokenizer([" ".join(["X"] * n_ctx) + f" {name}." for name in classnames])  # all 77 positions
        with torch.no_grad():
            embedded = clip.token_embedding(tokens.to(clip.token_embedding.weight.device))
        self.register_buffer("prefix", embedded[:, :1])
        self.register_buffer("suffix", embedded[:, 1 + n_ctx :])
        self.register_buffer("eot", tokens.argmax(-1).to(embedded.device))
        self.ctx = nn.Parameter(torch.randn(n_ctx, embedded.shape[-1], dtype=dtype, device=embedded.device) * 0.02)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        clip = self.clip
        image_features = clip.encode_image(images.to(self.dtype))
        prompts = torch.cat([self.prefix, self.ctx.unsqueeze(0).expand(len(self.prefix), -1, -1), self.suffix], dim=1)
        x = clip.transformer(
            prompts + clip.positional_embedding.to(self.dtype), attn_mask=clip.attn_mask.to(self.dtype)
        )
        x = clip.ln_final(x)[torch.arange(len(x), device=x.device), self.eot] @ clip.text_projection
        logits = clip.logit_scale.exp() * F.normalize(image_features, dim=-1) @ F.normalize(x, dim=-1).t()
        return F.cross_entropy(logits.float(), labels)


def time_steps(step, steps: int, warmup: int, device: torch.device) -> list[float]:
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def frozen_batch(model, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every frozen input of `model` for `images`, as the feature cache holds them."""
    frozen: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for frozen_input in model.frozen_inputs():
            frozen.update(flatten(frozen_input.name, frozen_input(images)))
    return frozen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--host", default="coop")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--n-ctx", type=int, default=16, help="CoOp's context length")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--naive-dtype",
        choices=["auto", "fp16", "fp32"],
        default="auto",
        help="auto: fp16 on a GPU (the reference's cast), fp32 on a CPU (no fp16 arithmetic there)",
    )
    parser.add_argument(
        "--booster", action="append", default=[], help="also time ours with these boosters (e.g. specpl)"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads")
    parser.add_argument(
        "--compile",
        choices=["auto", "on", "off"],
        default="auto",
        help="ours as a run with this train.compile setting runs it (auto: decided for --run-steps)",
    )
    parser.add_argument(
        "--run-steps",
        type=int,
        default=2500,
        help="steps of the run that compile=auto decides for (CoOp, 50 classes x 16 shots, 100 epochs)",
    )
    parser.add_argument("--markdown", action="store_true", help="print one markdown table row")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=790.0,
        help="the device's dense bf16 rate, for the FLOP floor (H200/H100: about 790)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    classnames = CLASSNAMES[: args.classes]
    backbone = load_backbone(BackboneConfig(name=args.model, pretrained=None), device=device)
    images = torch.randn(args.batch, 3, backbone.image_size, backbone.image_size, device=device)
    labels = torch.randint(0, args.classes, (args.batch,), device=device)
    options = {"coop": {"n_ctx": args.n_ctx}} if args.host == "coop" else {}
    decomposer = DecomposerConfig(name="fft", image_size=backbone.image_size)
    if "caspl" in args.booster:  # phase 2 reads a phase-1 bundle; an untrained one costs the same
        boost_bundle = Path(tempfile.mkdtemp()) / "boost"
        build_method(MethodConfig(host=PHASE_ONE), backbone, classnames, decomposer=decomposer).save_bundle(
            boost_bundle
        )
        options["caspl"] = {"boost_bundle": str(boost_bundle)}
    method = MethodConfig(host=args.host, boosters=args.booster, options=options)
    held = frozen_in_bf16(backbone) if device.type == "cuda" else backbone  # as a bf16 run holds it
    model = build_method(method, held, classnames, decomposer=decomposer).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _build_optimizer(params, {"optimizer": "sgd", "lr": 0.002, "momentum": 0.9, "weight_decay": 5e-4})
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with autocast:
        frozen = frozen_batch(model, images)  # done once per (image, view) by FeatureCache
    batch = Batch(labels=labels, images=images if model.needs_image_grad else None, frozen=frozen)
    compiled, reason = resolve_compile(args.compile, device, args.run_steps)
    step_model = compiled_step(model, "on" if compiled else "off", device)

    def ours() -> None:
        with autocast:
            loss = sum(step_model(batch).values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if args.naive_dtype == "auto":
        args.naive_dtype = "fp16" if device.type == "cuda" else "fp32"
    naive_dtype = torch.float16 if args.naive_dtype == "fp16" else torch.float32
    naive_clip = open_clip.create_model(args.model, pretrained=None, device=device).eval().requires_grad_(False)
    if args.host == "coop" and not args.booster:
        naive = NaiveCoOpStep(naive_clip, backbone.tokenizer, classnames, args.n_ctx, naive_dtype)
        naive_opt = torch.optim.SGD([naive.ctx], lr=0.002, momentum=0.9)

        def reference() -> None:
            naive(images, labels).backward()
            naive_opt.step()
            naive_opt.zero_grad(set_to_none=True)
    else:
        naive_backbone = dataclasses.replace(backbone, model=naive_clip.to(naive_dtype))
        naive_model = build_method(method, naive_backbone, classnames, decomposer=decomposer).to(device)
        naive_params = [p for p in naive_model.parameters() if p.requires_grad]
        naive_opt = torch.optim.SGD(naive_params, lr=0.002, momentum=0.9)
        naive_autocast = torch.autocast(device.type, dtype=naive_dtype, enabled=device.type == "cuda")

        def reference() -> None:
            with naive_autocast:
                recomputed = Batch(
                    labels=labels,
                    images=images.to(naive_dtype),
                    frozen=frozen_batch(naive_model, images.to(naive_dtype)),
                )
                if not naive_model.needs_image_grad:  # the reference re-encodes images every step
                    recomputed.frozen.update(flatten("image", naive_model.encode_image(images.to(naive_dtype))))
                loss = sum(naive_model(recomputed).values()).float()
            loss.backward()
            naive_opt.step()
            naive_opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:  # the step's FLOPs, counted on the eager model
        with autocast:
            loss = sum(model(batch).values())
        loss.backward()
    model.zero_grad(set_to_none=True)
    floor_ms = 1000 * counter.get_total_flops() / (args.peak_tflops * 1e12)
    first = time_steps(ours, 1, 0, device)[0]  # the first call compiles when compiled
    ours_times = time_steps(ours, args.steps, args.warmup, device)
    naive_times = time_steps(reference, args.steps, args.warmup, device)
    ours_ms, naive_ms = 1000 * statistics.median(ours_times), 1000 * statistics.median(naive_times)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    name = "+".join([args.host, *args.booster])
    if args.markdown:
        print(
            f"| {name} | {args.model} | {device.type} ({where}) | {args.batch} | {args.classes} | "
            f"{'compiled' if compiled else 'eager'} | {naive_ms:.1f} ({args.naive_dtype}) | {ours_ms:.1f} | "
            f"{naive_ms / ours_ms:.1f}x | {floor_ms:.2f} | {ours_ms / floor_ms:.1f}x | {first:.1f} s |"
        )
        return
    print(
        f"method={name} model={args.model} device={device.type} ({where}) batch={args.batch} "
        f"classes={args.classes} boosters={args.booster or 'none'}"
    )
    print(f"image tower trained through: {model.needs_image_grad}; frozen inputs cached: {sorted(frozen)}")
    print(f"naive ({args.naive_dtype}, everything recomputed): {naive_ms:9.1f} ms/step")
    print(
        f"ours  (cached frozen inputs, truncated, shared prefix{', compiled' if compiled else ''}): "
        f"{ours_ms:9.1f} ms/step ({reason}; first step {first:.1f} s)"
    )
    print(
        f"speed-up: {naive_ms / ours_ms:.1f}x; FLOP floor {floor_ms:.2f} ms at {args.peak_tflops:.0f} TFLOP/s "
        f"({ours_ms / floor_ms:.1f}x above it)"
    )


if __name__ == "__main__":
    main()
