"""ISP's structural prompt modules (spec §2): the attention that updates one set of prompt tokens
from the tokens it attends to, started at exactly zero, and the frozen end-of-text states the
vision cross module reads. Kept apart from the booster, which only decides where in each tower the
modules act.

Zero start: with ``zero_start="output-projection"`` W_o is zero-initialised, as in the spec; the
default ``"initial-difference"`` subtracts the same module at its initial weights (a frozen
copy), f_theta(x) - f_theta0(x). Both are exactly zero at step 0, so step 0 gives the bare
host's logits exactly, and its gradients (exactly with a zero W_o; with the difference the two
input gradients cancel up to the order of summation). The default also lets every weight of the
module learn from the first step, where a zero W_o gives the inner projections no gradient until
W_o moves (and the all-methods test asks every learned tensor for a first-step gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from specpl.backbone import Backbone
from specpl.methods.isp.config import INITIAL_DIFFERENCE, OUTPUT_PROJECTION, at_least_fp32


class StructuralAttention(nn.Module):
    """W_o Attn(LN(queries) W_q, LN(sources) W_k, LN(sources) W_v): the update one set of prompt
    tokens gets from the tokens it attends to (spec §2)."""

    def __init__(
        self, query_width: int, source_width: int, dim: int, heads: int, device: torch.device | None = None
    ) -> None:
        super().__init__()
        self.heads = heads
        self.query_norm = nn.LayerNorm(query_width, device=device)
        self.source_norm = nn.LayerNorm(source_width, device=device)
        self.query = nn.Linear(query_width, dim, device=device)
        self.key = nn.Linear(source_width, dim, device=device)
        self.value = nn.Linear(source_width, dim, device=device)
        self.output = nn.Linear(dim, query_width, device=device)

    def forward(
        self, queries: torch.Tensor, sources: torch.Tensor, visible: torch.Tensor | None = None
    ) -> torch.Tensor:
        """queries (B, n, Wq), sources (B, m, Ws), `visible` (B, m) the sources each row may attend
        to (None: all) -> the update (B, n, Wq)."""

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        sources = self.source_norm(sources)
        q = split(self.query(self.query_norm(queries)))
        k, v = split(self.key(sources)), split(self.value(sources))
        mask = None if visible is None else visible[:, None, None, :]
        return self.output(F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).flatten(-2))


class ZeroStart(nn.Module):
    """A `StructuralAttention` whose output is exactly zero before training.

    ``output-projection``: W_o starts at zero. ``initial-difference``: the output is f_theta(x) -
    f_theta0(x), theta0 a frozen copy of the initial weights; gradients still flow into x through
    both terms, so at step 0 the inputs' gradients cancel too."""

    def __init__(self, module: StructuralAttention, mode: str) -> None:
        super().__init__()
        self.module = module
        self.mode = mode
        if mode == OUTPUT_PROJECTION:
            nn.init.zeros_(module.output.weight)
            nn.init.zeros_(module.output.bias)
        else:
            self.initial = nn.Module()  # persistent buffers: the output depends on them
            for name, parameter in module.named_parameters():
                self.initial.register_buffer(_buffer_name(name), parameter.detach().clone())

    def forward(
        self, queries: torch.Tensor, sources: torch.Tensor, visible: torch.Tensor | None = None
    ) -> torch.Tensor:
        out = self.module(queries, sources, visible)
        if self.mode == INITIAL_DIFFERENCE:
            initial = {name: self.initial.get_buffer(_buffer_name(name)) for name, _ in self.module.named_parameters()}
            out = out - functional_call(self.module, initial, (queries, sources, visible))
        return out


def _buffer_name(parameter: str) -> str:
    return parameter.replace(".", "__")


def end_of_text_states(backbone: Backbone, prompts: list[str], layers: int) -> torch.Tensor:
    """(layers, N, W): the hidden state at each prompt's end-of-text token entering text blocks
    0..layers-1 of the frozen CLIP (sequences cut after the longest end-of-text: exact under the
    causal mask)."""
    model = backbone.model
    device = model.token_embedding.weight.device
    tokens = backbone.tokenizer(prompts)
    eot = tokens.argmax(dim=-1)
    length = int(eot.max()) + 1  # read on the host: the model may sit on any device
    x = model.token_embedding(tokens[:, :length].to(device)) + model.positional_embedding[:length]
    eot = eot.to(device)
    mask = model.attn_mask[:length, :length]
    rows = torch.arange(len(prompts), device=device)
    states = []
    for block in model.transformer.resblocks[:layers]:
        states.append(x[rows, eot])
        x = block(x, attn_mask=mask)
    return at_least_fp32(torch.stack(states))
