"""Visual Semantic Bank and the text refiner of SpecPL (spec §2).

The bank is a frozen buffer of M unit vectors. Each class text feature retrieves a soft mixture of
bank rows and is refined by a small MLP + LayerNorm. The refiner runs at train and test time; its
output depends only on the class set, so it is computed once per class set at inference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class VisualSemanticBank(nn.Module):
    def __init__(self, dim: int, size: int = 64, tau: float = 0.07, momentum: float = 0.05) -> None:
        super().__init__()
        self.tau = tau
        self.momentum = momentum
        self.register_buffer("bank", F.normalize(torch.randn(size, dim), dim=-1))
        self.mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.norm = nn.LayerNorm(dim)

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
        """Refine text features (..., D): t~ = normalise(LN(q + MLP([q; r]))), r = softmax(qB^T/tau) B."""
        query = F.normalize(text, dim=-1)
        weights = torch.softmax(query @ self.bank.t().to(query) / self.tau, dim=-1)
        retrieved = weights @ self.bank.to(query)
        return F.normalize(self.norm(query + self.mlp(torch.cat([query, retrieved], dim=-1))), dim=-1)
