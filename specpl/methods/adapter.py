"""A class-agnostic linear correction of the image features: the text-only hosts' default (ours).

CoOp, CoCoOp and KgCoOp learn only text. When the camera shifts every image the same way (a colour
cast), their context words fit the training classes' names and little of the shift carries to
classes they never saw: under the strong casts of ``specpl bench defaults`` (safelight, neon) they
ended within 2 HM of zero-shot. One shared linear map of the image features, learned beside the
context, does carry: it reads no class name, so it applies to new classes unchanged.

The map is ``x -> x + x W`` on the L2-normalised image feature, with W (D x D) starting at zero, so
a run starts exactly at the host without it (zero-shot CLIP for a context started from the template)
and W gets a gradient on its first step. It sits where the image meets the class texts (the host's
logits), after any cache of image features, so those stay frozen and cached. A booster's own terms
that read the image features (SpecPL's granule path) read them before the map.

The ``paper`` preset turns it off: it is not in any of the three papers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class AdapterOptions:
    """The option of a host that can learn the linear adapter (its options dataclass inherits this)."""

    linear_adapter: bool = True  # learn x -> x + xW on the image features (W starts at 0; see specpl.methods.adapter)


# where the option's paper value comes from (`Component.sources`)
ADAPTER_SOURCES = {"linear_adapter": "ours: off in paper, where none of the three papers has it"}


class LinearAdapter(nn.Module):
    """x -> x + x W on L2-normalised features (..., D); W starts at zero, so it starts as the identity
    up to the normalisation, which no cosine logit sees."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim, dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        unit = F.normalize(features, dim=-1)
        return unit + unit @ self.weight.to(unit.dtype)
