"""ngrl.natural_step and the composite operators against dense float64 references."""

from __future__ import annotations

import math

import pytest
import torch

from ngrl import CGConfig, LineSearchConfig, natural_step
from ngrl.fisher import DiagonalOperator, MatvecOperator, MeanOperator, ScaledOperator
from ngrl.implicit import implicit_meta_gradient

D = torch.float64


def _spd(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=D)
    return m @ m.T / n


@pytest.fixture
def problem():
    a = _spd(6, 0)
    g = torch.randn(6, generator=torch.Generator().manual_seed(1), dtype=D)
    return a, g, MatvecOperator(lambda v: a @ v, [g], damping=0.3)


def test_trust_region_step_uses_the_damped_quadratic_form(problem):
    a, g, operator = problem
    damped = a + 0.3 * torch.eye(6, dtype=D)
    step = natural_step(g, operator, max_kl=0.02, cg=CGConfig(max_iter=50, tol=1e-14))
    w = torch.linalg.solve(damped, g)
    torch.testing.assert_close(step.direction, w)
    assert step.step_size == pytest.approx(math.sqrt(2 * 0.02 / float(w @ damped @ w)), rel=1e-10)
    assert step.predicted_kl == pytest.approx(0.02, rel=1e-10) and step.fraction == 1.0
    assert step.step_size != pytest.approx(math.sqrt(2 * 0.02 / float(w @ a @ w)), rel=1e-3)  # not the undamped form


def test_fixed_rate_is_capped_by_the_quadratic_model(problem):
    a, g, operator = problem
    free = natural_step(g, operator, learning_rate=0.5, cg=CGConfig(max_iter=50, tol=1e-14))
    assert free.step_size == 0.5 and math.isnan(free.quadratic)
    capped = natural_step(g, operator, learning_rate=0.5, max_kl=1e-4, cg=CGConfig(max_iter=50, tol=1e-14))
    assert capped.step_size < 0.5 and capped.predicted_kl == pytest.approx(1e-4, rel=1e-10)


def test_line_search_backtracks_until_the_measured_kl_fits(problem):
    _, g, operator = problem
    calls = []

    def evaluate(step):  # a KL that is 3× the quadratic model: the full step must shrink
        kl = 3 * 0.5 * float(step @ operator.mv(step))
        calls.append(kl)
        return float(g @ step), kl

    step = natural_step(g, operator, max_kl=0.01, cg=CGConfig(max_iter=50, tol=1e-14), line_search=LineSearchConfig(shrink=0.5),
                        evaluate=evaluate, baseline_objective=0.0)
    # 3·f²·δ ≤ δ first at f = 0.5 (3/4 ≤ 1): one backtrack
    assert step.fraction == 0.5 and step.line_search_steps == 2
    assert step.measured_kl == pytest.approx(0.75 * 0.01, rel=1e-9) and step.step_size == pytest.approx(0.5 * step.full_step_size)


def test_composite_operators_are_what_they_say():
    a, b = _spd(5, 2), _spd(5, 3)
    like = [torch.zeros(5, dtype=D)]
    mean = MeanOperator([MatvecOperator(lambda v: a @ v, like), MatvecOperator(lambda v: b @ v, like)], damping=0.2)
    torch.testing.assert_close(mean.dense(), (a + b) / 2 + 0.2 * torch.eye(5, dtype=D))
    diag = DiagonalOperator(torch.arange(1.0, 6.0, dtype=D), like)
    torch.testing.assert_close(MeanOperator([diag, diag]).diagonal(), torch.arange(1.0, 6.0, dtype=D))
    shifted = ScaledOperator(MatvecOperator(lambda v: a @ v, like), 1 / 4.0, damping=1.0)  # I + C/λ with λ = 4
    torch.testing.assert_close(shifted.dense(), torch.eye(5, dtype=D) + a / 4.0)
    v = torch.randn(5, dtype=D, generator=torch.Generator().manual_seed(4))
    assert shifted.quadratic(v) == pytest.approx(float(v @ (torch.eye(5, dtype=D) + a / 4.0) @ v), rel=1e-12)


def test_implicit_meta_gradient_solves_identity_plus_curvature_over_lambda():
    c = _spd(5, 5)
    g = torch.randn(5, dtype=D, generator=torch.Generator().manual_seed(6))
    result = implicit_meta_gradient(lambda v: c @ v, g, lam=2.0, max_iter=50, tol=1e-14)
    torch.testing.assert_close(result.x, torch.linalg.solve(torch.eye(5, dtype=D) + c / 2.0, g))


def test_bad_requests_are_refused(problem):
    _, g, operator = problem
    with pytest.raises(ValueError, match="max_kl"):
        natural_step(g, operator)
    with pytest.raises(ValueError, match="line search"):
        natural_step(g, operator, learning_rate=0.1, line_search=LineSearchConfig())
    with pytest.raises(ValueError, match="shrink"):
        LineSearchConfig(shrink=1.5)


def test_a_zero_gradient_is_a_zero_step():
    """A saturated policy has g = 0: the step is zero (θ stays), not an error from α = sqrt(2δ / 0)."""
    from ngrl import natural_step
    from ngrl.fisher import MatvecOperator

    a = torch.eye(3, dtype=torch.float64) * 2
    operator = MatvecOperator(lambda v: a @ v, [torch.zeros(3, dtype=torch.float64)], damping=0.1)
    step = natural_step(torch.zeros(3, dtype=torch.float64), operator, max_kl=0.01)
    assert step.step_size == 0.0 and step.predicted_kl == 0.0 and torch.equal(step.direction, torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("max_kl", [float("nan"), float("inf"), 0.0, -1.0])
def test_kl_step_size_refuses_a_bad_radius(max_kl):
    from ngrl import kl_step_size

    with pytest.raises(ValueError, match="max_kl"):
        kl_step_size(1.0, max_kl)


def test_a_damped_system_beyond_float32_resolution_is_solved_truncated_not_refused():
    """F + λI with λ = 0.1 and λ_max(F) = 10⁶ (a Gaussian policy's Fisher once σ is small) is positive definite, but in
    float32 CG's Rayleigh quotients fall below its resolution and it stops 'singular': the step is taken with the
    iterate before that direction (a truncated solve) instead of failing the update. Undamped, the same singular C with
    b outside its range has no solution and is refused."""
    from ngrl import NotPositiveDefiniteError

    curvature = torch.diag(torch.tensor([1e6, 0.0, 3e5]))
    g = torch.ones(3)
    damped = MatvecOperator(lambda v: curvature @ v, [g], damping=0.1)
    step = natural_step(g, damped, max_kl=0.01, cg=CGConfig(max_iter=10, tol=1e-10))
    assert step.solve.status == "singular" and step.solve.iterations >= 1
    assert torch.isfinite(step.direction).all() and step.step_size > 0
    assert step.predicted_kl == pytest.approx(0.01, rel=1e-3)  # the trust region still sizes the truncated direction
    with pytest.raises(NotPositiveDefiniteError, match="singular"):
        natural_step(g, MatvecOperator(lambda v: curvature @ v, [g]), max_kl=0.01, cg=CGConfig(max_iter=10, tol=1e-10))
