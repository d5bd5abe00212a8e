"""Levenberg–Marquardt adaptation of a damping (Tikhonov) coefficient from a reduction ratio."""

from __future__ import annotations

import math

__all__ = ["reduction_ratio", "levenberg_marquardt"]


def reduction_ratio(actual_change: float, predicted_change: float) -> float:
    """ρ = (L(θ + Δ) − L(θ)) / (M(Δ) − M(0)): how well the quadratic model M predicted the change of L.

    ρ ≈ 1 means the model is trustworthy along Δ; ρ ≪ 1 (or negative: the loss rose) means it is not.
    A predicted change that is not a decrease (≥ 0, or not finite) gives ρ = −inf, the "do not trust" answer.

    :param actual_change: L(θ + Δ) − L(θ), measured
    :param predicted_change: M(Δ) − M(0) = gᵀΔ + ½ΔᵀCΔ, the model's prediction (negative for a descent step)
    """
    if not math.isfinite(actual_change) or not math.isfinite(predicted_change) or predicted_change >= 0.0:
        return -math.inf
    return actual_change / predicted_change


def levenberg_marquardt(
    damping: float,
    ratio: float,
    *,
    decrease: float = 2.0 / 3.0,
    increase: float = 1.5,
    lower: float = 0.25,
    upper: float = 0.75,
    min_damping: float = 1e-8,
    max_damping: float = 1e8,
) -> float:
    """The Levenberg–Marquardt rule (Martens 2010, §4.1): d ← d·``increase`` if ρ < ``lower``,
    d ← d·``decrease`` if ρ > ``upper``, d unchanged otherwise; the result is clipped to
    [``min_damping``, ``max_damping``].

    :param damping: the current damping d (> 0)
    :param ratio: the reduction ratio ρ of the last step (see :func:`reduction_ratio`)
    """
    if damping <= 0 or not math.isfinite(damping):
        raise ValueError(f"damping must be positive and finite for the Levenberg–Marquardt rule, got {damping}")
    if not 0 < decrease < 1 < increase:
        raise ValueError(f"need 0 < decrease < 1 < increase, got decrease={decrease}, increase={increase}")
    if not lower <= upper:
        raise ValueError(f"need lower <= upper, got lower={lower}, upper={upper}")
    if not 0 < min_damping <= max_damping:
        raise ValueError(f"need 0 < min_damping <= max_damping, got {min_damping}, {max_damping}")
    if math.isnan(ratio) or ratio < lower:
        damping *= increase
    elif ratio > upper:
        damping *= decrease
    return min(max(damping, min_damping), max_damping)
