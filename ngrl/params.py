"""Flat views of parameter lists: the vectors natural-gradient solvers work in."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["flatten", "unflatten", "get_flat_params", "set_flat_params", "flat_grad", "num_params"]


def num_params(params: Iterable[Tensor]) -> int:
    """Total number of scalars in ``params``."""
    return sum(p.numel() for p in params)


def flatten(tensors: Iterable[Tensor]) -> Tensor:
    """Concatenate tensors into one flat vector (a copy)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(flat: Tensor, like: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """Split a flat vector into views shaped like ``like`` (inverse of :func:`flatten`)."""
    sizes = [t.numel() for t in like]
    if flat.numel() != sum(sizes):
        raise ValueError(f"flat vector has {flat.numel()} entries, the parameters have {sum(sizes)}")
    return tuple(chunk.view_as(t) for chunk, t in zip(torch.split(flat, sizes), like))


def get_flat_params(params: Sequence[Tensor]) -> Tensor:
    """The current values of ``params`` as one detached flat vector."""
    return flatten(p.detach() for p in params)


@torch.no_grad()
def set_flat_params(params: Sequence[nn.Parameter | Tensor], flat: Tensor) -> None:
    """Write a flat vector back into ``params`` in place."""
    for p, value in zip(params, unflatten(flat, params)):
        p.copy_(value)


def flat_grad(output: Tensor, params: Sequence[Tensor], *, retain_graph: bool = False) -> Tensor:
    """∇_θ output as a flat vector; parameters the output does not depend on get zeros."""
    grads = torch.autograd.grad(output, params, retain_graph=retain_graph, allow_unused=True)
    return flatten(torch.zeros_like(p) if g is None else g for g, p in zip(grads, params))
