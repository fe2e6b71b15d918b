"""The shared prompt learner: learned context vectors in front of each class name.

Prompts are ``[SOS] v_1 .. v_M <class name><tail> [EOS]`` (the tail is "." or the rest of a
template, e.g. ", a type of pet."). Only the v's are learned. The token sequence is
cut right after the longest prompt's end-of-text token (exact under the causal mask), and when the
context is shared by all classes the ``[SOS] v_1 .. v_M`` prefix is encoded once for all classes
(see `specpl.text`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from specpl.slots import PromptGroup
from specpl.text import PromptTextEncoder, TextHook

PLACEHOLDER = "X"


class PromptLearner(nn.Module):
    """Learned context vectors plus the frozen token embeddings of each class's prompt suffix.

    The class-dependent embeddings are non-persistent buffers: they are rebuilt from the class
    names (`set_classnames`) and never saved, so a checkpoint can be applied to new classes.
    """

    def __init__(
        self,
        text_encoder: PromptTextEncoder,
        tokenizer: Callable[..., torch.Tensor],
        n_ctx: int,
        ctx_init: str = "",
        class_specific: bool = False,
        init_std: float = 0.02,
        shared_prefix: bool = True,
        tail: str = "{}.",
    ) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.class_specific = class_specific
        self.shared_prefix = shared_prefix and not class_specific
        width = text_encoder.width
        device = self.device
        if ctx_init:
            init_tokens = tokenizer([ctx_init])[0]
            n_ctx = int(init_tokens.argmax()) - 1
            with torch.no_grad():
                init = text_encoder.embed_tokens(init_tokens[1 : 1 + n_ctx].to(device)).clone()
        else:
            init = torch.randn(n_ctx, width, device=device) * init_std
        self.n_ctx = n_ctx
        self.ctx_init = ctx_init
        self.tail = tail  # the frozen text after the context, "{}" the class name
        self.ctx = nn.Parameter(init.float())  # (M, W); expanded per class when class-specific
        self.classnames: list[str] = []

    @property
    def device(self) -> torch.device:
        """Where the frozen token embeddings live; every tensor built here is put there too."""
        return self.text_encoder.model.token_embedding.weight.device

    @torch.no_grad()
    def context_states(self, layers: int) -> torch.Tensor:
        """(layers - 1, M, W): what the frozen text tower holds at the context positions entering
        blocks 1..layers-1 for ``[SOS] context``. A deep prompt set to these overwrites each layer's
        context positions with what is already there, so it changes no class's text feature."""
        sos = self.text_encoder.embed_tokens(self.tokenizer([""])[0][:1].to(self.device)).float()
        prefix = torch.cat([sos, self.ctx.detach().float()])
        return self.text_encoder.prefix_states(prefix, layers)[1:, 1:].clone()

    def set_classnames(self, classnames: list[str]) -> None:
        """Tokenise ``X X .. X <tail with the name>`` per class and keep the frozen embeddings
        around the X's."""
        if self.class_specific and self.ctx.dim() == 2:
            self.ctx = nn.Parameter(self.ctx.detach().unsqueeze(0).repeat(len(classnames), 1, 1))
        if self.class_specific and self.ctx.shape[0] != len(classnames):
            raise ValueError(
                f"class-specific context was learned for {self.ctx.shape[0]} classes and cannot be applied to "
                f"{len(classnames)}"
            )
        prompts = [" ".join([PLACEHOLDER] * self.n_ctx) + " " + self.tail.format(name) for name in classnames]
        tokens = self.tokenizer(prompts)
        eot = tokens.argmax(dim=-1)
        length = int(eot.max()) + 1
        device = self.device
        with torch.no_grad():
            embedded = self.text_encoder.embed_tokens(tokens[:, :length].to(device)).float()
        self.register_buffer("sos_embedding", embedded[:1, :1].clone(), persistent=False)
        self.register_buffer("suffix_embedding", embedded[:, 1 + self.n_ctx :].clone(), persistent=False)
        self.register_buffer("eot_index", eot.to(device), persistent=False)
        self.classnames = list(classnames)

    def forward(
        self,
        ctx_shift: torch.Tensor | None = None,
        groups: Sequence[PromptGroup] = (),
        classes: slice | None = None,
        hooks: Sequence[TextHook] = (),
    ) -> torch.Tensor:
        """Raw text features (C, D), or (G, C, D) when `ctx_shift` (G, W) conditions the context
        per group (CoCoOp's image-conditioned shift). `groups` are deep prompt slots; groups with
        ``insert=False`` overwrite the context positions from their first layer on. `classes`
        restricts the output to a slice of the classes (chunked evaluation). `hooks` are per-layer
        text hooks; the prefix they see is [SOS] plus the context."""
        ctx = self.ctx.to(self.suffix_embedding.dtype)
        suffix, eot = self.suffix_embedding, self.eot_index
        if classes is not None:
            if self.class_specific:
                raise ValueError("class-specific context cannot be evaluated in class chunks")
            suffix, eot = suffix[classes], eot[classes]
        n_cls = suffix.shape[0]
        if self.class_specific:
            return self._full(ctx, groups, hooks)
        if ctx_shift is None:
            prefix = torch.cat([self.sos_embedding, ctx.unsqueeze(0)], dim=1)  # (1, 1+M, W)
        else:
            shifted = ctx.unsqueeze(0) + ctx_shift.unsqueeze(1)  # (G, M, W)
            prefix = torch.cat([self.sos_embedding.expand(shifted.shape[0], -1, -1), shifted], dim=1)
        if self.shared_prefix:
            out = self.text_encoder.forward_shared_prefix(prefix, suffix, eot - prefix.shape[1], groups, hooks)
        else:
            n_groups = prefix.shape[0]
            full = torch.cat(
                [prefix.unsqueeze(1).expand(-1, n_cls, -1, -1), suffix.unsqueeze(0).expand(n_groups, -1, -1, -1)],
                dim=2,
            )
            out = self.text_encoder(full.flatten(0, 1), eot.repeat(n_groups), groups, hooks, prefix.shape[1]).unflatten(
                0, (n_groups, n_cls)
            )
        return out[0] if ctx_shift is None else out

    def _full(self, ctx: torch.Tensor, groups: Sequence[PromptGroup], hooks: Sequence[TextHook]) -> torch.Tensor:
        n_cls = self.suffix_embedding.shape[0]
        prompts = torch.cat([self.sos_embedding.expand(n_cls, -1, -1), ctx, self.suffix_embedding], dim=1)
        return self.text_encoder(prompts, self.eot_index, groups, hooks, 1 + self.n_ctx)
