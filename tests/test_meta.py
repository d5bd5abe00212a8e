"""Meta-learners: update formulas on a tiny model, adapt, memory of iMAML, smoke runs, save/load, errors."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.utils import set_random_seed

from agents import FOMAML, IMAML, CheckpointError, Reptile
from agents.meta import VPG
from agents.meta.maml import maml_meta_gradient
from agents.meta.memory import SavedTensorMeter
from agents.npg import NPG
from agents.policy_gradient import PolicyGradientBatch
from envs.task_family import held_out_tasks
from ngrl import get_flat_params
from ngrl.fisher import actor_parameters

NAV = "ngrl/Navigation2D-v0"
CARTPOLE = "ngrl/CartPoleDynamics-v0"
TINY = dict(policy_kwargs=dict(net_arch=[8]), n_steps=32, meta_batch_size=2, seed=0)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _split(model):
    actor = get_flat_params(model._actor_params)
    critic = get_flat_params(model._critic_params)
    return actor, critic


def _learner_split(learner):
    actor = actor_parameters(learner.policy)
    ids = {id(p) for p in actor}
    return get_flat_params(actor), get_flat_params([p for p in learner.policy.parameters() if id(p) not in ids])


@pytest.mark.parametrize("inner_algo", ["npg", "vpg"])
def test_reptile_update_formula(inner_algo):
    """θ ← θ + ε·meanᵢ(φᵢ − θ) on the actor; θ_v ← θ_v + κ·meanᵢ(φ_v,ᵢ − θ_v) on the critic."""
    eps, kappa = 0.3, 0.5
    model = Reptile("MlpPolicy", NAV, learning_rate=eps, inner_algo=inner_algo, inner_updates=2, critic_step_size=kappa, **TINY)
    theta, theta_v = _split(model)
    model.learn(2 * 2 * 32)  # exactly one meta-iteration: 2 tasks × 2 rollouts × 32 steps
    assert model.num_timesteps == 128 and model._n_updates == 1
    phis, phis_v = zip(*(_learner_split(learner) for learner in model._learners))
    assert all((phi - theta).norm() > 1e-4 for phi in phis)  # the inner loop moved
    assert (phis[0] - phis[1]).norm() > 1e-5  # to different places for different tasks
    new, new_v = _split(model)
    theta, theta_v, phis, phis_v = theta.double(), theta_v.double(), torch.stack(phis).double(), torch.stack(phis_v).double()
    torch.testing.assert_close(new.double(), theta + eps * (phis.mean(0) - theta), rtol=0, atol=1e-6)
    torch.testing.assert_close(new_v.double(), theta_v + kappa * (phis_v.mean(0) - theta_v), rtol=0, atol=1e-6)
    wrong_way = theta - eps * (phis.mean(0) - theta)  # this comparison has teeth: the reversed step is far away
    assert (new.double() - wrong_way).abs().max() > 1e-4


def _independent_policy_gradient(learner):
    """−mean(Â ∇log π(a|s)) at φ by SB3's own evaluate_actions on the learner's (test) rollout."""
    rollout = next(learner.rollout_buffer.get(batch_size=None))
    policy = learner.policy
    actions = rollout.actions.long().flatten() if rollout.actions.shape[-1] == 1 and policy.action_space.shape == () else rollout.actions
    _, log_prob, _ = policy.evaluate_actions(rollout.observations, actions)
    torch.testing.assert_close(log_prob.detach(), rollout.old_log_prob, rtol=0, atol=1e-5)  # the rollout is φ's own
    adv = rollout.advantages
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    grads = torch.autograd.grad(-(adv * log_prob).mean(), actor_parameters(policy))
    return torch.cat([g.reshape(-1) for g in grads])


@pytest.mark.parametrize("env_id", [NAV, CARTPOLE])
def test_fomaml_update_formula(env_id):
    """θ ← θ − β · meanᵢ ∇L_test(φᵢ) with the gradient at the adapted point on fresh rollouts (SGD meta optimizer)."""
    beta = 0.05
    model = FOMAML("MlpPolicy", env_id, learning_rate=beta, inner_algo="vpg", inner_updates=1,
                   meta_optimizer_class=torch.optim.SGD, **TINY)
    theta, _ = _split(model)
    model.learn(2 * 2 * 32)
    gradients = torch.stack([_independent_policy_gradient(learner) for learner in model._learners])
    new, _ = _split(model)
    torch.testing.assert_close(new, theta - beta * gradients.mean(0), rtol=0, atol=1e-6)
    assert gradients.norm() > 1e-3
    if env_id == NAV:  # and in float64 from the stored test rollouts, with no SB3 or ngrl code in the loop
        reference = torch.stack([_float64_test_gradient(learner) for learner in model._learners]).mean(0)
        torch.testing.assert_close(new.double(), theta.double() - beta * reference, rtol=0, atol=1e-6)
        assert (beta * reference).abs().max() > 1e-4  # the step is far larger than the tolerance


@pytest.mark.parametrize("cls", [FOMAML, IMAML])
def test_natural_meta_step_is_the_trust_region_natural_gradient(cls, monkeypatch):
    """meta_step="natural": θ ← θ − f·α·d with d = (meanᵢ Fᵢ + λI)⁻¹ meanᵢ gᵢ (Fᵢ the Fisher of φᵢ on its test
    rollout, by a dense autograd Hessian of the KL), α = sqrt(2δ / dᵀ(F + λI)d) and f a power of the line search's 0.8."""
    delta, damping = 0.01, 0.1
    model = cls("MlpPolicy", NAV, inner_algo="vpg", inner_updates=1, meta_step="natural", meta_target_kl=delta,
                meta_cg_max_steps=200, meta_cg_damping=damping, **TINY)
    captured = {}
    original = cls._natural_meta_step

    def spy(self, records, meta_gradient):
        captured.update(rollouts=[r.test_batch.rollout for r in records], gradient=meta_gradient.clone())
        captured["logs"] = original(self, records, meta_gradient)
        return captured["logs"]

    monkeypatch.setattr(cls, "_natural_meta_step", spy)
    theta, _ = _split(model)
    model.learn(2 * 2 * 32)
    learners, gradient = model._learners, captured["gradient"].double()
    if cls is FOMAML:  # its meta-gradient is the mean test gradient at the adapted points
        reference = torch.stack([_independent_policy_gradient(learner) for learner in learners]).mean(0)
        torch.testing.assert_close(gradient, reference.double(), rtol=0, atol=1e-6)
    fisher = torch.stack([_dense_inner_curvature(l, r, "fisher") for l, r in zip(learners, captured["rollouts"])]).mean(0)
    fisher = fisher + damping * torch.eye(fisher.shape[0], dtype=torch.float64)
    direction = torch.linalg.solve(fisher, gradient)
    full_step = float(torch.sqrt(2 * delta / (direction @ fisher @ direction)))
    step = captured["logs"]["natural_step_size"]
    assert step > 0, "the line search accepted no step"
    fraction = step / full_step
    assert min(abs(fraction - 0.8**k) for k in range(10)) < 1e-3, fraction
    new, _ = _split(model)
    torch.testing.assert_close(new.double(), theta.double() - step * direction, rtol=0, atol=1e-5)
    assert captured["logs"]["natural_kl"] <= delta


def _dense_nav_policy(flat, obs):
    """π_φ(·|s) of TINY's Navigation policy from flat float64 parameters, in the order of actor_parameters:
    2 -> Linear(8) tanh -> Linear(2) mean; state-independent log σ."""
    w1, b1, w2, b2, log_std = torch.split(flat, [16, 8, 16, 2, 2])
    h = torch.tanh(obs.double() @ w1.view(8, 2).T + b1)
    return torch.distributions.Normal(h @ w2.view(2, 8).T + b2, log_std.exp().expand(len(obs), 2))


def _dense_surrogate_loss(flat, batch):
    """−mean(π_φ/π_old · Â) in float64, Â standardised, on a rollout batch of TINY's Navigation policy."""
    adv = batch.advantages.double()
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    log_prob = _dense_nav_policy(flat, batch.observations).log_prob(batch.actions.double()).sum(-1)
    return -(torch.exp(log_prob - batch.old_log_prob.double()) * adv).mean()


