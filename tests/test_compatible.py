"""The two routes to the natural gradient agree: CG on F, and compatible function approximation."""

import pytest
import torch

from ngrl import conjugate_gradient, fit_compatible_advantage
from ngrl.compatible import compatible_features
from ngrl.fisher import ActorOutputs, policy_distribution, policy_fisher, policy_linearization
from ngrl.params import flatten
from tests.conftest import ACTION_SPACES, score_jacobian, tiny_policy


def test_compatible_features_are_per_sample_scores(states):
    policy = tiny_policy(ACTION_SPACES["box"])
    actions = torch.randn(states.shape[0], 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lin = policy_linearization(policy, states)
    score = policy_distribution(policy).score_cotangent(lin.outputs, actions)
    assert torch.allclose(compatible_features(lin, score), score_jacobian(policy, states, actions), atol=1e-12)


def test_weighted_fit_over_all_actions_equals_cg_on_the_exact_fisher(states):
    """Σ_s Σ_a π(a|s)(ψᵀw − A)² is minimised by F w = E[ψA] = g: the same w as CG on the exact F."""
    policy = tiny_policy(ACTION_SPACES["discrete"])
    family = policy_distribution(policy)
    n, num_actions = states.shape[0], policy.action_space.n
    obs = states.repeat_interleave(num_actions, 0)
    actions = torch.arange(num_actions).repeat(n)
    with torch.no_grad():
        outputs = ActorOutputs(policy)(obs)
        prob = family.log_prob(outputs, actions).exp()
    q_values = torch.randn(n * num_actions, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    baseline = (prob * q_values).reshape(n, num_actions).sum(-1).repeat_interleave(num_actions)
    advantages = q_values - baseline  # E_a[A(s, a)] = 0 under π

    ridge = 1e-3
    lin = policy_linearization(policy, obs)
    score = family.score_cotangent(lin.outputs, actions)
    fit = fit_compatible_advantage(lin, score, advantages, ridge=ridge, weights=prob)

    # policy gradient g = (1/n) Σ_s Σ_a π(a|s) ψ(s,a) A(s,a), and CG on the exact Fisher over the n states
    psi = compatible_features(lin, score)
    gradient = (psi * (prob * advantages).unsqueeze(-1)).sum(0) / n
    fisher = policy_fisher(policy, states, damping=ridge)
    cg = conjugate_gradient(fisher.mv, gradient, max_iter=500, tol=1e-13)
    assert cg.converged
    assert torch.allclose(fit.x, cg.x, rtol=1e-7, atol=1e-9)
    assert torch.allclose(fit.x, torch.linalg.solve(fisher.dense(), gradient), rtol=1e-7, atol=1e-9)


def test_direct_and_conjugate_gradient_fits_agree(states):
    policy = tiny_policy(ACTION_SPACES["box"])
    family = policy_distribution(policy)
    g = torch.Generator().manual_seed(2)
    actions = torch.randn(states.shape[0], 2, dtype=torch.float64, generator=g)
    advantages = torch.randn(states.shape[0], dtype=torch.float64, generator=g)
    lin = policy_linearization(policy, states)
    score = family.score_cotangent(lin.outputs, actions)
    direct = fit_compatible_advantage(lin, score, advantages, ridge=0.05)
    iterative = fit_compatible_advantage(lin, score, advantages, ridge=0.05, max_direct_params=0, cg_max_iter=200, cg_tol=1e-13)
    assert direct.iterations == 0 and iterative.iterations > 0
    assert torch.allclose(direct.x, iterative.x, rtol=1e-6, atol=1e-9)
    # and it is CG on the empirical Fisher at those actions with the ridge as damping
    empirical = policy_fisher(policy, states, estimator="empirical", actions=actions, damping=0.05)
    gradient = flatten(lin.vjp(score * advantages.unsqueeze(-1) / states.shape[0]))
    assert torch.allclose(direct.x, torch.linalg.solve(empirical.dense(), gradient), rtol=1e-7, atol=1e-9)


def test_nan_advantages_are_refused(states):
    policy = tiny_policy(ACTION_SPACES["discrete"])
    lin = policy_linearization(policy, states)
    score = torch.zeros_like(lin.outputs)
    with pytest.raises(ValueError, match="NaN"):
        fit_compatible_advantage(lin, score, torch.full((states.shape[0],), float("nan"), dtype=torch.float64))
