"""ISP (Integrated Structural Prompt learning, arXiv 2507.05677, reconstructed from the abstract),
registered as the booster ``isp`` on import.

One responsibility a module: `config` (options, choices, precision), `structural` (the structural
prompt modules), `probing` (sample probing's weights) and `booster` (where the modules act in each
tower, and the weights on the host's loss). Outside `specpl.methods`, import only what this
package exports.
"""

from specpl.methods.isp.booster import ISP
from specpl.methods.isp.config import ISPConfig
from specpl.methods.isp.probing import probing_weights

# what other modules (the benchmarks, the app) may import from this booster
__all__ = ["ISP", "ISPConfig", "probing_weights"]
