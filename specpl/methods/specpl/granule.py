"""The granule path's small networks (spec §1, §3.4-3.5): band statistics to unit embeddings, the
fusion of the shared semantic factor with a granule, and the FiLM that modulates the image feature
by it. Kept apart from the booster, which wires them into its losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _small_init(module: nn.Module, std: float) -> nn.Module:
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)
    return module


def _two_layer(d_in: int, d_hidden: int, d_out: int, act: type[nn.Module], std: float) -> nn.Sequential:
    return _small_init(nn.Sequential(nn.Linear(d_in, d_hidden), act(), nn.Linear(d_hidden, d_out)), std)  # type: ignore[return-value]


class BandEmbedding(nn.Module):
    """LN(stat) -> Linear -> SiLU -> Linear, then L2-normalised (spec §1)."""

    def __init__(self, stat_dim: int, dim: int, std: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(stat_dim), _two_layer(stat_dim, dim, dim, nn.SiLU, std))

    def forward(self, stats: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(stats), dim=-1)


class SharedIndividualFusion(nn.Module):
    """cond = normalise(LN_out(LN_s(a) + MLP([LN_s(a); LN_g(g)]))) (spec §3.4)."""

    def __init__(self, dim: int, std: float) -> None:
        super().__init__()
        self.norm_shared, self.norm_granule, self.norm_out = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mlp = _two_layer(2 * dim, dim, dim, nn.SiLU, std)

    def forward(self, shared: torch.Tensor, granule: torch.Tensor) -> torch.Tensor:
        s = self.norm_shared(shared)
        return F.normalize(self.norm_out(s + self.mlp(torch.cat([s, self.norm_granule(granule)], dim=-1))), dim=-1)


class GranuleModulator(nn.Module):
    """FiLM: [gamma, beta] = MLP(LN(cond)); v' = normalise((1 + tanh gamma) * v + beta) (spec §3.5)."""

    def __init__(self, dim: int, std: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = _two_layer(dim, 2 * dim, 2 * dim, nn.SiLU, std)

    def forward(self, image: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.mlp(self.norm(cond)).chunk(2, dim=-1)
        return F.normalize((1 + torch.tanh(gamma)) * image + beta, dim=-1)
