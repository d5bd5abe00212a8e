"""Conjugate gradient for symmetric positive-definite systems given only matrix-vector products."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["CGConfig", "CGResult", "NotPositiveDefiniteError", "batched_conjugate_gradient", "conjugate_gradient"]


class NotPositiveDefiniteError(RuntimeError):
    """Raised when a solver meets a direction p with pᵀAp ≤ 0 (A is not positive definite)."""


@dataclass
class CGResult:
    """Outcome of :func:`conjugate_gradient`.

    :param x: the approximate solution (on b's device and dtype)
    :param iterations: matrix-vector products spent on search directions
    :param residual_norm: final relative residual ‖b − Ax‖ / ‖b‖
    :param converged: whether the relative residual reached ``tol``
    :param status: ``"converged"``, ``"max_iter"``, ``"not_positive_definite"`` (a direction with pᵀAp ≤ 0) or
        ``"singular"`` (A is singular, or nearly, along a direction that b needs: A x = b has no solution)
    :param message: a sentence saying why the solver stopped
    :param quadratic: xᵀAx, when the solver knows it without another product (nan otherwise)
    """

    x: Tensor
    iterations: int
    residual_norm: float
    converged: bool
    status: str
    message: str
    quadratic: float = math.nan

    def raise_if_not_positive_definite(self, damping: float = 0.0) -> "CGResult":
        """Turn a ``not_positive_definite`` or ``singular`` stop into :class:`NotPositiveDefiniteError`; return self otherwise.

        :param damping: λ of the operator C + λI that was solved, C positive semi-definite (a Fisher, a Gauss–Newton
            matrix). With λ > 0 the system is positive definite and solvable in exact arithmetic, so a ``singular`` stop
            is rounding: its condition number is beyond what b's dtype resolves (about 1/(10ε): 8·10⁵ in float32, as a
            small σ makes a Gaussian policy's Fisher). The result is then kept: x is the last iterate before the
            unresolved direction, a truncated solve like a ``max_iter`` one.
        """
        if self.status == "not_positive_definite" or (self.status == "singular" and not damping > 0):
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
    preconditioner: Callable[[Tensor], Tensor] | Tensor | None = None,
    x0: Tensor | None = None,
    metric: Tensor | None = None,
    check_every: int | None = 1,
) -> CGResult:
    """Solve A x = b by (preconditioned) conjugate gradient, A given as ``matvec``.

    Hestenes–Stiefel iteration: αₖ = rₖᵀzₖ / pₖᵀApₖ, xₖ₊₁ = xₖ + αₖpₖ, rₖ₊₁ = rₖ − αₖApₖ,
    zₖ₊₁ = M⁻¹rₖ₊₁, βₖ = rₖ₊₁ᵀzₖ₊₁ / rₖᵀzₖ, pₖ₊₁ = zₖ₊₁ + βₖpₖ. Stops at ‖r‖ ≤ tol·‖b‖ or after
    ``max_iter`` products. Damping is not the solver's business: pass a damped operator (every
    :class:`ngrl.fisher.CurvatureOperator` takes ``damping=`` and applies C + λI). If a direction
    has pᵀAp ≤ 0, beyond rounding (below, a quotient within 10·ε of zero counts as zero curvature whatever its
    sign), the operator is not positive definite:
    the solver stops *before* using that direction and reports ``status="not_positive_definite"``
    (call :meth:`CGResult.raise_if_not_positive_definite` to turn it into an exception).

    A singular positive semi-definite A whose range does not hold b has no solution; CG then walks
    along directions of vanishing curvature and ‖x‖ explodes while the recursive residual looks small.
    Two checks catch it: a direction whose Rayleigh quotient pᵀAp/pᵀp falls below 10·ε (machine
    epsilon of b's dtype) times the first one stops the solve before it is used, and a "converged"
    solve is confirmed on the true residual ‖b − Ax‖ (one more product), which must be below
    max(10·tol, √ε) relative to ‖b‖. Either failure reports ``status="singular"``.

    Every test above is taken on the device, as a flag that freezes the iterates (x, r, p stay as they were once a
    stop condition held), and the host reads the flags only every ``check_every`` iterations: one read per iteration
    by default (the solve stops at the first iteration that may stop it, spending no product more), never inside the
    loop with ``check_every=None`` (all ``max_iter`` products run, those after the stop on frozen iterates, and no
    host-device synchronisation happens until the loop ends — for GPUs, where a read stalls the device). The result
    (x, iterations, status) is the same for every ``check_every``.

    This is :func:`batched_conjugate_gradient` with one system.

    :param matvec: v ↦ A v for a symmetric A (a function or an operator's ``mv``), on b's device and dtype
    :param b: right-hand side, a flat vector
    :param max_iter: the most matrix-vector products to spend
    :param tol: relative residual at which to stop
    :param preconditioner: r ↦ M⁻¹r, or a strictly positive tensor holding diag(M)
    :param x0: starting point (zeros by default; the solve is then deterministic)
    :param metric: a PSD matrix K that defines the inner product ⟨a, b⟩ = aᵀKb used for every dot
        product and norm (the Euclidean one by default). CG on vectors that *represent* others — x = Bᵀu
        with K = BBᵀ, and A acting as u ↦ M u where A Bᵀ = Bᵀ M — then takes exactly the iterates that
        CG on the represented system would take (see ``GaussNewtonOperator.batch_space_solve``).
        Not combined with a preconditioner.
    :param check_every: iterations between the host's reads of the stopping flags (an integer >= 1), or None to read
        them once, after ``max_iter`` iterations
    """
    if b.ndim != 1:
        raise ValueError(f"b must be a flat vector, got shape {tuple(b.shape)}")
    if metric is not None and preconditioner is not None:
        raise ValueError("conjugate_gradient takes a metric or a preconditioner, not both")
    precondition = _as_preconditioner(preconditioner)
    (result,) = _solve_systems(
        lambda v: matvec(v[0]).unsqueeze(0),
        b.unsqueeze(0),
        max_iter=max_iter,
        tol=tol,
        precondition=None if precondition is None else (lambda r: precondition(r[0]).unsqueeze(0)),
        x0=None if x0 is None else x0.unsqueeze(0),
        metric=metric,
        check_every=check_every,
    )
    return result


def batched_conjugate_gradient(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    *,
    max_iter: int = 10,
    tol: float = 1e-10,
    preconditioner: Callable[[Tensor], Tensor] | Tensor | None = None,
    x0: Tensor | None = None,
    check_every: int | None = 1,
) -> list[CGResult]:
    """Solve K independent systems Aᵢ xᵢ = bᵢ in lockstep: one call of ``matvec`` per iteration serves them all.

    ``b`` holds the right-hand sides as rows, (K, n), and ``matvec`` maps a (K, n) matrix of rows vᵢ to the rows Aᵢvᵢ
    (a block-diagonal operator, e.g. the Fisher of K tasks' parameter sets in one product:
    :func:`ngrl.recurrent.batched_sequence_fisher`). Each system runs its own conjugate-gradient iteration, with its
    own αₖ, βₖ, stopping tests and status, exactly as :func:`conjugate_gradient` would run it alone (which is this
    function with K = 1); a system that stops keeps its iterates frozen while the others go on, and the loop ends when
    every system has stopped or after ``max_iter`` products.

    :param matvec: V ↦ the rows AᵢVᵢ, for symmetric Aᵢ, on b's device and dtype
    :param b: the right-hand sides, (K, n)
    :param max_iter: the most products to spend
    :param tol: relative residual at which a system stops
    :param preconditioner: R ↦ the rows Mᵢ⁻¹Rᵢ, or a strictly positive tensor holding the diagonals diag(Mᵢ) as
        rows (K, n), or one diagonal (n,) shared by every system
    :param x0: starting points (K, n) (zeros by default)
    :param check_every: iterations between the host's reads of the stopping flags, or None (see
        :func:`conjugate_gradient`)
    :return: one :class:`CGResult` per system, in the order of the rows
    """
    if b.ndim != 2:
        raise ValueError(f"b must hold the right-hand sides as rows, (K, n), got shape {tuple(b.shape)}")
    if x0 is not None and x0.shape != b.shape:
        raise ValueError(f"x0 must have b's shape {tuple(b.shape)}, got {tuple(x0.shape)}")
    return _solve_systems(matvec, b, max_iter=max_iter, tol=tol, precondition=_as_preconditioner(preconditioner), x0=x0,
                          metric=None, check_every=check_every)


def _solve_systems(
    apply: Callable[[Tensor], Tensor],
    b: Tensor,
    *,
    max_iter: int,
    tol: float,
    precondition: Callable[[Tensor], Tensor] | None,
    x0: Tensor | None,
    metric: Tensor | None,
    check_every: int | None,
) -> list[CGResult]:
    """The iteration of :func:`conjugate_gradient` on the rows of ``b`` (K systems), every scalar of it a K-vector."""
    if not torch.isfinite(b).all():
        raise ValueError("the right-hand side b contains NaN or inf: check the gradient (advantages, rewards, losses) upstream")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    if check_every is not None and (isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1):
        raise ValueError(f"check_every must be an integer >= 1 or None, got {check_every!r}")

    def dot(u: Tensor, v: Tensor) -> Tensor:  # row by row: ⟨uᵢ, vᵢ⟩ (in the metric K: uᵢᵀKvᵢ)
        return (u * v).sum(-1) if metric is None else (u * (v @ metric)).sum(-1)

    def norm(u: Tensor) -> Tensor:
        return torch.linalg.vector_norm(u, dim=-1) if metric is None else dot(u, u).clamp_min(0.0).sqrt()

    def column(flags: Tensor) -> Tensor:  # a K-vector as a column, to scale or select rows
        return flags.unsqueeze(-1)

    n_systems = b.shape[0]
    b_norm = norm(b)
    if x0 is None:
        x = torch.zeros_like(b)
        r = b.clone()
    else:
        x = x0.clone()
        r = b - apply(x)
    z = precondition(r) if precondition else r
    p = z.clone()
    rz = dot(r, z)
    residual = norm(r) / b_norm
    zero_b = b_norm == 0.0
    solved_at_start = ~zero_b & (residual <= tol)
    x = torch.where(column(zero_b), torch.zeros_like(x), x)
    residual = torch.where(zero_b, torch.zeros_like(residual), residual)
    active = ~zero_b & ~solved_at_start  # no stop condition has held yet

    singular_below = 10.0 * torch.finfo(b.dtype).eps
    # the true residual of a solvable system can stall at rounding level (√ε: 3e-4 in float32, 1.5e-8 in float64)
    # while the recursive one keeps falling; only a true residual above that means the system has no solution
    rounding_floor = torch.finfo(b.dtype).eps ** 0.5
    threshold: Tensor | None = None  # 10·ε times the first direction's Rayleigh quotient
    # per iteration and system, on the device: still active before it, healthy curvature, singular, tol reached, pᵀAp,
    # the Rayleigh quotient — read by the host in one go after the loop, which derives the stops from them
    record: list[Tensor] = []
    # every system solved (or b = 0) before any product: no iteration (the host reads the flags once here, as the
    # single-system solver always read ‖b‖ and the first residual)
    for iteration in range(1, max_iter + 1 if bool(active.any()) else 1):
        ap = apply(p)
        p_metric = p if metric is None else p @ metric
        p_ap = (ap * p_metric).sum(-1)
        quotient = p_ap / (p * p_metric).sum(-1)  # the Rayleigh quotient of this direction
        threshold = singular_below * quotient if threshold is None else threshold
        # finite, and positive or below rounding relative to the first direction's: pᵀAp of a positive semi-definite A
        # along its null space comes out as ±ε·‖A‖, and a tiny negative value is no indefiniteness (a non-finite Ap
        # makes pᵀAp non-finite)
        healthy = torch.isfinite(p_ap) & ((p_ap > 0.0) | (quotient.abs() < threshold))
        singular = healthy & (quotient < threshold)
        step = active & healthy & ~singular
        alpha = torch.where(step, rz / p_ap, 0.0)
        x = x + column(alpha) * p  # p is finite, so a system that does not step keeps x exactly
        r = torch.where(column(step), r - column(alpha) * ap, r)
        z = precondition(r) if precondition else r
        rz_next = dot(r, z)
        r_norm = rz_next.clamp_min(0.0).sqrt() if precondition is None else norm(r)  # without M, rᵀz = ‖r‖²
        residual = torch.where(step, r_norm / b_norm, residual)
        reached = step & (residual <= tol)
        record.append(torch.stack([active, healthy, singular, reached, p_ap, quotient]).double())
        active = step & ~reached
        p = torch.where(column(active), z + column(rz_next / rz) * p, p)
        rz = torch.where(active, rz_next, rz)
        if check_every is not None and (iteration % check_every == 0) and not bool(active.any()):
            break

    # (iterations, 6, K) -> per system: 6 lists over the iterations
    history = torch.stack(record).permute(2, 1, 0).tolist() if record else [[[]] * 6 for _ in range(n_systems)]
    residuals = residual.tolist()
    true_residuals: list[float] | None = None
    results = []
    for i in range(n_systems):
        if bool(zero_b[i]):
            results.append(CGResult(x[i], 0, 0.0, True, "converged", "b is zero: x = 0"))
            continue
        if bool(solved_at_start[i]):
            results.append(CGResult(x[i], 0, residuals[i], True, "converged", "x0 already solves the system"))
            continue
        was_active, healthy, singular, reached, curvatures, quotients = history[i]
        was_active, healthy, singular, reached = ([flag == 1.0 for flag in flags] for flags in (was_active, healthy, singular, reached))
        steps = [a and h and not s for a, h, s in zip(was_active, healthy, singular)]
        not_positive = [a and not h for a, h in zip(was_active, healthy)]
        singular = [a and s for a, s in zip(was_active, singular)]
        ratios = [q / quotients[0] if quotients[0] != 0.0 else math.nan for q in quotients]
        iterations, residual_i = int(sum(steps)), residuals[i]
        if any(not_positive):
            stop = not_positive.index(True)
            message = (
                f"conjugate gradient met pᵀAp = {curvatures[stop]:.3g} ≤ 0 at iteration {stop + 1}: "
                "the operator is not positive definite (or produced NaN). Increase the damping, or use a "
                "positive semi-definite curvature such as the Fisher / Gauss–Newton matrix."
            )
            results.append(CGResult(x[i], iterations, residual_i, False, "not_positive_definite", message))
        elif any(singular):
            stop = singular.index(True)
            results.append(CGResult(x[i], iterations, residual_i, False, "singular", _singular_message(stop + 1, ratios[stop])))
        elif any(reached):
            if true_residuals is None:  # one more product confirms every system that reached tol
                true_residuals = (norm(b - apply(x)) / b_norm).tolist()
            true_residual = true_residuals[i]
            if not true_residual <= max(10.0 * tol, rounding_floor):
                message = (f"the recursive residual reached {residual_i:.3g} but the true one is {true_residual:.3g} with "
                           f"‖x‖ = {float(norm(x[i : i + 1])):.3g}: " + _singular_message(iterations, None))
                results.append(CGResult(x[i], iterations, true_residual, False, "singular", message))
            else:
                results.append(CGResult(x[i], iterations, residual_i, True, "converged", f"relative residual {residual_i:.3g} ≤ tol {tol:g}"))
        else:
            results.append(CGResult(x[i], max_iter, residual_i, False, "max_iter",
                                    f"stopped after {max_iter} iterations at relative residual {residual_i:.3g}"))
    return results


def _singular_message(iteration: int, ratio: float | None) -> str:
    where = f" (pᵀAp/pᵀp fell to {ratio:.3g} of its first value at iteration {iteration})" if ratio is not None else ""
    return (
        f"the operator is singular, or nearly, along a direction the right-hand side needs{where}, so A x = b has no "
        "solution. Add damping (e.g. cg_damping > 0) to make the operator positive definite."
    )


@dataclass(frozen=True)
class CGConfig:
    """How every natural step of ngrl runs conjugate gradient (one object shared by all callers).

    :param max_iter: the most matrix-vector products to spend
    :param tol: relative residual ‖b − Ax‖/‖b‖ at which to stop early
    :param check_every: iterations between the host's reads of the stopping tests (None: only after the loop, no
        host-device synchronisation inside it; see :func:`conjugate_gradient`)
    """

    max_iter: int = 10
    tol: float = 1e-10
    check_every: int | None = 1

    def __post_init__(self) -> None:
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"CG max_iter must be an integer >= 1, got {self.max_iter!r}")
        if not (math.isfinite(self.tol) and self.tol >= 0):
            raise ValueError(f"CG tol must be >= 0, got {self.tol!r}")
        if self.check_every is not None and (isinstance(self.check_every, bool) or not isinstance(self.check_every, int)
                                             or self.check_every < 1):
            raise ValueError(f"CG check_every must be an integer >= 1 or None, got {self.check_every!r}")

    def solve(
        self,
        matvec: Callable[[Tensor], Tensor],
        b: Tensor,
        *,
        preconditioner: Callable[[Tensor], Tensor] | Tensor | None = None,
        x0: Tensor | None = None,
        metric: Tensor | None = None,
    ) -> CGResult:
        """:func:`conjugate_gradient` with this configuration."""
        return conjugate_gradient(
            matvec, b, max_iter=self.max_iter, tol=self.tol, preconditioner=preconditioner, x0=x0, metric=metric,
            check_every=self.check_every,
        )
