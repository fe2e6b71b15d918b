"""CLIP's text transformer driven from prompt embeddings, with per-layer prompt slots and two exact
shortcuts.

1. Truncation: under the causal mask, a token never attends to later positions, so cutting the
   sequence right after the longest prompt's end-of-text token changes no feature.
2. Shared prefix: when every class prompt starts with the same tokens ([SOS] + learned context),
   those positions have the same hidden states in every class. We run them once and let the
   class-specific suffix attend to their keys/values, instead of recomputing them per class.

Every prompt is encoded as ``prefix + suffix``: a prefix (G, P, W) shared by the N class suffixes
of its group, and the suffixes (N, S, W) or (G, N, S, W). Deep prompt slots (`specpl.slots`) live
in the prefix: start-anchored groups right after [SOS], end-anchored groups at the end of the
prefix, right before the class tokens (after a host's learned context). Both shortcuts stay exact
with them, because a slot changes a prefix position in the same way for every class. A prompt
with nothing shared is a prefix of [SOS] alone.

A `TextHook` sees each layer's prefix, suffixes and end-of-text positions and returns the prefix.
It may return one prefix per class, (G, N, P, W) (a structural module whose prompts attend to each
class's own tokens): from then on every (group, class) pair is its own group with one suffix,
which is what the encoder computes without the shared-prefix shortcut.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from specpl.slots import PromptGroup, SlotState

TextHook = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(layer, prefix (G, P, W), suffix (G, N, S, W), end-of-text positions in the suffix (G, N)) ->
the prefix before block `layer`, (G, P', W) or per class (G, N, P', W)."""


