"""Every Fisher estimator against a dense reference computed another way (float64, tiny policies)."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn
from stable_baselines3.common.policies import ActorCriticPolicy

from ngrl.fisher import ActorOutputs, actor_parameters, gauss_newton, policy_distribution, policy_fisher
from ngrl.fisher.distributions import Bernoulli, Categorical, DiagGaussian, MultiCategorical
from ngrl.linearize import ConcatLinearization, FunctionalLinearization, MLPChainLinearization
from ngrl.params import get_flat_params, unflatten
from tests.conftest import ACTION_SPACES, SB3Distribution, enumerated_fisher, kl_hessian, score_jacobian, tiny_policy

FINITE = ["discrete", "multidiscrete", "multibinary"]


def exact_reference(policy, obs):
    if isinstance(policy.action_space, gym.spaces.Box):
        return kl_hessian(policy, obs)
    return enumerated_fisher(policy, obs)


@pytest.mark.parametrize("space", list(ACTION_SPACES))
def test_exact_fisher_matches_dense_reference(space, states):
    policy = tiny_policy(ACTION_SPACES[space])
    fisher = policy_fisher(policy, states)
    assert isinstance(fisher.linearization, (MLPChainLinearization, ConcatLinearization))  # the fast path
    reference = exact_reference(policy, states)
    assert torch.allclose(fisher.dense(), reference, atol=1e-12)
    assert [id(p) for p in fisher.params] == [id(p) for p in actor_parameters(policy)]


@pytest.mark.parametrize("space", FINITE)
def test_exact_fisher_equals_kl_hessian(space, states):
    policy = tiny_policy(ACTION_SPACES[space])
    assert torch.allclose(policy_fisher(policy, states).dense(), kl_hessian(policy, states), atol=1e-12)


@pytest.mark.parametrize("space", ["discrete", "box"])
def test_generic_path_agrees_with_fast_path(space, states):
    """A policy with a parametrised features extractor (no fast path) against the same maths via SB3."""
    policy = tiny_policy(ACTION_SPACES[space], share_features_extractor=False)
    # make the actor's features extractor parametrised: a Linear layer in front of the MLP
    policy.pi_features_extractor.flatten = nn.Sequential(nn.Flatten(), nn.Linear(3, 3)).double()
    fisher = policy_fisher(policy, states)
    assert isinstance(fisher.linearization, FunctionalLinearization)
    assert len(fisher.params) == len(actor_parameters(policy)) and fisher.num_params > 0
    reference = exact_reference(policy, states)
    assert torch.allclose(fisher.dense(), reference, atol=1e-12)


@pytest.mark.parametrize("space", list(ACTION_SPACES))
def test_diagonal_is_the_exact_diagonal(space, states):
    policy = tiny_policy(ACTION_SPACES[space])
    exact = policy_fisher(policy, states).dense()
    diagonal = policy_fisher(policy, states, estimator="diagonal", damping=0.25)
    assert torch.allclose(diagonal.diagonal(), torch.diagonal(exact) + 0.25, atol=1e-12)
    v = torch.randn(diagonal.num_params, dtype=torch.float64)
    assert torch.allclose(diagonal.mv(v), (torch.diagonal(exact) + 0.25) * v, atol=1e-12)


@pytest.mark.parametrize("space", list(ACTION_SPACES))
def test_score_fisher_matches_per_sample_gradients(space, states):
    policy = tiny_policy(ACTION_SPACES[space])
    fisher = policy_fisher(policy, states, estimator="score", generator=torch.Generator().manual_seed(0))
    actions = fisher.actions
    if isinstance(policy.action_space, gym.spaces.Discrete):
        actions = actions.long()
    scores = score_jacobian(policy, states, actions)  # (n, P) through SB3's log_prob
    reference = scores.T @ scores / states.shape[0]
    assert torch.allclose(fisher.dense(), reference, atol=1e-12)
    assert torch.allclose(fisher.diagonal(), torch.diagonal(reference), atol=1e-12)


def test_score_fisher_converges_to_the_exact_fisher():
    policy = tiny_policy(ACTION_SPACES["discrete"])
    obs = torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64).repeat(4000, 1)
    exact = policy_fisher(policy, obs).dense()
    sampled = policy_fisher(policy, obs, estimator="score", generator=torch.Generator().manual_seed(2)).dense()
    assert (sampled - exact).norm() / exact.norm() < 0.05


def test_empirical_fisher_uses_the_given_actions(states):
    policy = tiny_policy(ACTION_SPACES["box"])
    actions = torch.randn(states.shape[0], 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    fisher = policy_fisher(policy, states, estimator="empirical", actions=actions, damping=0.1)
    scores = score_jacobian(policy, states, actions)
    expected = scores.T @ scores / states.shape[0] + 0.1 * torch.eye(fisher.num_params, dtype=torch.float64)
    assert torch.allclose(fisher.dense(), expected, atol=1e-12)
    with pytest.raises(ValueError, match="actions="):
        policy_fisher(policy, states, estimator="empirical")


def test_damping_and_bad_input(states):
    policy = tiny_policy(ACTION_SPACES["discrete"])
    plain = policy_fisher(policy, states).dense()
    damped = policy_fisher(policy, states, damping=0.5).dense()
    assert torch.allclose(damped, plain + 0.5 * torch.eye(plain.shape[0], dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown Fisher estimator"):
        policy_fisher(policy, states, estimator="kfac-typo")
    with pytest.raises(ValueError, match="flat vector"):
        policy_fisher(policy, states).mv(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="ActorCriticPolicy"):
        policy_fisher(nn.Linear(2, 2), states)


def test_explicit_parameter_subset(states):
    policy = tiny_policy(ACTION_SPACES["discrete"])
    head = [policy.action_net.weight, policy.action_net.bias]
    fisher = policy_fisher(policy, states, params=head)
    full = enumerated_fisher(policy, states)
    start = sum(p.numel() for p in actor_parameters(policy)[:-2])
    assert torch.allclose(fisher.dense(), full[start:, start:], atol=1e-12)


def test_gsde_policy_is_refused(states):
    obs_space = gym.spaces.Box(-1, 1, (3,), dtype=np.float32)
    policy = ActorCriticPolicy(obs_space, ACTION_SPACES["box"], lambda _: 1e-3, use_sde=True)
    with pytest.raises(NotImplementedError, match="use_sde=False"):
        policy_fisher(policy, states.float())


@pytest.mark.parametrize("space", list(ACTION_SPACES))
def test_output_families_match_sb3_and_torch(space, states):
    policy = tiny_policy(ACTION_SPACES[space])
    family = policy_distribution(policy)
    expected_type = {"discrete": Categorical, "box": DiagGaussian, "multidiscrete": MultiCategorical, "multibinary": Bernoulli}
    assert isinstance(family, expected_type[space])
    actor = ActorOutputs(policy)
    with torch.no_grad():
        outputs = actor(states)
        dist = SB3Distribution(policy)(states)
        actions = dist.sample()
        assert torch.allclose(family.log_prob(outputs, actions), dist.log_prob(actions), atol=1e-12)
        # KL against a perturbed policy, reference from torch.distributions
        other = tiny_policy(ACTION_SPACES[space], seed=5)
        other_outputs = ActorOutputs(other)(states)
        other_dist = SB3Distribution(other)(states)
        if space == "multidiscrete":
            ref = sum(torch.distributions.kl_divergence(a, b) for a, b in zip(dist.distribution, other_dist.distribution))
        else:
            ref = torch.distributions.kl_divergence(dist.distribution, other_dist.distribution)
            ref = ref.sum(-1) if ref.ndim == 2 else ref
        assert torch.allclose(family.kl(outputs, other_outputs), ref, atol=1e-12)
        sampled = family.sample(outputs, torch.Generator().manual_seed(0))
        assert torch.isfinite(family.log_prob(outputs, sampled)).all()


def test_output_fisher_square_root(states):
    for space in ACTION_SPACES.values():
        family = policy_distribution(tiny_policy(space))
        outputs = torch.randn(states.shape[0], family.num_outputs, dtype=torch.float64)
        root = family.fisher_sqrt(outputs)
        eye = torch.eye(family.num_outputs, dtype=torch.float64).expand(states.shape[0], -1, -1)
        dense_h = torch.stack([family.fisher_mv(outputs, eye[:, :, j]) for j in range(family.num_outputs)], dim=-1)
        assert torch.allclose(root @ root.transpose(1, 2), dense_h, atol=1e-12)


class TestGaussNewton:
    def setup_method(self):
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
        self.x = torch.randn(8, 3, dtype=torch.float64)
        self.params = list(self.net.parameters())
        theta = get_flat_params(self.params)
        from ngrl.linearize import module_function

        fn = module_function(self.net, self.params)
        self.jac = torch.autograd.functional.jacobian(lambda th: fn(unflatten(th, self.params), self.x), theta)  # (n, k, P)

    def test_full_output(self):
        op = gauss_newton(self.net, self.params, self.x, sigma=0.5, damping=0.1)
        j = self.jac.reshape(-1, self.jac.shape[-1])
        expected = j.T @ j / (8 * 0.25) + 0.1 * torch.eye(j.shape[1], dtype=torch.float64)
        assert torch.allclose(op.dense(), expected, atol=1e-12)
        assert torch.allclose(op.diagonal(), torch.diagonal(expected), atol=1e-12)

    def test_taken_output_only_and_callable_form(self):
        index = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
        j = self.jac[torch.arange(8), index]  # (n, P): rows of the taken outputs
        expected = j.T @ j / 8
        op = gauss_newton(self.net, self.params, self.x, output_index=index)
        assert torch.allclose(op.dense(), expected, atol=1e-12)

        def fn(values, inputs):  # the same network, written as a function of its parameter values
            w1, b1, w2, b2 = values
            return torch.relu(inputs @ w1.T + b1) @ w2.T + b2

        op2 = gauss_newton(fn, self.params, self.x, output_index=index)
        assert torch.allclose(op2.dense(), expected, atol=1e-12)
        assert torch.allclose(op2.diagonal(), torch.diagonal(expected), atol=1e-12)

    def test_bad_input(self):
        with pytest.raises(ValueError, match="sigma"):
            gauss_newton(self.net, self.params, self.x, sigma=0.0)
        with pytest.raises(ValueError, match="output_index"):
            gauss_newton(self.net, self.params, self.x, output_index=torch.zeros(3))


def test_float32_policy_agrees_with_float64():
    policy = tiny_policy(ACTION_SPACES["box"])
    obs = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    dense64 = policy_fisher(policy, obs).dense()
    dense32 = policy_fisher(policy.float(), obs.float()).dense()
    assert dense32.dtype == torch.float32
    assert torch.allclose(dense32.double(), dense64, atol=1e-5, rtol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fisher_on_cuda_matches_cpu(states):
    policy = tiny_policy(ACTION_SPACES["discrete"])
    cpu = policy_fisher(policy, states).dense()
    gpu = policy_fisher(policy.cuda(), states.cuda()).dense()
    assert gpu.device.type == "cuda" and torch.allclose(gpu.cpu(), cpu, atol=1e-10)
