"""Adaptive natural gradient (Amari, Park & Fukumizu 2000): the inverse Fisher tracked online, no system solved.

Amari, Park & Fukumizu (2000, "Adaptive method of realizing natural gradient learning for multilayer
perceptrons", Neural Computation 12(6); Park, Amari & Fukumizu 2000 for other stochastic models)
estimate P ≈ F⁻¹ from the score vectors s = ∇ℓ as they arrive, and step along P∇ℓ:

    Pₜ₊₁ = (1 + εₜ) Pₜ − εₜ Pₜ sₜ sₜᵀ Pₜ,        θₜ₊₁ = θₜ − ηₜ Pₜ₊₁ ∇ℓₜ.

The update is the inverse, to first order in ε, of the running average Gₜ₊₁ = (1 − ε)Gₜ + ε ssᵀ; in
expectation its fixed point is P = F⁻¹, since (1 + ε)P − ε P E[ssᵀ] P = P ⇔ P F P = P.

**Batched form** (:meth:`AdaptiveFisher.update`; what the agents use). A batch of n samples, each with c
output-space columns Lᵢ[:, j] (the square root of the output-space matrix, as in
:class:`ngrl.fisher.GaussNewtonOperator`: one score cotangent gᵢ = ∇_z log π(aᵢ|zᵢ), or e_a, or I), gives
the score rows sᵢⱼ = Jᵢᵀ Lᵢ[:, j] and the batch estimate Ŝ = (1/n) Σᵢⱼ sᵢⱼ sᵢⱼᵀ of F. One step per batch:

    Pₜ₊₁ = (1 + εₜ) Pₜ − εₜ Pₜ (Ŝₜ + λI) Pₜ,

with damping λ ≥ 0, whose fixed point is (F + λI)⁻¹ — the damped curvature the CG routes solve with
(λ = 0 is Amari's update; λ > 0 costs one m×m product per dense block, below). n rank-one steps with
ε/n each agree with one batched step with ε to first order in ε.

**Per-sample form** (:meth:`AdaptiveFisher.update_scores` with ``per_sample=True``): Amari's rank-one
update once per score vector, each one step of the schedule (λ = 0 only).

**Schedule** (:class:`AdaptiveConfig`): εₜ = ε₀ (``"constant"``: exponential forgetting, which tracks a
Fisher that moves with θ), or εₜ = max(ε_min, 1/(1/ε₀ + t)) (``"harmonic"``, t the steps taken so far:
with ε_min = 0, P is to first order the inverse of the plain average of the prior (weighing 1/ε₀ − 1
steps) and every batch so far, so P → F⁻¹ on a fixed distribution).

**Start**: P₀ = I/λ₀ (``initial_curvature`` = λ₀): a prior curvature λ₀I.

**SPD guard.** With P = P^½P^½ the step is P^½[(1 + ε)I − εX]P^½, X = P^½(Ŝ + λI)P^½, so P stays positive
definite iff ε·λ_max(X) < 1 + ε (rank one: ε sᵀPs < 1 + ε). Before every step of every block (and every
Kronecker factor) ε is lowered where needed to the largest value with ε·λ̂ ≤ κ(1 + ε), i.e.
ε ← κ / (λ̂ − κ), with κ = ``guard`` and λ̂ ≥ λ_max(X): every eigenvalue of the middle factor then stays
≥ (1 − κ)(1 + ε) > 0. λ̂ = λ_max(P^½ŜP^½) + λμ: the first term exactly, from the eigenvalues of the r×r
Gram matrix RPRᵀ/n of the r score rows R (or of (RC)ᵀ(RC)/n, P = CCᵀ, when r exceeds the block size);
μ ≥ λ_max(P) the smallest of tr P, the largest absolute row sum of P and a tracked bound (since
P' ≤ (1 + ε)P − ελP² in the Loewner order, λ_max(P') ≤ max over μ' ≤ μ of (1 + ε)μ' − ελμ'²).
The ε each step used is returned (:class:`AdaptiveUpdate`), so a guarded step is visible.

**Structures** (memory in entries of the estimate; the numbers are for a 64-64 MLP on CartPole, 4 inputs
and 2 outputs, p = 4610 parameters):

- ``"full"``: one p×p matrix, p² entries (21.3 M: 85 MB in float32); a step costs O(r p²), + O(p³) with λ > 0.
- ``"block"``: block-diagonal, one dense m_b×m_b block per group of parameter tensors (``blocks``; the
  agents use one block per layer, weight and bias together: :func:`layer_blocks`); Σ m_b² entries
  (17.4 M: 70 MB), a step O(r Σ m_b²), + O(Σ m_b³) with λ > 0. With one block it is ``"full"``.
- ``"kronecker"``: per Linear layer P ≈ A⁻¹ ⊗ G⁻¹, factoring the layer's Fisher E[(āāᵀ) ⊗ (δδᵀ)] ≈ A ⊗ G
  as KFAC does (Martens & Grosse 2015): A = E[āāᵀ] over the layer inputs (a 1 appended when the group
  holds the bias), G = (1/n) Σᵢⱼ δᵢⱼδᵢⱼᵀ over the cotangents of the pre-activation. Each factor's inverse
  takes the adaptive step above with its own rows and damping √λ (factored Tikhonov damping, as
  :mod:`ngrl.fisher.kfac`). Σ (in+1)² + out² entries (16.7 k: 67 kB), a step O(r Σ (in² + out²)).
  A group that is not one Linear layer's weight (and bias) — a log σ — gets a dense block. Needs the
  linearisation of an MLP chain (:class:`ngrl.linearize.MLPChainLinearization`, possibly beside
  broadcast outputs in a :class:`ngrl.linearize.ConcatLinearization`).

The estimate is an ``nn.Module`` whose buffers (the inverses, their bounds, the step count) are its
whole state: ``state_dict``/``load_state_dict`` save and restore it, ``.to()`` moves and casts it.
:meth:`AdaptiveFisher.operator` gives the curvature Ĝ = P⁻¹ as a :class:`ngrl.fisher.CurvatureOperator`
for :func:`ngrl.natural_step`: its ``solve(g)`` is the product Pg (a :class:`ngrl.CGResult` with no
iterations, passed as ``solve=``), and the quadratic model of every step size is that operator's,
wᵀĜw = gᵀPg for w = Pg (damping included, as it is in P). :meth:`AdaptiveFisher.solve` instead sizes Pg
for another curvature A (a minibatch's, an exact Fisher's): x = α*Pg at the minimum of −gᵀx + ½xᵀAx along
Pg; the step's quadratic model is then A's.

What the agents feed it: NGDQN (``curvature="adaptive"``) the rows Jᵢᵀe_{aᵢ} of the Gaussian output model
(σ = 1), whose Ŝ is the minibatch's Gauss–Newton matrix, i.e. that model's exact Fisher; NPG
(``fisher_estimator="adaptive"``) the scores ∇θ log π(ãᵢ|sᵢ) of one action ãᵢ sampled from π at each state,
a Monte-Carlo Fisher (not the empirical Fisher of the taken actions). Both size the direction with
:meth:`AdaptiveFisher.solve` against the curvature the CG route would use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ngrl.cg import CGResult
from ngrl.fisher.operator import CurvatureOperator
from ngrl.linearize import ConcatLinearization, Linearization, MLPChainLinearization

__all__ = ["AdaptiveConfig", "AdaptiveFisher", "AdaptiveOperator", "AdaptiveUpdate", "SCHEDULES", "STRUCTURES", "layer_blocks"]

STRUCTURES = ("full", "block", "kronecker")
SCHEDULES = ("constant", "harmonic")
MAX_DENSE_BLOCK = 16_384  # parameters in one dense block: 16384² float32 entries are 1 GiB


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class AdaptiveConfig:
    """How an :class:`AdaptiveFisher` is laid out and how fast it moves.

    :param structure: ``"full"``, ``"block"`` or ``"kronecker"`` (see the module docstring for memory and cost)
    :param epsilon: ε₀ ∈ (0, 1], the step of the estimate
    :param schedule: ``"constant"`` (εₜ = ε₀) or ``"harmonic"`` (εₜ = max(ε_min, 1/(1/ε₀ + t)))
    :param min_epsilon: ε_min, the floor of the harmonic schedule (0 ≤ ε_min ≤ ε₀)
    :param initial_curvature: λ₀ > 0: the estimate starts at P₀ = I/λ₀
    :param guard: κ ∈ (0, 1): ε is lowered so that ε·λ̂ ≤ κ(1 + ε) (the SPD guard)
    """

    structure: str = "kronecker"
    epsilon: float = 0.1
    schedule: str = "constant"
    min_epsilon: float = 0.0
    initial_curvature: float = 1.0
    guard: float = 0.5

    def __post_init__(self) -> None:
        if self.structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {', '.join(map(repr, STRUCTURES))}, got {self.structure!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(map(repr, SCHEDULES))}, got {self.schedule!r}")
        if not (_is_real(self.epsilon) and 0 < self.epsilon <= 1):
            raise ValueError(f"epsilon must lie in (0, 1], got {self.epsilon!r}")
        if not (_is_real(self.min_epsilon) and 0 <= self.min_epsilon <= self.epsilon):
            raise ValueError(f"min_epsilon must lie in [0, epsilon], got {self.min_epsilon!r}")
        if not (_is_real(self.initial_curvature) and self.initial_curvature > 0):
            raise ValueError(f"initial_curvature must be a positive finite number, got {self.initial_curvature!r}")
        if not (_is_real(self.guard) and 0 < self.guard < 1):
            raise ValueError(f"guard must lie in (0, 1), got {self.guard!r}")

    def epsilon_at(self, step: int) -> float:
        """εₜ of the schedule at step t (t = 0 for the first step)."""
        if self.schedule == "constant":
            return float(self.epsilon)
        return max(float(self.min_epsilon), 1.0 / (1.0 / self.epsilon + step))


class AdaptiveUpdate(NamedTuple):
    """What one step of the estimate did.

    :param step: the step count t the schedule read
    :param epsilon: εₜ of the schedule
    :param smallest_epsilon: the smallest ε a block or factor actually used (below ``epsilon`` when the guard acted)
    """

    step: int
    epsilon: float
    smallest_epsilon: float


def layer_blocks(module: nn.Module, params: Sequence[Tensor]) -> list[int]:
    """Tensors per layer: ``params`` grouped by the module that owns them (found by identity), consecutive ones together.

    For an MLP's parameters (W₁, b₁, W₂, b₂, …) this is [2, 2, …]: one block per Linear layer.
    """
    owner: dict[int, int] = {}
    for index, sub in enumerate(module.modules()):
        for p in sub.parameters(recurse=False):
            owner.setdefault(id(p), index)
    missing = [i for i, p in enumerate(params) if id(p) not in owner]
    if missing:
        raise ValueError(f"parameters at positions {missing} do not belong to {type(module).__name__}")
    counts: list[int] = []
    previous = None
    for p in params:
        if counts and owner[id(p)] == previous:
            counts[-1] += 1
        else:
            counts.append(1)
        previous = owner[id(p)]
    return counts


@dataclass(frozen=True)
class _Dense:
    """A dense block: P over the flat slice [start, start + size) of the tensors at ``tensors``."""

    name: str
    tensors: tuple[int, ...]
    start: int
    size: int


@dataclass(frozen=True)
class _Kronecker:
    """A Linear layer's block P ≈ A⁻¹ ⊗ G⁻¹ (flat layout: W row-major, then b)."""

    name: str
    weight: int
    has_bias: bool
    start: int
    out: int
    inputs: int

    @property
    def width(self) -> int:
        return self.inputs + (1 if self.has_bias else 0)

    @property
    def size(self) -> int:
        return self.out * self.width

    def matrices(self, columns: Tensor) -> Tensor:
        """(size, k) flat columns → (k, out, width) matrices [W | b]."""
        k = columns.shape[1]
        weight = columns[: self.out * self.inputs].T.reshape(k, self.out, self.inputs)
        if not self.has_bias:
            return weight
        return torch.cat([weight, columns[self.out * self.inputs :].T.unsqueeze(-1)], dim=-1)

    def columns(self, matrices: Tensor) -> Tensor:
        """(k, out, width) matrices → (size, k) flat columns."""
        k = matrices.shape[0]
        weight = matrices[..., : self.inputs].reshape(k, -1)
        flat = torch.cat([weight, matrices[..., -1]], dim=1) if self.has_bias else weight
        return flat.T