class PromptTextEncoder(nn.Module):
    """Wraps (does not copy) the text tower of an open_clip ``CLIP`` model."""

    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        if (
            getattr(clip_model, "text_pool_type", "argmax") != "argmax"
            or getattr(clip_model, "attn_mask", None) is None
        ):
            raise ValueError(
                "prompt learning needs a CLIP-style text tower (causal mask, end-of-text pooling); "
                f"{type(clip_model).__name__} with pool type {getattr(clip_model, 'text_pool_type', '?')!r} is not "
                "supported"
            )
        self.clip = [clip_model]  # a list keeps the frozen model out of this module's state_dict

    @property
    def model(self) -> nn.Module:
        return self.clip[0]

    @property
    def width(self) -> int:
        return int(self.model.token_embedding.weight.shape[1])

    @property
    def depth(self) -> int:
        return len(self.model.transformer.resblocks)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.token_embedding(tokens)

    def forward(
        self,
        embeddings: torch.Tensor,
        eot_index: torch.Tensor,
        groups: Sequence[PromptGroup] = (),
        hooks: Sequence[TextHook] = (),
        prefix_length: int | None = None,
    ) -> torch.Tensor:
        """Text features for whole token embeddings (N, L, W), pooled at `eot_index` (N,): each
        prompt is its own group, its prefix the first `prefix_length` tokens ([SOS] and a learned
        context; default [SOS] plus any pre-placed prompt positions)."""
        p_len = prefix_length or 1 + sum(g.length for g in groups if not g.insert)
        prefix, suffix = embeddings[:, :p_len], embeddings[:, p_len:].unsqueeze(1)
        return self.forward_shared_prefix(prefix, suffix, (eot_index - p_len).unsqueeze(1), groups, hooks)[:, 0]

    @torch.no_grad()
    def prefix_states(self, prefix: torch.Tensor, layers: int) -> torch.Tensor:
        """(layers, P, W): the hidden states of a prefix's token embeddings (P, W) entering text
        blocks 0..layers-1 of the frozen tower. Under the causal mask they do not depend on what
        follows the prefix, so they are the same in every class prompt that starts with it."""
        model = self.model
        length = prefix.shape[0]
        x = (prefix + model.positional_embedding[:length]).unsqueeze(0)
        mask = model.attn_mask[:length, :length]
        states = []
        for block in model.transformer.resblocks[:layers]:
            states.append(x[0])
            x = block(x, attn_mask=mask)
        return torch.stack(states)

    def split_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(prefix, suffix, eot) embeddings of tokenised text (N, 77) for `forward_shared_prefix`:
        the shared [SOS], the rest cut after the longest end-of-text, and end-of-text positions in
        the suffix. Computed once per class set, it keeps data-dependent shapes out of the step."""
        eot = tokens.argmax(dim=-1)
        length = int(eot.max()) + 1
        device = self.model.token_embedding.weight.device
        with torch.no_grad():
            embedded = self.embed_tokens(tokens[:, :length].to(device))
        return embedded[:1, :1], embedded[:, 1:], eot.to(device) - 1

    def encode_tokens(
        self, tokens: torch.Tensor, groups: Sequence[PromptGroup] = (), hooks: Sequence[TextHook] = ()
    ) -> torch.Tensor:
        """Features of tokenised text (N, 77), truncated after the longest end-of-text; with no
        groups this equals ``model.encode_text`` (exact under the causal mask)."""
        return self.forward_shared_prefix(*self.split_tokens(tokens), groups, hooks)[0]

    def forward_shared_prefix(
        self,
        prefix: torch.Tensor,
        suffix: torch.Tensor,
        eot_index: torch.Tensor,
        groups: Sequence[PromptGroup] = (),
        hooks: Sequence[TextHook] = (),
    ) -> torch.Tensor:
        """Features of the prompts ``cat(prefix[g], suffix[n])`` for every group g and class n.

        prefix: (G, P, W), shared by all N prompts of a group; suffix: (N, S, W) or (G, N, S, W);
        eot_index: (N,) or (G, N) positions of end-of-text inside the suffix; groups: deep prompt
        slots (they live in the prefix); hooks: applied in order before every block, after the
        slots. Returns (G, N, D).
        """
        placed = 1 + sum(g.length for g in groups if not g.insert)
        if prefix.shape[1] < placed:
            raise ValueError(f"the prefix has {prefix.shape[1]} tokens but its pre-placed prompt groups need {placed}")
        groups_n, p_len, _ = prefix.shape
        if suffix.dim() == 3:
            suffix = suffix.unsqueeze(0).expand(groups_n, -1, -1, -1)
        n_cls, s_len = suffix.shape[1], suffix.shape[2]
        pos = self.model.positional_embedding
        groups, joined = _join_sequence(groups, pos, p_len)
        if p_len + joined + s_len > pos.shape[0]:
            needed, has = p_len + joined + s_len, pos.shape[0]
            raise ValueError(f"the prompts need {needed} positions with their in-sequence tokens; the tower has {has}")
        slots = SlotState(groups, self.depth)
        x_p = prefix + pos[:p_len]
        x_s = suffix + pos[p_len + joined : p_len + joined + s_len]
        eot_index = (
            eot_index.expand(groups_n, -1) if eot_index.dim() == 2 else eot_index.unsqueeze(0).expand(groups_n, -1)
        )
        per_class = False  # True once a hook gave every class its own prefix
        for layer, block in enumerate(self.model.transformer.resblocks):
            if not slots.empty:
                x_p = slots.apply(x_p, layer)
            for hook in hooks:
                x_p = hook(layer, x_p, x_s, eot_index)
                if x_p.dim() == 4:  # one prefix per (group, class): each pair becomes a group of one
                    per_class = True
                    x_p, x_s, eot_index = (
                        x_p.flatten(0, 1),
                        x_s.flatten(0, 1).unsqueeze(1),
                        eot_index.flatten().unsqueeze(1),
                    )
            x_p, x_s = _shared_prefix_block(block, x_p, x_s)
        x_s = self.model.ln_final(x_s)
        rows = torch.arange(x_s.shape[0], device=x_s.device).unsqueeze(1)
        pooled = x_s[
            rows, torch.arange(x_s.shape[1], device=x_s.device).unsqueeze(0), eot_index
        ]  # (G, N, W) or (G*N, 1, W)
        if per_class:
            pooled = pooled.view(groups_n, n_cls, -1)
        return self._project(pooled)

    def _project(self, pooled: torch.Tensor) -> torch.Tensor:
        projection = self.model.text_projection
        if isinstance(projection, nn.Linear):
            return projection(pooled)
        return pooled @ projection


def _join_sequence(groups: Sequence[PromptGroup], pos: torch.Tensor, p_len: int) -> tuple[list[PromptGroup], int]:
    """(groups, tokens joined): the in-sequence groups (`PromptGroup.in_sequence`) with the positional
    embeddings of the positions after the prefix added to their layer-0 tokens, in order, and how
    many tokens they add before the class tokens."""
    placed, joined = [], 0
    for group in groups:
        if group.in_sequence:
            first = group.tokens[0] + pos[p_len + joined : p_len + joined + group.length].to(group.tokens[0].dtype)
            group = dataclasses.replace(group, tokens=[first, *group.tokens[1:]])
            joined += group.length
        placed.append(group)
    return placed, joined


def _shared_prefix_block(block: nn.Module, x_p: torch.Tensor, x_s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One open_clip ``ResidualAttentionBlock`` over a prefix (G,P,W) and suffixes (G,N,S,W).

    The prefix attends causally to itself; each suffix attends to the whole prefix and causally to
    itself (a lower-right causal mask over prefix + suffix keys)."""
    attn: nn.MultiheadAttention = block.attn
    heads = attn.num_heads
    groups, n_cls, s_len, width = x_s.shape
    p_len = x_p.shape[1]
    head_dim = width // heads

    def split_heads(t: torch.Tensor) -> torch.Tensor:  # (..., T, W) -> (..., H, T, d)
        return t.unflatten(-1, (heads, head_dim)).transpose(-3, -2)

    q_p, k_p, v_p = (
        split_heads(t) for t in F.linear(block.ln_1(x_p), attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1)
    )
    q_s, k_s, v_s = (
        split_heads(t) for t in F.linear(block.ln_1(x_s), attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1)
    )
    out_p = F.scaled_dot_product_attention(q_p, k_p, v_p, is_causal=True)
    k_all = torch.cat([k_p.unsqueeze(1).expand(-1, n_cls, -1, -1, -1), k_s], dim=-2)
    v_all = torch.cat([v_p.unsqueeze(1).expand(-1, n_cls, -1, -1, -1), v_s], dim=-2)
    suffix_mask = torch.ones(s_len, p_len + s_len, dtype=torch.bool, device=x_s.device).tril(diagonal=p_len)
    out_s = F.scaled_dot_product_attention(q_s, k_all, v_all, attn_mask=suffix_mask)

    def merge_heads(t: torch.Tensor) -> torch.Tensor:
        return attn.out_proj(t.transpose(-3, -2).flatten(-2))

    x_p = x_p + block.ls_1(merge_heads(out_p))
    x_s = x_s + block.ls_1(merge_heads(out_s))
    x_p = x_p + block.ls_2(block.mlp(block.ln_2(x_p)))
    x_s = x_s + block.ls_2(block.mlp(block.ln_2(x_s)))
    return x_p, x_s
