"""The Levenberg–Marquardt damping rule and the reduction ratio it reads."""

import math

import pytest
import torch

from ngrl.damping import levenberg_marquardt, reduction_ratio


def test_reduction_ratio_of_an_exact_quadratic_is_one():
    # L(θ) = ½θᵀAθ − bᵀθ is its own quadratic model: ρ = 1 for any step.
    torch.manual_seed(0)
    a = torch.randn(5, 5, dtype=torch.float64)
    a = a @ a.T + torch.eye(5, dtype=torch.float64)
    b = torch.randn(5, dtype=torch.float64)
    theta = torch.randn(5, dtype=torch.float64)

    def loss(t):
        return float(0.5 * t @ a @ t - b @ t)

    g = a @ theta - b
    step = -0.3 * torch.linalg.solve(a + 0.5 * torch.eye(5, dtype=torch.float64), g)
    predicted = float(g @ step + 0.5 * step @ a @ step)
    assert reduction_ratio(loss(theta + step) - loss(theta), predicted) == pytest.approx(1.0, abs=1e-12)


def test_reduction_ratio_of_a_bad_model_is_small():
    # L(θ) = θ⁴ near θ = 1 modelled with curvature far too small: the actual decrease falls short.
    theta, step = 1.0, -0.9
    g, model_curvature = 4.0, 0.1
    predicted = g * step + 0.5 * model_curvature * step**2
    ratio = reduction_ratio((theta + step) ** 4 - theta**4, predicted)
    assert 0 < ratio < 0.3


def test_reduction_ratio_without_a_predicted_decrease_is_minus_inf():
    assert reduction_ratio(-1.0, 0.0) == -math.inf
    assert reduction_ratio(-1.0, 0.5) == -math.inf
    assert reduction_ratio(float("nan"), -1.0) == -math.inf


@pytest.mark.parametrize(
    "ratio, expected",
    [(1.0, 2.0 / 3.0), (0.9, 2.0 / 3.0), (0.5, 1.0), (0.1, 1.5), (-2.0, 1.5), (-math.inf, 1.5), (float("nan"), 1.5)],
)
def test_levenberg_marquardt_shrinks_on_good_prediction_and_grows_otherwise(ratio, expected):
    assert levenberg_marquardt(1.0, ratio) == pytest.approx(expected)


def test_levenberg_marquardt_stays_within_bounds():
    assert levenberg_marquardt(1e-3, 1.0, min_damping=1e-3) == 1e-3
    assert levenberg_marquardt(10.0, -1.0, max_damping=12.0) == 12.0


def test_levenberg_marquardt_converges_to_the_damping_that_makes_the_model_fit():
    # Loss along a direction: L(α) = α²/2 + α⁴ (curvature 1, rising away from 0); the damped step from
    # α = 1 is Δ = −g/(1 + d). Too little damping overshoots (ρ small) and d grows until ρ ≥ ¼.
    def loss(a):
        return a**2 / 2 + a**4

    d = 1e-3
    for _ in range(60):
        g = 1.0 + 4.0  # L'(1)
        step = -g / (1.0 + d)
        ratio = reduction_ratio(loss(1.0 + step) - loss(1.0), g * step + 0.5 * step**2)
        d = levenberg_marquardt(d, ratio)
    g = 5.0
    step = -g / (1.0 + d)
    assert reduction_ratio(loss(1.0 + step) - loss(1.0), g * step + 0.5 * step**2) >= 0.25
    assert d > 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(damping=0.0, ratio=1.0), "positive"),
        (dict(damping=1.0, ratio=1.0, decrease=1.2), "decrease"),
        (dict(damping=1.0, ratio=1.0, lower=0.8, upper=0.2), "lower <= upper"),
        (dict(damping=1.0, ratio=1.0, min_damping=0.0), "min_damping"),
    ],
)
def test_levenberg_marquardt_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        levenberg_marquardt(**kwargs)