def _float64_test_gradient(learner):
    """∇_φ L_test(φ) in float64 from the learner's stored (test) rollout."""
    batch = next(learner.rollout_buffer.get(batch_size=None))
    flat = get_flat_params(actor_parameters(learner.policy)).double().requires_grad_(True)
    return torch.autograd.grad(_dense_surrogate_loss(flat, batch), flat)[0]


def _dense_inner_curvature(learner, batch, curvature):
    """C at φ as a dense matrix by torch.autograd.functional.hessian (no ngrl operator involved)."""
    policy = learner.policy
    params = actor_parameters(policy)
    flat0 = get_flat_params(params).double()
    obs, actions = batch.observations, batch.actions
    adv = (batch.advantages - batch.advantages.mean()) / (batch.advantages.std() + 1e-8)
    with torch.no_grad():
        old_dist = policy.get_distribution(obs).distribution
        old = torch.distributions.Normal(old_dist.loc.detach().double(), old_dist.scale.detach().double())

    def distribution(flat):
        # policy: 2 -> Linear(8) tanh -> Linear(2) mean; log_std; unpacked in the order of actor_parameters
        w1, b1, w2, b2, log_std = torch.split(flat, [16, 8, 16, 2, 2])
        h = torch.tanh(obs.double() @ w1.view(8, 2).T + b1)
        return torch.distributions.Normal(h @ w2.view(2, 8).T + b2, log_std.exp().expand(len(obs), 2))

    if curvature == "hessian":
        def f(flat):
            log_prob = distribution(flat).log_prob(actions.double()).sum(-1)
            return -(torch.exp(log_prob - batch.old_log_prob.double()) * adv.double()).mean()
    else:  # Fisher = Hessian of the mean KL(π_φ ‖ π_·) at φ
        def f(flat):
            return torch.distributions.kl_divergence(old, distribution(flat)).sum(-1).mean()
    return torch.autograd.functional.hessian(f, flat0)


@pytest.mark.parametrize("curvature", ["hessian", "fisher"])
def test_imaml_meta_gradient_is_the_implicit_solution(curvature, monkeypatch):
    """gᵢ = (I + C/λ)⁻¹ ∇L_test(φᵢ) against a dense solve with C from autograd; θ ← θ − β·meanᵢ gᵢ."""
    lam, beta = 2.0, 0.05
    model = IMAML("MlpPolicy", NAV, learning_rate=beta, inner_algo="vpg", inner_updates=2, lam=lam, curvature=curvature,
                  cg_max_steps=200, cg_tol=1e-9, meta_optimizer_class=torch.optim.SGD, **TINY)
    params = actor_parameters(model.policy)
    assert [p.numel() for p in params] == [16, 8, 16, 2, 2]  # the layout _dense_inner_curvature assumes
    captured = []
    original = IMAML._outer_update

    def spy(self, records):
        captured.extend(records)
        return original(self, records)

    monkeypatch.setattr(IMAML, "_outer_update", spy)
    theta, _ = _split(model)
    model.learn(2 * 3 * 32)
    assert len(captured) == 2
    references = []
    for learner, record in zip(model._learners, captured):
        assert record.policy is learner.policy
        test_gradient = _independent_policy_gradient(learner).double()  # from the test rollout of φᵢ
        dense = _dense_inner_curvature(learner, record.inner_batch.rollout, curvature)
        n = dense.shape[0]
        reference = torch.linalg.solve(torch.eye(n, dtype=torch.float64) + dense / lam, test_gradient)
        assert (reference - test_gradient).norm() > 1e-3 * test_gradient.norm()  # the curvature matters
        references.append(reference)
    new, _ = _split(model)
    torch.testing.assert_close(new.double(), theta.double() - beta * torch.stack(references).mean(0), rtol=0, atol=1e-6)


def test_imaml_proximal_step_pulls_towards_theta():
    """With inner_algo='vpg' each inner update is θ + (φ − α∇L̂ − θ)/(1 + ηλ): a proximal-gradient step."""
    lam, eta, alpha = 1.5, 0.2, 0.1
    model = IMAML("MlpPolicy", NAV, inner_algo="vpg", inner_updates=1, lam=lam, proximal_step=eta,
                  inner_kwargs={"step_size": alpha}, **TINY)
    theta, _ = _split(model)
    learner = model._make_learner()
    env = make_vec_env(NAV, n_envs=1, seed=0)
    env.env_method("set_task", {"goal_x": 0.3, "goal_y": 0.2})
    model._start_learner(learner)
    from agents.meta.rollouts import collect_task_rollouts

    collect_task_rollouts(env, [learner], 32)
    gradient = _independent_policy_gradient(learner)  # at φ = θ: ∇L̂(θ)
    model._inner_step(learner, theta)
    expected = theta + (theta - alpha * gradient - theta) / (1 + eta * lam)
    torch.testing.assert_close(_learner_split(learner)[0], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("cls", [Reptile, FOMAML, IMAML])
def test_adapt_leaves_meta_parameters_and_predicts(cls):
    model = cls("MlpPolicy", NAV, inner_updates=1, **TINY)
    before = [p.detach().clone() for p in model.policy.parameters()]
    task = model.sample_tasks(1)[0]
    agent = model.adapt(task, n_updates=2, seed=0)
    assert isinstance(agent, NPG)
    for p, q in zip(before, model.policy.parameters()):
        assert torch.equal(p, q)
    obs = np.zeros((3, 2), dtype=np.float32)
    action, _ = agent.predict(obs, deterministic=True)
    assert action.shape == (3, 2)
    assert agent.env.env_method("get_task")[0] == pytest.approx(task)
    moved = get_flat_params(actor_parameters(agent.policy)) - get_flat_params(model._actor_params)
    assert moved.norm() > 1e-4
    unadapted = model.adapt(task, n_updates=0)
    np.testing.assert_array_equal(unadapted.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])
    with pytest.raises(ValueError, match="missing"):
        model.adapt({"goal_x": 0.1})


def test_evaluate_adaptation_shapes_and_determinism():
    model = Reptile("MlpPolicy", NAV, inner_updates=1, **TINY)
    tasks = [{"goal_x": 0.4, "goal_y": -0.4}, {"goal_x": -0.2, "goal_y": 0.1}, {"goal_x": 0.0, "goal_y": 0.5}]
    set_random_seed(1)  # torch sampling and numpy's shuffling of the rollout buffer
    first = model.evaluate_adaptation(tasks, n_updates=[0, 2], seed=3)
    set_random_seed(1)
    second = model.evaluate_adaptation(tasks, n_updates=[0, 2], seed=3)
    assert sorted(first) == [0, 2] and first[0].shape == (3,)
    for k in first:
        np.testing.assert_array_equal(first[k], second[k])


def _peak_bytes(model) -> int:
    class Null(BaseCallback):
        def _on_step(self) -> bool:
            return True

    callback = Null()
    callback.init_callback(model)
    model._setup_learn(10**9, callback)
    with SavedTensorMeter() as meter:
        model._meta_iteration(callback)
    return meter.peak_bytes


def test_imaml_meta_gradient_memory_is_flat_in_inner_steps():
    """Peak bytes saved by autograd for one iMAML meta-iteration: the same for 1 and 20 inner steps; MAML's grows."""
    peaks = {}
    for k in (1, 20):
        model = IMAML("MlpPolicy", NAV, inner_algo="vpg", inner_updates=k, curvature="hessian", lam=5.0,
                      policy_kwargs=dict(net_arch=[8]), n_steps=16, meta_batch_size=1, seed=0)
        peaks[k] = _peak_bytes(model)
    assert peaks[1] > 0
    assert peaks[20] <= 1.05 * peaks[1], peaks

    model = FOMAML("MlpPolicy", NAV, inner_algo="vpg", inner_updates=0, policy_kwargs=dict(net_arch=[8]), n_steps=16,
                   meta_batch_size=1, seed=0)
    learner = model._learners[0]
    model._start_learner(learner)
    env = make_vec_env(NAV, n_envs=1, seed=0)
    from agents.meta.rollouts import collect_task_rollouts

    collect_task_rollouts(env, [learner], 16)
    batch = next(learner.rollout_buffer.get(batch_size=None))
    maml = {}
    for k in (1, 20):
        with SavedTensorMeter() as meter:
            maml_meta_gradient(learner.policy, [batch] * k, batch, 0.1)
        maml[k] = meter.peak_bytes
    assert maml[20] > 5 * maml[1], maml


