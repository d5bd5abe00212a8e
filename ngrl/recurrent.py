"""The Fisher of sequence models: outputs whose rows depend on each other through a hidden state.

A recurrent policy run over sequences (from a stored start state, with resets at episode starts)
gives raw distribution outputs zᵢ for every step i of every sequence; zᵢ depends on all earlier
inputs of its sequence. The Fisher is still F = (1/n) Σᵢ Jᵢᵀ H(zᵢ) Jᵢ with Jᵢ = ∂zᵢ/∂θ — each row
differentiated through the unrolled recurrence — so products F v need one jvp and one vjp of the
whole unrolled function. Only the per-row quantities (Jᵢᵀuᵢ one row at a time, for the diagonal)
cannot be taken per input sample, since the inputs are sequences and not rows:
:class:`SequenceLinearization` takes them by pulling back one-hot cotangents.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.func import vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from ngrl.fisher.distributions import OutputDistribution
from ngrl.fisher.operator import CurvatureOperator
from ngrl.fisher.estimators import ESTIMATORS, fisher_from_linearization

__all__ = ["SequenceLinearization", "TaskBatchedOperator", "batched_sequence_fisher", "sequence_fisher"]


class SequenceLinearization:
    """Linearisation of f(params, inputs) -> (n, k) whose n output rows are coupled (e.g. time steps).

    Built on one recorded autograd graph of the unrolled function, for speed: a recurrence is many
    small operations, which ``torch.func``'s forward mode dispatches one by one in Python (measured
    ≈ 40× slower than this on a 64-step ERNN). ``vjp(u)`` = Jᵀu is a reverse pass; ``jvp(v)`` = J v
    uses the double-backward identity J v = ∂/∂u (Jᵀu · v): the graph of g(u) = Jᵀu (linear in u) is
    recorded once, then each product is one reverse pass through it. Per-row products Jᵢᵀuᵢ pull
    back the cotangents eᵢuᵢᵀ (row i kept, the rest zero), ``chunk_size`` rows at a time
    (O(n) reverse passes: for diagonals and tests rather than hot loops).
    """

    def __init__(
        self,
        fn: Callable[[Sequence[Tensor], Any], Tensor],
        params: Sequence[Tensor],
        inputs: Any,
        *,
        chunk_size: int | None = 64,
    ) -> None:
        self.params = tuple(p.detach() for p in params)
        self._leaves = tuple(p.detach().requires_grad_(True) for p in params)
        self._chunk_size = chunk_size
        with torch.enable_grad():
            out = fn(self._leaves, inputs)
        self._out = out.reshape(out.shape[0], -1)
        self.outputs = self._out.detach()
        self._dummy: Tensor | None = None
        self._transposed: tuple[Tensor, ...] = ()

    def _pullback(self, cotangent: Tensor, create_graph: bool = False, batched: bool = False) -> tuple[Tensor, ...]:
        grads = torch.autograd.grad(
            self._out,
            self._leaves,
            cotangent,
            retain_graph=True,
            create_graph=create_graph,
            allow_unused=True,
            is_grads_batched=batched,
        )
        shape = (cotangent.shape[0],) if batched else ()
        return tuple(
            torch.zeros(*shape, *p.shape, device=p.device, dtype=p.dtype) if g is None else g
            for g, p in zip(grads, self._leaves)
        )

    def vjp(self, cotangent: Tensor) -> tuple[Tensor, ...]:
        return self._pullback(cotangent)

    def jvp(self, tangents: Sequence[Tensor]) -> Tensor:
        if self._dummy is None:
            with torch.enable_grad():
                self._dummy = torch.zeros_like(self._out, requires_grad=True)
                self._transposed = self._pullback(self._dummy, create_graph=True)  # g(u) = Jᵀu, linear in u
        pairs = [(g, t) for g, t in zip(self._transposed, tangents) if g.requires_grad]
        if not pairs:
            return torch.zeros_like(self.outputs)
        (out,) = torch.autograd.grad(
            [g for g, _ in pairs], self._dummy, [t for _, t in pairs], retain_graph=True, allow_unused=True
        )
        return torch.zeros_like(self.outputs) if out is None else out

    def per_sample_vjp(self, cotangent: Tensor) -> tuple[Tensor, ...]:
        if cotangent.shape != self.outputs.shape:
            raise ValueError(f"expected a cotangent of shape {tuple(self.outputs.shape)}, got {tuple(cotangent.shape)}")
        n = cotangent.shape[0]
        step = self._chunk_size or n
        parts = []
        for start in range(0, n, step):
            rows = torch.arange(start, min(start + step, n), device=cotangent.device)
            masked = torch.zeros(len(rows), *cotangent.shape, device=cotangent.device, dtype=cotangent.dtype)
            masked[torch.arange(len(rows)), rows] = cotangent[rows]  # eᵢuᵢᵀ for each row i of the chunk
            parts.append(self._pullback(masked, batched=True))
        return tuple(torch.cat(chunks) for chunks in zip(*parts))

    def squared_vjp_sum(self, cotangent: Tensor) -> tuple[Tensor, ...]:
        return tuple(g.square().sum(0) for g in self.per_sample_vjp(cotangent))


def sequence_fisher(
    fn: Callable[[Sequence[Tensor], Any], Tensor],
    params: Sequence[Tensor],
    inputs: Any,
    family: OutputDistribution,
    *,
    estimator: str = "exact",
    actions: Tensor | None = None,
    damping: float = 0.0,
    generator: torch.Generator | None = None,
    chunk_size: int | None = 64,
) -> CurvatureOperator:
    """F = (1/n) Σᵢ Jᵢᵀ Hᵢ Jᵢ of a sequence model with raw outputs fn(params, inputs) of shape (n, k).

    ``fn`` runs the whole sequences (hidden state from the stored start state, reset at episode
    starts) and returns the (n, k) raw outputs of the action distribution ``family``; Jᵢ is taken
    through the unrolled recurrence. Estimators as :func:`ngrl.sb3_adapter.policy_fisher`:
    ``"exact"`` Hᵢ = H(zᵢ), the output Fisher (equal to the Hessian of the mean KL at θ_old);
    ``"score"`` Hᵢ = gᵢgᵢᵀ with gᵢ = ∇_z log π(aᵢ|zᵢ) for actions sampled from the model;
    ``"empirical"`` the same at the given ``actions`` (not the Fisher unless the actions are model
    samples, as on-policy rollouts are — Kunstner et al. 2019); ``"diagonal"`` diag of the exact one.

    :param fn: f(param_values, inputs) -> (n, k), differentiable twice by autograd (double backward)
    :param params: the parameters F is taken over
    :param inputs: whatever ``fn`` reads (a tensor, tuple or NamedTuple of tensors)
    :param family: the action-distribution family of the outputs
    :param actions: the actions of ``"empirical"``
    :param damping: λ, added as λI to every product
    :param generator: seeds the action draw of ``"score"``
    :param chunk_size: rows per vmapped pullback when per-row products are needed
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown Fisher estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    if estimator == "kfac":
        raise NotImplementedError("KFAC is not defined for recurrent policies here; use 'exact' (the default) or 'diagonal'")
    params = list(params)
    lin = SequenceLinearization(fn, params, inputs, chunk_size=chunk_size)
    outputs = lin.outputs
    if outputs.shape[-1] != family.num_outputs:
        raise ValueError(f"fn returns {outputs.shape[-1]} outputs per row, the distribution family needs {family.num_outputs}")
    return fisher_from_linearization(
        lin, family, estimator=estimator, actions=actions, damping=damping, params=params, generator=generator
    )


