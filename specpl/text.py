"""CLIP's text transformer driven from prompt embeddings, with two exact shortcuts.

1. Truncation: under the causal mask, a token never attends to later positions, so cutting the
   sequence right after the longest prompt's end-of-text token changes no feature.
2. Shared prefix: when every class prompt starts with the same tokens ([SOS] + learned context),
   those positions have the same hidden states in every class. We run them once and let the
   class-specific suffix attend to their keys/values, instead of recomputing them per class.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PromptTextEncoder(nn.Module):
    """Wraps (does not copy) the text tower of an open_clip ``CLIP`` model."""

    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        if getattr(clip_model, "text_pool_type", "argmax") != "argmax" or getattr(clip_model, "attn_mask", None) is None:
            raise ValueError(
                "prompt learning needs a CLIP-style text tower (causal mask, end-of-text pooling); "
                f"{type(clip_model).__name__} with pool type {getattr(clip_model, 'text_pool_type', '?')!r} is not supported"
            )
        self.clip = [clip_model]  # a list keeps the frozen model out of this module's state_dict

    @property
    def model(self) -> nn.Module:
        return self.clip[0]

    @property
    def width(self) -> int:
        return int(self.model.token_embedding.weight.shape[1])

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.token_embedding(tokens)

    def forward(self, embeddings: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        """Text features for token embeddings (N, L, W), pooled at `eot_index` (N,)."""
        length = embeddings.shape[1]
        x = embeddings + self.model.positional_embedding[:length]
        x = self.model.transformer(x, attn_mask=self.model.attn_mask[:length, :length])
        return self._project(self.model.ln_final(x)[torch.arange(x.shape[0], device=x.device), eot_index])

    def forward_shared_prefix(self, prefix: torch.Tensor, suffix: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        """Features of the prompts ``cat(prefix[g], suffix[n])`` for every group g and class n.

        prefix: (G, P, W), shared by all N prompts of a group; suffix: (N, S, W) or (G, N, S, W);
        eot_index: (N,) positions of end-of-text inside the suffix. Returns (G, N, D).
        """
        groups, p_len, _ = prefix.shape
        if suffix.dim() == 3:
            suffix = suffix.unsqueeze(0).expand(groups, -1, -1, -1)
        n_cls, s_len = suffix.shape[1], suffix.shape[2]
        pos = self.model.positional_embedding
        x_p = prefix + pos[:p_len]
        x_s = suffix + pos[p_len : p_len + s_len]
        causal = torch.ones(s_len, p_len + s_len, dtype=torch.bool, device=prefix.device).tril(diagonal=p_len)
        for block in self.model.transformer.resblocks:
            x_p, x_s = _shared_prefix_block(block, x_p, x_s, causal)
        x_s = self.model.ln_final(x_s)
        pooled = x_s[:, torch.arange(n_cls, device=x_s.device), eot_index]  # (G, N, W)
        return self._project(pooled)

    def _project(self, pooled: torch.Tensor) -> torch.Tensor:
        projection = self.model.text_projection
        if isinstance(projection, nn.Linear):
            return projection(pooled)
        return pooled @ projection


def _shared_prefix_block(
    block: nn.Module, x_p: torch.Tensor, x_s: torch.Tensor, suffix_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One open_clip ``ResidualAttentionBlock`` over a prefix (G,P,W) and suffixes (G,N,S,W)."""
    attn: nn.MultiheadAttention = block.attn
    heads = attn.num_heads
    groups, n_cls, s_len, width = x_s.shape
    head_dim = width // heads

    def split_heads(t: torch.Tensor) -> torch.Tensor:  # (..., T, W) -> (..., H, T, d)
        return t.unflatten(-1, (heads, head_dim)).transpose(-3, -2)

    q_p, k_p, v_p = (split_heads(t) for t in F.linear(block.ln_1(x_p), attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1))
    q_s, k_s, v_s = (split_heads(t) for t in F.linear(block.ln_1(x_s), attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1))
    out_p = F.scaled_dot_product_attention(q_p, k_p, v_p, is_causal=True)
    k_all = torch.cat([k_p.unsqueeze(1).expand(-1, n_cls, -1, -1, -1), k_s], dim=-2)
    v_all = torch.cat([v_p.unsqueeze(1).expand(-1, n_cls, -1, -1, -1), v_s], dim=-2)
    out_s = F.scaled_dot_product_attention(q_s, k_all, v_all, attn_mask=suffix_mask)

    def merge_heads(t: torch.Tensor) -> torch.Tensor:
        return attn.out_proj(t.transpose(-3, -2).flatten(-2))

    x_p = x_p + block.ls_1(merge_heads(out_p))
    x_s = x_s + block.ls_1(merge_heads(out_s))
    x_p = x_p + block.ls_2(block.mlp(block.ln_2(x_p)))
    x_s = x_s + block.ls_2(block.mlp(block.ln_2(x_s)))
    return x_p, x_s