def test_maml_reference_one_step_is_the_second_order_meta_gradient():
    """k = 1: ∇_θ L_test(θ − α∇L̂(θ)) = (I − α∇²L̂(θ)) ∇L_test(φ), against float64 autograd through a dense policy."""
    alpha = 0.5
    model = FOMAML("MlpPolicy", NAV, inner_algo="vpg", inner_updates=0, **TINY)
    from agents.meta.rollouts import collect_task_rollouts

    for learner in model._learners:
        model._start_learner(learner)
    collect_task_rollouts(make_vec_env(NAV, n_envs=2, seed=0), model._learners, 32)
    inner, test = (next(learner.rollout_buffer.get(batch_size=None)) for learner in model._learners)
    policy = model._learners[0].policy
    gradient = maml_meta_gradient(policy, [inner], test, alpha)

    theta = get_flat_params(actor_parameters(policy)).double().requires_grad_(True)
    inner_gradient = torch.autograd.grad(_dense_surrogate_loss(theta, inner), theta, create_graph=True)[0]
    reference = torch.autograd.grad(_dense_surrogate_loss(theta - alpha * inner_gradient, test), theta)[0]
    torch.testing.assert_close(gradient.double(), reference, rtol=1e-4, atol=1e-6)
    first_order = torch.autograd.grad(_dense_surrogate_loss(theta - alpha * inner_gradient.detach(), test), theta)[0]
    assert (reference - first_order).norm() > 1e-3 * reference.norm()  # the second-order term is there


def test_maml_reference_matches_first_order_when_step_is_zero():
    model = FOMAML("MlpPolicy", NAV, inner_algo="vpg", inner_updates=0, **TINY)
    learner = model._learners[0]
    model._start_learner(learner)
    from agents.meta.rollouts import collect_task_rollouts

    collect_task_rollouts(make_vec_env(NAV, n_envs=2, seed=0), model._learners, 32)
    batch = next(learner.rollout_buffer.get(batch_size=None))
    torch.testing.assert_close(maml_meta_gradient(learner.policy, [batch, batch], batch, 0.0), _independent_policy_gradient(learner))


@pytest.mark.parametrize("cls", [Reptile, FOMAML, IMAML])
@pytest.mark.parametrize("env_id,inner", [(NAV, "npg"), (CARTPOLE, "vpg")])
def test_smoke_save_load_identical_predictions(cls, env_id, inner, tmp_path):
    model = cls("MlpPolicy", env_id, inner_algo=inner, inner_updates=1, **TINY)
    model.learn(256)
    assert model.num_timesteps >= 256
    obs = np.stack([model.observation_space.sample() for _ in range(5)])
    path = tmp_path / "meta"
    model.save(path)
    loaded = cls.load(path)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])
    assert loaded.inner_algo == inner and loaded.env_id == env_id and loaded.meta_batch_size == 2
    loaded.set_env(make_vec_env(env_id, n_envs=2))
    loaded.learn(128, reset_num_timesteps=False)  # training goes on after loading
    agent = loaded.adapt(loaded.sample_tasks(1)[0], n_updates=1)
    assert agent.predict(obs)[0].shape[0] == 5
    if cls is not Reptile:
        wrong = Reptile if cls is FOMAML else FOMAML
        with pytest.raises(CheckpointError, match=f"saved by {cls.__name__}"):
            wrong.load(path)


def test_same_seed_same_meta_parameters():
    runs = []
    for _ in range(2):
        model = FOMAML("MlpPolicy", NAV, inner_updates=1, **TINY)
        model.learn(256)
        runs.append(get_flat_params(list(model.policy.parameters())))
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    other = FOMAML("MlpPolicy", NAV, inner_updates=1, **{**TINY, "seed": 1})
    other.learn(256)
    assert not torch.equal(runs[0], get_flat_params(list(other.policy.parameters())))


@pytest.mark.parametrize("cls", [Reptile, "rl2"])
def test_the_seed_fixes_the_tasks_drawn_before_training(cls):
    """sample_tasks on a learner just built draws the same tasks for the same seed (SB3 seeds a VecEnv only at its
    next reset: before, the draw came from an unseeded generator), other tasks for another seed; drawing, then training,
    is reproducible as a whole."""
    from agents import RL2

    def build(seed):
        if cls == "rl2":
            return RL2("MlpErnnPolicy", NAV, n_envs=2, n_steps=16, batch_size=16, seed=seed,
                       policy_kwargs=dict(hidden_size=4, net_arch=[4]))
        return cls("MlpPolicy", NAV, inner_updates=1, **{**TINY, "seed": seed})

    assert build(0).sample_tasks(3) == build(0).sample_tasks(3) != build(1).sample_tasks(3)
    runs = []
    for _ in range(2):
        model = build(0)
        first, second = model.sample_tasks(2), model.sample_tasks(2)
        assert first != second  # a draw moves the family's generator on
        model.learn(64)
        runs.append(get_flat_params(list(model.policy.parameters())))
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


def test_callback_stops_and_tensorboard_logs(tmp_path):
    class StopAt(BaseCallback):
        def _on_step(self) -> bool:
            return self.n_calls < 40

    model = IMAML("MlpPolicy", NAV, inner_updates=1, tensorboard_log=str(tmp_path), **TINY)
    model.learn(10_000, callback=StopAt())
    assert model.num_timesteps == 40 * 2  # 40 vectorised steps of 2 tasks, then stopped
    model = IMAML("MlpPolicy", NAV, inner_updates=1, tensorboard_log=str(tmp_path), **TINY)
    model.learn(128)
    events = list(pathlib.Path(tmp_path).rglob("events.out.tfevents*"))
    content = b"".join(p.read_bytes() for p in events)
    for tag in (b"meta/return_pre", b"meta/return_post", b"meta/inner_kl", b"meta/cg_iterations", b"meta/implicit_cg_iterations"):
        assert tag in content, tag


def test_vpg_step_is_the_policy_gradient():
    """VPG's actor update is exactly θ + α·mean(Â ∇log π) (computed independently with evaluate_actions)."""
    model = VPG("MlpPolicy", "Pendulum-v1", step_size=0.2, n_steps=64, policy_kwargs=dict(net_arch=[8]), seed=0)
    _, callback = model._setup_learn(64, None)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, 64)
    theta = get_flat_params(actor_parameters(model.policy))
    gradient = -_independent_policy_gradient(model)
    critic_before = _learner_split(model)[1]
    model.train()
    torch.testing.assert_close(get_flat_params(actor_parameters(model.policy)), theta + 0.2 * gradient, rtol=0, atol=1e-6)
    assert (_learner_split(model)[1] - critic_before).norm() > 0  # the critic was fitted


def test_adaptation_records_carry_what_the_outer_update_reads(monkeypatch):
    """One TaskAdaptation per task: its task, φᵢ and φ_v,ᵢ as the adapted policy holds them, a return per rollout
    batch, the KL and CG iterations each inner NPG update returned, the last inner and the test rollout; the logged
    inner statistics are the records' means."""
    captured = []
    original = FOMAML._outer_update

    def spy(self, records):
        captured.extend(records)
        return original(self, records)

    monkeypatch.setattr(FOMAML, "_outer_update", spy)
    model = FOMAML("MlpPolicy", NAV, inner_updates=2, **TINY)
    model.learn(2 * 3 * 32, log_interval=None)  # no dump: the logged values stay readable
    assert len(captured) == 2
    for i, record in enumerate(captured):
        assert record.task == pytest.approx(model.env.env_method("get_task", indices=[i])[0])
        assert record.policy is model._learners[i].policy
        assert torch.equal(record.adapted_actor, get_flat_params(actor_parameters(record.policy)))
        assert len(record.returns) == 3 and len(record.inner_kl) == 2 and len(record.cg_iterations) == 2
        assert all(kl > 0 for kl in record.inner_kl) and all(n >= 1 for n in record.cg_iterations)
        assert record.inner_batch is not None and record.test_batch is not None
        with torch.no_grad():  # the test rollout was collected by φᵢ, the inner one by the policy before the last update
            _, test_log_prob, _ = record.policy.evaluate_actions(record.test_batch.rollout.observations, record.test_batch.actions)
            _, inner_log_prob, _ = record.policy.evaluate_actions(record.inner_batch.rollout.observations, record.inner_batch.actions)
        torch.testing.assert_close(test_log_prob, record.test_batch.old_log_prob, rtol=0, atol=1e-5)
        assert (inner_log_prob - record.inner_batch.old_log_prob).abs().max() > 1e-4
    logged = model.logger.name_to_value
    assert logged["meta/inner_kl"] == pytest.approx(np.mean([kl for r in captured for kl in r.inner_kl]))
    assert logged["meta/cg_iterations"] == pytest.approx(np.mean([n for r in captured for n in r.cg_iterations]))
    assert logged["meta/return_post"] == pytest.approx(np.mean([r.returns[-1] for r in captured]))


