"""On CUDA the backend and NPG give the CPU's numbers: Fisher products, the batch-space solve, one NPG update.

float64 throughout, tiny models: the CUDA result must equal the CPU one to rounding (1e-10 and below),
so a device-dependent bug (a tensor left on the CPU, a dtype lost on the way, a kernel that differs)
shows as a mismatch. Skipped without a CUDA device; run them with ``python -m pytest -m cuda``
(``bench/gpu.py`` runs them first).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Logger
from torch import nn

from agents import NPG
from ngrl import CGConfig
from ngrl.fisher import ActorOutputs, gauss_newton, policy_distribution, policy_fisher
from ngrl.params import get_flat_params
from tests.conftest import ACTION_SPACES, tiny_policy

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

DEVICE = torch.device("cuda")
D = torch.float64
NUMPY = {torch.float32: np.float32, torch.float64: np.float64}


@pytest.mark.parametrize("estimator", ["exact", "empirical", "diagonal", "kfac"])
@pytest.mark.parametrize("space", list(ACTION_SPACES))
def test_fisher_products_on_cuda_equal_the_cpu_ones(space, estimator, states):
    policy = tiny_policy(ACTION_SPACES[space], net_arch=(5, 4))
    with torch.no_grad():  # actions drawn once, on the CPU, for the empirical estimator
        actions = policy_distribution(policy).sample(ActorOutputs(policy)(states), torch.Generator().manual_seed(1))
    on_cpu = policy_fisher(policy, states, estimator=estimator, actions=actions, damping=0.1)
    on_device = policy_fisher(copy.deepcopy(policy).to(DEVICE), states.to(DEVICE), estimator=estimator,
                              actions=actions.to(DEVICE), damping=0.1)
    v = torch.randn(on_cpu.num_params, dtype=D, generator=torch.Generator().manual_seed(2))
    product = on_device.mv(v.to(DEVICE))
    assert product.device.type == "cuda" and product.dtype == D
    torch.testing.assert_close(product.cpu(), on_cpu.mv(v), rtol=1e-10, atol=1e-12)
    assert (on_cpu.mv(v) - 0.1 * v).abs().max() > 1e-3  # the undamped part is not negligible: the comparison has teeth
    torch.testing.assert_close(on_device.diagonal().cpu(), on_cpu.diagonal(), rtol=1e-10, atol=1e-12)
    if estimator == "kfac":
        torch.testing.assert_close(on_device.solve(v.to(DEVICE)).cpu(), on_cpu.solve(v), rtol=1e-9, atol=1e-11)


def _q_network() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2)).to(D)


@pytest.mark.parametrize("solver", ["exact", "cg"])
@pytest.mark.parametrize("outputs", ["action", "all"])
def test_batch_space_solve_on_cuda_equals_the_cpu_one(outputs, solver):
    """``GaussNewtonOperator.batch_space_solve`` (NGDQN's default path) on CUDA: the same x, iterations and residual."""
    n = 10
    generator = torch.Generator().manual_seed(3)
    inputs = torch.randn(n, 3, dtype=D, generator=generator)
    actions = torch.randint(0, 2, (n,), generator=generator) if outputs == "action" else None
    coefficients = torch.randn(n if outputs == "action" else 2 * n, dtype=D, generator=generator)
    cg = CGConfig(max_iter=4, tol=0.0) if solver == "cg" else None
    results = []
    for device in (torch.device("cpu"), DEVICE):
        net = _q_network().to(device)
        curvature = gauss_newton(net, list(net.parameters()), inputs.to(device), damping=0.05,
                                 output_index=None if actions is None else actions.to(device))
        results.append(curvature.batch_space_solve(coefficients.to(device), cg=cg))
    on_cpu, on_device = results
    assert on_device.x.device.type == "cuda"
    torch.testing.assert_close(on_device.x.cpu(), on_cpu.x, rtol=1e-9, atol=1e-11)
    assert on_device.iterations == on_cpu.iterations == (4 if solver == "cg" else 0)
    assert on_device.residual_norm == pytest.approx(on_cpu.residual_norm, rel=1e-6, abs=1e-13)
    assert on_device.status == on_cpu.status


def _npg(device: torch.device | str, **kwargs) -> NPG:
    model = NPG("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=2, seed=0), n_steps=16, batch_size=8, seed=0, device=device,
                policy_kwargs=dict(net_arch=[8]), **kwargs)
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


BUFFER_ARRAYS = ("observations", "actions", "rewards", "returns", "episode_starts", "values", "log_probs", "advantages")

# float64: the actor's natural step alone (SB3's critic casts observations to float32, so it cannot run in float64),
# equal to rounding; float32: the whole update, critic epochs included, equal to float32 rounding amplified by CG.
PRECISIONS = {
    "float64-actor-step": (torch.float64, dict(n_critic_updates=0), dict(rtol=1e-8, atol=1e-10)),
    "float32-whole-update": (torch.float32, dict(n_critic_updates=2), dict(rtol=1e-4, atol=1e-5)),
}


@pytest.mark.parametrize("line_search", [False, True], ids=["npg", "trust-region-line-search"])
@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_one_npg_update_on_cuda_equals_the_cpu_one(precision, line_search):
    """One real rollout collected on the CPU, copied into a CUDA model with the same weights: after one
    ``train()`` every parameter, the measured KL and the CG iterations agree."""
    dtype, kwargs, tolerance = PRECISIONS[precision]
    on_cpu = _npg("cpu", line_search=line_search, **kwargs)
    _, callback = on_cpu._setup_learn(on_cpu.n_steps * on_cpu.n_envs, None)
    on_cpu.collect_rollouts(on_cpu.env, callback, on_cpu.rollout_buffer, on_cpu.n_steps)
    on_device = _npg(DEVICE, line_search=line_search, **kwargs)
    on_device.policy.load_state_dict(on_cpu.policy.state_dict())
    for model in (on_cpu, on_device):
        model.policy.to(dtype)
        for name in BUFFER_ARRAYS:  # copies of the float32 rollout (values kept exactly in float64)
            setattr(model.rollout_buffer, name, getattr(on_cpu.rollout_buffer, name).astype(NUMPY[dtype]))
        model.rollout_buffer.full = True
    theta_old = get_flat_params(list(on_cpu.policy.parameters())).clone()
    updates = []
    for model in (on_cpu, on_device):
        np.random.seed(7)  # the critic's minibatch order
        updates.append(model.train())
    theta_cpu = get_flat_params(list(on_cpu.policy.parameters()))
    theta_device = get_flat_params(list(on_device.policy.parameters()))
    assert theta_device.device.type == "cuda" and theta_device.dtype == dtype
    assert (theta_cpu - theta_old).abs().max() > 1e-3  # the update moved the parameters: the comparison has teeth
    torch.testing.assert_close(theta_device.cpu(), theta_cpu, **tolerance)
    assert updates[1].kl == pytest.approx(updates[0].kl, rel=100 * tolerance["rtol"])
    assert updates[1].cg_iterations == updates[0].cg_iterations
