"""The Gauss–Newton matrix of any network under a Gaussian output model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ngrl.fisher.operator import GaussNewtonOperator
from ngrl.linearize import linearize
from ngrl.params import unflatten

__all__ = ["GaussNewtonMatrix", "gauss_newton"]


class GaussNewtonMatrix(GaussNewtonOperator):
    """A :class:`GaussNewtonOperator` whose quadratic form costs one jvp: vᵀ(G + λI)v = (1/n) Σᵢ (Jᵢv)ᵀHᵢ(Jᵢv) + λ‖v‖²."""

    def quadratic(self, v: Tensor) -> float:
        lin = self.linearization
        jv = lin.jvp(unflatten(v, lin.params))
        value = (jv * self._output_mv(jv)).sum() * self._scale
        if self.damping:
            value = value + self.damping * torch.dot(v, v)
        return float(value)


def gauss_newton(
    fn: nn.Module | Callable[[Sequence[Tensor], Any], Tensor],
    params: Sequence[Tensor],
    inputs: Any,
    *,
    sigma: float = 1.0,
    damping: float = 0.0,
    output_index: Tensor | None = None,
) -> GaussNewtonMatrix:
    """G = (1/n) Σᵢ JᵢᵀJᵢ / σ² (+ λI): the Fisher of p(y|x) = N(f_θ(x), σ²I).

    Products by one J v and one Jᵀ u; J is never formed. With ``output_index`` (one integer per
    sample) only that output of each sample counts, Gᵢ = Jᵢᵀ e_a e_aᵀ Jᵢ / σ² — the Q-value of the
    taken action in natural-gradient DQN (Knight & Lerner 2018).

    :param fn: a module (``params`` substituted by identity; chains of Linear layers and
        elementwise activations take a fast path) or a callable f(param_values, inputs) -> (n, ...)
    :param params: the parameters G is taken over
    :param inputs: the batch
    :param sigma: σ of the Gaussian output model
    """
    if sigma <= 0:
        raise ValueError("sigma must be positive")
    lin = linearize(fn, params, inputs)
    precision = 1.0 / sigma**2
    n, k = lin.outputs.shape
    if output_index is None:
        eye = torch.eye(k, device=lin.outputs.device, dtype=lin.outputs.dtype) * sigma**-1
        return GaussNewtonMatrix(
            lin, lambda u: u * precision, lambda: eye.expand(n, k, k), params=list(params), damping=damping
        )
    index = output_index.long().reshape(-1, 1)
    if index.shape[0] != n:
        raise ValueError(f"output_index has {index.shape[0]} entries for a batch of {n}")
    mask = torch.zeros_like(lin.outputs).scatter_(1, index, 1.0)
    return GaussNewtonMatrix(
        lin, lambda u: u * mask * precision, lambda: (mask / sigma).unsqueeze(-1), params=list(params), damping=damping
    )
