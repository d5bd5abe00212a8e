"""Shared helpers: tiny SB3 policies in float64 and dense references computed through SB3's own code."""

from __future__ import annotations

import itertools

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call
from stable_baselines3.common.policies import ActorCriticPolicy

from ngrl.fisher import actor_parameters
from ngrl.params import get_flat_params, unflatten

torch.set_num_threads(1)  # tiny networks: threads only add overhead (and CI has 2 cores)

ACTION_SPACES = {
    "discrete": gym.spaces.Discrete(3),
    "box": gym.spaces.Box(-1.0, 1.0, (2,), dtype=np.float32),
    "multidiscrete": gym.spaces.MultiDiscrete([2, 3]),
    "multibinary": gym.spaces.MultiBinary(2),
}


def tiny_policy(action_space: gym.Space, *, obs_dim: int = 3, net_arch=(5,), seed: int = 0, activation=nn.Tanh, **kwargs):
    torch.manual_seed(seed)
    obs_space = gym.spaces.Box(-1.0, 1.0, (obs_dim,), dtype=np.float32)
    policy = ActorCriticPolicy(obs_space, action_space, lambda _: 1e-3, net_arch=list(net_arch), activation_fn=activation, **kwargs)
    with torch.no_grad():  # give log σ a non-trivial value so the Gaussian Fisher is not the identity
        if hasattr(policy, "log_std"):
            policy.log_std.copy_(torch.linspace(-0.5, 0.3, policy.log_std.numel()))
    return policy.double()


@pytest.fixture
def states() -> torch.Tensor:
    # float32-representable, since SB3's preprocessing casts observations to float32 before our cast back
    return torch.randn(6, 3, generator=torch.Generator().manual_seed(7)).double()


class SB3Distribution(nn.Module):
    """θ ↦ SB3's own torch distribution (through ``get_distribution``), for references."""

    def __init__(self, policy: ActorCriticPolicy) -> None:
        super().__init__()
        self.policy = policy
        self.params = actor_parameters(policy)
        names = {id(p): n for n, p in self.named_parameters()}
        self.names = [names[id(p)] for p in self.params]

    def at(self, theta: torch.Tensor, obs: torch.Tensor):
        values = unflatten(theta, self.params)
        return functional_call(self, dict(zip(self.names, values)), (obs,), tie_weights=False)

    def forward(self, obs: torch.Tensor):
        # SB3's get_distribution, minus its cast of observations to float32 (the policy is float64 here)
        features = self.policy.pi_features_extractor(obs)
        return self.policy._get_action_dist_from_latent(self.policy.mlp_extractor.forward_actor(features))

    def theta(self) -> torch.Tensor:
        return get_flat_params(self.params)


def enumerate_actions(action_space: gym.Space) -> list[np.ndarray]:
    if isinstance(action_space, gym.spaces.Discrete):
        return [np.array(a) for a in range(action_space.n)]
    if isinstance(action_space, gym.spaces.MultiDiscrete):
        return [np.array(a) for a in itertools.product(*[range(n) for n in action_space.nvec])]
    if isinstance(action_space, gym.spaces.MultiBinary):
        return [np.array(a, dtype=np.float64) for a in itertools.product([0, 1], repeat=action_space.n)]
    raise TypeError("only finite action spaces can be enumerated")


def score_jacobian(policy: ActorCriticPolicy, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """(n, P) matrix of ∇_θ log π(aᵢ|sᵢ), by torch.autograd.functional.jacobian through SB3's log_prob."""
    sb3 = SB3Distribution(policy)
    return torch.autograd.functional.jacobian(lambda th: sb3.at(th, obs).log_prob(actions), sb3.theta())


def enumerated_fisher(policy: ActorCriticPolicy, obs: torch.Tensor) -> torch.Tensor:
    """F = (1/n) Σᵢ Σₐ π(a|sᵢ) ψψᵀ over every action of a finite space."""
    sb3 = SB3Distribution(policy)
    n = obs.shape[0]
    total = 0.0
    for action in enumerate_actions(policy.action_space):
        acts = torch.as_tensor(np.stack([action] * n), dtype=torch.float64)
        if isinstance(policy.action_space, gym.spaces.Discrete):
            acts = acts.long()
        psi = score_jacobian(policy, obs, acts)
        with torch.no_grad():
            prob = sb3.at(sb3.theta(), obs).log_prob(acts).exp()
        total = total + psi.T @ (psi * prob.unsqueeze(-1))
    return total / n


def kl_hessian(policy: ActorCriticPolicy, obs: torch.Tensor) -> torch.Tensor:
    """∇²_θ mean KL(π_old ‖ π_θ) at θ_old, through torch.distributions.kl_divergence."""
    sb3 = SB3Distribution(policy)
    theta0 = sb3.theta()
    with torch.no_grad():
        old = sb3.at(theta0, obs).distribution
    olds = old if isinstance(old, list) else [old]  # SB3's MultiCategorical keeps a list of Categoricals

    def mean_kl(theta):
        new = sb3.at(theta, obs).distribution
        news = new if isinstance(new, list) else [new]
        total = 0.0
        for a, b in zip(olds, news):
            kl = torch.distributions.kl_divergence(a, b)
            total = total + (kl.sum(-1) if kl.ndim == 2 else kl)
        return total.mean()

    return torch.autograd.functional.hessian(mean_kl, theta0)
