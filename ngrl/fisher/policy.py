"""Kept for imports written before :mod:`ngrl.sb3_adapter`: the Fisher of SB3 policies now lives there.

:mod:`ngrl.sb3_adapter` is the one module of ngrl that knows SB3's policy internals; the estimators
themselves (SB3-free) are :mod:`ngrl.fisher.estimators`.
"""

from ngrl.fisher.estimators import ESTIMATORS, fisher_from_linearization
from ngrl.sb3_adapter import ActorOutputs, actor_parameters, policy_distribution, policy_fisher, policy_linearization

__all__ = [
    "ESTIMATORS",
    "ActorOutputs",
    "actor_parameters",
    "fisher_from_linearization",
    "policy_distribution",
    "policy_fisher",
    "policy_linearization",
]
