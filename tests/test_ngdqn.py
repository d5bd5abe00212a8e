"""NGDQN: one step against a dense float64 reference, damping adaptation, smoke runs, save/load, seeding."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F
from stable_baselines3.common.envs import FakeImageEnv
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, FlattenExtractor
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from agents import ALGOS, NGDQN, NPG, CheckpointError
from ngrl.damping import levenberg_marquardt

TINY = dict(net_arch=[16])


class Collect(KVWriter):
    """Keeps every logged value, so tests can read what ``train()`` recorded."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def write(self, key_values, key_excluded, step=0) -> None:
        self.records.append(dict(key_values))


class LinearExtractor(BaseFeaturesExtractor):
    """A features extractor with parameters (forces the functional linearisation of the whole Q-network)."""

    def __init__(self, observation_space: gym.spaces.Box, features_dim: int = 3) -> None:
        super().__init__(observation_space, features_dim)
        self.linear = nn.Linear(int(np.prod(observation_space.shape)), features_dim)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(obs.to(self.linear.weight.dtype)))


# --- one step against a dense reference ------------------------------------------------------


def _float64_model(extractor: type[BaseFeaturesExtractor], **kwargs) -> NGDQN:
    model = NGDQN(
        "MlpPolicy",
        "CartPole-v1",
        learning_starts=0,
        buffer_size=100,
        cg_tol=1e-14,
        policy_kwargs=dict(net_arch=[5], features_extractor_class=extractor),
        seed=3,
        device="cpu",
        **kwargs,
    )
    model.policy.to(torch.float64)
    with torch.no_grad():  # a target network different from the online one
        for p in model.q_net_target.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def _batch(n: int = 12, seed: int = 0) -> ReplayBufferSamples:
    # Observations representable in float32: SB3's preprocessing casts them to float32.
    g = torch.Generator().manual_seed(seed)
    return ReplayBufferSamples(
        observations=torch.randn(n, 4, generator=g).to(torch.float64),
        actions=torch.randint(0, 2, (n, 1), generator=g),
        next_observations=torch.randn(n, 4, generator=g).to(torch.float64),
        dones=(torch.rand(n, 1, generator=g) < 0.3).to(torch.float64),
        rewards=torch.randn(n, 1, generator=g, dtype=torch.float64) * 2.0,
    )


def _dense_reference(
    model: NGDQN, data: ReplayBufferSamples, *, lr: float, damping: float, use_target: bool, max_grad_norm: float | None = None
):
    """θ₁ = θ₀ − η (G + dI)⁻¹ ∇L computed densely: G from torch.autograd.functional.jacobian, ∇L by autograd."""
    q_net = model.q_net
    names = [name for name, _ in q_net.named_parameters()]
    shapes = [p.shape for _, p in q_net.named_parameters()]
    theta0 = torch.cat([p.detach().reshape(-1) for _, p in q_net.named_parameters()]).clone()

    def q_values(theta: torch.Tensor, obs: torch.Tensor, module=q_net) -> torch.Tensor:
        values = dict(zip(names, (c.view(s) for c, s in zip(torch.split(theta, [int(np.prod(s)) for s in shapes]), shapes))))
        extractor = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("features_extractor.")}
        head = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("q_net.")}
        features = functional_call(module.features_extractor, extractor, (obs,))
        return functional_call(module.q_net, head, (features,))

    actions = data.actions.reshape(-1)
    rows = torch.arange(len(actions))
    with torch.no_grad():
        if use_target:
            theta_bar = torch.cat([p.reshape(-1) for p in model.q_net_target.parameters()])
        else:
            theta_bar = theta0
        next_q = q_values(theta_bar, data.next_observations).max(dim=1).values
        y = data.rewards.reshape(-1) + (1 - data.dones.reshape(-1)) * model.gamma * next_q

    def loss(theta: torch.Tensor) -> torch.Tensor:
        residual = q_values(theta, data.observations)[rows, actions] - y
        if model.td_loss == "mse":
            return 0.5 * residual.square().mean()
        return F.smooth_l1_loss(residual, torch.zeros_like(residual))

    n = len(actions)
    if model.curvature_outputs == "action":
        jac = torch.autograd.functional.jacobian(lambda t: q_values(t, data.observations)[rows, actions], theta0)  # (n, P)
        gauss_newton = jac.T @ jac / n
    else:
        jac = torch.autograd.functional.jacobian(lambda t: q_values(t, data.observations), theta0)  # (n, k, P)
        gauss_newton = torch.einsum("nkp,nkq->pq", jac, jac) / n
    theta = theta0.clone().requires_grad_(True)
    gradient = torch.autograd.grad(loss(theta), theta)[0]
    eye = torch.eye(len(theta0), dtype=torch.float64)
    rhs = gradient if max_grad_norm is None else gradient * min(1.0, max_grad_norm / float(gradient.norm()))
    direction = torch.linalg.solve(gauss_newton + damping * eye, rhs)
    quadratic = float(direction @ gauss_newton @ direction)  # xᵀGx: the reduction ratio's model of L
    if model.target_kl is not None:  # the KL cap's model is the damped operator's: ½η²xᵀ(G + dI)x ≤ δ
        lr = min(lr, float(np.sqrt(2 * model.target_kl / float(direction @ (gauss_newton + damping * eye) @ direction))))
    theta1 = theta0 - lr * direction
    with torch.no_grad():
        actual = float(loss(theta1) - loss(theta0))
    predicted = float(-lr * gradient @ direction + 0.5 * lr**2 * quadratic)
    return theta1, actual / predicted, lr