@pytest.mark.parametrize("normalize", [True, False])
def test_policy_update_record_and_advantage_standardisation(normalize):
    """VPG's and NPG's train() return the PolicyUpdate they logged, with the batch they stepped on: its advantages are
    the buffer's GAE advantages, standardised exactly when normalize_advantage is set."""
    for cls in (VPG, NPG):
        model = cls("MlpPolicy", "Pendulum-v1", n_steps=64, policy_kwargs=dict(net_arch=[8]), normalize_advantage=normalize, seed=0)
        _, callback = model._setup_learn(64, None)
        model.collect_rollouts(model.env, callback, model.rollout_buffer, 64)
        update = model.train()
        assert update.kl == model.logger.name_to_value["train/kl"] and update.kl > 0
        assert (update.cg_iterations is None) == (cls is VPG)
        raw = update.batch.rollout.advantages
        advantages = update.batch.advantages
        if normalize:
            torch.testing.assert_close(advantages, (raw - raw.mean()) / (raw.std() + 1e-8))
            assert abs(float(advantages.mean())) < 1e-5 and abs(float(advantages.std()) - 1) < 1e-4
        else:
            assert torch.equal(advantages, raw)


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match="not a task family"):
        Reptile("MlpPolicy", "CartPole-v1", **TINY)
    with pytest.raises(ValueError, match="inner_algo"):
        Reptile("MlpPolicy", NAV, inner_algo="ppo", **TINY)
    with pytest.raises(ValueError, match="curvature"):
        IMAML("MlpPolicy", NAV, curvature="gauss", **TINY)
    with pytest.raises(ValueError, match="one sub-env per task"):
        Reptile("MlpPolicy", make_vec_env(NAV, n_envs=3), **TINY)
    with pytest.raises(ValueError, match="target_kl.*not arguments of VPG"):
        FOMAML("MlpPolicy", NAV, inner_algo="vpg", inner_kwargs={"target_kl": 0.1}, **TINY)
    with pytest.raises(ValueError, match="set by the meta-learner"):
        FOMAML("MlpPolicy", NAV, inner_kwargs={"n_steps": 10}, **TINY)
    with pytest.raises(ValueError, match="lam"):
        IMAML("MlpPolicy", NAV, lam=0.0, **TINY)
    with pytest.raises(ValueError, match="meta_step must be one of"):
        FOMAML("MlpPolicy", NAV, meta_step="adam", **TINY)
    with pytest.raises(ValueError, match="meta_target_kl"):
        IMAML("MlpPolicy", NAV, meta_step="natural", meta_target_kl=0.0, **TINY)
    with pytest.raises(ValueError, match="inner_advantage_scale"):
        FOMAML("MlpPolicy", NAV, inner_advantage_scale="task", **TINY)
    model = Reptile("MlpPolicy", NAV, **TINY)
    with pytest.raises(ValueError, match="at least one task"):
        model.evaluate_adaptation([])
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Reptile.load("/nonexistent/model.zip")


def test_cli_meta_train_and_adapt(tmp_path):
    """train.py meta-train writes a checkpoint; train.py adapt prints returns before/after adaptation; errors exit 2."""
    import json
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]

    def run(*args):
        return subprocess.run([sys.executable, str(root / "train.py"), *args], capture_output=True, text=True, cwd=tmp_path, timeout=300)

    out = run("meta-train", "--algo", "fomaml", "--env", NAV, "--n-timesteps", "200", "--log-folder", str(tmp_path / "logs"),
              "--hyperparams", "meta_batch_size=2", "n_steps=50", "policy_kwargs=dict(net_arch=[8])", "inner_algo='vpg'", "inner_kwargs={}")
    assert out.returncode == 0, out.stderr
    model = tmp_path / "logs" / "fomaml" / "ngrl-Navigation2D-v0_0_1" / "ngrl-Navigation2D-v0.zip"
    assert model.is_file() and (model.parent / "config.yml").is_file()
    out = run("adapt", "--model", str(model), "--n-tasks", "3", "--n-updates", "0", "1", "--output", str(tmp_path / "a.json"))
    assert out.returncode == 0, out.stderr
    assert "| 0 |" in out.stdout and "| 1 |" in out.stdout
    saved = json.loads((tmp_path / "a.json").read_text())
    assert len(saved["tasks"]) == 3 and len(saved["returns"]["1"]) == 3
    # a recurrent inner policy, chosen by --policy
    out = run("meta-train", "--algo", "reptile", "--env", NAV, "--policy", "MlpErnnPolicy", "--n-timesteps", "200",
              "--log-folder", str(tmp_path / "logs"), "--n-eval-tasks", "2",
              "--hyperparams", "meta_batch_size=2", "n_steps=50", "policy_kwargs=dict(cell='ernn', hidden_size=8, net_arch=[8])")
    assert out.returncode == 0, out.stderr
    model = tmp_path / "logs" / "reptile" / "ngrl-Navigation2D-v0_0_1" / "ngrl-Navigation2D-v0.zip"
    assert "MlpErnnPolicy" in (model.parent / "config.yml").read_text()
    out = run("adapt", "--model", str(model), "--n-tasks", "2", "--n-updates", "0", "1")
    assert out.returncode == 0 and "| 1 |" in out.stdout, out.stderr


