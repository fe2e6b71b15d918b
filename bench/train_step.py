"""Time one training step: a naive reference CoOp step against ours, in one run.

Naive (the reference repos' style): the whole CLIP cast with ``.half()``, every image re-encoded
every step, every class prompt run through all 77 token positions.
Ours: frozen image features cached once (they never change for CoOp), the text cut to the longest
prompt, and the shared ``[SOS] + context`` prefix encoded once for all classes.

    python bench/train_step.py --model ViT-B-32 --device cpu
    python bench/train_step.py --model ViT-B-16 --device cuda
    python bench/train_step.py --model ViT-B-16 --device cuda --compile   # ours under torch.compile; CUDA graphs on a GPU

Weights are random (the cost is the same), so it runs offline. Prints both medians and the ratio.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from specpl.backbone import load_backbone
from specpl.config import BackboneConfig, MethodConfig
from specpl.methods import Batch, build_method
from specpl.trainer import compiled_step

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
        x = clip.transformer(prompts + clip.positional_embedding.to(self.dtype), attn_mask=clip.attn_mask.to(self.dtype))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--n-ctx", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--naive-dtype", choices=["fp16", "fp32"], default="fp16", help="the reference casts to fp16; fp32 gives a fairer CPU baseline")
    parser.add_argument("--booster", action="append", default=[], help="also time ours with these boosters (e.g. specpl)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads")
    parser.add_argument("--compile", action="store_true", help="time ours as the trainer runs it with train.compile='on' (give --warmup 3 or more: the first calls compile)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    classnames = CLASSNAMES[: args.classes]
    backbone = load_backbone(BackboneConfig(name=args.model, pretrained=None), device=device)
    images = torch.randn(args.batch, 3, backbone.image_size, backbone.image_size, device=device)
    labels = torch.randint(0, args.classes, (args.batch,), device=device)
    model = build_method(MethodConfig(host="coop", boosters=args.booster, options={"coop": {"n_ctx": args.n_ctx}}), backbone, classnames, band_stat_dim=32).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.002, momentum=0.9)
    with torch.no_grad():
        cached = model.host.encode_image(images).float()  # done once per (image, view) by FeatureCache
    bands = (torch.rand(args.batch, 32, device=device), torch.rand(args.batch, 32, device=device))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    step_model = compiled_step(model, "on" if args.compile else "off", device)

    def ours() -> None:
        with autocast:
            loss = sum(step_model(Batch(labels=labels, image_features=cached, band_stats=bands)).values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    naive_clip = open_clip.create_model(args.model, pretrained=None, device=device).eval().requires_grad_(False)
    naive = NaiveCoOpStep(naive_clip, backbone.tokenizer, classnames, args.n_ctx, torch.float16 if args.naive_dtype == "fp16" else torch.float32)
    naive_opt = torch.optim.SGD([naive.ctx], lr=0.002, momentum=0.9)

    def reference() -> None:
        naive(images, labels).backward()
        naive_opt.step()
        naive_opt.zero_grad(set_to_none=True)

    ours_times = time_steps(ours, args.steps, args.warmup, device)
    naive_times = time_steps(reference, args.steps, args.warmup, device)
    ours_ms, naive_ms = 1000 * statistics.median(ours_times), 1000 * statistics.median(naive_times)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"model={args.model} device={device.type} ({where}) batch={args.batch} classes={args.classes} n_ctx={args.n_ctx} boosters={args.booster or 'none'}")
    print(f"text length: naive 77 tokens x {args.classes} classes; ours {model.host.prompt_learner.sequence_length} tokens, prefix shared")
    print(f"naive ({args.naive_dtype}, re-encode images, 77 tokens): {naive_ms:9.1f} ms/step")
    print(f"ours  (cached features, truncated, shared prefix{', compiled' if args.compile else ''}): {ours_ms:9.1f} ms/step")
    print(f"speed-up: {naive_ms / ours_ms:.1f}x")


if __name__ == "__main__":
    main()
