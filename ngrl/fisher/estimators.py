"""The Fisher estimators of outputs z = f(θ) given their linearisation J and an output family.

Nothing here knows SB3: the policy-level views (feed-forward and recurrent actors) live in
:mod:`ngrl.sb3_adapter` and call :func:`fisher_from_linearization`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ngrl.fisher.distributions import OutputDistribution
from ngrl.fisher.kfac import kfac_from_linearization
from ngrl.fisher.operator import CurvatureOperator, DiagonalOperator, GaussNewtonOperator
from ngrl.linearize import Linearization

__all__ = ["ESTIMATORS", "fisher_from_linearization"]

ESTIMATORS = ("exact", "score", "empirical", "diagonal", "kfac")


def fisher_from_linearization(
    linearization: Linearization,
    family: OutputDistribution,
    *,
    estimator: str = "exact",
    actions: Tensor | None = None,
    damping: float = 0.0,
    params: Sequence[Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> CurvatureOperator:
    """The chosen Fisher estimator of outputs z = f(θ) with action distribution ``family``, given J.

    Every estimator is F = (1/n) Σᵢ Jᵢᵀ Hᵢ Jᵢ with a different output-space Hᵢ: the distribution's
    Fisher H(zᵢ) (exact, diagonal, kfac) or gᵢgᵢᵀ with gᵢ = ∇_z log π(aᵢ|zᵢ) at a sampled (score) or
    given (empirical) action. Shared by the feed-forward and the sequence Fisher (:mod:`ngrl.sb3_adapter`, :mod:`ngrl.recurrent`).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown Fisher estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    params = list(linearization.params if params is None else params)
    outputs = linearization.outputs
    if estimator == "kfac":
        return kfac_from_linearization(linearization, family.fisher_sqrt(outputs), params, damping)
    if estimator in ("exact", "diagonal"):
        operator = GaussNewtonOperator(
            linearization, lambda u: family.fisher_mv(outputs, u), lambda: family.fisher_sqrt(outputs), params=params, damping=damping
        )
        return DiagonalOperator(operator._diagonal(), params, damping) if estimator == "diagonal" else operator
    if estimator == "empirical":
        if actions is None:
            raise ValueError("the empirical Fisher needs the observed actions: pass actions=")
    else:
        with torch.no_grad():
            actions = family.sample(outputs, generator)
    score = family.score_cotangent(outputs, actions)  # gᵢ = ∇_z log π(aᵢ | zᵢ)
    operator = GaussNewtonOperator(
        linearization,
        lambda u: score * (score * u).sum(-1, keepdim=True),  # Hᵢ = gᵢgᵢᵀ
        lambda: score.unsqueeze(-1),
        params=params,
        damping=damping,
    )
    operator.actions = actions  # the sampled (score) or given (empirical) actions, for inspection
    return operator
