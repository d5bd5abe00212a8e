"""Conjugate gradient for symmetric positive-definite systems given only matrix-vector products."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["CGResult", "NotPositiveDefiniteError", "conjugate_gradient"]


class NotPositiveDefiniteError(RuntimeError):
    """Raised when a solver meets a direction p with pᵀAp ≤ 0 (A is not positive definite)."""


@dataclass
class CGResult:
    """Outcome of :func:`conjugate_gradient`.

    :param x: the approximate solution (on b's device and dtype)
    :param iterations: matrix-vector products spent on search directions
    :param residual_norm: final relative residual ‖b − (A + λI)x‖ / ‖b‖
    :param converged: whether the relative residual reached ``tol``
    :param status: ``"converged"``, ``"max_iter"`` or ``"not_positive_definite"``
    :param message: a sentence saying why the solver stopped
    """

    x: Tensor
    iterations: int
    residual_norm: float
    converged: bool
    status: str
    message: str

    def raise_if_not_positive_definite(self) -> "CGResult":
        """Turn a ``not_positive_definite`` stop into :class:`NotPositiveDefiniteError`; return self otherwise."""
        if self.status == "not_positive_definite":
            raise NotPositiveDefiniteError(self.message)
        return self


def _as_preconditioner(preconditioner: Callable[[Tensor], Tensor] | Tensor | None) -> Callable[[Tensor], Tensor] | None:
    if preconditioner is None or callable(preconditioner):
        return preconditioner
    diag = preconditioner
    if not torch.all(diag > 0):
        raise ValueError("a diagonal preconditioner must be strictly positive (pass diag(A) + damping, not diag(A) alone)")
    return lambda r: r / diag


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    *,
    max_iter: int = 10,
    tol: float = 1e-10,
    damping: float = 0.0,
    preconditioner: Callable[[Tensor], Tensor] | Tensor | None = None,
    x0: Tensor | None = None,
) -> CGResult:
    """Solve (A + λI) x = b by (preconditioned) conjugate gradient, A given as ``matvec``.

    Hestenes–Stiefel iteration: αₖ = rₖᵀzₖ / pₖᵀ(A+λI)pₖ, xₖ₊₁ = xₖ + αₖpₖ, rₖ₊₁ = rₖ − αₖ(A+λI)pₖ,
    zₖ₊₁ = M⁻¹rₖ₊₁, βₖ = rₖ₊₁ᵀzₖ₊₁ / rₖᵀzₖ, pₖ₊₁ = zₖ₊₁ + βₖpₖ. Stops at ‖r‖ ≤ tol·‖b‖ or after
    ``max_iter`` products. If a direction has pᵀ(A+λI)p ≤ 0 the operator is not positive definite:
    the solver stops *before* using that direction and reports ``status="not_positive_definite"``
    (call :meth:`CGResult.raise_if_not_positive_definite` to turn it into an exception).

    :param matvec: v ↦ A v for a symmetric A, on b's device and dtype
    :param b: right-hand side, a flat vector
    :param max_iter: the most matrix-vector products to spend
    :param tol: relative residual at which to stop
    :param damping: λ added to the diagonal (Tikhonov / Levenberg–Marquardt damping)
    :param preconditioner: r ↦ M⁻¹r, or a strictly positive tensor holding diag(M)
    :param x0: starting point (zeros by default; the solve is then deterministic)
    """
    if b.ndim != 1:
        raise ValueError(f"b must be a flat vector, got shape {tuple(b.shape)}")
    if not torch.isfinite(b).all():
        raise ValueError("the right-hand side b contains NaN or inf: check the gradient (advantages, rewards, losses) upstream")
    if max_iter < 1:
        raise ValueError("max_iter must be at least 1")

    def apply(v: Tensor) -> Tensor:
        out = matvec(v)
        return out + damping * v if damping else out

    precondition = _as_preconditioner(preconditioner)
    b_norm = float(torch.linalg.vector_norm(b))
    if b_norm == 0.0:
        return CGResult(torch.zeros_like(b), 0, 0.0, True, "converged", "b is zero: x = 0")

    if x0 is None:
        x = torch.zeros_like(b)
        r = b.clone()
    else:
        x = x0.clone()
        r = b - apply(x)
    z = precondition(r) if precondition else r
    p = z.clone()
    rz = torch.dot(r, z)
    residual = float(torch.linalg.vector_norm(r)) / b_norm
    if residual <= tol:
        return CGResult(x, 0, residual, True, "converged", "x0 already solves the system")

    for iteration in range(1, max_iter + 1):
        ap = apply(p)
        p_ap = torch.dot(p, ap)
        # One host sync per iteration: the curvature check and the stopping test read together.
        curvature, rz_value = torch.stack([p_ap, rz]).tolist()
        if not curvature > 0.0 or not torch.isfinite(ap).all():
            message = (
                f"conjugate gradient met pᵀ(A + {damping:g}·I)p = {curvature:.3g} ≤ 0 at iteration {iteration}: "
                "the operator is not positive definite (or produced NaN). Increase the damping, or use a "
                "positive semi-definite curvature such as the Fisher / Gauss–Newton matrix."
            )
            return CGResult(x, iteration - 1, residual, False, "not_positive_definite", message)
        alpha = rz / p_ap
        x = x + alpha * p
        r = r - alpha * ap
        residual = float(torch.linalg.vector_norm(r)) / b_norm
        if residual <= tol:
            return CGResult(x, iteration, residual, True, "converged", f"relative residual {residual:.3g} ≤ tol {tol:g}")
        z = precondition(r) if precondition else r
        rz_next = torch.dot(r, z)
        p = z + (rz_next / rz) * p
        rz = rz_next
    return CGResult(x, max_iter, residual, False, "max_iter", f"stopped after {max_iter} iterations at relative residual {residual:.3g}")