@pytest.mark.parametrize("use_target", [True, False], ids=["target", "no-target"])
@pytest.mark.parametrize("curvature_outputs", ["action", "all"])
@pytest.mark.parametrize("td_loss", ["mse", "huber"])
@pytest.mark.parametrize("extractor", [FlattenExtractor, LinearExtractor], ids=["mlp-path", "functional-path"])
@pytest.mark.parametrize("solver", ["cg", "exact"])
def test_one_step_equals_dense_natural_gradient(use_target, curvature_outputs, td_loss, extractor, solver):
    model = _float64_model(
        extractor,
        solver=solver,
        target_network=use_target,
        target_update_interval=100,
        curvature_outputs=curvature_outputs,
        td_loss=td_loss,
        damping=0.3,
        cg_max_steps=100,
    )
    data = _batch()
    expected, _, _ = _dense_reference(model, data, lr=0.7, damping=0.3, use_target=use_target)
    stats = model._natural_step(data, 0.7)
    got = torch.cat([p.detach().reshape(-1) for p in model.q_net.parameters()])
    assert stats.cg_residual < 1e-10
    assert (stats.cg_iterations == 0) == (solver == "exact")
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("solver_kwargs", [dict(solver="exact"), dict(cg_max_steps=100, preconditioner="diagonal")], ids=["exact", "preconditioned-cg"])
def test_solve_with_clipped_gradient_equals_dense_step(solver_kwargs):
    model = _float64_model(FlattenExtractor, damping=0.3, max_grad_norm=0.05, **solver_kwargs)
    data = _batch()
    expected, _, _ = _dense_reference(model, data, lr=0.7, damping=0.3, use_target=False, max_grad_norm=0.05)
    unclipped, _, _ = _dense_reference(model, data, lr=0.7, damping=0.3, use_target=False)
    assert (expected - unclipped).abs().max() > 1e-4  # the clipping is active in this test
    model._natural_step(data, 0.7)
    torch.testing.assert_close(torch.cat([p.detach().reshape(-1) for p in model.q_net.parameters()]), expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("curvature_outputs", ["action", "all"])
def test_truncated_cg_in_the_batch_space_takes_the_parameter_space_step(curvature_outputs, monkeypatch):
    """Two CG iterations (far from converged) in the minibatch's space give the step parameter-space CG gives."""
    steps = {}
    for space in ("batch", "parameters"):
        model = _float64_model(FlattenExtractor, damping=0.01, cg_max_steps=2, curvature_outputs=curvature_outputs)
        monkeypatch.setattr(model, "_solves_in_batch_space", lambda curvature, space=space: space == "batch")
        stats = model._natural_step(_batch(), 0.7)
        assert stats.cg_iterations == 2 and stats.cg_residual > 1e-3
        steps[space] = (torch.cat([p.detach().reshape(-1) for p in model.q_net.parameters()]), stats)
    torch.testing.assert_close(steps["batch"][0], steps["parameters"][0], rtol=1e-9, atol=1e-12)
    assert steps["batch"][1].cg_residual == pytest.approx(steps["parameters"][1].cg_residual, rel=1e-7)


def test_few_cg_iterations_are_not_the_exact_solve():
    """The dense comparison can fail: capped at 2 iterations the step differs from the exact one."""
    model = _float64_model(FlattenExtractor, damping=0.01, cg_max_steps=2)
    data = _batch()
    expected, _, _ = _dense_reference(model, data, lr=0.7, damping=0.01, use_target=False)
    stats = model._natural_step(data, 0.7)
    got = torch.cat([p.detach().reshape(-1) for p in model.q_net.parameters()])
    assert stats.cg_iterations == 2
    assert (got - expected).abs().max() > 1e-6


@pytest.mark.parametrize("solver", ["cg", "exact"])
def test_target_kl_caps_the_step(solver):
    model = _float64_model(FlattenExtractor, damping=0.3, cg_max_steps=100, target_kl=1e-4, solver=solver)
    data = _batch()
    expected, _, capped_lr = _dense_reference(model, data, lr=0.7, damping=0.3, use_target=False)
    assert capped_lr < 0.7  # the bound is active in this test
    stats = model._natural_step(data, 0.7)
    assert stats.step_size == pytest.approx(capped_lr, rel=1e-9)
    torch.testing.assert_close(torch.cat([p.detach().reshape(-1) for p in model.q_net.parameters()]), expected)


@pytest.mark.parametrize("lr", [0.2, 3.0])
@pytest.mark.parametrize("solver", ["cg", "exact"])
def test_adaptive_damping_follows_the_levenberg_marquardt_rule(lr, solver):
    # A small step is predicted well (ρ ≈ 1: d shrinks); a large one overshoots (ρ < ¼: d grows).
    model = _float64_model(FlattenExtractor, damping="adaptive_0.3", cg_max_steps=100, solver=solver)
    data = _batch()
    expected, ratio, _ = _dense_reference(model, data, lr=lr, damping=0.3, use_target=False)
    stats = model._natural_step(data, lr)
    assert stats.damping == 0.3
    assert stats.reduction_ratio == pytest.approx(ratio, rel=1e-7)
    assert model.damping_value == pytest.approx(levenberg_marquardt(0.3, ratio, min_damping=1e-4, max_damping=1e4))
    if lr < 1:
        assert ratio > 0.75 and model.damping_value < 0.3
    else:
        assert ratio < 0.25 and model.damping_value > 0.3
    torch.testing.assert_close(torch.cat([p.detach().reshape(-1) for p in model.q_net.parameters()]), expected)


# --- the agent as an SB3 algorithm -----------------------------------------------------------


def _model(**kwargs) -> NGDQN:
    defaults = dict(learning_starts=50, buffer_size=1000, policy_kwargs=TINY, seed=0, device="cpu")
    defaults.update(kwargs)
    return NGDQN("MlpPolicy", "CartPole-v1", **defaults)


@pytest.mark.parametrize(
    "kwargs", [dict(), dict(target_network=True, target_update_interval=100, damping=0.5), dict(curvature_outputs="all", td_loss="huber")]
)
def test_smoke_run_logs_the_solver(kwargs):
    model = _model(**kwargs)
    collect = Collect()
    model.set_logger(Logger(folder=None, output_formats=[collect]))
    model.learn(300, log_interval=1)
    logged = {k for record in collect.records for k in record}
    assert {"train/cg_iterations", "train/cg_residual", "train/damping", "train/td_loss", "train/learning_rate"} <= logged
    iterations = [r["train/cg_iterations"] for r in collect.records if "train/cg_iterations" in r]
    assert all(1 <= i <= model.cg_max_steps for i in iterations)
    assert model._n_updates > 0


def test_cnn_policy_smoke():
    env = FakeImageEnv(screen_height=36, screen_width=36, n_channels=1, discrete=True)
    model = NGDQN("CnnPolicy", env, learning_starts=20, buffer_size=200, batch_size=8, seed=0, device="cpu")
    before = [p.detach().clone() for p in model.q_net.parameters()]
    model.learn(60)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.q_net.parameters()))


