"""Per-layer prompt slots shared by both towers (`specpl.text`, `specpl.vision`).

A method puts tokens into a tower as `PromptGroup`s. A group is *inserted* into the sequence before
one block (or, with ``insert=False``, occupies positions the input already has, as CoOp's context
does in the text prompt) and *overwritten* before each later block it has tokens for; past its
last layer its positions simply propagate. This one mechanism covers every host and booster in
docs/methods/: IVLP/MaPLe/PromptSRC deep prompts (text positions after [SOS] overwritten per
layer, vision tokens appended after the patches), MMRL's representation tokens (inserted after
[CLS]/[SOS] at block 6, overwritten to 12), and CasPL's frozen boosting prompts beside a host's
learnable ones (several groups per tower, frozen or trainable: that is the caller's tensors).

Layer ``l`` means "before block ``l``" (0-based). In the image tower, a group inserted at layer 0
enters before ``ln_pre``, as in the MaPLe/IVLP reference; inserted tokens never get a positional
embedding (MMRL, MaPLe). A `LayerHook` sees the hidden states before every block, after the slots
are applied, so cross-modal modules can read or rewrite them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

LayerHook = Callable[[int, Tensor], Tensor]

START, END = "start", "end"


@dataclass
class PromptGroup:
    """Tokens for consecutive layers of one tower, from `first_layer` on.

    Each entry of `tokens` is (n, W), shared by every sequence, or (G, n, W), one per sequence
    (per image, or per text group). `at` anchors the group right after the first token
    (``start``: after [SOS]/[CLS] and after earlier start-anchored groups) or after the last
    (``end``: after the patches, or in the text tower at the end of the shared prefix, right
    before the class tokens). `in_sequence` (text tower, end-anchored groups inserted at layer 0):
    the tokens join the input sequence, as if the prompt had been written with them, so they take
    the positional embeddings of the positions they fill and the class tokens after them shift by
    their length; other inserted tokens carry no positional embedding.
    """

    tokens: Sequence[Tensor]
    first_layer: int = 0
    at: str = START
    insert: bool = True
    name: str = ""
    in_sequence: bool = False

    def __post_init__(self) -> None:
        if not self.tokens:
            raise ValueError(f"prompt group {self.name!r} has no tokens")
        if self.at not in (START, END):
            raise ValueError(f"prompt group {self.name!r}: 'at' must be {START!r} or {END!r}, got {self.at!r}")
        if self.in_sequence and (self.at != END or not self.insert or self.first_layer != 0):
            raise ValueError(f"prompt group {self.name!r}: only end-anchored groups inserted at layer 0 join the text")
        lengths = {t.shape[-2] for t in self.tokens}
        if len(lengths) != 1:
            raise ValueError(f"prompt group {self.name!r} has layers of different lengths {sorted(lengths)}")

    @property
    def length(self) -> int:
        return int(self.tokens[0].shape[-2])

    @property
    def last_layer(self) -> int:
        return self.first_layer + len(self.tokens) - 1


class SlotState:
    """Where each group currently sits in one forward pass; applies a layer's inserts and overwrites."""

    def __init__(self, groups: Sequence[PromptGroup], depth: int) -> None:
        self.groups = list(groups)
        for group in self.groups:
            if group.last_layer >= depth:
                raise ValueError(
                    f"prompt group {group.name!r} has tokens up to layer {group.last_layer}, but the tower has "
                    f"{depth} blocks"
                )
        self.starts: list[int | None] = [None] * len(self.groups)
        offset = 1
        for index, group in enumerate(self.groups):  # groups already present in the input
            if not group.insert:
                if group.at != START:
                    raise ValueError(
                        f"prompt group {group.name!r}: only start-anchored groups can be pre-placed (insert=False)"
                    )
                self.starts[index] = offset
                offset += group.length

    @property
    def empty(self) -> bool:
        return not self.groups

    def apply(self, x: Tensor, layer: int) -> Tensor:
        """`x` (G, T, W) with this layer's groups inserted or overwritten (out of place)."""
        for index, group in enumerate(self.groups):
            if not group.first_layer <= layer <= group.last_layer:
                continue
            tokens = group.tokens[layer - group.first_layer].to(x.dtype)
            if tokens.dim() == 2:
                tokens = tokens.expand(x.shape[0], -1, -1)
            elif tokens.shape[0] != x.shape[0]:  # per-group tokens after the text split each group per class
                tokens = tokens.repeat_interleave(x.shape[0] // tokens.shape[0], dim=0)
            start = self.starts[index]
            if start is None:
                if layer != group.first_layer or not group.insert:
                    raise AssertionError("a group is inserted only at its first layer")
                start = (
                    x.shape[1]
                    if group.at == END
                    else 1
                    + sum(
                        g.length
                        for j, g in enumerate(self.groups[:index])
                        if g.at == START and self.starts[j] is not None
                    )
                )
                x = torch.cat([x[:, :start], tokens, x[:, start:]], dim=1)
                self.starts = [s + group.length if s is not None and s >= start else s for s in self.starts]
                self.starts[index] = start
            elif layer > group.first_layer or not group.insert:
                x = torch.cat([x[:, :start], tokens, x[:, start + group.length :]], dim=1)
        return x

    def position(self, group_name: str) -> slice:
        """Where the named group sits now (after the last block: its final hidden states)."""
        for group, start in zip(self.groups, self.starts, strict=True):
            if group.name == group_name and start is not None:
                return slice(start, start + group.length)
        raise KeyError(f"no placed prompt group named {group_name!r}")