class TaskBatchedOperator:
    """blockdiag(A₁, …, A_K) seen through products on the rows of a (K, P) matrix: row i of ``mv(V)`` is Aᵢvᵢ.

    Aᵢ = Cᵢ + λI, Cᵢ over parameter set i (K sets of the same shapes, P entries each, flat in the order of
    ``params[i]``). What :func:`ngrl.batched_conjugate_gradient` solves K systems with, one product per iteration.
    """

    def __init__(self, stacked: CurvatureOperator, shapes: Sequence[torch.Size], num_tasks: int, damping: float) -> None:
        if damping < 0:
            raise ValueError(f"damping must be non-negative, got {damping}")
        self._stacked = stacked  # (1/K)·blockdiag(C₁, …, C_K) over the stacked parameters (K, *shape) of each tensor
        self._sizes = [int(torch.Size(shape).numel()) for shape in shapes]
        self.num_tasks = num_tasks
        self.num_params = sum(self._sizes)
        self.damping = float(damping)

    def _to_stacked(self, rows: Tensor) -> Tensor:
        """(K, P) task rows -> the flat vector of the stacked tensors (each tensor's K task blocks in turn)."""
        return torch.cat([part.reshape(-1) for part in rows.split(self._sizes, dim=1)])

    def _to_rows(self, flat: Tensor) -> Tensor:
        parts = flat.split([self.num_tasks * size for size in self._sizes])
        return torch.cat([part.reshape(self.num_tasks, size) for part, size in zip(parts, self._sizes)], dim=1)

    def mv(self, rows: Tensor) -> Tensor:
        """The rows (Cᵢ + λI) vᵢ of a (K, P) matrix of rows vᵢ."""
        if rows.shape != (self.num_tasks, self.num_params):
            raise ValueError(f"expected ({self.num_tasks}, {self.num_params}) rows, one per task, got shape {tuple(rows.shape)}")
        out = self.num_tasks * self._to_rows(self._stacked.mv(self._to_stacked(rows)))
        return out + self.damping * rows if self.damping else out

    __call__ = mv

    def quadratic(self, rows: Tensor) -> Tensor:
        """vᵢᵀ(Cᵢ + λI)vᵢ for each row, a K-vector."""
        return (rows * self.mv(rows)).sum(-1)


