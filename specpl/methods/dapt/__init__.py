"""DAPT (Decouple before Align, TPAMI 2025), registered as the booster ``dapt`` on import.

One responsibility a module: `config` (options, background words, the phase switch), `losses`
(the terms by hand), `saliency` (DAPT-G's maps), `masks` (the frozen input: maps or mask files
paired to each view) and `booster` (the registered booster and its image view). Outside
`specpl.methods`, import only what this package exports.
"""

from specpl.methods.dapt.booster import DAPT, NO_MASK_FILES_NOTE
from specpl.methods.dapt.config import BACKGROUND_WORDS, REFERENCE_BACKGROUND_WORDS, DAPTConfig
from specpl.methods.dapt.masks import MaskFolder
from specpl.methods.dapt.saliency import saliency_maps, saliency_masks

# what other modules (the benchmarks, the app) may import from this booster
__all__ = [
    "BACKGROUND_WORDS",
    "NO_MASK_FILES_NOTE",
    "REFERENCE_BACKGROUND_WORDS",
    "DAPT",
    "DAPTConfig",
    "MaskFolder",
    "saliency_maps",
    "saliency_masks",
]
