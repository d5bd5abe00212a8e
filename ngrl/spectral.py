"""Spectral tools for curvature operators: λ_max by Lanczos, the trace by Hutchinson, a SciPy export.

They work on any :class:`ngrl.fisher.CurvatureOperator` (through its ``mv``, damping included) or on a
bare product v ↦ A v with a ``like`` tensor giving the size, dtype and device of the flat vectors. The
vectors stay on that device; the only host transfers are the random draws (made with ``generator``, on
the generator's own device, so a CPU generator gives the same start on every device) and one read of
the small results after the loop. Everything is deterministic given ``generator`` (a seed or a
``torch.Generator``); the global random state is never touched.

- :func:`largest_eigenvalue`: Lanczos with full reorthogonalisation (Golub & Van Loan, §10.1).
  m products give the tridiagonal Tₘ = QₘᵀAQₘ of A on the Krylov space of a random start; its extreme
  eigenvalues (Ritz values) satisfy λ_min(A) ≤ θ_min(Tₘ) ≤ θ_max(Tₘ) ≤ λ_max(A). θ_max converges
  quickly to λ_max (10–20 products usually give a few digits); θ_min converges slowly to λ_min, so
  θ_max/θ_min is a *lower* bound of the condition number κ(A).
- :func:`trace_estimate`: Hutchinson's estimator tr(A) ≈ (1/m) Σᵢ zᵢᵀAzᵢ with Rademacher probes zᵢ,
  unbiased, with its standard error; exact for a diagonal A (then zᵢᵀAzᵢ = Σⱼ Aⱼⱼ zᵢⱼ² = tr A).
- :func:`as_linear_operator`: the operator as a ``scipy.sparse.linalg.LinearOperator`` (float64 NumPy
  in and out), for SciPy's solvers and eigensolvers.
- :func:`relative_damping`: the parser of a damping given relative to the spectrum, ``"rel_<c>"``
  meaning λ = c·λ_max(C) (NPG's ``cg_damping="rel_1e-3"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ngrl.fisher.operator import CurvatureOperator

if TYPE_CHECKING:
    from scipy.sparse.linalg import LinearOperator

__all__ = [
    "LanczosEstimate",
    "TraceEstimate",
    "angle_degrees",
    "as_linear_operator",
    "largest_eigenvalue",
    "relative_damping",
    "trace_estimate",
]

Operator = CurvatureOperator | Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class LanczosEstimate:
    """What :func:`largest_eigenvalue` found: the extreme Ritz values of A on an m-dimensional Krylov space.

    :param largest: θ_max(Tₘ), a lower bound of λ_max(A) (equal to it once the Krylov space holds its eigenvector)
    :param smallest: θ_min(Tₘ), an *upper* bound of λ_min(A) (it converges slowly from above)
    :param vector: the unit Ritz vector y of ``largest`` (on the operator's device and dtype)
    :param residual: ‖A y − θ_max y‖, from the recurrence (no extra product): A has an eigenvalue within
        this distance of ``largest``
    :param iterations: m, the dimension of the Krylov space used (below ``products`` when it became invariant)
    :param products: matrix-vector products spent
    """

    largest: float
    smallest: float
    vector: Tensor
    residual: float
    iterations: int
    products: int

    def condition_number(self, shift: float = 0.0) -> float:
        """(θ_max + s)/(θ_min + s): a lower bound of the condition number κ(A + sI), inf when θ_min + s ≤ 0.

        A + sI has the Krylov spaces of A, so its Ritz values are exactly θ + s: one run on the undamped
        operator serves every damping s. Since θ_max ≤ λ_max and θ_min ≥ λ_min, the ratio never exceeds
        the true κ(A + sI).
        """
        denominator = self.smallest + shift
        return (self.largest + shift) / denominator if denominator > 0 else math.inf


@dataclass(frozen=True)
class TraceEstimate:
    """What :func:`trace_estimate` found.

    :param estimate: (1/m) Σᵢ zᵢᵀAzᵢ, unbiased for tr(A)
    :param standard_error: the sample standard deviation of the zᵢᵀAzᵢ over √m (0 for a diagonal A)
    :param probes: m, the number of probes (= matrix-vector products)
    """

    estimate: float
    standard_error: float
    probes: int


def _matvec_of(operator: Operator, like: Tensor | None) -> tuple[Callable[[Tensor], Tensor], int, torch.dtype, torch.device]:
    """v ↦ A v, the size of v, its dtype and device, from an operator or a bare product and ``like``."""
    if isinstance(operator, CurvatureOperator):
        return operator.mv, operator.num_params, operator.dtype, operator.device
    if not callable(operator):
        raise TypeError(f"expected a CurvatureOperator or a callable v ↦ A v, got {type(operator).__name__}")
    if like is None or not isinstance(like, Tensor) or like.ndim != 1 or like.numel() == 0:
        raise ValueError("a bare matvec needs like=, a non-empty flat tensor with the size, dtype and device of its vectors")
    return operator, like.numel(), like.dtype, like.device


def _generator(generator: torch.Generator | int) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise ValueError(f"generator must be a torch.Generator or an integer seed, got {generator!r}")
    return torch.Generator().manual_seed(generator)


def _positive_int(name: str, value: int, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def largest_eigenvalue(
    operator: Operator,
    *,
    like: Tensor | None = None,
    iterations: int = 20,
    generator: torch.Generator | int = 0,
) -> LanczosEstimate:
    """λ_max of a symmetric A by m = ``iterations`` steps of Lanczos with full reorthogonalisation.

    From q₁ = z/‖z‖ (z Gaussian, drawn with ``generator``): wⱼ = A qⱼ, αⱼ = qⱼᵀwⱼ, then wⱼ is made
    orthogonal to q₁…qⱼ (classical Gram–Schmidt, twice), βⱼ = ‖wⱼ‖, qⱼ₊₁ = wⱼ/βⱼ. The αⱼ and βⱼ form
    the tridiagonal Tₘ = QₘᵀAQₘ, whose eigenvalues θ are the Ritz values of A. Full reorthogonalisation
    keeps Qₘ orthonormal in floating point (no spurious copies of converged Ritz values); it costs m
    stored vectors and O(m²p) flops, nothing beside the products when m ≤ ~30. A βⱼ ≤ √ε·‖Tₘ‖ (ε the
    dtype's machine epsilon) means the Krylov space is invariant to that accuracy, e.g. when A has fewer
    than m distinct eigenvalues: Tⱼ alone is used, its Ritz values being eigenvalues of A up to βⱼ (the
    products spent after it are counted but their vectors ignored).

    :param operator: a :class:`~ngrl.fisher.CurvatureOperator` (its ``mv``, damping included) or v ↦ A v
    :param like: for a bare product: a flat tensor with the size, dtype and device of its vectors
    :param iterations: the most products to spend (capped at the dimension p)
    :param generator: a ``torch.Generator`` or an integer seed for the start vector
    :return: θ_max (≤ λ_max), θ_min (≥ λ_min), the Ritz vector of θ_max and its residual
    """
    _positive_int("iterations", iterations)
    matvec, size, dtype, device = _matvec_of(operator, like)
    random = _generator(generator)
    steps = min(iterations, size)
    start = torch.randn(size, generator=random, device=random.device, dtype=torch.float64).to(device=device, dtype=dtype)
    basis = torch.zeros(steps, size, device=device, dtype=dtype)
    basis[0] = start / torch.linalg.vector_norm(start)
    tiny = torch.finfo(dtype).tiny
    alphas, betas = [], []
    for j in range(steps):
        w = matvec(basis[j]).detach()
        alphas.append(torch.dot(basis[j], w))
        done = basis[: j + 1]
        w = w - done.T @ (done @ w)
        w = w - done.T @ (done @ w)  # "twice is enough" (Kahan–Parlett): orthogonal to rounding level
        beta = torch.linalg.vector_norm(w)
        betas.append(beta)
        if j + 1 < steps:
            basis[j + 1] = w / beta.clamp_min(tiny)  # no host sync here: a breakdown is cut off after the loop
    alpha, beta = torch.stack([torch.stack(alphas), torch.stack(betas)]).to(device="cpu", dtype=torch.float64)
    scale = float(alpha.abs().max() + beta.abs().max())
    breakdown = (beta[:-1] <= math.sqrt(torch.finfo(dtype).eps) * scale).nonzero()
    m = int(breakdown[0]) + 1 if breakdown.numel() else steps  # the first invariant Krylov space, if any
    tridiagonal = torch.diag(alpha[:m]) + torch.diag(beta[: m - 1], 1) + torch.diag(beta[: m - 1], -1)
    ritz_values, ritz_vectors = torch.linalg.eigh(tridiagonal)
    top = ritz_vectors[:, -1]
    vector = basis[:m].T @ top.to(device=device, dtype=dtype)
    residual = float(beta[m - 1] * top[-1].abs())  # A y − θy = βₘ (eₘᵀs) qₘ₊₁
    return LanczosEstimate(float(ritz_values[-1]), float(ritz_values[0]), vector, residual, m, steps)


def trace_estimate(
    operator: Operator,
    *,
    like: Tensor | None = None,
    probes: int = 32,
    generator: torch.Generator | int = 0,
) -> TraceEstimate:
    """tr(A) by Hutchinson's estimator (1/m) Σᵢ zᵢᵀAzᵢ with m = ``probes`` Rademacher vectors zᵢ ∈ {−1, 1}ᵖ.

    E[zzᵀ] = I makes every zᵢᵀAzᵢ an unbiased sample of tr(A), with variance 2 Σ_{j≠k} A²ⱼₖ (the
    smallest of all probe distributions with E[zzᵀ] = I): the diagonal contributes no noise, so a
    diagonal A is estimated exactly. The standard error is the samples' standard deviation over √m.

    :param operator: a :class:`~ngrl.fisher.CurvatureOperator` (its ``mv``, damping included) or v ↦ A v
    :param like: for a bare product: a flat tensor with the size, dtype and device of its vectors
    :param probes: m ≥ 2, the number of probes (one product each)
    :param generator: a ``torch.Generator`` or an integer seed for the probes
    """
    _positive_int("probes", probes, minimum=2)
    matvec, size, dtype, device = _matvec_of(operator, like)
    random = _generator(generator)
    samples = []
    for _ in range(probes):
        signs = torch.randint(0, 2, (size,), generator=random, device=random.device)
        z = (2 * signs - 1).to(device=device, dtype=dtype)
        samples.append(torch.dot(z, matvec(z).detach()))
    values = torch.stack(samples).to(device="cpu", dtype=torch.float64)
    return TraceEstimate(float(values.mean()), float(values.std() / math.sqrt(probes)), probes)


def angle_degrees(u: Tensor, v: Tensor) -> float:
    """The angle between two flat vectors, arccos(uᵀv / (‖u‖‖v‖)) in degrees; nan when one is zero.

    Between a natural direction w = (F + λI)⁻¹g and the gradient g it is below 90° (gᵀw = gᵀ(F + λI)⁻¹g > 0)
    and measures how much the curvature turns the step.
    """
    norms = float(torch.linalg.vector_norm(u) * torch.linalg.vector_norm(v))
    if norms == 0.0:
        return math.nan
    cosine = float(torch.dot(u, v)) / norms
    return math.degrees(math.acos(min(1.0, max(-1.0, cosine))))


def as_linear_operator(operator: Operator, *, like: Tensor | None = None) -> LinearOperator:
    """The operator as a ``scipy.sparse.linalg.LinearOperator`` of shape (p, p) and dtype float64.

    ``matvec``/``rmatvec`` (the same: A is symmetric) and ``matmat``/``rmatmat`` take float64 NumPy
    arrays, run the products in the operator's dtype on its device (a float32 operator rounds its input
    to float32) and return float64 NumPy arrays, so that ``scipy.sparse.linalg.cg``, ``minres``,
    ``eigsh`` and friends can use an ngrl curvature directly. ``matmat`` is one product per column.
    SciPy is imported here, not by ngrl: it is an optional dependency (``pip install scipy``).

    :param operator: a :class:`~ngrl.fisher.CurvatureOperator` (its ``mv``, damping included) or v ↦ A v
    :param like: for a bare product: a flat tensor with the size, dtype and device of its vectors
    """
    try:
        import numpy as np
        from scipy.sparse.linalg import LinearOperator
    except ImportError as error:
        raise ImportError(
            "as_linear_operator needs SciPy, which ngrl does not install by itself: pip install scipy "
            "(or install ngrl with its test extra, pip install -e '.[test]')"
        ) from error
    matvec, size, dtype, device = _matvec_of(operator, like)

    def apply(x: np.ndarray) -> np.ndarray:
        v = torch.from_numpy(np.array(x, dtype=np.float64).reshape(size)).to(device=device, dtype=dtype)
        return matvec(v).detach().to(device="cpu", dtype=torch.float64).numpy()

    def apply_columns(x: np.ndarray) -> np.ndarray:
        return np.stack([apply(column) for column in np.asarray(x).T], axis=1)

    return LinearOperator(
        (size, size), matvec=apply, rmatvec=apply, matmat=apply_columns, rmatmat=apply_columns, dtype=np.float64
    )


RELATIVE_PREFIX = "rel_"


def relative_damping(value: float | str, name: str = "cg_damping") -> float | None:
    """The factor c of a damping given relative to the spectrum, ``"rel_<c>"`` meaning λ = c·λ_max(C).

    Returns None for a plain number (an absolute λ, checked elsewhere), c for a string ``"rel_<c>"`` with
    c a positive finite number (``"rel_1e-3"`` → 0.001), and raises a ``ValueError`` naming ``name`` for
    any other string. With λ = c·λ_max the damped operator C + λI has condition number at most (1 + c)/c,
    whatever the scale of C (a little more when λ_max is a Lanczos estimate, which can only fall short).
    """
    if not isinstance(value, str):
        return None
    factor = math.nan
    if value.startswith(RELATIVE_PREFIX):
        try:
            factor = float(value[len(RELATIVE_PREFIX):])
        except ValueError:
            pass
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(
            f"{name} must be a number >= 0 (an absolute damping λ) or 'rel_<c>' with c > 0 (λ = c·λ_max of the "
            f"curvature, e.g. 'rel_1e-3'), got {value!r}"
        )
    return factor