def batched_sequence_fisher(
    fn: Callable[[Sequence[Tensor], Any], Tensor],
    params: Sequence[Sequence[Tensor]],
    inputs: Sequence[Any],
    family: OutputDistribution,
    *,
    damping: float = 0.0,
) -> TaskBatchedOperator:
    """The exact Fishers Fᵢ = (1/n) Σⱼ Jᵢⱼᵀ H(zᵢⱼ) Jᵢⱼ of K tasks as one operator: task i's parameters ``params[i]``
    on its own sequences ``inputs[i]`` (each Fᵢ is :func:`sequence_fisher`'s on that task), applied to all K at once.

    The K parameter sets are stacked and the K tasks' sequences run through ``fn`` together under ``torch.func.vmap``:
    one unrolled recurrence for all tasks instead of K, so a product costs one pass of small operations rather than K
    (a recurrence is many small operations: their count, not their size, sets its time on a CPU). The stacked outputs
    depend on parameter set i only through task i's rows, so the stacked Fisher is block-diagonal: its blocks are
    Fᵢ/K (the mean runs over all K·n rows), scaled back by K here.

    :param fn: f(param_values, inputs) -> (n, k), as :func:`sequence_fisher` takes it; it must run under ``vmap`` (an
        ERNN does; torch's fused LSTM cell has no batching rule)
    :param params: K parameter sets, of the same shapes
    :param inputs: K inputs of the same structure: their tensors of the same shapes, everything else equal
    :param family: the action-distribution family of the outputs
    :param damping: λ, added as λI to every task's block
    """
    if not params or len(params) != len(inputs):
        raise ValueError(f"need one input per parameter set and at least one task, got {len(params)} and {len(inputs)}")
    shapes = [p.shape for p in params[0]]
    if any([p.shape for p in task] != shapes for task in params):
        raise ValueError("every task's parameters must have the shapes of the first task's")
    leaves, spec = tree_flatten(inputs[0])
    is_tensor = [isinstance(leaf, Tensor) for leaf in leaves]
    per_task = []
    for task_inputs in inputs:
        task_leaves, task_spec = tree_flatten(task_inputs)
        same = task_spec == spec and all(
            (a.shape == b.shape) if tensor else (a == b) for a, b, tensor in zip(task_leaves, leaves, is_tensor)
        )
        if not same:
            raise ValueError("every task's inputs must have the structure and tensor shapes of the first task's")
        per_task.append([leaf for leaf, tensor in zip(task_leaves, is_tensor) if tensor])
    stacked_inputs = [torch.stack(column) for column in zip(*per_task)]
    stacked_params = [torch.stack([task[j].detach() for task in params]) for j in range(len(shapes))]

    def one_task(values: Sequence[Tensor], tensors: Sequence[Tensor]) -> Tensor:
        it = iter(tensors)
        return fn(values, tree_unflatten([next(it) if tensor else leaf for leaf, tensor in zip(leaves, is_tensor)], spec))

    def all_tasks(values: Sequence[Tensor], _: Any) -> Tensor:
        out = vmap(one_task)(list(values), stacked_inputs)  # (K, n, k)
        return out.reshape(-1, out.shape[-1])

    linearization = SequenceLinearization(all_tasks, stacked_params, None)
    if linearization.outputs.shape[-1] != family.num_outputs:
        raise ValueError(f"fn returns {linearization.outputs.shape[-1]} outputs per row, the distribution family needs {family.num_outputs}")
    stacked = fisher_from_linearization(linearization, family, estimator="exact")
    return TaskBatchedOperator(stacked, shapes, len(params), damping)
