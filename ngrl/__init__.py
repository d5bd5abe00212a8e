"""ngrl's backend: Fisher operators, conjugate gradient and natural-gradient steps, device-agnostic.

Nothing here knows about agents, environments or the command line; only ``ngrl.sb3_adapter`` knows
SB3's policy internals (the actor view every agent uses).
"""

from ngrl import fisher
from ngrl.cg import CGConfig, CGResult, NotPositiveDefiniteError, batched_conjugate_gradient, conjugate_gradient
from ngrl.compatible import compatible_features, fit_compatible_advantage
from ngrl.device import get_device
from ngrl.ernn import ERNN, ERNNCell
from ngrl.linearize import linearize
from ngrl.mirror import mirror_step
from ngrl.natural_step import LineSearchConfig, NaturalStep, natural_step
from ngrl.sb3_adapter import ActorView, actor_view
from ngrl.params import flat_grad, flatten, get_flat_params, num_params, set_flat_params, unflatten
from ngrl.spectral import LanczosEstimate, TraceEstimate, as_linear_operator, largest_eigenvalue, trace_estimate
from ngrl.trust_region import LineSearchResult, backtracking_line_search, kl_step_size

__version__ = "0.2.0"

__all__ = [
    "ActorView",
    "CGConfig",
    "batched_conjugate_gradient",
    "CGResult",
    "ERNN",
    "ERNNCell",
    "LanczosEstimate",
    "LineSearchConfig",
    "LineSearchResult",
    "NaturalStep",
    "NotPositiveDefiniteError",
    "TraceEstimate",
    "actor_view",
    "as_linear_operator",
    "backtracking_line_search",
    "compatible_features",
    "conjugate_gradient",
    "fisher",
    "fit_compatible_advantage",
    "flat_grad",
    "flatten",
    "get_device",
    "get_flat_params",
    "kl_step_size",
    "largest_eigenvalue",
    "linearize",
    "mirror_step",
    "natural_step",
    "num_params",
    "set_flat_params",
    "trace_estimate",
    "unflatten",
]
