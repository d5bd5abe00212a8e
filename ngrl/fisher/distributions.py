"""Action distributions as functions of the actor's raw outputs, with their output-space Fisher.

The actor of an SB3 policy ends in raw outputs z (logits, or a Gaussian mean beside log σ). Each
family here gives, for a batch of outputs z of shape (n, k): log π(a | z), KL(π_z_old ‖ π_z),
sampling, and the Fisher of the distribution in z, H(z) = E_a[∇_z log π ∇_z log πᵀ], applied to a
vector (``fisher_mv``) and as a square root L with H = L Lᵀ (``fisher_sqrt``). The parameter-space
Fisher of a policy is then F = (1/n) Σᵢ Jᵢᵀ H(zᵢ) Jᵢ with J = ∂z/∂θ (a Gauss–Newton product).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from stable_baselines3.common import distributions as sb3_dist

__all__ = ["OutputDistribution", "Categorical", "MultiCategorical", "Bernoulli", "DiagGaussian", "from_sb3"]


class OutputDistribution:
    """Base class: a family of action distributions parametrised by (n, k) raw outputs."""

    num_outputs: int

    def log_prob(self, outputs: Tensor, actions: Tensor) -> Tensor:
        raise NotImplementedError

    def kl(self, old_outputs: Tensor, new_outputs: Tensor) -> Tensor:
        """KL(π_old ‖ π_new) per sample, shape (n,)."""
        raise NotImplementedError

    def sample(self, outputs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def fisher_mv(self, outputs: Tensor, u: Tensor) -> Tensor:
        """H(z) u per sample: u and the result have shape (n, k)."""
        raise NotImplementedError

    def fisher_sqrt(self, outputs: Tensor) -> Tensor:
        """L(z) of shape (n, k, c) with H(z) = L Lᵀ."""
        raise NotImplementedError

    def score_cotangent(self, outputs: Tensor, actions: Tensor) -> Tensor:
        """∇_z log π(a | z) per sample, shape (n, k)."""
        z = outputs.detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.log_prob(z, actions).sum(), z)
        return grad


def _categorical_fisher_mv(logits: Tensor, u: Tensor) -> Tensor:
    # H = diag(p) − p pᵀ (softmax Fisher; invariant to shifting the logits)
    p = torch.softmax(logits, dim=-1)
    return p * (u - (p * u).sum(-1, keepdim=True))


def _categorical_fisher_sqrt(logits: Tensor) -> Tensor:
    # L = diag(√p) − p √pᵀ gives L Lᵀ = diag(p) − 2ppᵀ + p(Σp)pᵀ = diag(p) − ppᵀ
    p = torch.softmax(logits, dim=-1)
    sqrt_p = p.sqrt()
    return torch.diag_embed(sqrt_p) - p.unsqueeze(-1) * sqrt_p.unsqueeze(-2)


def _categorical_kl(old_logits: Tensor, new_logits: Tensor) -> Tensor:
    old_log_p = torch.log_softmax(old_logits, -1)
    new_log_p = torch.log_softmax(new_logits, -1)
    return (old_log_p.exp() * (old_log_p - new_log_p)).sum(-1)


class Categorical(OutputDistribution):
    def __init__(self, n: int) -> None:
        self.num_outputs = n

    def log_prob(self, outputs: Tensor, actions: Tensor) -> Tensor:
        index = actions.long().reshape(-1, 1)
        return torch.log_softmax(outputs, -1).gather(-1, index).squeeze(-1)

    def kl(self, old_outputs: Tensor, new_outputs: Tensor) -> Tensor:
        return _categorical_kl(old_outputs, new_outputs)

    def sample(self, outputs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.multinomial(torch.softmax(outputs, -1), 1, generator=generator).squeeze(-1)

    def fisher_mv(self, outputs: Tensor, u: Tensor) -> Tensor:
        return _categorical_fisher_mv(outputs, u)

    def fisher_sqrt(self, outputs: Tensor) -> Tensor:
        return _categorical_fisher_sqrt(outputs)


class MultiCategorical(OutputDistribution):
    """Independent categoricals over the blocks of ``nvec``; H is block diagonal."""

    def __init__(self, nvec: list[int]) -> None:
        self.nvec = [int(n) for n in nvec]
        self.num_outputs = sum(self.nvec)

    def _blocks(self, t: Tensor) -> tuple[Tensor, ...]:
        return torch.split(t, self.nvec, dim=-1)

    def log_prob(self, outputs: Tensor, actions: Tensor) -> Tensor:
        actions = actions.long().reshape(outputs.shape[0], -1)
        return sum(
            torch.log_softmax(z, -1).gather(-1, actions[:, i : i + 1]).squeeze(-1) for i, z in enumerate(self._blocks(outputs))
        )

    def kl(self, old_outputs: Tensor, new_outputs: Tensor) -> Tensor:
        return sum(_categorical_kl(a, b) for a, b in zip(self._blocks(old_outputs), self._blocks(new_outputs)))

    def sample(self, outputs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.stack(
            [torch.multinomial(torch.softmax(z, -1), 1, generator=generator).squeeze(-1) for z in self._blocks(outputs)], dim=-1
        )

    def fisher_mv(self, outputs: Tensor, u: Tensor) -> Tensor:
        return torch.cat([_categorical_fisher_mv(z, v) for z, v in zip(self._blocks(outputs), self._blocks(u))], dim=-1)

    def fisher_sqrt(self, outputs: Tensor) -> Tensor:
        n, k = outputs.shape
        out = outputs.new_zeros(n, k, k)
        start = 0
        for z in self._blocks(outputs):
            width = z.shape[-1]
            out[:, start : start + width, start : start + width] = _categorical_fisher_sqrt(z)
            start += width
        return out


class Bernoulli(OutputDistribution):
    """Independent Bernoulli variables with logits z: H = diag(p(1 − p))."""

    def __init__(self, n: int) -> None:
        self.num_outputs = n

    def log_prob(self, outputs: Tensor, actions: Tensor) -> Tensor:
        actions = actions.to(outputs.dtype).reshape_as(outputs)
        return -torch.nn.functional.binary_cross_entropy_with_logits(outputs, actions, reduction="none").sum(-1)

    def kl(self, old_outputs: Tensor, new_outputs: Tensor) -> Tensor:
        p = torch.sigmoid(old_outputs)
        log_p_old, log_q_old = torch.nn.functional.logsigmoid(old_outputs), torch.nn.functional.logsigmoid(-old_outputs)
        log_p_new, log_q_new = torch.nn.functional.logsigmoid(new_outputs), torch.nn.functional.logsigmoid(-new_outputs)
        return (p * (log_p_old - log_p_new) + (1 - p) * (log_q_old - log_q_new)).sum(-1)

    def sample(self, outputs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return (torch.rand(outputs.shape, generator=generator, device=outputs.device, dtype=outputs.dtype) < torch.sigmoid(outputs)).to(
            outputs.dtype
        )

    def fisher_mv(self, outputs: Tensor, u: Tensor) -> Tensor:
        p = torch.sigmoid(outputs)
        return p * (1 - p) * u

    def fisher_sqrt(self, outputs: Tensor) -> Tensor:
        p = torch.sigmoid(outputs)
        return torch.diag_embed((p * (1 - p)).sqrt())


class DiagGaussian(OutputDistribution):
    """N(μ, diag σ²) with outputs z = [μ, log σ] (n, 2d): H = diag(1/σ², 2) (Fisher in (μ, log σ))."""

    def __init__(self, d: int) -> None:
        self.action_dim = d
        self.num_outputs = 2 * d

    def _split(self, outputs: Tensor) -> tuple[Tensor, Tensor]:
        return outputs[:, : self.action_dim], outputs[:, self.action_dim :]

    def log_prob(self, outputs: Tensor, actions: Tensor) -> Tensor:
        mean, log_std = self._split(outputs)
        actions = actions.reshape_as(mean)
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def kl(self, old_outputs: Tensor, new_outputs: Tensor) -> Tensor:
        mean0, log_std0 = self._split(old_outputs)
        mean1, log_std1 = self._split(new_outputs)
        var_ratio = torch.exp(2 * (log_std0 - log_std1))
        return 0.5 * (var_ratio + (mean1 - mean0).square() * torch.exp(-2 * log_std1) - 1 - torch.log(var_ratio)).sum(-1)

    def sample(self, outputs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        mean, log_std = self._split(outputs)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + noise * log_std.exp()

    def fisher_mv(self, outputs: Tensor, u: Tensor) -> Tensor:
        _, log_std = self._split(outputs)
        u_mean, u_log_std = self._split(u)
        return torch.cat([u_mean * torch.exp(-2 * log_std), 2.0 * u_log_std], dim=-1)

    def fisher_sqrt(self, outputs: Tensor) -> Tensor:
        _, log_std = self._split(outputs)
        return torch.diag_embed(torch.cat([torch.exp(-log_std), torch.full_like(log_std, math.sqrt(2.0))], dim=-1))


def from_sb3(distribution: sb3_dist.Distribution) -> OutputDistribution:
    """The output family matching an SB3 action distribution object."""
    if isinstance(distribution, sb3_dist.StateDependentNoiseDistribution):
        raise NotImplementedError(
            "gSDE (use_sde=True) policies are not supported by ngrl's Fisher operators: "
            "their noise depends on the latent features. Use use_sde=False."
        )
    if isinstance(distribution, sb3_dist.SquashedDiagGaussianDistribution):
        raise NotImplementedError("squashed Gaussian policies (SAC-style) are not supported by ngrl's Fisher operators")
    if isinstance(distribution, sb3_dist.DiagGaussianDistribution):
        return DiagGaussian(distribution.action_dim)
    if isinstance(distribution, sb3_dist.CategoricalDistribution):
        return Categorical(distribution.action_dim)
    if isinstance(distribution, sb3_dist.MultiCategoricalDistribution):
        return MultiCategorical(list(distribution.action_dims))
    if isinstance(distribution, sb3_dist.BernoulliDistribution):
        return Bernoulli(distribution.action_dims)
    raise NotImplementedError(f"no output Fisher is known for {type(distribution).__name__}")
