"""Fisher-matrix estimators as curvature operators (products, dense and diagonal views)."""

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
from ngrl.fisher.policy import ESTIMATORS, ActorOutputs, actor_parameters, policy_distribution, policy_fisher, policy_linearization

__all__ = [
    "ESTIMATORS",
    "ActorOutputs",
    "CurvatureOperator",
    "DiagonalOperator",
    "GaussNewtonOperator",
    "KFACOperator",
    "MatvecOperator",
    "MeanOperator",
    "OutputDistribution",
    "ScaledOperator",
    "actor_parameters",
    "from_sb3",
    "gauss_newton",
    "kfac_from_linearization",
    "policy_distribution",
    "policy_fisher",
    "policy_linearization",
]