def _top_whitened_eigenvalue(inverse: Tensor, rows: Tensor, rows_times_inverse: Tensor, count: int) -> float:
    """λ_max(P^½ Ŝ P^½), Ŝ = RᵀR/n, from the smaller of RPRᵀ/n (r×r) and (RC)ᵀ(RC)/n (m×m, P = CCᵀ)."""
    r, m = rows.shape
    if r > m:
        chol, info = torch.linalg.cholesky_ex(inverse)
        if int(info) == 0:
            whitened = rows @ chol
            return max(0.0, float(torch.linalg.eigvalsh(whitened.T @ whitened / count)[-1]))
    gram = rows_times_inverse @ rows.T / count
    return max(0.0, float(torch.linalg.eigvalsh(0.5 * (gram + gram.T))[-1]))


def _spectral_bound(inverse: Tensor, tracked: float) -> float:
    """An upper bound of λ_max(P) for an SPD P: the smallest of tr P, max row sum of |P| and the tracked bound."""
    trace = float(torch.diagonal(inverse).sum())
    row_sum = float(inverse.abs().sum(1).max())
    return min(tracked, trace, row_sum)


def _guarded_epsilon(epsilon: float, top: float, guard: float) -> float:
    """The largest ε' ≤ ε with ε'·λ̂ ≤ κ(1 + ε'): ε itself, or κ / (λ̂ − κ)."""
    if epsilon * top <= guard * (1.0 + epsilon):
        return epsilon
    return guard / (top - guard)


