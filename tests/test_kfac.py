"""KFAC: exact where its independence assumption holds, and a correct Kronecker inverse."""

import gymnasium as gym
import pytest
import torch
from torch import nn

from ngrl.fisher import KFACOperator, policy_fisher
from tests.conftest import ACTION_SPACES, tiny_policy


def test_linear_gaussian_policy_kfac_is_exact(states):
    """One Linear layer and a state-independent σ: Jᵢ's output Fisher is constant, so A ⊗ G is exact."""
    policy = tiny_policy(ACTION_SPACES["box"], net_arch=())
    kfac = policy_fisher(policy, states, estimator="kfac")
    assert isinstance(kfac, KFACOperator)
    assert torch.allclose(kfac.dense(), policy_fisher(policy, states).dense(), atol=1e-12)


def test_single_state_single_output_kfac_blocks_are_exact():
    """With one state and one output, every layer's block δδᵀ ⊗ āāᵀ is exact; only cross-layer blocks are dropped."""
    policy = tiny_policy(gym.spaces.MultiBinary(1), net_arch=(4, 3))
    obs = torch.randn(1, 3, generator=torch.Generator().manual_seed(0)).double()
    exact = policy_fisher(policy, obs).dense()
    kfac = policy_fisher(policy, obs, estimator="kfac").dense()
    start = 0
    for block_size in [4 * 3 + 4, 3 * 4 + 3, 1 * 3 + 1]:
        block = slice(start, start + block_size)
        assert torch.allclose(kfac[block, block], exact[block, block], atol=1e-12)
        start += block_size
    assert torch.count_nonzero(kfac[:16, 16:]) == 0


@pytest.mark.parametrize("space", list(ACTION_SPACES))
def test_diagonal_and_solve_against_dense(space, states):
    damping = 0.3
    kfac = policy_fisher(tiny_policy(ACTION_SPACES[space], net_arch=(5, 4)), states, estimator="kfac", damping=damping)
    dense = kfac.dense()
    assert torch.allclose(kfac.diagonal(), torch.diagonal(dense), atol=1e-12)
    # solve applies (A + √λI)⁻¹ ⊗ (G + √λI)⁻¹ per layer: rebuild that matrix block by block with torch.kron
    shift = damping**0.5
    inverse_blocks = []
    for block in kfac.blocks:
        if hasattr(block, "a"):
            eye_g, eye_a = torch.eye(block.g.shape[0], dtype=torch.float64), torch.eye(block.a.shape[0], dtype=torch.float64)
            perm = flat_order(block)
            inverse_blocks.append(torch.kron(block.g + shift * eye_g, block.a + shift * eye_a)[perm][:, perm])
        else:
            inverse_blocks.append(torch.diag(block.diag + damping))
    factored_dense = torch.block_diag(*inverse_blocks)
    v = torch.randn(kfac.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(kfac.solve(v), torch.linalg.solve(factored_dense, v), atol=1e-10)
    # and mv is the undamped Kronecker product plus λI
    undamped = torch.block_diag(*[
        (torch.kron(b.g, b.a)[flat_order(b)][:, flat_order(b)] if hasattr(b, "a") else torch.diag(b.diag)) for b in kfac.blocks
    ])
    assert torch.allclose(dense, undamped + damping * torch.eye(kfac.num_params, dtype=torch.float64), atol=1e-12)


def flat_order(block):
    """kron(G, A) indexes Θ = [W | b] row-major; ngrl's flat vectors hold W row-major, then b."""
    out, width = block.g.shape[0], block.a.shape[0]
    order = torch.arange(out * width).view(out, width)
    return torch.cat([order[:, :-1].reshape(-1), order[:, -1]]) if block.has_bias else order.reshape(-1)


def test_kfac_refuses_non_mlp_actors(states):
    policy = tiny_policy(ACTION_SPACES["discrete"], share_features_extractor=False)
    policy.pi_features_extractor.flatten = nn.Sequential(nn.Flatten(), nn.Linear(3, 3)).double()
    with pytest.raises(NotImplementedError, match="exact"):
        policy_fisher(policy, states, estimator="kfac")
    with pytest.raises(ValueError, match="flat vector"):
        policy_fisher(tiny_policy(ACTION_SPACES["discrete"]), states, estimator="kfac").solve(torch.zeros(2))


def test_kfac_is_a_good_preconditioner(states):
    """CG on the exact Fisher converges in fewer iterations with KFAC's inverse as preconditioner."""
    from ngrl import conjugate_gradient

    policy = tiny_policy(ACTION_SPACES["box"], net_arch=(16, 16))
    obs = torch.randn(64, 3, generator=torch.Generator().manual_seed(3)).double()
    exact = policy_fisher(policy, obs, damping=1e-3)
    kfac = policy_fisher(policy, obs, estimator="kfac", damping=1e-3)
    g = torch.randn(exact.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    plain = conjugate_gradient(exact.mv, g, max_iter=500, tol=1e-8)
    preconditioned = conjugate_gradient(exact.mv, g, max_iter=500, tol=1e-8, preconditioner=kfac.solve)
    assert plain.converged and preconditioned.converged
    assert preconditioned.iterations < plain.iterations
    assert torch.allclose(preconditioned.x, plain.x, rtol=1e-4, atol=1e-6)


def test_kfac_without_damping_on_singular_factors_says_what_to_do():
    from ngrl.fisher.kfac import KroneckerBlock

    block = KroneckerBlock(torch.zeros(2, 2, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64), has_bias=False)
    with pytest.raises(ValueError, match="damping"):
        block.solve(torch.ones(6, dtype=torch.float64), 0.0)
