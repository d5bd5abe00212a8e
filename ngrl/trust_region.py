"""Step sizes for natural-gradient steps: the KL trust region and a backtracking line search."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["kl_step_size", "LineSearchResult", "backtracking_line_search"]


def kl_step_size(quadratic_form: float, max_kl: float) -> float:
    """Largest α with ½α²·wᵀAw = δ, i.e. α = sqrt(2δ / wᵀAw) (Kakade 2002; Schulman et al. 2015, App. C).

    Used by :func:`ngrl.natural_step`, where A is the damped operator F + λI the direction was solved with.

    :param quadratic_form: wᵀAw for the natural direction w
    :param max_kl: the trust-region radius δ (a KL divergence in nats)
    """
    if not (math.isfinite(max_kl) and max_kl > 0):
        raise ValueError(f"max_kl (the trust-region radius δ) must be a positive finite number, got {max_kl}")
    if not math.isfinite(quadratic_form) or quadratic_form <= 0:
        raise ValueError(
            f"wᵀ(F + λI)w = {quadratic_form:.3g} is not positive: the Fisher is degenerate along the step. "
            "Add damping (cg_damping) or check the policy for saturated outputs."
        )
    return math.sqrt(2.0 * max_kl / quadratic_form)


@dataclass
class LineSearchResult:
    """:param fraction: accepted fraction of the full step (0.0 if none was accepted)"""

    fraction: float
    objective: float
    kl: float
    steps: int
    success: bool


def backtracking_line_search(
    evaluate: Callable[[float], tuple[float, float]],
    *,
    baseline_objective: float,
    max_kl: float,
    shrink: float = 0.8,
    max_iter: int = 10,
) -> LineSearchResult:
    """Shrink the step by ``shrink`` until the objective improves and KL ≤ ``max_kl`` (TRPO's rule).

    :param evaluate: fraction ↦ (objective, kl) after moving that fraction of the full step
    :param baseline_objective: the objective before the step
    """
    if not 0 < shrink < 1:
        raise ValueError("shrink must lie in (0, 1)")
    fraction = 1.0
    objective, kl = baseline_objective, 0.0
    for step in range(1, max_iter + 1):
        objective, kl = evaluate(fraction)
        if kl <= max_kl and objective > baseline_objective:
            return LineSearchResult(fraction, objective, kl, step, True)
        fraction *= shrink
    return LineSearchResult(0.0, baseline_objective, 0.0, max_iter, False)