def _tracked_bound(bound: float, epsilon: float, damping: float) -> float:
    """max over μ ≤ ``bound`` of (1 + ε)μ − ελμ², a bound of λ_max(P') when ``bound`` ≥ λ_max(P)."""
    if damping <= 0:
        return (1.0 + epsilon) * bound
    peak = (1.0 + epsilon) / (2.0 * epsilon * damping)
    mu = min(bound, peak)
    return (1.0 + epsilon) * mu - epsilon * damping * mu * mu


class AdaptiveFisher(nn.Module):
    """The running inverse-curvature estimate P ≈ (F + λI)⁻¹ of Amari, Park & Fukumizu (see the module docstring).

    :param params: the parameters the estimate is taken over, in the order of the flat vectors (only their
        shapes, dtype and device are read; the estimate is created on their device and dtype)
    :param config: structure, schedule, start and guard
    :param blocks: for ``"block"`` and ``"kronecker"``: the number of consecutive parameter tensors in each
        block (e.g. :func:`layer_blocks`); None: one block per tensor. Ignored by ``"full"``.
    """

    def __init__(self, params: Sequence[Tensor], config: AdaptiveConfig = AdaptiveConfig(), blocks: Sequence[int] | None = None) -> None:
        super().__init__()
        params = list(params)
        if not params:
            raise ValueError("the adaptive Fisher needs at least one parameter tensor")
        self.config = config
        self._params = params
        self._shapes = [tuple(p.shape) for p in params]
        sizes = [p.numel() for p in params]
        self.num_params = sum(sizes)
        offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        groups = self._groups(blocks, len(params))
        self._blocks: list[_Dense | _Kronecker] = []
        for index, group in enumerate(groups):
            name = f"block{index}"
            first = self._shapes[group[0]]
            is_layer = len(first) == 2 and (len(group) == 1 or (len(group) == 2 and self._shapes[group[1]] == (first[0],)))
            if config.structure == "kronecker" and is_layer:
                block = _Kronecker(name, group[0], len(group) == 2, offsets[group[0]], first[0], first[1])
                self._add_inverse(f"{name}_a", block.width, params[0])
                self._add_inverse(f"{name}_g", block.out, params[0])
            else:
                block = _Dense(name, group, offsets[group[0]], sum(sizes[i] for i in group))
                if block.size > MAX_DENSE_BLOCK:
                    raise ValueError(
                        f"structure={config.structure!r} would hold a dense {block.size}×{block.size} block (parameter tensors "
                        f"{list(group)}): more than {MAX_DENSE_BLOCK} parameters in one block. Use structure='kronecker' for "
                        "Linear layers, or smaller blocks"
                    )
                self._add_inverse(name, block.size, params[0])
            self._blocks.append(block)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long, device=params[0].device))

    def _groups(self, blocks: Sequence[int] | None, count: int) -> list[tuple[int, ...]]:
        if self.config.structure == "full":
            return [tuple(range(count))]
        if blocks is None:
            return [(i,) for i in range(count)]
        blocks = list(blocks)
        if any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in blocks) or sum(blocks) != count:
            raise ValueError(f"blocks must be positive tensor counts summing to the {count} parameter tensors, got {blocks}")
        starts = [sum(blocks[:i]) for i in range(len(blocks))]
        return [tuple(range(s, s + b)) for s, b in zip(starts, blocks)]

    def _add_inverse(self, name: str, size: int, like: Tensor) -> None:
        start = 1.0 / self.config.initial_curvature
        self.register_buffer(f"{name}_inverse", torch.eye(size, dtype=like.dtype, device=like.device) * start)
        self.register_buffer(f"{name}_bound", torch.tensor(start, dtype=torch.float64, device=like.device))

    # --- what it holds ---------------------------------------------------------------------------

    @property
    def structure(self) -> str:
        return self.config.structure

    def inverses(self) -> dict[str, Tensor]:
        """The SPD matrices the estimate holds, by name (a dense block's P, or a Kronecker block's A⁻¹ and G⁻¹)."""
        return {name[: -len("_inverse")]: buffer for name, buffer in self.named_buffers() if name.endswith("_inverse")}

    def memory_bytes(self) -> int:
        """Bytes held by the inverse matrices (the bounds and the step count are a few scalars more)."""
        return sum(t.numel() * t.element_size() for t in self.inverses().values())

    def _inverse(self, name: str) -> Tensor:
        return getattr(self, f"{name}_inverse")

    # --- products --------------------------------------------------------------------------------

    def _product(self, columns: Tensor, *, inverse: bool) -> Tensor:
        """P V (``inverse``) or P⁻¹ V for a (p, k) matrix of flat columns, block by block."""
        out = torch.empty_like(columns)
        for block in self._blocks:
            part = columns[block.start : block.start + block.size]
            if isinstance(block, _Dense):
                p = self._inverse(block.name)
                result = p @ part if inverse else torch.cholesky_solve(part, self._cholesky(block.name))
            else:
                v = block.matrices(part)
                a_inv, g_inv = self._inverse(f"{block.name}_a"), self._inverse(f"{block.name}_g")
                if inverse:
                    m = g_inv @ v @ a_inv  # (A⁻¹ ⊗ G⁻¹) vec V = G⁻¹ V A⁻¹
                else:  # G V A = (G⁻¹)⁻¹ V (A⁻¹)⁻¹
                    left = torch.cholesky_solve(v, self._cholesky(f"{block.name}_g"))
                    m = torch.cholesky_solve(left.transpose(-1, -2), self._cholesky(f"{block.name}_a")).transpose(-1, -2)
                result = block.columns(m)
            out[block.start : block.start + block.size] = result
        return out

    def _cholesky(self, name: str) -> Tensor:
        return torch.linalg.cholesky(self._inverse(name))

    def _check_flat(self, v: Tensor) -> None:
        if v.shape[0] != self.num_params or v.ndim not in (1, 2):
            raise ValueError(f"expected a flat vector (or columns) of {self.num_params} entries, got shape {tuple(v.shape)}")

    def inverse_mv(self, v: Tensor) -> Tensor:
        """P v: the estimated inverse curvature applied to a flat vector (or to the columns of a (p, k) matrix)."""
        self._check_flat(v)
        return self._product(v.reshape(self.num_params, -1), inverse=True).reshape(v.shape)

    def curvature_mv(self, v: Tensor) -> Tensor:
        """Ĝ v = P⁻¹ v, by Cholesky solves with each block (or factor) of P."""
        self._check_flat(v)
        return self._product(v.reshape(self.num_params, -1), inverse=False).reshape(v.shape)

    def dense_inverse(self, max_params: int = 20_000) -> Tensor:
        """P as a p×p matrix (block-diagonal, Kronecker blocks expanded); for small models and tests."""
        if self.num_params > max_params:
            raise ValueError(f"dense_inverse() would form a {self.num_params}×{self.num_params} matrix; raise max_params if you really want it")
        like = self._inverse(self._first_name())
        return self._product(torch.eye(self.num_params, dtype=like.dtype, device=like.device), inverse=True)

    def _first_name(self) -> str:
        block = self._blocks[0]
        return block.name if isinstance(block, _Dense) else f"{block.name}_a"

    def operator(self) -> AdaptiveOperator:
        """The curvature Ĝ = P⁻¹ as an operator for :func:`ngrl.natural_step` (a view of the current estimate)."""
        return AdaptiveOperator(self)

    def solve(self, gradient: Tensor, model: CurvatureOperator) -> CGResult:
        """The adaptive direction w = Pg sized for another curvature's quadratic model A (e.g. a minibatch's C + λI).

        x = α*w with α* = gᵀw / wᵀAw, the minimiser of the model m(x) = −gᵀx + ½xᵀAx along w — the rescaling
        that KFAC gives its approximate natural direction with the exact curvature (Martens & Grosse 2015, §6.4).
        If A = P⁻¹ then α* = 1. One product with A. The result reads like a CG stopped before its first
        iteration (0 iterations, ``status="max_iter"``, not converged) and reports the true relative residual
        ‖g − Ax‖/‖g‖: how far x is from A's own solve. A non-positive wᵀAw gives x = 0 and
        ``status="not_positive_definite"``.
        """
        if gradient.shape != (self.num_params,) or not torch.isfinite(gradient).all():
            raise ValueError(f"the gradient must be a finite flat vector of {self.num_params} entries, got shape {tuple(gradient.shape)}")
        direction = self.inverse_mv(gradient)
        product = model.mv(direction)
        curvature = float(torch.dot(direction, product))
        gradient_norm = float(torch.linalg.vector_norm(gradient))
        if not curvature > 0:
            message = f"the model's curvature along the adaptive direction is wᵀAw = {curvature:.3g} ≤ 0: no step"
            return CGResult(torch.zeros_like(gradient), 0, 1.0, False, "not_positive_definite", message)
        scale = float(torch.dot(gradient, direction)) / curvature
        residual = float(torch.linalg.vector_norm(gradient - scale * product)) / gradient_norm if gradient_norm else 0.0
        message = f"x = α*·Pg with α* = gᵀPg / (Pg)ᵀA(Pg) = {scale:.3g}: the adaptive direction at the model's minimum along it"
        return CGResult(scale * direction, 0, residual, False, "max_iter", message)

    # --- the adaptive step -----------------------------------------------------------------------

    def update(self, linearization: Linearization, root: Tensor, *, damping: float = 0.0) -> AdaptiveUpdate:
        """One batched step from the score rows sᵢⱼ = Jᵢᵀ Lᵢ[:, j] of a batch (see the module docstring).

        :param linearization: J at the batch, over the estimate's parameters in the same order
        :param root: (n, k, c) columns Lᵢ of the output-space matrix of each sample (k outputs): Ŝ = (1/n) Σᵢⱼ sᵢⱼsᵢⱼᵀ
        :param damping: λ ≥ 0: the step moves P towards (Ŝ + λI)⁻¹
        """
        n, k = linearization.outputs.shape
        if root.ndim != 3 or root.shape[:2] != (n, k):
            raise ValueError(f"root must have shape ({n}, {k}, c) for outputs of shape ({n}, {k}), got {tuple(root.shape)}")
        if sum(p.numel() for p in linearization.params) != self.num_params:
            raise ValueError("the linearisation is not over the estimate's parameters")
        rows = self._rows(linearization, root)
        return self._step(rows, n, damping)

    def update_scores(self, scores: Tensor, *, count: int | None = None, damping: float = 0.0, per_sample: bool = False) -> AdaptiveUpdate:
        """A step from flat score vectors given directly (``"full"`` and ``"block"`` estimates).

        :param scores: (r, p) rows sᵢ
        :param count: n, the normaliser of Ŝ = (1/n) Σᵢ sᵢsᵢᵀ (default r); batched form only
        :param damping: λ ≥ 0 (batched form only)
        :param per_sample: Amari's rank-one step once per row, each one step of the schedule, instead of one batched step
        """
        if any(isinstance(b, _Kronecker) for b in self._blocks):
            raise ValueError("a Kronecker-factored estimate needs the layers' inputs and cotangents: use update(linearization, root)")
        if scores.ndim != 2 or scores.shape[1] != self.num_params or scores.shape[0] == 0:
            raise ValueError(f"scores must have shape (r ≥ 1, {self.num_params}), got {tuple(scores.shape)}")
        scores = scores.detach()
        rows = {block.name: scores[:, block.start : block.start + block.size] for block in self._blocks}
        if not per_sample:
            return self._step(rows, scores.shape[0] if count is None else count, damping)
        if damping:
            raise ValueError("the per-sample form is Amari's undamped update: damping must be 0 (use the batched form)")
        first, smallest = int(self.steps), math.inf
        for row in range(scores.shape[0]):  # (no autograd: scores are detached, the buffers need no graph)
            step = int(self.steps)
            epsilon = self.config.epsilon_at(step)
            for block in self._blocks:
                p = self._inverse(block.name)
                s = rows[block.name][row]
                u = p @ s
                used = _guarded_epsilon(epsilon, max(0.0, float(s @ u)), self.config.guard)  # λ_max(X) = sᵀPs
                p.mul_(1.0 + used).sub_(used * torch.outer(u, u))
                self._set_bound(block.name, _tracked_bound(self._bound(block.name), used, 0.0))
                smallest = min(smallest, used)
            self.steps += 1
        return AdaptiveUpdate(first, self.config.epsilon_at(first), smallest)

    def _bound(self, name: str) -> float:
        return float(getattr(self, f"{name}_bound"))

    def _set_bound(self, name: str, value: float) -> None:
        getattr(self, f"{name}_bound").fill_(value)

    def _rows(self, linearization: Linearization, root: Tensor) -> dict[str, Tensor]:
        """The rows of every SPD matrix of the estimate: a dense block's score rows, a Kronecker block's ā and δ rows."""
        parts = linearization.parts if isinstance(linearization, ConcatLinearization) else [linearization]
        widths = [part.outputs.shape[-1] for part in parts]
        kronecker = {b.weight: b for b in self._blocks if isinstance(b, _Kronecker)}
        dense_tensors = {i for b in self._blocks if isinstance(b, _Dense) for i in b.tensors}
        per_tensor: dict[int, Tensor] = {}  # tensor index → (n·c, numel) score rows
        rows: dict[str, Tensor] = {}
        offset = 0
        for part, part_root in zip(parts, torch.split(root, widths, dim=1)):
            positions = range(offset, offset + len(part.params))
            columns = [part_root[..., j] for j in range(part_root.shape[-1])]
            if any(i in kronecker for i in positions):
                if not isinstance(part, MLPChainLinearization):
                    raise ValueError(
                        "structure='kronecker' needs an MLP (Linear layers and elementwise activations after a parameter-free "
                        "features extractor); use structure='block' or 'full' for other networks"
                    )
                self._kronecker_rows(part, columns, offset, kronecker, rows)
            if any(i in dense_tensors for i in positions):
                per_column = [part.per_sample_vjp(u) for u in columns]
                for local, index in enumerate(positions):
                    per_tensor[index] = torch.cat([g[local].reshape(g[local].shape[0], -1) for g in per_column])
            offset += len(part.params)
        for block in self._blocks:
            if isinstance(block, _Dense):
                rows[block.name] = torch.cat([per_tensor[i] for i in block.tensors], dim=1)
        return rows

    @staticmethod
    def _kronecker_rows(part: MLPChainLinearization, columns: list[Tensor], offset: int, blocks: dict[int, _Kronecker], rows: dict[str, Tensor]) -> None:
        walks = [list(part.layers_backward(u))[::-1] for u in columns]  # per column: the layers, first first
        position = offset
        for layer, (_, has_bias, a_in, _) in enumerate(walks[0]):
            block = blocks.get(position)
            if block is not None:
                if block.has_bias and not has_bias:
                    raise ValueError(f"the Kronecker block at tensor {position} holds a bias its layer does not have")
                inputs = torch.cat([a_in, torch.ones_like(a_in[:, :1])], dim=1) if block.has_bias else a_in
                rows[f"{block.name}_a"] = inputs
                rows[f"{block.name}_g"] = torch.cat([walk[layer][3] for walk in walks])
            position += 2 if has_bias else 1

    def _step(self, rows: dict[str, Tensor], count: int, damping: float) -> AdaptiveUpdate:
        if not (_is_real(damping) and damping >= 0):
            raise ValueError(f"damping must be a finite number >= 0, got {damping!r}")
        if count < 1:
            raise ValueError(f"the batch must hold at least one sample, got count={count}")
        step = int(self.steps)
        epsilon = self.config.epsilon_at(step)
        smallest = math.inf
        for name, block_rows in rows.items():
            factor_damping = math.sqrt(damping) if name.endswith(("_a", "_g")) else damping  # Kronecker: √λ per factor
            block_rows = block_rows.detach().to(self._inverse(name).dtype)
            smallest = min(smallest, self._inverse_step(name, block_rows, count, factor_damping, epsilon))
        self.steps += 1
        return AdaptiveUpdate(step, epsilon, smallest)

    @torch.no_grad()
    def _inverse_step(self, name: str, rows: Tensor, count: int, damping: float, epsilon: float) -> float:
        """P ← (1 + ε)P − ε P(RᵀR/n + λI)P for one SPD matrix, ε lowered by the guard; returns the ε used."""
        p = self._inverse(name)
        rows_p = rows @ p  # rows of R P
        target = rows_p.T @ rows_p / count  # P Ŝ P
        if damping:
            target = target + damping * (p @ p)
        if not (torch.isfinite(target).all() and torch.isfinite(rows_p).all()):
            return 0.0  # scores that overflow (a diverged network) leave the estimate as it is
        bound = _spectral_bound(p, self._bound(name))
        top = _top_whitened_eigenvalue(p, rows, rows_p, count) + damping * bound  # λ̂ ≥ λ_max(P^½(Ŝ + λI)P^½)
        used = _guarded_epsilon(epsilon, top, self.config.guard)
        updated = (1.0 + used) * p - used * target
        p.copy_(0.5 * (updated + updated.T))
        self._set_bound(name, _tracked_bound(bound, used, damping))
        return used