def test_cli_errors_exit_2(tmp_path, capsys):
    import train

    assert train.main(["meta-train", "--algo", "fomaml", "--env", NAV, "--hyperparams", "inner_updatez=2"]) == 2
    assert "unknown hyperparameter(s) inner_updatez" in capsys.readouterr().err
    assert train.main(["meta-train", "--algo", "fomaml", "--env", "CartPole-v1", "--n-timesteps", "10",
                       "--log-folder", str(tmp_path)]) == 2
    assert "not a task family" in capsys.readouterr().err
    assert train.main(["adapt", "--model", str(tmp_path / "missing.zip")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    model = Reptile("MlpPolicy", NAV, **TINY)
    model.save(tmp_path / "m.zip")
    assert train.main(["adapt", "--model", str(tmp_path / "m.zip"), "--n-tasks", "0"]) == 2
    assert "--n-tasks" in capsys.readouterr().err
    NPG("MlpPolicy", "Pendulum-v1", n_steps=64, policy_kwargs=dict(net_arch=[8])).save(tmp_path / "npg.zip")
    assert train.main(["adapt", "--model", str(tmp_path / "npg.zip")]) == 2
    assert "not by a meta-learner" in capsys.readouterr().err


@pytest.mark.parametrize("env_id", [NAV, CARTPOLE])
def test_stacked_policies_match_each_policy(env_id):
    """The vectorised pass over n policies gives each policy's own value and log π(a|s) (SB3's evaluate_actions)."""
    from agents.meta.rollouts import StackedPolicies

    model = Reptile("MlpPolicy", env_id, **{**TINY, "meta_batch_size": 3})
    policies = []
    for i, learner in enumerate(model._learners):
        torch.manual_seed(i)
        for p in learner.policy.parameters():
            p.data.normal_(0, 0.5)
        policies.append(learner.policy)
    assert StackedPolicies.supports(policies, model.observation_space)
    obs = torch.as_tensor(np.stack([model.observation_space.sample() for _ in range(3)]))
    actions, values, log_probs = StackedPolicies(policies)(obs)
    for i, policy in enumerate(policies):
        act = actions[i : i + 1].long() if env_id == CARTPOLE else actions[i : i + 1]
        value, log_prob, _ = policy.evaluate_actions(obs[i : i + 1], act)
        torch.testing.assert_close(values[i], value.flatten()[0].detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(log_probs[i], log_prob[0].detach(), rtol=1e-5, atol=1e-5)


ERNN_TINY = dict(TINY, policy_kwargs=dict(cell="ernn", hidden_size=8, net_arch=[8]))


@pytest.mark.parametrize("cell", ["ernn", "lstm"])
def test_task_rollouts_store_the_states_a_recurrent_policy_ran_with(cell):
    """Replaying each task's stored sequences from the stored start state (resets at episode starts) gives
    back the log π(a|s) and values recorded while acting: the state was carried, reset and stored right."""
    from agents.meta.rollouts import collect_task_rollouts
    from agents.recurrent.on_policy import whole_rollout

    # CartPoleDynamics episodes of a random policy are short: resets happen mid-rollout
    model = Reptile("MlpErnnPolicy", CARTPOLE, **{**TINY, "n_steps": 96, "policy_kwargs": dict(cell=cell, hidden_size=8, net_arch=[8])})
    for i, learner in enumerate(model._learners):
        model._start_learner(learner)
        torch.manual_seed(i)
        for p in learner.policy.parameters():
            p.data.add_(0.3 * torch.randn_like(p))  # different policies per task
    collect_task_rollouts(make_vec_env(CARTPOLE, n_envs=2, seed=0), model._learners, 96)
    for learner in model._learners:
        rollout = whole_rollout(learner.rollout_buffer)
        assert rollout.episode_starts.sum() > 1  # the first step, and at least one reset inside
        values, log_prob, _ = learner.policy.evaluate_actions(
            rollout.observations, rollout.actions.long().flatten(), rollout.states, rollout.episode_starts
        )
        torch.testing.assert_close(log_prob.detach(), rollout.old_log_prob, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(values.detach().flatten(), rollout.old_values, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls,kwargs", [(Reptile, {}), (FOMAML, {}), (IMAML, {"curvature": "fisher"}), (IMAML, {"curvature": "hessian"}),
                                        (Reptile, {"inner_algo": "vpg"}), (FOMAML, {"meta_step": "natural"})])
def test_meta_learners_with_an_ernn_policy(cls, kwargs, tmp_path):
    """ERNN inner policies: meta-training moves θ (the recurrent cell included), adapt leaves θ alone and
    returns an agent whose predict carries the state, save/load keeps predictions."""
    model = cls("MlpErnnPolicy", NAV, inner_updates=1, **ERNN_TINY, **kwargs)
    cell = model.policy.rnn_actor.rnn.cell
    assert any(p is cell.weight_hh for p in model._actor_params)
    before = cell.weight_hh.detach().clone()
    model.learn(128)
    assert not torch.equal(before, cell.weight_hh)
    theta = [p.detach().clone() for p in model.policy.parameters()]
    agent = model.adapt(model.sample_tasks(1)[0], n_updates=1, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(theta, model.policy.parameters()))
    obs = agent.env.reset()
    action, state = agent.predict(obs, state=None, episode_start=np.ones(1, dtype=bool), deterministic=True)
    assert action.shape == (1, 2) and len(state) == 1 and state[0].shape == (1, 8)
    observations = np.stack([model.observation_space.sample() for _ in range(3)])
    starts = np.ones(3, dtype=bool)
    expected, _ = model.policy.predict(observations, None, starts, deterministic=True)
    model.save(tmp_path / "meta")
    loaded = cls.load(tmp_path / "meta")
    np.testing.assert_array_equal(loaded.policy.predict(observations, None, starts, deterministic=True)[0], expected)
    returns = model.evaluate_adaptation(model.sample_tasks(2), n_updates=[0, 1], seed=1)
    assert returns[1].shape == (2,) and np.all(np.isfinite(returns[1]))


@pytest.mark.parametrize("cls,kwargs", [(Reptile, {}), (IMAML, {"curvature": "fisher"})])
def test_ernn_tasks_solve_their_natural_directions_together(cls, kwargs, monkeypatch):
    """With an ERNN policy the inner NPG updates of a meta-batch solve their systems together (one Fisher product per CG
    iteration for all tasks) and adapt each task as its own solve would: the same adapted parameters after two inner
    updates, up to float32 rounding; an LSTM policy's tasks solve one by one."""
    from agents.npg import npg as npg_module

    def adapted(joint: bool, policy_kwargs=None) -> tuple[list[torch.Tensor], int]:
        model = cls("MlpErnnPolicy", NAV, inner_updates=2, **{**ERNN_TINY, **({"policy_kwargs": policy_kwargs} if policy_kwargs else {})},
                    **kwargs)
        model.joint_inner_solves = joint
        calls = []
        original = npg_module.batched_conjugate_gradient
        monkeypatch.setattr(npg_module, "batched_conjugate_gradient", lambda *a, **k: calls.append(a[1].shape) or original(*a, **k))
        model._set_tasks(model.env, held_out_tasks(NAV, model.meta_batch_size, seed=5))
        with torch.random.fork_rng():
            torch.manual_seed(0)
            records, ok = model._adapt_batch(model.env, model._learners, 2, final_rollout=False)
        assert ok
        return [record.adapted_actor for record in records], calls

    joint, calls = adapted(True)
    alone, no_calls = adapted(False)
    assert len(calls) == 2 and calls[0][0] == len(joint) > 1 and not no_calls  # one joint solve per inner update
    assert all((a - b).abs().max() < 1e-4 * max(1.0, b.abs().max()) for a, b in zip(joint, alone))
    assert not torch.equal(joint[0], joint[1])  # the tasks adapted apart
    _, lstm_calls = adapted(True, dict(ERNN_TINY["policy_kwargs"], cell="lstm"))
    assert not lstm_calls


def test_vpg_trains_a_recurrent_policy_on_its_own(tmp_path):
    model = VPG("MlpErnnPolicy", "ngrl/CueCorridor-v0", n_steps=32, sequence_length=8, batch_size=16, seed=0,
                policy_kwargs=dict(cell="gru", hidden_size=8, net_arch=[8]))
    before = get_flat_params(model._actor_params).clone()
    model.learn(64)
    assert (get_flat_params(model._actor_params) - before).norm() > 0
    assert any(p is model.policy.rnn_actor.cell.weight_hh for p in model._actor_params)
    with pytest.raises(ValueError, match="sequence_length must be a positive integer, got 0"):
        VPG("MlpErnnPolicy", "ngrl/CueCorridor-v0", n_steps=32, sequence_length=0)


def test_imaml_fisher_curvature_of_a_recurrent_policy_is_the_kl_hessian():
    """iMAML's C v with curvature="fisher" on an ERNN policy equals the Hessian of the mean KL through the
    unrolled sequences (autograd's dense Hessian, float64)."""
    from agents.meta.rollouts import collect_task_rollouts
    from agents.recurrent import SequenceActor
    from agents.recurrent.on_policy import whole_rollout
    from ngrl import unflatten
    from ngrl.fisher import policy_distribution
    from ngrl.linearize import module_function

    model = IMAML("MlpErnnPolicy", CARTPOLE, inner_updates=1, curvature="fisher", **{**ERNN_TINY, "meta_batch_size": 1,
                  "policy_kwargs": dict(cell="ernn", hidden_size=3, net_arch=[2])})
    learner = model._learners[0]
    model._start_learner(learner)
    learner.policy.double()
    collect_task_rollouts(make_vec_env(CARTPOLE, n_envs=1, seed=0), [learner], 32)
    batch = whole_rollout(learner.rollout_buffer)
    batch = batch._replace(observations=batch.observations.double(), states=type(batch.states)(
        *(tuple(s.double() for s in part) for part in batch.states)))
    mv = model._curvature_mv(learner.policy, PolicyGradientBatch(batch, batch, batch.actions, batch.old_log_prob, batch.advantages))
    params = actor_parameters(learner.policy)
    theta = get_flat_params(params).detach().clone()
    family = policy_distribution(learner.policy)
    with torch.no_grad():
        old = learner.policy.actor_outputs(batch.observations, batch.states.pi, batch.episode_starts)
    fn = module_function(SequenceActor(learner.policy), params)

    def mean_kl(flat: torch.Tensor) -> torch.Tensor:
        return family.kl(old, fn(unflatten(flat, params), batch)).mean()

    hessian = torch.autograd.functional.hessian(mean_kl, theta)
    v = torch.randn(theta.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(mv(v), hessian @ v, rtol=1e-6, atol=1e-8)


BANDIT = "ngrl/TargetBandit-v0"


@pytest.mark.parametrize("cls,kwargs", [(Reptile, dict(learning_rate=0.5)), (FOMAML, dict(learning_rate=0.05)),
                                        (IMAML, dict(learning_rate=0.05, lam=1.0))])
def test_meta_learners_learn_the_target_bandit(cls, kwargs):
    """3000 pulls of meta-training on the one-step bandit family: the return after one adaptation step rises from
    about −0.78 (an untrained, uniform policy) to about −0.2 or better. A meta-update that goes the wrong way pushes
    the policy away from the arms the targets lie near and fails this."""
    from envs.task_family import held_out_tasks

    model = cls("MlpPolicy", BANDIT, inner_algo="vpg", inner_updates=1, inner_kwargs={"step_size": 0.5}, n_steps=16,
                meta_batch_size=4, policy_kwargs=dict(net_arch=[8]), seed=0, **kwargs)
    tasks = held_out_tasks(BANDIT, 8, seed=123)
    set_random_seed(1)
    before = model.evaluate_adaptation(tasks, [1], seed=1)[1].mean()
    model.learn(3000)
    set_random_seed(1)
    after = model.evaluate_adaptation(tasks, [1], seed=1)[1].mean()
    assert before < -0.6 and after > -0.35, (before, after)


@pytest.mark.parametrize("policy,policy_kwargs", [("MlpPolicy", dict(net_arch=[8])),
                                                  ("MlpErnnPolicy", dict(cell="ernn", hidden_size=8, net_arch=[8]))])
def test_task_rollouts_bootstrap_truncated_episodes(policy, policy_kwargs):
    """At a time-limit truncation the stored reward is r + γ·V(s_T) with V the task's own critic at the terminal
    observation (recurrent: the critic's state after the episode's steps); other steps keep the env's reward."""
    from agents.meta.rollouts import collect_task_rollouts

    model = Reptile(policy, NAV, policy_kwargs=policy_kwargs, n_steps=120, meta_batch_size=1, seed=0)
    learner = model._learners[0]
    model._start_learner(learner)
    with torch.no_grad():
        learner.policy.value_net.bias.add_(2.0)  # V ≈ 2: a dropped bootstrap moves the reward by ≈ 2γ
    goal = np.array([0.3, -0.2])
    env = make_vec_env(NAV, n_envs=1, seed=0)
    env.env_method("set_task", {"goal_x": goal[0], "goal_y": goal[1]})
    collect_task_rollouts(env, [learner], 120)
    buffer = learner.rollout_buffer
    obs = buffer.observations[:, 0].astype(np.float64)
    moves = 0.1 * np.clip(buffer.actions[:, 0].astype(np.float64), -1.0, 1.0)
    rewards = buffer.rewards[:, 0]
    terminal = obs[99] + moves[99]  # Navigation2D's horizon is 100 steps: the first episode is truncated at step 99
    assert np.all(obs[0] == 0) and np.all(obs[100] == 0)  # (the next episode starts from the origin)
    with torch.no_grad():
        if policy == "MlpPolicy":
            value = learner.policy.predict_values(torch.as_tensor(terminal[None], dtype=torch.float32)).item()
        else:  # run the critic over the whole episode and then the terminal observation, from a zero state
            sequence = torch.as_tensor(np.concatenate([obs[:100], terminal[None]]), dtype=torch.float32)
            starts = torch.zeros(101)
            starts[0] = 1.0
            value = learner.policy.predict_values(sequence, learner.policy.initial_state(1).vf, starts)[-1].item()
    assert abs(value) > 0.5
    expected = -np.linalg.norm(terminal - goal) + model.gamma * value
    np.testing.assert_allclose(rewards[99], expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(rewards[:99], -np.linalg.norm(obs[1:100] - goal, axis=1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("policy,policy_kwargs", [("MlpPolicy", dict(net_arch=[8])),
                                                  ("MlpPolicy", dict(net_arch=[8], share_features_extractor=False)),
                                                  ("MlpErnnPolicy", dict(cell="lstm", hidden_size=4, net_arch=[8]))])
def test_meta_parameters_split_into_actor_and_critic(policy, policy_kwargs):
    """The meta-learner's actor and critic lists are ngrl.fisher.actor_parameters and agents.common.critic_parameters:
    disjoint and together every parameter of the policy (so the critic's interpolation covers the rest)."""
    from agents.common import critic_parameters

    model = Reptile(policy, NAV, **{**TINY, "policy_kwargs": policy_kwargs})
    actor, critic = model._actor_params, model._critic_params
    assert [id(p) for p in actor] == [id(p) for p in actor_parameters(model.policy)]
    assert [id(p) for p in critic] == [id(p) for p in critic_parameters(model.policy)]
    assert not {id(p) for p in actor} & {id(p) for p in critic}
    assert {id(p) for p in actor} | {id(p) for p in critic} == {id(p) for p in model.policy.parameters()}


@pytest.mark.slow
def test_fomaml_learns_to_adapt_on_navigation():
    """100k steps of FOMAML (the benchmark's setting): one NPG update from the meta-policy reaches a return above −40."""
    from envs.task_family import held_out_tasks

    model = FOMAML("MlpPolicy", NAV, learning_rate=3e-3, inner_updates=1, meta_batch_size=10, n_steps=400,
                   inner_kwargs={"target_kl": 0.1, "n_critic_updates": 5}, policy_kwargs=dict(net_arch=[64, 64]), seed=0)
    tasks = held_out_tasks(NAV, 20, seed=123)
    set_random_seed(1)
    before = model.evaluate_adaptation(tasks, [1], seed=1)[1].mean()
    model.learn(100_000)
    set_random_seed(1)
    after = model.evaluate_adaptation(tasks, [1], seed=1)[1].mean()
    assert after > -40 and after > before + 15, (before, after)


@pytest.mark.skipif(importlib.util.find_spec("mujoco") is None, reason="MuJoCo (gymnasium[mujoco]) is not installed")
def test_imaml_smoke_on_half_cheetah_vel(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo writes its warning log into the working directory
    model = IMAML("MlpPolicy", "ngrl/HalfCheetahVel-v0", inner_updates=1, **TINY)
    model.learn(128)
    assert model.num_timesteps == 128
    agent = model.adapt({"velocity": 1.5}, n_updates=1)
    assert agent.predict(np.zeros((1, 17), dtype=np.float32))[0].shape == (1, 6)


def test_a_loaded_meta_learner_continues_training_without_env(tmp_path):
    model = Reptile("MlpPolicy", NAV, **TINY)
    model.learn(2 * TINY["meta_batch_size"] * TINY["n_steps"])
    model.save(tmp_path / "m.zip")
    loaded = Reptile.load(tmp_path / "m.zip")
    assert loaded.env is None
    before = loaded.num_timesteps
    loaded.learn(loaded.meta_batch_size * loaded.n_steps, reset_num_timesteps=False)
    assert loaded.num_timesteps > before and loaded.env.num_envs == loaded.meta_batch_size


# --- task families passed the way SB3 takes envs -------------------------------------------------------

FAMILY_FORMS = ["id", "instance", "class", "factory", "vec_env"]


def _family(form: str, n_envs: int):
    """The family in each form: a registered id (the line-goal family), or a user's own family (not registered)."""
    from tests.fixtures.custom_families import PointToTarget, make_point_to_target

    return {
        "id": lambda: "ngrl/LineGoal-v0",
        "instance": PointToTarget,
        "class": lambda: PointToTarget,
        "factory": lambda: make_point_to_target,
        "vec_env": lambda: make_vec_env(PointToTarget, n_envs=n_envs),  # a DummyVecEnv of an unregistered env
    }[form]()


@pytest.mark.parametrize("form", FAMILY_FORMS)
def test_every_family_form_trains_adapts_and_evaluates_without_env(form):
    model = Reptile("MlpPolicy", _family(form, TINY["meta_batch_size"]), inner_updates=1, **TINY)
    model.learn(2 * 32)  # one meta-iteration: 2 tasks × one rollout of 32 steps (Reptile needs no test rollouts)
    assert model.num_timesteps == 64 and model._n_updates == 1
    tasks = model.sample_tasks(3)
    agent = model.adapt(tasks[0], n_updates=1, seed=0)  # no env=: made from the learner's own family
    assert isinstance(agent, NPG) and agent.env.num_envs == 1
    assert agent.env.env_method("get_task")[0] == pytest.approx(tasks[0])
    assert (get_flat_params(actor_parameters(agent.policy)) - get_flat_params(model._actor_params)).norm() > 1e-4
    set_random_seed(1)
    own = model.evaluate_adaptation(tasks, n_updates=[0, 1], seed=5)
    assert sorted(own) == [0, 1] and own[0].shape == own[1].shape == (3,)
    # the family given again through env=, in the same form
    agent = model.adapt(tasks[1], n_updates=0, env=_family(form, 1))
    assert agent.env.num_envs == 1 and agent.env.env_method("get_task")[0] == pytest.approx(tasks[1])
    set_random_seed(1)
    given = model.evaluate_adaptation(tasks, n_updates=[0, 1], seed=5, env=_family(form, 2))
    if form == "vec_env":  # 3 tasks on 2 sub-envs: two groups, the last padded
        assert given[1].shape == (3,) and np.all(np.isfinite(given[1]))
    else:  # the same envs, seeds and torch draws as the learner's own family: the same returns
        for k in own:
            np.testing.assert_array_equal(given[k], own[k])


def test_a_family_instance_is_copied_and_never_used():
    from tests.fixtures.custom_families import PointToTarget

    instance = PointToTarget()
    model = FOMAML("MlpPolicy", instance, inner_updates=1, **TINY)
    instance.set_task({"target": -0.9})  # changed after construction: the learner keeps the copy it took
    model.learn(2 * 2 * 32)
    model.adapt(model.sample_tasks(1)[0], n_updates=1)
    model.evaluate_adaptation(model.sample_tasks(2), n_updates=[1])
    model.evaluate_adaptation(model.sample_tasks(2), n_updates=[1], env=instance)
    assert instance.steps_taken == 0 and instance._np_random is None  # never stepped, reset or seeded
    assert instance.get_task() == {"target": -0.9}  # never given a task
    assert model._task_env(1, seed=0).env_method("get_task")[0] == {"target": 0.5}  # copies of the instance as given
    assert all(steps > 0 for steps in model.env.get_attr("steps_taken"))  # the copies were the ones stepped


def test_class_and_factory_families_take_env_kwargs():
    from tests.fixtures.custom_families import make_point_to_target

    model = Reptile("MlpPolicy", make_point_to_target, env_kwargs={"horizon": 4}, **TINY)
    assert model.env.get_attr("horizon") == [4, 4]
    assert model.adapt(model.sample_tasks(1)[0], n_updates=0).env.get_attr("horizon") == [4]


def test_a_learner_that_cannot_copy_its_vec_env_asks_for_env(tmp_path):
    from stable_baselines3.common.vec_env import VecMonitor

    from tests.fixtures.custom_families import PointToTarget

    venv = VecMonitor(make_vec_env(PointToTarget, n_envs=2))  # a wrapper: copies of a sub-env would skip it
    model = Reptile("MlpPolicy", venv, **TINY)
    task = model.sample_tasks(1)[0]
    with pytest.raises(ValueError, match="cannot make envs of its task family.*env="):
        model.adapt(task)
    assert model.adapt(task, n_updates=0, env=PointToTarget).env.env_method("get_task")[0] == task
    assert model.evaluate_adaptation([task] * 3, n_updates=[0], env=venv)[0].shape == (3,)
    # a checkpoint holds no code: a learner built from a class is loaded without it, and given its family again
    Reptile("MlpPolicy", PointToTarget, **TINY).save(tmp_path / "m.zip")
    loaded = Reptile.load(tmp_path / "m.zip")
    assert loaded.env_id is None
    with pytest.raises(ValueError, match="loaded without its family"):
        loaded.evaluate_adaptation([task], n_updates=[0])
    loaded.set_env(make_vec_env(PointToTarget, n_envs=2))
    assert loaded.evaluate_adaptation([task], n_updates=[0, 1])[1].shape == (1,)


def test_an_object_that_is_not_a_family_is_explained():
    from tests.fixtures.custom_envs import GoLeft
    from tests.fixtures.custom_families import FamilyWithoutGetTask, PointToTarget

    everything = r"is not a task family: it has no sample_tasks, set_task, get_task \(.*envs\.ParameterTaskFamily"
    for env in (GoLeft(), GoLeft, lambda: GoLeft(length=3), make_vec_env(GoLeft, n_envs=2), "CartPole-v1"):
        with pytest.raises(ValueError, match=everything):
            Reptile("MlpPolicy", env, **TINY)
    with pytest.raises(ValueError, match=r"FamilyWithoutGetTask is not a task family: it has no get_task \("):
        Reptile("MlpPolicy", FamilyWithoutGetTask, **TINY)
    with pytest.raises(ValueError, match="an env id, a gymnasium.Env instance, an env class or zero-argument factory, or a VecEnv; got int"):
        Reptile("MlpPolicy", 3, **TINY)
    with pytest.raises(ValueError, match="cannot apply to an env instance"):
        Reptile("MlpPolicy", PointToTarget(), env_kwargs={"horizon": 4}, **TINY)
    model = Reptile("MlpPolicy", PointToTarget, **TINY)
    task = model.sample_tasks(1)[0]
    with pytest.raises(ValueError, match=everything):
        model.adapt(task, env=GoLeft)
    with pytest.raises(ValueError, match=everything):
        model.evaluate_adaptation([task], env=make_vec_env(GoLeft, n_envs=1))
    with pytest.raises(ValueError, match="single sub-env, got 2"):
        model.adapt(task, env=make_vec_env(PointToTarget, n_envs=2))


def test_evaluate_adaptation_is_fixed_by_its_seed_and_leaves_training_random_state_alone():
    """Same seed, same returns, whatever the global generators held before; and the generators come out as they went in,
    so an evaluation inside training does not change what training draws next."""
    from agents import Reptile

    model = Reptile("MlpPolicy", "ngrl/TargetBandit-v0", inner_algo="vpg", inner_updates=1, inner_kwargs={"step_size": 0.5},
                    n_steps=16, meta_batch_size=4, policy_kwargs={"net_arch": [8]}, seed=0)
    tasks = model.sample_tasks(3)
    torch.manual_seed(1)
    first = model.evaluate_adaptation(tasks, n_updates=[0, 1, 3], seed=7)
    after = torch.rand(3)
    torch.manual_seed(2)
    np.random.seed(2)
    second = model.evaluate_adaptation(tasks, n_updates=[1], seed=7)
    np.testing.assert_array_equal(first[1], second[1])
    torch.manual_seed(1)
    assert torch.equal(torch.rand(3), after)  # the evaluation drew nothing from the caller's stream
    other = model.evaluate_adaptation(tasks, n_updates=[1], seed=8)
    assert not np.array_equal(other[1], first[1])


def test_joint_training_one_update_is_the_natural_step_on_the_pooled_tasks():
    """One iteration of JointTraining (CartPoleActuator: 4-dim observations, two actions): the pooled buffer's column i
    is task i's rollout, and the new θ is the dense natural step (float64, autograd Hessian of the mean KL, torch.linalg.solve) on all of them at once."""
    from agents import JointTraining
    from tests.test_npg_oracle import _npg_step, _spy_fisher, _to_float64

    model = JointTraining("MlpPolicy", "ngrl/CartPoleActuator-v0", meta_batch_size=3, n_steps=24, policy_kwargs=dict(net_arch=[8]), seed=0,
                          inner_kwargs=dict(target_kl=0.02, cg_damping=0.1, cg_max_steps=200, cg_tol=1e-13, n_critic_updates=0))
    pooled, seen = model._pooled, {}
    original_train = pooled.train

    def oracle_train():
        pooled.train = original_train  # _npg_step calls train() itself
        buffer = pooled.rollout_buffer
        for i, learner in enumerate(model._learners):
            task = learner.rollout_buffer
            for name in ("observations", "actions", "rewards", "advantages", "log_probs"):  # the task's rows, read flat
                np.testing.assert_array_equal(getattr(buffer, name)[:, i], getattr(task, name).reshape(getattr(buffer, name)[:, i].shape))
        seen["distinct tasks"] = not np.array_equal(buffer.observations[:, 0], buffer.observations[:, 1])
        np.testing.assert_array_equal(get_flat_params(actor_parameters(pooled.policy)).numpy(),
                                      get_flat_params(model._actor_params).numpy())  # the update starts at θ
        _to_float64(pooled)
        seen["theta0"], seen["expected"] = _npg_step(pooled, _spy_fisher(pooled))

    pooled.train = oracle_train
    model.learn(3 * 24)
    assert model.num_timesteps == 72 and seen["distinct tasks"]
    step = seen["expected"] - seen["theta0"]
    assert step.norm() > 1e-3
    torch.testing.assert_close(get_flat_params(model._actor_params).double(), seen["expected"], rtol=1e-5, atol=1e-6)


def test_joint_training_learns_the_bandit_saves_and_refuses_what_does_not_apply(tmp_path):
    """Joint training moves the policy to the arms that are best on average over the targets (−0.78 → better than −0.6
    before any adaptation), round-trips through save/load, and refuses a meta step or a recurrent policy."""
    from agents import JointTraining
    from envs.task_family import held_out_tasks

    model = JointTraining("MlpPolicy", BANDIT, inner_algo="vpg", inner_kwargs={"step_size": 0.5}, n_steps=16, meta_batch_size=4,
                          policy_kwargs=dict(net_arch=[8]), seed=0)
    tasks = held_out_tasks(BANDIT, 8, seed=123)
    before = model.evaluate_adaptation(tasks, [0], seed=1)[0].mean()
    model.learn(3000)
    after = model.evaluate_adaptation(tasks, [0, 1], seed=1)
    assert before < -0.6 and after[0].mean() > -0.6, (before, after)
    model.save(tmp_path / "joint.zip")
    loaded = JointTraining.load(tmp_path / "joint.zip")
    obs = np.zeros((4, 1), dtype=np.float32)
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])
    np.testing.assert_array_equal(loaded.evaluate_adaptation(tasks, [1], seed=1)[1], after[1])
    with pytest.raises(ValueError, match="learning_rate does not apply"):
        JointTraining("MlpPolicy", BANDIT, learning_rate=0.1)
    with pytest.raises(ValueError, match="feed-forward policy"):
        JointTraining("MlpErnnPolicy", BANDIT, policy_kwargs=dict(cell="ernn", hidden_size=8, net_arch=[8]))


def test_the_inner_npg_defaults_to_a_wider_trust_region_saved_with_the_learner(tmp_path):
    """δ = 0.1 for the inner NPG unless given; VPG gets nothing; the value is in inner_kwargs, so it is saved, and a
    checkpoint whose inner_kwargs lack it (saved before the default) keeps NPG's own δ when loaded."""
    model = Reptile("MlpPolicy", "ngrl/TargetBandit-v0", meta_batch_size=2, n_steps=8, seed=0)
    assert model.inner_kwargs == {"target_kl": 0.1} and model._make_learner().target_kl == 0.1
    given = Reptile("MlpPolicy", "ngrl/TargetBandit-v0", meta_batch_size=2, n_steps=8, inner_kwargs=dict(target_kl=0.02))
    assert given._make_learner().target_kl == 0.02
    assert Reptile("MlpPolicy", "ngrl/TargetBandit-v0", meta_batch_size=2, n_steps=8, inner_algo="vpg").inner_kwargs == {}
    model.save(tmp_path / "new.zip")
    assert Reptile.load(tmp_path / "new.zip")._make_learner().target_kl == 0.1
    model.inner_kwargs = {}  # as a learner saved before the default existed
    model.save(tmp_path / "old.zip")
    assert Reptile.load(tmp_path / "old.zip")._make_learner().target_kl == NPG("MlpPolicy", "CartPole-v1").target_kl == 0.01


def test_reptile_interpolates_a_fifth_of_the_way_by_default_and_a_checkpoint_keeps_its_own(tmp_path):
    """ε = 0.2 (chosen across families; it was 0.5), and ε is saved: a learner saved with ε = 0.5 loads with 0.5."""
    model = Reptile("MlpPolicy", "ngrl/TargetBandit-v0", meta_batch_size=2, n_steps=8, seed=0)
    assert model.learning_rate == 0.2
    old = Reptile("MlpPolicy", "ngrl/TargetBandit-v0", meta_batch_size=2, n_steps=8, seed=0, learning_rate=0.5)
    old.save(tmp_path / "old.zip")
    assert Reptile.load(tmp_path / "old.zip").learning_rate == 0.5


def test_family_advantage_scale_is_the_rms_of_every_inner_rollout_and_is_saved(monkeypatch, tmp_path):
    """inner_advantage_scale="family": before each inner update every learner divides its centred advantages by the
    root mean square of the centred advantages of all inner rollouts meta-training has collected so far (this one
    included); adaptation reads that record without adding to it, and a checkpoint keeps it."""
    seen = []
    original = FOMAML._inner_updates

    def spy(self, learners, theta):
        seen.append([(np.array(learner.rollout_buffer.advantages, dtype=np.float64).ravel(), learner.advantage_scale)
                     for learner in learners])
        updates = original(self, learners, theta)
        for (raw, scale), update in zip(seen[-1], updates):  # the step's batch: the centred advantages over the scale
            if scale is None:  # "rollout": their own std (test_policy_update_record_and_advantage_standardisation)
                continue
            drawn = update.batch.rollout.advantages.double()  # the buffer's, in the order its get() drew them
            np.testing.assert_allclose(np.sort(drawn.numpy()), np.sort(raw), rtol=1e-6)
            torch.testing.assert_close(update.batch.advantages.double(), (drawn - drawn.mean()) / scale, rtol=1e-5, atol=1e-6)
        return updates

    monkeypatch.setattr(FOMAML, "_inner_updates", spy)
    model = FOMAML("MlpPolicy", NAV, inner_updates=2, inner_advantage_scale="family",
                   inner_kwargs=dict(target_kl=0.1, step_size=1.0), **TINY)
    model.learn(2 * 3 * 32 * 2, log_interval=None)  # two meta-iterations of two tasks, two inner updates each
    assert len(seen) == 4
    square_sum, count = 0.0, 0
    for round_ in seen:
        for raw, _ in round_:
            square_sum += float(((raw - raw.mean()) ** 2).sum())
            count += raw.size
        for _, scale in round_:
            assert scale == pytest.approx(np.sqrt(square_sum / count) + 1e-8, rel=1e-12)  # + ε, as in standardising
    assert count == 2 * 2 * 2 * 32  # iterations × tasks × inner updates × n_steps
    assert (model.advantage_square_sum, model.advantage_count) == (pytest.approx(square_sum), count)
    seen.clear()
    model.evaluate_adaptation(held_out_tasks(NAV, 2, 0), n_updates=(0, 1), seed=0)
    assert seen and model.advantage_count == count  # read, not recorded
    assert all(scale == pytest.approx(np.sqrt(square_sum / count) + 1e-8, rel=1e-12) for round_ in seen for _, scale in round_)
    model.save(tmp_path / "family.zip")
    loaded = FOMAML.load(tmp_path / "family.zip")
    assert (loaded.inner_advantage_scale, loaded.advantage_count) == ("family", count)
    assert loaded.advantage_square_sum == pytest.approx(square_sum)
    loaded.advantage_square_sum = float("nan")  # an altered checkpoint: a clear error, not a NaN step
    with pytest.raises(ValueError, match="advantage record"):
        loaded.evaluate_adaptation(held_out_tasks(NAV, 2, 0), n_updates=(0, 1), seed=0)
    by_rollout = FOMAML("MlpPolicy", NAV, **TINY)  # the default: each rollout's own std, nothing recorded
    by_rollout.learn(3 * 32 * 2, log_interval=None)
    assert by_rollout.inner_advantage_scale == "rollout" and by_rollout.advantage_count == 0
    assert all(learner.advantage_scale is None for learner in by_rollout._learners)
