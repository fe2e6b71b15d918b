"""int8 image towers for CPU inference.

A ViT-B image forward is about 8.8 GFLOP, almost all of it in linear layers; on a small CPU
without bf16 arithmetic fp32 GEMMs at 50 tokens run far below peak, and int8 GEMMs (dynamic
activation scales, per-tensor int8 weights) roughly halve the time. PyTorch's dynamic quantisation
only converts `nn.Linear`, while `nn.MultiheadAttention` keeps its packed input projection as a
bare parameter, so the attention blocks are first rewritten into `SelfAttention` (two linears,
numerically the same in fp32) and then every linear of the tower is quantised. Two more exact
rewrites move work into int8 or drop it: the patch embedding (a convolution whose stride equals its
kernel) becomes a linear over the flattened patches, and when the tower pools the class token, the
last block is computed for that token only (its other 49 outputs are never read).

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
            raise ValueError(
                "SelfAttention needs a batch-first nn.MultiheadAttention with a packed, biased input projection"
            )
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
        return self.attend(query, query.shape[1], attn_mask), None

    def attend(self, states: Tensor, queries: int, attn_mask: Tensor | None = None) -> Tensor:
        """Attention output for the first `queries` tokens of `states` over all of them."""
        batch, tokens, dim = states.shape
        q, k, v = (
            self.qkv(states).view(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        )
        attended = F.scaled_dot_product_attention(q[:, :, :queries], k, v, attn_mask=attn_mask)
        return self.out(attended.transpose(1, 2).reshape(batch, queries, dim))


class PatchLinear(nn.Module):
    """A patch-embedding convolution (stride = kernel, no padding) as a linear over flat patches."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.patch = conv.kernel_size
        self.linear = nn.Linear(conv.weight[0].numel(), conv.out_channels, bias=conv.bias is not None)
        with torch.no_grad():
            self.linear.weight.copy_(conv.weight.flatten(1))
            if conv.bias is not None:
                self.linear.bias.copy_(conv.bias)

    @staticmethod
    def applies_to(conv: nn.Module) -> bool:
        return (
            isinstance(conv, nn.Conv2d)
            and conv.stride == conv.kernel_size
            and conv.padding in ((0, 0), "valid")
            and conv.dilation == (1, 1)
            and conv.groups == 1
        )

    def forward(self, images: Tensor) -> Tensor:
        batch, channels, height, width = images.shape
        (ph, pw), (gh, gw) = self.patch, (height // self.patch[0], width // self.patch[1])
        patches = images[:, :, : gh * ph, : gw * pw].reshape(batch, channels, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5)
        return self.linear(patches.reshape(batch, gh * gw, -1)).transpose(1, 2).reshape(batch, -1, gh, gw)


class ClassTokenBlock(nn.Module):
    """An open_clip residual block whose output is computed for the class token (token 0) only."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(
        self, q_x: Tensor, k_x: Tensor | None = None, v_x: Tensor | None = None, attn_mask: Tensor | None = None
    ) -> Tensor:
        block = self.block
        token = q_x[:, :1] + block.ls_1(block.attn.attend(block.ln_1(q_x), 1, attn_mask))
        return token + block.ls_2(block.mlp(block.ln_2(token)))


def inference_tower(tower: nn.Module) -> nn.Module:
    """A copy of an open_clip image tower with the exact rewrites above applied where they hold."""
    tower = copy.deepcopy(tower).eval()
    for module in list(tower.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.MultiheadAttention):
                setattr(module, name, SelfAttention(child))
    if PatchLinear.applies_to(getattr(tower, "conv1", None)):
        tower.conv1 = PatchLinear(tower.conv1)
    pools_class_token = (
        getattr(tower, "pool_type", None) == "tok"
        and getattr(tower, "attn_pool", None) is None
        and not getattr(tower, "output_tokens", True)
    )
    blocks = getattr(getattr(tower, "transformer", None), "resblocks", None)
    if (
        pools_class_token
        and blocks is not None
        and isinstance(blocks[-1].attn, SelfAttention)
        and not hasattr(blocks[-1], "ln_1_kv")
    ):
        blocks[-1] = ClassTokenBlock(blocks[-1])
    return tower


def int8_image_tower(tower: nn.Module, image_size: int | None = None) -> nn.Module:
    """An int8 (dynamic activation scales) CPU copy of a CLIP image tower, in eval mode.

    With `image_size`, the quantised tower is also traced and frozen with TorchScript, which
    gives the same outputs bit for bit and saves about 14% of the time on a 2-core CPU (the
    per-call Python dispatch of ~100 small ops); a tower that cannot be traced stays eager.
    `torch.jit.trace` is deprecated upstream like `torch.ao` (its successor, `torch.compile`,
    takes about a minute to compile here), so its notice is silenced the same way."""
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as exc:  # pragma: no cover - depends on the torch build
        raise QuantizationUnavailable(
            f"this torch ({torch.__version__}) has no torch.ao.quantization.quantize_dynamic"
        ) from exc
    if (
        "x86" not in torch.backends.quantized.supported_engines
        and "fbgemm" not in torch.backends.quantized.supported_engines
    ):
        raise QuantizationUnavailable(f"this torch ({torch.__version__}) has no x86/fbgemm int8 kernels")
    if any(p.device.type != "cpu" for p in tower.parameters()):
        raise ValueError("int8 image towers run on the CPU; the tower given is on another device")
    with warnings.catch_warnings():
        # Deprecation notices for torch.ao (see the module docstring); the API still works.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        quantized = quantize_dynamic(inference_tower(tower).float(), {nn.Linear}, dtype=torch.qint8)
        if image_size is None:
            return quantized
        try:
            with torch.no_grad():
                return torch.jit.freeze(torch.jit.trace(quantized, torch.zeros(2, 3, image_size, image_size)))
        except (RuntimeError, torch.jit.Error):
            return quantized
