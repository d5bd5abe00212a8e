"""Implicit meta-gradients of a proximally regularised inner problem (iMAML, Rajeswaran et al. 2019).

The inner problem φ(θ) = argmin_φ L̂(φ) + (λ/2)‖φ − θ‖² has, at its optimum, ∇L̂(φ) + λ(φ − θ) = 0;
the implicit function theorem gives dφ/dθ = (I + ∇²L̂(φ)/λ)⁻¹, so the meta-gradient of a test loss is
g = (I + ∇²L̂(φ)/λ)⁻¹ ∇L_test(φ), found by conjugate gradient from curvature-vector products only.
Nothing of the inner optimisation path is kept: memory does not depend on the number of inner steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ngrl.cg import CGConfig, CGResult
from ngrl.fisher.operator import CurvatureOperator, MatvecOperator, ScaledOperator
from ngrl.params import flatten, unflatten

__all__ = ["hessian_vector_product", "implicit_meta_gradient", "proximal_shrink"]


def hessian_vector_product(loss: Tensor, params: Sequence[Tensor]) -> Callable[[Tensor], Tensor]:
    """v ↦ ∇²loss · v for flat v, by double backprop: ∇(∇loss · v).

    The gradient graph is built once here and kept for every product, so each product costs one
    backward pass. Parameters the loss does not reach contribute zero rows.
    """
    params = list(params)
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    pairs = [(g, p) for g, p in zip(grads, params)]

    def mv(v: Tensor) -> Tensor:
        pieces = unflatten(v, params)
        dot = sum((g * piece).sum() for (g, _), piece in zip(pairs, pieces) if g is not None and g.requires_grad)
        if not isinstance(dot, Tensor):  # the loss is linear (or constant) in every parameter: ∇² = 0
            return torch.zeros_like(v)
        second = torch.autograd.grad(dot, params, retain_graph=True, allow_unused=True)
        return flatten(torch.zeros_like(p) if s is None else s for s, p in zip(second, params))

    return mv


def implicit_meta_gradient(
    curvature_mv: CurvatureOperator | Callable[[Tensor], Tensor],
    test_gradient: Tensor,
    *,
    lam: float,
    max_iter: int = 10,
    tol: float = 1e-10,
    x0: Tensor | None = None,
) -> CGResult:
    """Solve (I + C/λ) g = ∇L_test by conjugate gradient: iMAML's meta-gradient for one task.

    C is the inner loss's curvature at the adapted point φ: its Hessian ∇²L̂(φ) (exact implicit
    gradient; may be indefinite away from a minimum) or a PSD stand-in such as the Fisher or the
    Gauss–Newton matrix (then I + C/λ is always positive definite).

    :param curvature_mv: C as a :class:`ngrl.fisher.CurvatureOperator` (built without damping), or
        v ↦ C v on flat vectors (e.g. :func:`hessian_vector_product`)
    :param test_gradient: ∇_φ L_test(φ), flat
    :param lam: λ > 0, the strength of the proximal term (λ/2)‖φ − θ‖² of the inner problem
    :param max_iter: CG iterations (5–20 suffice in practice)
    :param tol: relative residual at which CG stops
    :param x0: CG start (default zeros); ``test_gradient`` itself is the λ → ∞ (first-order) answer
    :return: the :class:`ngrl.CGResult`; ``status == "not_positive_definite"`` means I + C/λ met a
        direction of non-positive curvature (raise λ or use a PSD curvature); ``x`` then holds the
        solution built from the directions before it
    """
    if not lam > 0:
        raise ValueError(f"lam (the proximal strength λ) must be positive, got {lam}")
    curvature = curvature_mv if isinstance(curvature_mv, CurvatureOperator) else MatvecOperator(curvature_mv, [test_gradient])
    system = ScaledOperator(curvature, 1.0 / lam, damping=1.0)  # I + C/λ, an operator like any other
    return CGConfig(max_iter=max_iter, tol=tol).solve(system.mv, test_gradient, x0=x0)


def proximal_shrink(phi: Tensor, theta: Tensor, *, lam: float, step: float) -> Tensor:
    """The proximal map of (λ/2)‖· − θ‖² with step η: θ + (φ − θ) / (1 + ηλ).

    Applied after a gradient step of length η on L̂ it makes a proximal-gradient step on
    L̂(φ) + (λ/2)‖φ − θ‖², whose fixed points are exactly iMAML's ∇L̂(φ) + λ(φ − θ) = 0.
    """
    if lam < 0 or step < 0:
        raise ValueError("lam and step must be non-negative")
    return theta + (phi - theta) / (1.0 + step * lam)
