"""int8 image towers for CPU inference.

A ViT-B image forward is about 8.8 GFLOP, almost all of it in linear layers; on a small CPU
without bf16 arithmetic fp32 GEMMs at 50 tokens run far below peak, and int8 GEMMs (dynamic
activation scales, per-tensor int8 weights) roughly halve the time. PyTorch's dynamic quantisation
only converts `nn.Linear`, while `nn.MultiheadAttention` keeps its packed input projection as a
bare parameter, so the attention blocks are first rewritten into `SelfAttention` (two linears,
numerically the same in fp32) and then every linear of the tower is quantised.

The int8 tower is an inference-only copy: the fp32 model is left untouched for training and for
the band/counterfactual paths that need exact features. `torch.ao`'s eager dynamic quantisation is
deprecated upstream in favour of torchao; it is still shipped by the torch we pin, and if a later
torch drops it `int8_image_tower` raises `QuantizationUnavailable` so callers can stay on fp32.
"""
from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class QuantizationUnavailable(RuntimeError):
    """This torch build cannot run int8 dynamic quantisation."""


class SelfAttention(nn.Module):
    """Self-attention with the same weights as an `nn.MultiheadAttention`, as two `nn.Linear`s.

    Only the self-attention case (query = key = value, no key padding mask) is supported, which is
    all a CLIP image tower uses; other calls raise instead of silently computing something else.
    """

    def __init__(self, attention: nn.MultiheadAttention) -> None:
        super().__init__()
        if not attention._qkv_same_embed_dim or attention.in_proj_bias is None or not attention.batch_first:
            raise ValueError("SelfAttention needs a batch-first nn.MultiheadAttention with a packed, biased input projection")
        dim = attention.embed_dim
        self.heads = attention.num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        with torch.no_grad():
            self.qkv.weight.copy_(attention.in_proj_weight)
            self.qkv.bias.copy_(attention.in_proj_bias)
            self.out.weight.copy_(attention.out_proj.weight)
            self.out.bias.copy_(attention.out_proj.bias)

    def forward(
        self, query: Tensor, key: Tensor, value: Tensor, need_weights: bool = False, attn_mask: Tensor | None = None
    ) -> tuple[Tensor, None]:
        if key is not query or value is not query or need_weights:
            raise ValueError("SelfAttention computes self-attention without weights only")
        batch, tokens, dim = query.shape
        qkv = self.qkv(query).view(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)
        return self.out(attended.transpose(1, 2).reshape(batch, tokens, dim)), None


def with_linear_attention(tower: nn.Module) -> nn.Module:
    """A deep copy of `tower` whose `nn.MultiheadAttention` modules are `SelfAttention`s."""
    tower = copy.deepcopy(tower)
    for module in list(tower.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.MultiheadAttention):
                setattr(module, name, SelfAttention(child))
    return tower


def int8_image_tower(tower: nn.Module) -> nn.Module:
    """An int8 (dynamic activation scales) CPU copy of a CLIP image tower, in eval mode."""
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as exc:  # pragma: no cover - depends on the torch build
        raise QuantizationUnavailable(f"this torch ({torch.__version__}) has no torch.ao.quantization.quantize_dynamic") from exc
    if "x86" not in torch.backends.quantized.supported_engines and "fbgemm" not in torch.backends.quantized.supported_engines:
        raise QuantizationUnavailable(f"this torch ({torch.__version__}) has no x86/fbgemm int8 kernels")
    if any(p.device.type != "cpu" for p in tower.parameters()):
        raise ValueError("int8 image towers run on the CPU; the tower given is on another device")
    with warnings.catch_warnings():
        # Deprecation notices for torch.ao (see the module docstring); the API still works.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(with_linear_attention(tower).eval().float(), {nn.Linear}, dtype=torch.qint8)
