"""Visual Semantic Bank and the text refiner of SpecPL (spec §2).

The bank is a frozen buffer of M unit vectors. Each class text feature retrieves a soft mixture of
bank rows and is refined by a small MLP + LayerNorm. The refiner runs at train and test time; its
output depends only on the class set, so it is computed once per class set at inference.

Three forms of the refiner (``refiner``), with q = normalise(text), r the retrieved bank mixture
and x = LN(q + MLP([q; r])), the spec's refinement:
- ``"layernorm"``, the spec's: t~ = normalise(x). LN sits on the residual path, so no init of the
  MLP gives back q (a zero MLP still gives normalise(LN(q)), q centred and so turned): a booster
  built this way starts from other text than its host's, often below it;
- ``"interpolate"`` (the default): t~ = normalise(q + g * (x - q)) with g a learned gate that starts
  at 0 and is bounded to [0, 1], so the text lies between the host's own and the spec's
  refinement, never beyond either. At step 0 this is exactly q, the host's text direction (and
  CoCoOp's test blend of raw and refined text is the raw direction), so a booster never starts
  below its host; at g = 1 it is the spec's form. g gets a gradient from the first step, the MLP
  and LN from the step after it opens; its gradient passes the bounds unchanged (straight
  through), so a gate that a step pushed shut can open again;
- ``"gated"``: the same blend with g unbounded, the default of models saved before
  ``"interpolate"``, kept so they rebuild as trained. x has a norm near sqrt(D) (8 on the world
  CLIP, 23 on ViT-B/16) against q's 1, so a negative gate turns the text towards -x: on a domain
  where zero-shot is near chance, deep hosts pushed g below 0 early in training on one seed in
  three, and validation fell to 0-6 % (bench/DEFAULTS.md, round 4).
The MLP keeps PyTorch's default init in every form, so all draw the same random numbers. The gate
is a parameter only in the gated forms: a bank of the spec's form has the same tensors as before
the option existed. This module defaults to the spec's form; SpecPL's option picks one
(`specpl.methods.specpl.SpecPLConfig.refiner`, "interpolate" by default).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from specpl.config import check_choice

Refiner = Literal["interpolate", "gated", "layernorm"]  # a Literal, so forms offer the choices
REFINERS: tuple[str, ...] = get_args(Refiner)


def check_refiner(refiner: str) -> str:
    check_choice("specpl.refiner", refiner, REFINERS)
    return refiner


class VisualSemanticBank(nn.Module):
    def __init__(
        self, dim: int, size: int = 64, tau: float = 0.07, momentum: float = 0.05, refiner: str = "layernorm"
    ) -> None:
        super().__init__()
        self.tau = tau
        self.momentum = momentum
        self.refiner = check_refiner(refiner)
        self.register_buffer("bank", F.normalize(torch.randn(size, dim), dim=-1))
        self.mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.norm = nn.LayerNorm(dim)
        if refiner != "layernorm":
            self.gate = nn.Parameter(torch.zeros(()))  # after the MLP and LN: the same random draws as "layernorm"

    @torch.no_grad()
    def initialise(self, features: torch.Tensor) -> None:
        """One-shot init from low-band embeddings (spec §2): the first M features fill the bank, each
        later one pulls its nearest row (by cosine) towards itself with momentum 0.05."""
        features = F.normalize(features.to(self.bank), dim=-1)
        size = self.bank.shape[0]
        head = features[:size]
        self.bank[: head.shape[0]] = head
        for feature in features[size:]:
            nearest = int((self.bank @ feature).argmax())
            self.bank[nearest] = F.normalize((1 - self.momentum) * self.bank[nearest] + self.momentum * feature, dim=-1)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        """Refine text features (..., D) with r = softmax(qB^T/tau) B and x = LN(q + MLP([q; r])):
        t~ = normalise(x) ("layernorm"), or normalise(q + g * (x - q)) with g bounded to [0, 1]
        ("interpolate") or unbounded ("gated")."""
        query = F.normalize(text, dim=-1)
        weights = torch.softmax(query @ self.bank.t().to(query) / self.tau, dim=-1)
        retrieved = weights @ self.bank.to(query)
        refined = self.norm(query + self.mlp(torch.cat([query, retrieved], dim=-1)))
        if self.refiner != "layernorm":
            gate = self.gate
            if self.refiner == "interpolate":  # the bounded value forward, the raw gradient back
                gate = gate + (gate.clamp(0.0, 1.0) - gate).detach()
            refined = query + gate * (refined - query)
        return F.normalize(refined, dim=-1)