class AdaptiveOperator(CurvatureOperator):
    """The curvature Ĝ = P⁻¹ of an :class:`AdaptiveFisher`, for :func:`ngrl.natural_step`.

    - :meth:`solve` gives w = Pg as a :class:`ngrl.CGResult` with no iterations (pass it as ``solve=``):
      w solves Ĝw = g exactly, so its residual is 0.
    - :meth:`quadratic` is the quadratic model of the step sizes: wᵀĜw, which for the w of the last solve
      is gᵀPg = wᵀg (no solve); for any other v it takes Cholesky solves with P's blocks.
    - :meth:`mv` applies Ĝ = P⁻¹ by Cholesky solves (for spectra and tests).

    The damping is inside P (which estimates (F + λI)⁻¹), so the operator itself adds none. It reads the
    estimate's current buffers: take it after the step that should count.
    """

    def __init__(self, estimate: AdaptiveFisher) -> None:
        super().__init__(estimate._params, 0.0)
        self.estimate = estimate
        self._last: tuple[Tensor, Tensor] | None = None

    def solve(self, gradient: Tensor) -> CGResult:
        """w = P g, the natural direction of the adaptive estimate."""
        if gradient.shape != (self.num_params,):
            raise ValueError(f"expected a flat vector of {self.num_params} entries, got shape {tuple(gradient.shape)}")
        if not torch.isfinite(gradient).all():
            raise ValueError("the gradient contains NaN or inf: check the advantages, rewards or losses upstream")
        direction = self.estimate.inverse_mv(gradient)
        self._last = (direction, gradient)
        message = "w = P g: a product with the adaptive inverse estimate (no iterations; it solves P⁻¹w = g exactly)"
        return CGResult(direction, 0, 0.0, True, "converged", message)

    def quadratic(self, v: Tensor) -> float:
        if self._last is not None and v is self._last[0]:
            return float(torch.dot(v, self._last[1]))  # wᵀP⁻¹w = wᵀg for w = Pg
        return super().quadratic(v)

    def _mv(self, v: Tensor) -> Tensor:
        return self.estimate.curvature_mv(v)

    def _diagonal(self) -> Tensor:
        raise NotImplementedError("the adaptive estimate holds P = Ĝ⁻¹; diag(Ĝ) would need its inverse: use dense().diagonal()")
