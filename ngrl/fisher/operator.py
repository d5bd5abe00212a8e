"""Curvature operators: (C + λI) v for flat parameter vectors, with dense and diagonal views."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ngrl.cg import CGConfig, CGResult
from ngrl.linearize import Linearization, gram_matrix
from ngrl.params import flatten, num_params, unflatten

__all__ = ["CurvatureOperator", "GaussNewtonOperator", "DiagonalOperator", "MatvecOperator", "MeanOperator", "ScaledOperator"]


class CurvatureOperator:
    """Base class: a symmetric PSD matrix C over ``params`` plus damping λ, seen through products.

    :param params: the parameters the matrix is taken over, in the order of the flat vectors
    :param damping: λ, added as λI by :meth:`mv`, :meth:`dense` and :meth:`diagonal`
    """

    def __init__(self, params: Sequence[Tensor], damping: float = 0.0) -> None:
        if damping < 0:
            raise ValueError(f"damping must be non-negative, got {damping}")
        self.params = list(params)
        self.damping = float(damping)

    @property
    def num_params(self) -> int:
        return num_params(self.params)

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.params[0].dtype

    def _mv(self, v: Tensor) -> Tensor:
        raise NotImplementedError

    def _diagonal(self) -> Tensor:
        raise NotImplementedError

    def mv(self, v: Tensor) -> Tensor:
        """(C + λI) v for a flat vector v."""
        if v.shape != (self.num_params,):
            raise ValueError(f"expected a flat vector of {self.num_params} entries, got shape {tuple(v.shape)}")
        out = self._mv(v)
        return out + self.damping * v if self.damping else out

    __call__ = mv

    def quadratic(self, v: Tensor) -> float:
        """vᵀ(C + λI)v, the quadratic form of the operator as applied by :meth:`mv`."""
        return float(torch.dot(v, self.mv(v)))

    def diagonal(self) -> Tensor:
        """diag(C) + λ as a flat vector (a natural CG preconditioner)."""
        return self._diagonal() + self.damping

    def dense(self, max_params: int = 20_000) -> Tensor:
        """The full matrix C + λI, column by column; for small models and tests."""
        n = self.num_params
        if n > max_params:
            raise ValueError(f"dense() would form a {n}×{n} matrix; raise max_params if you really want it")
        eye = torch.eye(n, device=self.device, dtype=self.dtype)
        return torch.stack([self.mv(eye[i]) for i in range(n)], dim=1)


class GaussNewtonOperator(CurvatureOperator):
    """C = (1/n) Σᵢ Jᵢᵀ Hᵢ Jᵢ with J the Jacobian of the outputs in the parameters.

    Every Fisher of ngrl has this form: Hᵢ is the output-space Fisher of the model's distribution
    (exact Fisher), I/σ² (Gaussian output model: the Gauss–Newton matrix), or gᵢgᵢᵀ with gᵢ the
    output score of one sampled or observed target (score-sample and empirical Fisher).
    Each product costs one J v and one Jᵀ u; J is never formed.

    :param linearization: J at the current point (see :mod:`ngrl.linearize`)
    :param output_mv: u ↦ H u for (n, k) batches
    :param output_sqrt: L of shape (n, k, c) with H = L Lᵀ (needed only by :meth:`diagonal`)
    """

    def __init__(
        self,
        linearization: Linearization,
        output_mv: Callable[[Tensor], Tensor],
        output_sqrt: Callable[[], Tensor] | None = None,
        *,
        params: Sequence[Tensor] | None = None,
        damping: float = 0.0,
    ) -> None:
        super().__init__(params if params is not None else linearization.params, damping)
        self.linearization = linearization
        self._output_mv = output_mv
        self._output_sqrt = output_sqrt
        self._scale = 1.0 / linearization.outputs.shape[0]

    def _mv(self, v: Tensor) -> Tensor:
        lin = self.linearization
        jv = lin.jvp(unflatten(v, lin.params))
        return flatten(lin.vjp(self._output_mv(jv) * self._scale))

    def batch_space_preferred(self, cg_iterations: int) -> bool:
        """Whether :meth:`batch_space_solve` with ``cg_iterations`` CG iterations costs less than CG through the network.

        A flop model: CG through the network spends about 4·m·p multiply-adds per iteration (a jvp and a vjp
        over the batch, p parameters); the batch space spends m²·w on its Gram matrix for a chain of Linear
        layers (w = Σ over layers of fan-in + fan-out) and m²·p for other networks (per-sample products),
        and m² per iteration. Batch space when its cost is below half the other's (m = rows of B).
        """
        rows = self.linearization.outputs.shape[0] * (self._output_sqrt().shape[-1] if self._output_sqrt else 1)
        width = getattr(self.linearization, "gram_width", self.num_params)
        return rows * (width + cg_iterations) < 2 * cg_iterations * self.num_params

    def batch_space_solve(self, coefficients: Tensor, cg: CGConfig | None = None) -> CGResult:
        """Solve (C + λI) x = Bᵀv in the space of the batch, B never formed.

        Write C = (1/n) BᵀB, B the m × p matrix whose rows are bᵣ = Jᵢᵀ Lᵢ[:, c] (r = (c, i),
        m = n·c, H = LLᵀ the output square root). A right-hand side Bᵀv (every gradient of a loss of
        the outputs has this form) stays in the row space of B: by the push-through identity
        (BᵀB/n + λI)Bᵀ = Bᵀ(K/n + λI), K = BBᵀ (m × m, from one batched backward pass), the
        solution is x = Bᵀu with (K/n + λI) u = v.

        - ``cg=None``: u by one Cholesky factorisation — the exact solve (with λ = 0 and a singular K,
          u is the least-squares solution).
        - ``cg=CGConfig(...)``: conjugate gradient on u ↦ (K/n + λI)u with the inner product ⟨a, b⟩ = aᵀKb
          (= ⟨Bᵀa, Bᵀb⟩): every iterate is Bᵀ of the one CG takes on (C + λI) x = Bᵀv in parameter
          space from x = 0 — the same truncated solve, residuals and stopping rule — each iteration
          costing m × m products instead of a jvp and a vjp through the network.

        Either way x costs one more vjp, and xᵀ(C + λI)x = ‖Ku‖²/n + λ·uᵀKu comes without a product
        (``quadratic`` of the result). Cheaper than products through the network when m ≪ p (a minibatch and a
        network).

        :param coefficients: v, shape (m,), ordered (c, i) like ``output_sqrt`` columns × samples
        :param cg: truncate the solve as this CG would (None: solve exactly)
        :returns: a :class:`CGResult` with x; the relative residual is ‖Bᵀ(v − (K/n + λI)u)‖ / ‖Bᵀv‖ for CG
            and that of the m × m system for the exact solve
        """
        if self._output_sqrt is None:
            raise NotImplementedError("this operator was built without an output square root, so its rows are unknown")
        root = self._output_sqrt()  # (n, k, c)
        n, _, c = root.shape
        if coefficients.shape != (n * c,):
            raise ValueError(f"expected {n * c} coefficients (one per column of H's square root per sample), got shape {tuple(coefficients.shape)}")
        cotangents = root.permute(2, 0, 1)  # (c, n, k): row r = (c, i) of B is Jᵢᵀ Lᵢ[:, c]
        gram = gram_matrix(self.linearization, cotangents)
        system = gram * self._scale
        if self.damping:
            system.diagonal().add_(self.damping)
        if cg is not None:
            result = cg.solve(lambda u: system @ u, coefficients, metric=gram)
            u, iterations, residual, converged, status, message = (
                result.x, result.iterations, result.residual_norm, result.converged, result.status, result.message
            )
        else:
            factor, info = torch.linalg.cholesky_ex(system)
            if int(info) == 0:
                u = torch.cholesky_solve(coefficients.unsqueeze(1), factor).squeeze(1)
            else:  # singular K (λ = 0): least squares
                u = torch.linalg.lstsq(system, coefficients.unsqueeze(1)).solution.squeeze(1)
            residual = float(torch.linalg.vector_norm(system @ u - coefficients) / torch.linalg.vector_norm(coefficients).clamp_min(1e-300))
            iterations, converged, status, message = 0, True, "converged", f"solved exactly in the batch space ({n * c}×{n * c} system)"
        x = flatten(self.linearization.vjp(torch.einsum("cn,nkc->nk", u.reshape(c, n), root)))
        ku = gram @ u  # = Bx
        quadratic = float(ku.dot(ku) * self._scale + self.damping * u.dot(ku))  # xᵀ(C + λI)x = ‖Bx‖²/n + λ‖x‖²
        return CGResult(x, iterations, residual, converged, status, message, quadratic)

    def _diagonal(self) -> Tensor:
        if self._output_sqrt is None:
            raise NotImplementedError("this operator was built without an output square root, so its diagonal is unknown")
        root = self._output_sqrt()  # (n, k, c)
        total = torch.zeros(self.num_params, device=self.device, dtype=self.dtype)
        for column in range(root.shape[-1]):
            total += flatten(self.linearization.squared_vjp_sum(root[..., column]))
        return total * self._scale


class DiagonalOperator(CurvatureOperator):
    """A diagonal matrix diag(d) + λI (e.g. the diagonal of a Fisher)."""

    def __init__(self, diagonal: Tensor, params: Sequence[Tensor], damping: float = 0.0) -> None:
        super().__init__(params, damping)
        if diagonal.shape != (self.num_params,):
            raise ValueError("the diagonal must have one entry per parameter")
        self._diag = diagonal

    def _mv(self, v: Tensor) -> Tensor:
        return self._diag * v

    def _diagonal(self) -> Tensor:
        return self._diag

    def dense(self, max_params: int = 20_000) -> Tensor:
        return torch.diag(self.diagonal())


class MatvecOperator(CurvatureOperator):
    """C given only by its products v ↦ C v (e.g. Hessian-vector products), plus λI.

    :param matvec: v ↦ C v on flat vectors of ``params``' total size
    """

    def __init__(self, matvec: Callable[[Tensor], Tensor], params: Sequence[Tensor], damping: float = 0.0) -> None:
        super().__init__(params, damping)
        self._matvec = matvec

    def _mv(self, v: Tensor) -> Tensor:
        return self._matvec(v)

    def _diagonal(self) -> Tensor:
        raise NotImplementedError("an operator known only by its products has no cheap diagonal; use dense().diagonal()")


class ScaledOperator(CurvatureOperator):
    """s·A + λI for an operator A (A's own damping included): iMAML's I + C/λ is ``ScaledOperator(C, 1/λ, damping=1)``."""

    def __init__(self, base: CurvatureOperator, scale: float, damping: float = 0.0) -> None:
        super().__init__(base.params, damping)
        self.base = base
        self.scale = float(scale)

    def _mv(self, v: Tensor) -> Tensor:
        return self.base.mv(v) * self.scale

    def _diagonal(self) -> Tensor:
        return self.base.diagonal() * self.scale


class MeanOperator(CurvatureOperator):
    """(1/m) Σⱼ Aⱼ + λI over operators of the same size (e.g. the mean Fisher of several adapted policies).

    The operators may be taken over different parameter tensors of one architecture; the flat vectors
    are shared (the first operator's ``params`` give the layout).
    """

    def __init__(self, operators: Sequence[CurvatureOperator], damping: float = 0.0) -> None:
        operators = list(operators)
        if not operators:
            raise ValueError("MeanOperator needs at least one operator")
        if len({op.num_params for op in operators}) != 1:
            raise ValueError(f"the operators differ in size: {[op.num_params for op in operators]}")
        super().__init__(operators[0].params, damping)
        self.operators = operators

    def _mv(self, v: Tensor) -> Tensor:
        return torch.stack([op.mv(v) for op in self.operators]).mean(0)

    def _diagonal(self) -> Tensor:
        return torch.stack([op.diagonal() for op in self.operators]).mean(0)