@pytest.mark.parametrize("target_network", [False, True])
def test_the_td_target_reads_the_network_the_flag_names(target_network):
    model = _model(target_network=target_network, learning_starts=0)
    data = _batch()
    data = data._replace(observations=data.observations.float(), next_observations=data.next_observations.float(),
                         rewards=data.rewards.float(), dones=data.dones.float())
    before = model._td_target(data)
    with torch.no_grad():  # move only the target copy: the TD target must follow it iff target_network
        for p in model.q_net_target.parameters():
            p.add_(0.5)
    changed = not torch.allclose(model._td_target(data), before)
    assert changed == target_network


def test_no_gradient_optimizer_is_built():
    model = _model()
    assert model.policy.optimizer is None


def test_with_target_network_the_target_follows_the_interval():
    from stable_baselines3.common.callbacks import BaseCallback

    class TargetChanges(BaseCallback):
        def _init_callback(self) -> None:
            self.last = None
            self.changed_at: list[int] = []

        def _on_step(self) -> bool:
            # Called after env step t, before the agent's own _on_step(t): a copy made at t shows at t + 1.
            current = torch.cat([p.detach().reshape(-1) for p in self.model.q_net_target.parameters()])
            if self.last is not None and not torch.equal(current, self.last):
                self.changed_at.append(self.num_timesteps)
            self.last = current.clone()
            return True

    changes = TargetChanges()
    _model(target_network=True, target_update_interval=100).learn(350, callback=changes)
    assert changes.changed_at == [101, 201, 301]


