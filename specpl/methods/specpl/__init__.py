"""SpecPL (Disentangling Spectral Granularity for Prompt Learning, ICML 2026), registered as the
booster ``specpl`` on import.

One responsibility a module: `config` (options, per-host defaults), `bank` (the Visual Semantic
Bank and the text refiner), `granule` (band embeddings, fusion and FiLM), `losses` (the terms as
functions of tensors) and `booster` (the registered booster). Outside `specpl.methods`, import
only what this package exports.
"""

from specpl.methods.specpl.booster import SpecPL
from specpl.methods.specpl.config import SpecPLConfig
from specpl.methods.specpl.granule import BandEmbedding, GranuleModulator, SharedIndividualFusion

# what other modules (the benchmarks, the app) may import from this booster
__all__ = ["BandEmbedding", "GranuleModulator", "SharedIndividualFusion", "SpecPL", "SpecPLConfig"]
