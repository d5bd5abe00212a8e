"""Fisher-matrix estimators as curvature operators (products, dense and diagonal views).

SB3-free: the Fisher of an SB3 policy is taken through its actor view (:mod:`ngrl.sb3_adapter`).
``ActorOutputs``, ``actor_parameters``, ``policy_distribution``, ``policy_fisher`` and
``policy_linearization`` are still importable from here (loaded from the adapter on first use).
"""

from typing import Any

from ngrl.fisher.adaptive import AdaptiveConfig, AdaptiveFisher, AdaptiveOperator, AdaptiveUpdate, layer_blocks
from ngrl.fisher.distributions import OutputDistribution, from_sb3
from ngrl.fisher.gauss_newton import gauss_newton
from ngrl.fisher.kfac import KFACOperator, kfac_from_linearization
from ngrl.fisher.operator import (
    CurvatureOperator,
    DiagonalOperator,
    GaussNewtonOperator,
    MatvecOperator,
    MeanOperator,
    ScaledOperator,
)
from ngrl.fisher.estimators import ESTIMATORS, fisher_from_linearization

__all__ = [
    "ESTIMATORS",
    "AdaptiveConfig",
    "AdaptiveFisher",
    "AdaptiveOperator",
    "AdaptiveUpdate",
    "ActorOutputs",
    "CurvatureOperator",
    "DiagonalOperator",
    "GaussNewtonOperator",
    "KFACOperator",
    "MatvecOperator",
    "MeanOperator",
    "OutputDistribution",
    "ScaledOperator",
    "fisher_from_linearization",
    "actor_parameters",
    "from_sb3",
    "gauss_newton",
    "kfac_from_linearization",
    "layer_blocks",
    "policy_distribution",
    "policy_fisher",
    "policy_linearization",
]

_FROM_ADAPTER = ("ActorOutputs", "actor_parameters", "policy_distribution", "policy_fisher", "policy_linearization")


def __getattr__(name: str) -> Any:
    # lazily, so that this package does not depend on the SB3 adapter (which depends on it)
    if name in _FROM_ADAPTER:
        from ngrl import sb3_adapter

        return getattr(sb3_adapter, name)
    raise AttributeError(f"module 'ngrl.fisher' has no attribute {name!r}")