def test_save_load_gives_identical_q_values(tmp_path):
    model = _model(damping="adaptive_0.5")
    model.learn(300)
    obs = torch.as_tensor(np.random.default_rng(0).normal(size=(16, 4)), dtype=torch.float32)
    model.save(tmp_path / "ngdqn")
    loaded = NGDQN.load(tmp_path / "ngdqn", device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(model.q_net(obs), loaded.q_net(obs), rtol=0, atol=0)
    assert loaded.damping_value == model.damping_value != 0.5
    assert loaded.target_network is False and loaded.policy.optimizer is None
    np.testing.assert_array_equal(model.predict(obs.numpy(), deterministic=True)[0], loaded.predict(obs.numpy(), deterministic=True)[0])
    with pytest.raises(CheckpointError, match="NGDQN"):
        NPG.load(tmp_path / "ngdqn")


def test_same_seed_same_actions():
    obs = np.random.default_rng(1).normal(size=(32, 4)).astype(np.float32)
    runs = []
    for _ in range(2):
        model = _model(seed=7)
        model.learn(300)
        runs.append((model.predict(obs, deterministic=False)[0], model.predict(obs, deterministic=True)[0]))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_tensorboard_run_name(tmp_path):
    model = _model(tensorboard_log=str(tmp_path))
    model.learn(100)
    assert (tmp_path / "NGDQN_1").is_dir()


def test_registered_for_the_command_line():
    assert ALGOS["ngdqn"] is NGDQN


def test_command_line_train_then_eval(tmp_path):
    root = Path(__file__).resolve().parents[1]
    train = subprocess.run(
        [sys.executable, "train.py", "train", "--algo", "ngdqn", "--env", "CartPole-v1", "--n-timesteps", "300",
         "--log-folder", str(tmp_path), "--n-eval-episodes", "2", "--device", "cpu", "--quiet",
         "--hyperparams", "learning_starts=100", "policy_kwargs=dict(net_arch=[16])", "damping=0.5", "target_network=False"],
        cwd=root, capture_output=True, text=True, timeout=300,
    )
    assert train.returncode == 0, train.stderr
    found = sorted((tmp_path / "ngdqn").glob("CartPole-v1_*/CartPole-v1.zip"))  # the run folder's name is train.py's business
    assert len(found) == 1, train.stdout
    checkpoint = found[0]
    config = yaml.safe_load((checkpoint.parent / "config.yml").read_text())
    assert config["CartPole-v1"]["damping"] == 0.5 and config["CartPole-v1"]["target_network"] is False
    evaluation = subprocess.run(
        [sys.executable, "train.py", "eval", "--algo", "ngdqn", "--env", "CartPole-v1", "--model", str(checkpoint),
         "--n-episodes", "2", "--device", "cpu"],
        cwd=root, capture_output=True, text=True, timeout=300,
    )
    assert evaluation.returncode == 0, evaluation.stderr
    assert "Evaluation of ngdqn on CartPole-v1 over 2 episodes" in evaluation.stdout


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(damping="sometimes"), "adaptive"),
        (dict(damping="adaptive_-1"), "adaptive"),
        (dict(damping=-0.1), "damping"),
        (dict(damping_bounds=(1.0, 0.1)), "damping_bounds"),
        (dict(curvature_outputs="max"), "curvature_outputs"),
        (dict(td_loss="l1"), "td_loss"),
        (dict(cg_max_steps=0), "cg_max_steps"),
        (dict(target_update_interval=0), "target_update_interval"),
        (dict(target_update_interval=None), "target_network=False"),
        (dict(preconditioner="kfac"), "preconditioner"),
        (dict(solver="cholesky"), "solver"),
        (dict(solver="exact", preconditioner="diagonal"), "preconditioner"),
        (dict(target_kl=0.0), "target_kl"),
        (dict(max_grad_norm=-1.0), "max_grad_norm"),
    ],
)
def test_bad_arguments_are_explained(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _model(**kwargs)


def test_nan_rewards_are_reported():
    model = _model()
    model.learn(100)
    model.replay_buffer.rewards[:] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.train(gradient_steps=1, batch_size=8)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda():
    model = _model(device="cuda")
    model.learn(200)
    assert all(p.device.type == "cuda" for p in model.q_net.parameters())


# --- learning ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_cartpole_is_solved_within_100k_steps():
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.evaluation import evaluate_policy

    torch.set_num_threads(1)
    config = yaml.safe_load((Path(__file__).parents[1] / "configs" / "ngdqn.yml").read_text())["CartPole-v1"]
    kwargs = {k: v for k, v in config.items() if k not in ("n_timesteps", "policy", "n_envs", "normalize")}
    if isinstance(kwargs["learning_rate"], str) and kwargs["learning_rate"].startswith("lin_"):  # train.py's notation
        start = float(kwargs["learning_rate"][4:])
        kwargs["learning_rate"] = lambda progress_remaining: start * progress_remaining
    model = NGDQN(config.get("policy", "MlpPolicy"), "CartPole-v1", seed=0, device="cpu", **kwargs)
    eval_env = gym.make("CartPole-v1")
    eval_env.reset(seed=10_000)

    class EvaluateUntilSolved(BaseCallback):
        best = -np.inf

        def _on_step(self) -> bool:
            if self.num_timesteps % 5_000 == 0:
                mean, _ = evaluate_policy(self.model, eval_env, n_eval_episodes=10, deterministic=True)
                self.best = max(self.best, mean)
            return self.best < 475  # returning False stops training

    callback = EvaluateUntilSolved()
    model.learn(100_000, callback=callback)
    assert callback.best >= 475, f"best evaluation {callback.best} within 100k steps"


@pytest.mark.parametrize("saved, expected", [(dict(target_update_interval=None, use_preconditioner=False), (False, 10000, None)),
                                             (dict(target_update_interval=500, use_preconditioner=True), (True, 500, "diagonal"))])
def test_checkpoints_from_before_target_network_and_preconditioner_map_onto_them(saved, expected):
    # SB3's load builds the model with defaults, updates __dict__ with the saved attributes, then calls _setup_model
    model = NGDQN("MlpPolicy", "CartPole-v1", policy_kwargs=TINY, device="cpu", _init_setup_model=False)
    model.__dict__.update(saved)
    model._setup_model()
    assert (model.target_network, model.target_update_interval, model.preconditioner) == expected
    assert "use_preconditioner" not in model.__dict__
