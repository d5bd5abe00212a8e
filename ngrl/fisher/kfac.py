"""Kronecker-factored approximate curvature (KFAC; Martens & Grosse 2015) for MLP chains.

For a Linear layer z = W a + b, write Θ = [W | b] and ā = [a; 1]. Its per-sample gradient is
∇Θ = δ āᵀ with δ the cotangent of z, so the layer's Fisher block acts as V ↦ E[(δᵀVā) δāᵀ].
KFAC assumes ā and δ independent: the block becomes A ⊗ G, V ↦ G V A, with
A = E[ā āᵀ] and G = E[δ δᵀ]; blocks of different layers are dropped (block diagonal).
Here δ is back-propagated from the columns of the output Fisher's square root L (H = L Lᵀ), so G
holds the expectation over actions in closed form rather than one sampled action per state.
The inverse is cheap: (A ⊗ G + λI)⁻¹ ≈ (A + √λI)⁻¹ ⊗ (G + √λI)⁻¹ (factored Tikhonov damping),
V ↦ (G + √λI)⁻¹ V (A + √λI)⁻¹: two small solves per layer instead of a CG loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Sequence

import torch
from torch import Tensor

from ngrl.fisher.operator import CurvatureOperator
from ngrl.linearize import BroadcastLinearization, ConcatLinearization, Linearization, MLPChainLinearization

__all__ = ["KFACOperator", "KroneckerBlock", "DiagonalBlock", "kfac_from_linearization"]


@dataclass
class KroneckerBlock:
    """One Linear layer: A (in+1 or in square), G (out square), its weight then bias in flat vectors."""

    a: Tensor
    g: Tensor
    has_bias: bool
    _factors: tuple[Tensor, Tensor] | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return self.g.shape[0] * self.a.shape[0]

    def _matrix(self, flat: Tensor) -> Tensor:
        out, width = self.g.shape[0], self.a.shape[0]
        inputs = width - 1 if self.has_bias else width
        weight = flat[: out * inputs].view(out, inputs)
        if not self.has_bias:
            return weight
        return torch.cat([weight, flat[out * inputs :].view(out, 1)], dim=1)

    def _flat(self, matrix: Tensor) -> Tensor:
        if not self.has_bias:
            return matrix.reshape(-1)
        return torch.cat([matrix[:, :-1].reshape(-1), matrix[:, -1]])

    def mv(self, flat: Tensor) -> Tensor:
        return self._flat(self.g @ self._matrix(flat) @ self.a)

    def diagonal(self) -> Tensor:
        return self._flat(torch.diagonal(self.g).unsqueeze(1) * torch.diagonal(self.a).unsqueeze(0))

    def solve(self, flat: Tensor, damping: float) -> Tensor:
        if self._factors is None:
            shift = damping**0.5
            eye_a = torch.eye(self.a.shape[0], device=self.a.device, dtype=self.a.dtype)
            eye_g = torch.eye(self.g.shape[0], device=self.g.device, dtype=self.g.dtype)
            try:
                self._factors = (torch.linalg.cholesky(self.a + shift * eye_a), torch.linalg.cholesky(self.g + shift * eye_g))
            except torch.linalg.LinAlgError as error:
                raise ValueError(
                    f"KFAC's inverse failed: a Kronecker factor plus √λ·I is not positive definite (damping λ={damping}). "
                    "The factors are singular on dead units or with fewer states than inputs: set the damping "
                    "(cg_damping) > 0."
                ) from error
        chol_a, chol_g = self._factors
        left = torch.cholesky_solve(self._matrix(flat), chol_g)  # (G + √λI)⁻¹ V
        return self._flat(torch.cholesky_solve(left.T, chol_a).T)  # … (A + √λI)⁻¹


@dataclass
class DiagonalBlock:
    """Parameters whose Fisher block is diagonal and known exactly (e.g. a state-independent log σ)."""

    diag: Tensor

    @property
    def size(self) -> int:
        return self.diag.numel()

    def mv(self, flat: Tensor) -> Tensor:
        return self.diag * flat

    def diagonal(self) -> Tensor:
        return self.diag

    def solve(self, flat: Tensor, damping: float) -> Tensor:
        return flat / (self.diag + damping)


class KFACOperator(CurvatureOperator):
    """Block-diagonal KFAC curvature: ``mv`` applies (F_KFAC + λI), ``solve`` its factored-damped inverse."""

    def __init__(self, blocks: Sequence[KroneckerBlock | DiagonalBlock], params: Sequence[Tensor], damping: float = 0.0) -> None:
        super().__init__(params, damping)
        self.blocks = list(blocks)
        if sum(b.size for b in self.blocks) != self.num_params:
            raise ValueError("the KFAC blocks do not cover the parameters")

    def _split(self, v: Tensor) -> tuple[Tensor, ...]:
        return torch.split(v, [b.size for b in self.blocks])

    def _mv(self, v: Tensor) -> Tensor:
        return torch.cat([b.mv(part) for b, part in zip(self.blocks, self._split(v))])

    def _diagonal(self) -> Tensor:
        return torch.cat([b.diagonal() for b in self.blocks])

    def solve(self, v: Tensor) -> Tensor:
        """≈ (F + λI)⁻¹ v, with the damping split as √λ over each Kronecker factor."""
        if v.shape != (self.num_params,):
            raise ValueError(f"expected a flat vector of {self.num_params} entries, got shape {tuple(v.shape)}")
        return torch.cat([b.solve(part, self.damping) for b, part in zip(self.blocks, self._split(v))])


def _chain_blocks(chain: MLPChainLinearization, root: Tensor) -> list[KroneckerBlock]:
    n = root.shape[0]
    layers: list[tuple[Tensor, bool, Tensor]] = []  # (layer input, has_bias, G) last layer first
    for column in range(root.shape[-1]):
        for index, (_, has_bias, a_in, delta) in enumerate(chain.layers_backward(root[..., column])):
            if column == 0:
                layers.append((a_in, has_bias, delta.T @ delta))
            else:
                a_prev, bias_prev, g_prev = layers[index]
                layers[index] = (a_prev, bias_prev, g_prev + delta.T @ delta)
    blocks = []
    for a_in, has_bias, g in reversed(layers):
        a_bar = torch.cat([a_in, torch.ones_like(a_in[:, :1])], dim=1) if has_bias else a_in
        blocks.append(KroneckerBlock(a_bar.T @ a_bar / n, g / n, has_bias))
    return blocks


def kfac_from_linearization(
    linearization: Linearization, root: Tensor, params: Sequence[Tensor], damping: float = 0.0
) -> KFACOperator:
    """KFAC of C = (1/n) Σᵢ Jᵢᵀ Lᵢ Lᵢᵀ Jᵢ for a chain linearisation (optionally beside broadcast outputs).

    :param root: (n, k, c) square roots L of the output-space matrices
    """
    parts = linearization.parts if isinstance(linearization, ConcatLinearization) else [linearization]
    widths = [p.outputs.shape[-1] for p in parts]
    blocks: list[KroneckerBlock | DiagonalBlock] = []
    for part, part_root in zip(parts, torch.split(root, widths, dim=1)):
        if isinstance(part, MLPChainLinearization):
            blocks.extend(_chain_blocks(part, part_root))
        elif isinstance(part, BroadcastLinearization):
            blocks.append(DiagonalBlock(part_root.square().sum(-1).mean(0)))
        else:
            raise NotImplementedError(
                "KFAC needs an MLP (Linear layers and elementwise activations after a parameter-free features "
                "extractor); use the 'exact' Fisher for other networks"
            )
    return KFACOperator(blocks, params, damping)
