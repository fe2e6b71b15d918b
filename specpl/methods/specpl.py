"""SpecPL booster (Disentangling Spectral Granularity for Prompt Learning, ICML 2026).

Follows ``shared/methods/SPECPL.md``. Where the spec lists an ambiguity we take its recommendation:
- the bank is initialised from the low bands of the first ``bank_init_batches`` training batches
  (10) for every host; ``bank_init_batches=0`` reproduces the reference code's random bank;
- the band projection MLPs stay frozen random projections (``train_band_mlps`` makes them trainable);
- the refiner keeps PyTorch's default init (no zero-init last layer);
- with batch size 1 the counterfactual loss reduces to the factual one, as in the reference code.
The VAE teacher is pluggable (`specpl.bands`); the decomposer used is recorded in config.json.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from specpl.methods.bank import VisualSemanticBank
from specpl.methods.base import Booster, BoosterContext, ForwardState
from specpl.methods.losses import counterfactual_permutation, granule_logits, semantic_anchor_loss
from specpl.methods.registry import BOOSTERS

HOST_TAU = {"cocoop": 0.02}  # spec §2: 0.07 for every other host


@dataclass
class SpecPLConfig:
    bank_size: int = 64
    tau: float | None = None  # None: 0.07, or 0.02 for CoCoOp
    bank_momentum: float = 0.05
    bank_init_batches: int = 10
    lambda_sem: float = 0.1
    lambda_gf: float = 0.1
    lambda_gcf: float = 0.1
    train_band_mlps: bool = False
    small_init_std: float = 1e-3


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


@BOOSTERS.register("specpl")
class SpecPL(Booster):
    name = "specpl"
    config_class: ClassVar[type] = SpecPLConfig
    needs_bands = True

    def __init__(self, config: SpecPLConfig, context: BoosterContext) -> None:
        super().__init__()
        if context.band_stat_dim is None:
            raise ValueError("SpecPL needs a band decomposer (its statistic size sets the band embedding)")
        dim, std = context.embed_dim, config.small_init_std
        self.config = config
        self.bank = VisualSemanticBank(dim, config.bank_size, config.tau or HOST_TAU.get(context.host_name, 0.07), config.bank_momentum)
        self.band_low = BandEmbedding(context.band_stat_dim, dim, std)
        self.band_high = BandEmbedding(context.band_stat_dim, dim, std)
        self.band_low.requires_grad_(config.train_band_mlps)
        self.band_high.requires_grad_(config.train_band_mlps)
        self.fusion = SharedIndividualFusion(dim, std)
        self.modulator = GranuleModulator(dim, std)

    def refine_text(self, text: torch.Tensor) -> torch.Tensor:
        return self.bank(text)

    @torch.no_grad()
    def prepare(self, band_stats: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        batches = band_stats[: self.config.bank_init_batches]
        if batches:
            self.bank.initialise(torch.cat([self.band_low(low) for low, _ in batches]))

    def band_embeddings(self, low_stats: torch.Tensor, high_stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.set_grad_enabled(self.config.train_band_mlps and torch.is_grad_enabled()):
            return self.band_low(low_stats), self.band_high(high_stats)

    def modulated_logits(
        self, image_features: torch.Tensor, shared_text: torch.Tensor, granule: torch.Tensor, refined_text: torch.Tensor, scale: float
    ) -> torch.Tensor:
        """Granule-path logits: the image FiLM-modulated by (shared semantic factor, granule)."""
        cond = self.fusion(F.normalize(shared_text, dim=-1), granule)
        modulated = self.modulator(F.normalize(image_features, dim=-1), cond)
        return granule_logits(modulated, refined_text, scale)

    def losses(self, state: ForwardState) -> dict[str, torch.Tensor]:
        if state.batch.band_stats is None:
            raise ValueError("SpecPL needs band statistics in the batch")
        low, high = self.band_embeddings(*state.batch.band_stats)
        labels = state.batch.labels
        rows = torch.arange(labels.shape[0], device=labels.device)
        shared = state.raw_text[rows, labels] if state.raw_text.dim() == 3 else state.raw_text[labels]
        factual = self.modulated_logits(state.image_features, shared, high, state.refined_text, state.logit_scale)
        perm = counterfactual_permutation(labels.shape[0], device=labels.device)
        counterfactual = self.modulated_logits(state.image_features, shared, high[perm], state.refined_text, state.logit_scale)
        state.extras["counterfactual_permutation"] = perm
        c = self.config
        return {
            "sem": c.lambda_sem * semantic_anchor_loss(state.logits, state.raw_text, low),
            "granule": c.lambda_gf * F.cross_entropy(factual, labels),
            "counterfactual": c.lambda_gcf * F.cross_entropy(counterfactual, labels[perm]),
        }
