"""One natural-gradient step, written once: the direction by CG on a curvature operator, then its size.

Every natural step of ngrl (NPG's policy step, FOMAML/iMAML's natural meta-step, NGDQN's TD step)
goes through :func:`natural_step`. The quadratic model behind every step size is the one of the
operator A that CG solved with — damping included, since damping lives in the operator:

    w = A⁻¹g (approximately, by CG),   KL(θ, θ + αw) ≈ ½α² wᵀAw,   A = C + λI.

- **Trust region** (``max_kl=δ``, no ``learning_rate``): α = sqrt(2δ / wᵀAw), the largest step whose
  quadratic KL model equals δ (Kakade 2002; Schulman et al. 2015, App. C); with a line search the
  step is then shrunk by a constant factor until the objective improves and the measured KL is ≤ δ
  (TRPO's rule).
- **Fixed rate** (``learning_rate=η``): α = η, capped at sqrt(2δ / wᵀAw) when ``max_kl=δ`` is given
  as well.

The function moves no parameter itself: ``evaluate(s·w)`` (the caller's) measures the objective and
the KL at θ ± s·w, and the caller applies the returned ``step_size`` (ascent for an objective, descent
for a loss).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ngrl.cg import CGConfig, CGResult
from ngrl.fisher.operator import CurvatureOperator
from ngrl.trust_region import backtracking_line_search, kl_step_size

__all__ = ["LineSearchConfig", "NaturalStep", "natural_step"]


@dataclass(frozen=True)
class LineSearchConfig:
    """TRPO's backtracking line search: shrink the step by ``shrink`` at most ``max_iter`` times."""

    shrink: float = 0.8
    max_iter: int = 10

    def __post_init__(self) -> None:
        if not 0 < self.shrink < 1:
            raise ValueError(f"the line search's shrink factor must lie in (0, 1), got {self.shrink}")
        if self.max_iter < 1:
            raise ValueError(f"the line search needs max_iter >= 1, got {self.max_iter}")


@dataclass
class NaturalStep:
    """What :func:`natural_step` computed.

    :param direction: w ≈ A⁻¹g
    :param step_size: α actually taken (full step × accepted fraction): the new point is θ ± α·w
    :param full_step_size: α before any line search
    :param fraction: accepted fraction of the full step (1 without line search, 0 when it failed)
    :param solve: the CG result (iterations, residual, status) or the caller's own solve
    :param quadratic: wᵀAw (nan when the rule did not need it)
    :param predicted_kl: ½ step_size² wᵀAw, the quadratic KL model of the step taken (nan when unknown)
    :param measured_kl: the KL measured by ``evaluate`` at the accepted step (nan when not measured)
    :param objective: the objective measured by ``evaluate`` at the accepted step (nan when not measured)
    :param line_search_steps: trials spent by the line search (0 without one)
    """

    direction: Tensor
    step_size: float
    full_step_size: float
    fraction: float
    solve: CGResult
    quadratic: float
    predicted_kl: float
    measured_kl: float
    objective: float
    line_search_steps: int


def natural_step(
    gradient: Tensor,
    operator: CurvatureOperator,
    *,
    max_kl: float | None = None,
    learning_rate: float | None = None,
    cg: CGConfig = CGConfig(),
    preconditioner: Callable[[Tensor], Tensor] | Tensor | None = None,
    solve: CGResult | None = None,
    line_search: LineSearchConfig | None = None,
    evaluate: Callable[[Tensor], tuple[float, float]] | None = None,
    baseline_objective: float | None = None,
    need_quadratic: bool = False,
) -> NaturalStep:
    """Solve A w = g by CG and choose α (see the module docstring for the rules).

    :param gradient: g, flat
    :param operator: A = C + λI, the damped curvature (its ``mv`` is what CG solves with and what
        the quadratic model wᵀAw is taken with)
    :param max_kl: δ: the trust-region radius, or (with ``learning_rate``) the cap on ½α²wᵀAw
    :param learning_rate: η for a fixed-rate step; None for the trust-region rule
    :param cg: the conjugate-gradient configuration
    :param preconditioner: r ↦ M⁻¹r (or a positive diag(M)) for CG
    :param solve: a direction already computed (e.g. by compatible function approximation): CG is skipped;
        its ``quadratic`` (wᵀAw), when known, stands for ``operator.quadratic(w)`` — so it must be a solve with ``operator``
    :param line_search: backtrack the trust-region step (needs ``evaluate`` and ``baseline_objective``)
    :param evaluate: the step s·w ↦ (objective, KL) at θ ± s·w (the caller picks the sign); the line
        search calls it at s = fraction·α, and without a line search it is called once at s = α
    :param baseline_objective: the objective at θ (the line search must improve on it)
    :param need_quadratic: compute wᵀAw for a fixed-rate step without a cap (e.g. for a reduction ratio)
    """
    if learning_rate is None and max_kl is None:
        raise ValueError("natural_step needs max_kl (a KL trust region) or learning_rate (a fixed rate), or both")
    if max_kl is not None and not max_kl > 0:
        raise ValueError(f"max_kl must be positive, got {max_kl}")
    if line_search is not None and (learning_rate is not None or evaluate is None or baseline_objective is None):
        raise ValueError("the line search backtracks a trust-region step: give max_kl, evaluate and baseline_objective, not learning_rate")
    if solve is None:
        solve = cg.solve(operator.mv, gradient, preconditioner=preconditioner).raise_if_not_positive_definite(operator.damping)
    direction = solve.x
    if not bool(torch.any(direction != 0)):  # g = 0 (e.g. a saturated policy): a zero step, not an error
        objective, measured_kl = evaluate(torch.zeros_like(direction)) if evaluate is not None else (math.nan, math.nan)
        return NaturalStep(direction, 0.0, 0.0, 1.0, solve, 0.0, 0.0, measured_kl, objective, 0)

    quadratic = math.nan
    if learning_rate is None or max_kl is not None or need_quadratic:
        quadratic = solve.quadratic if math.isfinite(solve.quadratic) else operator.quadratic(direction)  # wᵀ(C + λI)w
    if learning_rate is None:
        full_step = kl_step_size(quadratic, max_kl)  # α = sqrt(2δ / wᵀAw)
    else:
        full_step = float(learning_rate)
        if max_kl is not None and quadratic > 0:
            full_step = min(full_step, kl_step_size(quadratic, max_kl))  # ½α²wᵀAw ≤ δ

    fraction, steps = 1.0, 0
    objective = measured_kl = math.nan
    if line_search is not None:
        search = backtracking_line_search(
            lambda fraction: evaluate(fraction * full_step * direction),
            baseline_objective=baseline_objective, max_kl=max_kl, shrink=line_search.shrink, max_iter=line_search.max_iter
        )
        fraction, steps = search.fraction, search.steps
        objective, measured_kl = search.objective, search.kl
    elif evaluate is not None:
        objective, measured_kl = evaluate(full_step * direction)
    step_size = fraction * full_step
    predicted_kl = 0.5 * step_size * step_size * quadratic
    return NaturalStep(direction, step_size, full_step, fraction, solve, quadratic, predicted_kl, measured_kl, objective, steps)
