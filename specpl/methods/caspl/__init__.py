"""CasPL (Cascade Prompt Learning, ECCV 2024), in two phases, registered on import: the host
``caspl-boost`` (phase 1) and the booster ``caspl`` (phase 2).

One responsibility a module: `config` (both phases' options and shared names), `teacher` (the
larger frozen CLIP, its logits and the distillation loss), `phase_one` (the phase-1 host and
reading its bundle) and `booster` (phase 2). Outside `specpl.methods`, import only what this
package exports.
"""

from specpl.methods.caspl.booster import CasPL
from specpl.methods.caspl.config import PHASE_ONE, CasPLBoostConfig, CasPLConfig
from specpl.methods.caspl.phase_one import CasPLBoost, read_boosting_prompts
from specpl.methods.caspl.teacher import distillation_loss, load_teacher, resolve_teacher

# what other modules (the benchmarks, the app) may import from this booster
__all__ = [
    "PHASE_ONE",
    "CasPL",
    "CasPLBoost",
    "CasPLBoostConfig",
    "CasPLConfig",
    "distillation_loss",
    "load_teacher",
    "read_boosting_prompts",
    "resolve_teacher",
]
