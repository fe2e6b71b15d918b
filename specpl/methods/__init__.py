"""Hosts and boosters, registered by name when this package is imported (`HOSTS`, `BOOSTERS`),
and the contracts they implement (`specpl.methods.base`). Composing them is `specpl.factory`.
"""

from specpl.methods import caspl, cocoop, coop, dapt, deep, isp, kgcoop, mmrl, specpl, zeroshot  # noqa: F401
from specpl.methods.base import (
    UNPUBLISHED,
    Batch,
    Booster,
    BuildContext,
    Component,
    ForwardState,
    Host,
    ImageQuery,
    ImageView,
    Inspection,
    SwapQuery,
    SwapRows,
)
from specpl.methods.registry import BOOSTERS, HOSTS

__all__ = [
    "BOOSTERS",
    "HOSTS",
    "UNPUBLISHED",
    "Batch",
    "Booster",
    "BuildContext",
    "Component",
    "ForwardState",
    "Host",
    "ImageQuery",
    "ImageView",
    "Inspection",
    "SwapQuery",
    "SwapRows",
]
