"""Compatible function approximation: the natural gradient as a least-squares fit of advantages.

With compatible features ψ(s, a) = ∇_θ log π_θ(a|s) (Sutton et al. 1999), the w minimising
E[(ψᵀw − A)²] solves F w = E[ψ A] = ∇J, so w = F⁻¹∇J is the natural gradient (Kakade 2002;
Peters & Schaal 2008, natural actor-critic). Here F is the weighted second moment of ψ over the
samples, i.e. the score/empirical Fisher at the sampled actions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ngrl.cg import CGConfig, CGResult
from ngrl.fisher.operator import GaussNewtonOperator
from ngrl.linearize import Linearization
from ngrl.params import flatten

__all__ = ["compatible_features", "fit_compatible_advantage"]


def compatible_features(linearization: Linearization, score: Tensor) -> Tensor:
    """Ψ of shape (n, P): row i is ψᵢ = Jᵢᵀ gᵢ with gᵢ = ∇_z log π(aᵢ|zᵢ) the output score."""
    per_sample = linearization.per_sample_vjp(score)
    return torch.cat([g.reshape(g.shape[0], -1) for g in per_sample], dim=1)


def fit_compatible_advantage(
    linearization: Linearization,
    score: Tensor,
    advantages: Tensor,
    *,
    ridge: float = 1e-3,
    weights: Tensor | None = None,
    max_direct_params: int = 2048,
    cg_max_iter: int = 50,
    cg_tol: float = 1e-10,
) -> CGResult:
    """w = argmin_w Σᵢ ωᵢ(ψᵢᵀw − Aᵢ)² + ridge‖w‖² with ω normalised to sum to one.

    Normal equations (ΨᵀΩΨ + ridge·I) w = ΨᵀΩA. Solved directly (Cholesky on the P×P matrix) when
    P ≤ ``max_direct_params``, else by conjugate gradient with products Ψᵀ(ΩΨv) through the
    linearisation (Ψ is never formed).

    :param score: (n, k) output scores gᵢ at the taken actions
    :param advantages: (n,) advantage estimates Aᵢ
    :param weights: (n,) non-negative sample weights ω (uniform by default)
    """
    n = advantages.shape[0]
    if not torch.isfinite(advantages).all():
        raise ValueError("advantages contain NaN or inf: check rewards and value estimates (or normalise observations/rewards)")
    omega = torch.full_like(advantages, 1.0 / n) if weights is None else weights / weights.sum()
    rhs = flatten(linearization.vjp(score * (omega * advantages).unsqueeze(-1)))  # ΨᵀΩA
    num = rhs.numel()
    if num <= max_direct_params:
        psi = compatible_features(linearization, score)
        gram = psi.T @ (psi * omega.unsqueeze(-1)) + ridge * torch.eye(num, device=psi.device, dtype=psi.dtype)
        w = torch.cholesky_solve(rhs.unsqueeze(-1), torch.linalg.cholesky(gram)).squeeze(-1)
        residual = float(torch.linalg.vector_norm(gram @ w - rhs) / torch.linalg.vector_norm(rhs).clamp_min(1e-30))
        return CGResult(w, 0, residual, True, "converged", "solved directly (Cholesky)")
    weighted_score = score * (omega * n).sqrt().unsqueeze(-1)
    operator = GaussNewtonOperator(
        linearization, lambda u: weighted_score * (weighted_score * u).sum(-1, keepdim=True), damping=ridge
    )  # ΨᵀΩΨ + ridge·I
    return CGConfig(max_iter=cg_max_iter, tol=cg_tol).solve(operator.mv, rhs)
