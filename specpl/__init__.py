"""SpecPL Studio: prompt learning for frozen CLIP models, with spectral-granularity boosters."""

__version__ = "0.1.0"
