"""SpecPL's options (`SpecPLConfig`) and the per-host default of its bank temperature: what a run
records and a form shows, kept apart from the modules they build."""

from __future__ import annotations

from dataclasses import dataclass

from specpl.methods.specpl.bank import Refiner, check_refiner

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
    # weight of a class cross-entropy on the host's raw (unrefined) text; ours, 0 in the paper preset,
    # on MMRL, whose class branch already trains its raw text, and on the text-only hosts
    # (`specpl.methods.specpl.booster`)
    lambda_raw: float = 1.0
    train_band_mlps: bool = False
    small_init_std: float = 1e-3
    test_blend: float = 1.0  # share of the refined text at test (1: refined only; the paper preset's CoCoOp: 0.5)
    # False: classes marked novel keep their raw text at test (MMRL's routing, on any host); the
    # default preset's value on CoOp, CoCoOp and KgCoOp
    refine_novel: bool = True
    band_stat_dim: int | None = None  # None: the run's decomposer says (recorded once built)
    refiner: Refiner = "interpolate"  # a gate in [0, 1] from 0: identity at step 0 (the bank module's docstring)

    def __post_init__(self) -> None:
        check_refiner(self.refiner)
