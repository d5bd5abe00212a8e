"""Recurrent policies (ERNN / LSTM / GRU), their rollout buffer, the sequence Fisher, and NPG with them."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.func import functional_call
from stable_baselines3.common.env_util import make_vec_env

import envs  # noqa: F401  (registers the ngrl/ ids)
from agents import NPG
from agents.recurrent import (
    RecurrentActorCriticCnnPolicy,
    RecurrentActorCriticPolicy,
    RecurrentRolloutBuffer,
    RecurrentSequences,
    RecurrentState,
    SequenceActor,
)
from ngrl.fisher import policy_distribution
from ngrl.linearize import module_function
from ngrl.params import flatten, get_flat_params, unflatten
from ngrl.recurrent import SequenceLinearization, batched_sequence_fisher, sequence_fisher

torch.set_num_threads(1)
ROOT = pathlib.Path(__file__).resolve().parents[1]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny networks: threads only contend
D = torch.float64
CELLS = ["ernn", "lstm", "gru"]


# --- a tiny float64 policy over short sequences -------------------------------------------------


def tiny_recurrent_policy(action_space: gym.Space, cell: str, seed: int = 0) -> RecurrentActorCriticPolicy:
    torch.manual_seed(seed)
    obs_space = gym.spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
    policy = RecurrentActorCriticPolicy(obs_space, action_space, lambda _: 1e-3, net_arch=[4], cell=cell, hidden_size=3)
    with torch.no_grad():
        if hasattr(policy, "log_std"):
            policy.log_std.copy_(torch.tensor([-0.3, 0.2]))
        policy.action_net.weight.mul_(50.0)  # ortho init gives the head gain 0.01: make the policy non-uniform
    return policy.double()


def tiny_sequences(policy: RecurrentActorCriticPolicy, n_seq: int = 2, length: int = 4, seed: int = 3) -> RecurrentSequences:
    """n_seq sequences with a reset inside the first one and non-zero stored start states."""
    g = torch.Generator().manual_seed(seed)
    n = n_seq * length
    starts = torch.zeros(n, dtype=D)
    starts[2] = 1.0
    state = policy.initial_state(n_seq)
    state = RecurrentState(*(tuple(torch.randn(s.shape, generator=g, dtype=D) for s in part) for part in state))
    obs = torch.randn(n, 2, generator=g).to(D)  # float32-representable values
    zeros = torch.zeros(n, dtype=D)
    return RecurrentSequences(obs, zeros.unsqueeze(-1), zeros, zeros, zeros, zeros, starts, state, length)


def sb3_distribution(policy: RecurrentActorCriticPolicy, params, theta: torch.Tensor, seqs: RecurrentSequences):
    """SB3's torch distribution of the actor at θ (through the policy's own action head), for references."""
    names = {id(p): n for n, p in policy.named_parameters()}
    values = dict(zip([names[id(p)] for p in params], unflatten(theta, params)))

    class Latent(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.policy = policy

        def forward(self, s):
            latent, _ = self.policy.actor_latent(s.observations, s.states.pi, s.episode_starts)
            return self.policy._get_action_dist_from_latent(latent).distribution

    return functional_call(Latent(), {f"policy.{k}": v for k, v in values.items()}, (seqs,))


ACTION_SPACES = {"discrete": gym.spaces.Discrete(3), "box": gym.spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("space", ["discrete", "box"])
def test_sequence_fisher_equals_the_kl_hessian(cell: str, space: str) -> None:
    """F over whole sequences (state from the stored start, reset inside) = ∇² mean KL by autograd.functional.hessian."""
    policy = tiny_recurrent_policy(ACTION_SPACES[space], cell)
    seqs = tiny_sequences(policy)
    params = policy.actor_parameters()
    fisher = sequence_fisher(module_function(SequenceActor(policy), params), params, seqs, policy_distribution(policy))
    theta0 = get_flat_params(params)
    with torch.no_grad():
        old = sb3_distribution(policy, params, theta0, seqs)

    def mean_kl(theta):
        kl = torch.distributions.kl_divergence(old, sb3_distribution(policy, params, theta, seqs))
        return (kl.sum(-1) if kl.ndim == 2 else kl).mean()

    reference = torch.autograd.functional.hessian(mean_kl, theta0)
    dense = fisher.dense()
    assert reference.abs().max() > 1e-3  # not a trivially zero comparison
    torch.testing.assert_close(dense, reference, atol=1e-10, rtol=1e-8)
    # the start state and the reset matter: the recurrent parameters get curvature from earlier steps
    rnn_rows = [i for i, p in enumerate(params) if any(p is q for q in policy.rnn_actor.parameters())]
    assert rnn_rows


def test_sequence_fisher_depends_on_the_stored_start_state() -> None:
    policy = tiny_recurrent_policy(ACTION_SPACES["discrete"], "ernn")
    seqs = tiny_sequences(policy)
    params = policy.actor_parameters()
    fn = module_function(SequenceActor(policy), params)
    family = policy_distribution(policy)
    zero_start = seqs._replace(states=policy.initial_state(2))
    a = sequence_fisher(fn, params, seqs, family).dense()
    b = sequence_fisher(fn, params, zero_start, family).dense()
    assert (a - b).abs().max() > 1e-6


@pytest.mark.parametrize("cell", ["ernn", "lstm"])
def test_sequence_linearization_matches_dense_jacobian(cell: str) -> None:
    policy = tiny_recurrent_policy(ACTION_SPACES["box"], cell)
    seqs = tiny_sequences(policy)
    params = policy.actor_parameters()
    fn = module_function(SequenceActor(policy), params)
    lin = SequenceLinearization(fn, params, seqs, chunk_size=3)
    jac = torch.autograd.functional.jacobian(lambda th: fn(unflatten(th, params), seqs), get_flat_params(params))  # (n, k, P)
    g = torch.Generator().manual_seed(0)
    v = torch.randn(jac.shape[-1], generator=g, dtype=D)
    u = torch.randn(lin.outputs.shape, generator=g, dtype=D)
    torch.testing.assert_close(lin.jvp(unflatten(v, params)), jac @ v)
    torch.testing.assert_close(flatten(lin.vjp(u)), torch.einsum("nk,nkp->p", u, jac))
    per_row = torch.cat([g.reshape(g.shape[0], -1) for g in lin.per_sample_vjp(u)], dim=1)
    torch.testing.assert_close(per_row, torch.einsum("nk,nkp->np", u, jac))
    torch.testing.assert_close(flatten(lin.squared_vjp_sum(u)), per_row.square().sum(0))


def test_sequence_fisher_diagonal_and_empirical_estimators() -> None:
    policy = tiny_recurrent_policy(ACTION_SPACES["discrete"], "ernn")
    seqs = tiny_sequences(policy)
    params = policy.actor_parameters()
    fn = module_function(SequenceActor(policy), params)
    family = policy_distribution(policy)
    exact = sequence_fisher(fn, params, seqs, family, damping=0.1)
    diagonal = sequence_fisher(fn, params, seqs, family, estimator="diagonal", damping=0.1)
    torch.testing.assert_close(diagonal.diagonal(), torch.diagonal(exact.dense()))
    actions = torch.tensor([0, 2, 1, 1, 0, 2, 2, 1])
    theta0 = get_flat_params(params)
    scores = torch.autograd.functional.jacobian(
        lambda th: sb3_distribution(policy, params, th, seqs).log_prob(actions), theta0
    )  # (n, P): ∇ log π(aᵢ | history i)
    empirical = sequence_fisher(fn, params, seqs, family, estimator="empirical", actions=actions)
    torch.testing.assert_close(empirical.dense(), scores.T @ scores / len(actions))
    with pytest.raises(ValueError, match="actions="):
        sequence_fisher(fn, params, seqs, family, estimator="empirical")
    with pytest.raises(ValueError, match="unknown Fisher estimator"):
        sequence_fisher(fn, params, seqs, family, estimator="magic")
    with pytest.raises(NotImplementedError, match="KFAC"):
        sequence_fisher(fn, params, seqs, family, estimator="kfac")


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # GRU: vmap's slow fallback, still exact
@pytest.mark.parametrize("cell", ["ernn", "gru"])
@pytest.mark.parametrize("space", ["discrete", "box"])
def test_batched_sequence_fisher_equals_each_tasks_product(cell: str, space: str) -> None:
    """Three tasks' Fishers as one operator (parameters stacked, sequences run together under vmap): row i of a product
    is task i's own sequence Fisher product (different parameters, start states and resets per task), in float64."""
    policies = [tiny_recurrent_policy(ACTION_SPACES[space], cell, seed=seed) for seed in (0, 1, 2)]
    sequences = [tiny_sequences(policy, seed=seed) for policy, seed in zip(policies, (3, 4, 5))]
    starts = sequences[1].episode_starts.clone()
    starts[[2, 5]] = torch.tensor([0.0, 1.0], dtype=D)  # task 1 resets elsewhere
    sequences[1] = sequences[1]._replace(episode_starts=starts)
    params = [policy.actor_parameters() for policy in policies]
    family = policy_distribution(policies[0])
    fn = module_function(SequenceActor(policies[0]), params[0])  # substitutes any task's values by name
    operator = batched_sequence_fisher(fn, params, sequences, family, damping=0.1)
    n_params = sum(p.numel() for p in params[0])
    assert (operator.num_tasks, operator.num_params) == (3, n_params)
    rows = torch.randn(3, n_params, generator=torch.Generator().manual_seed(0), dtype=D)
    products = operator.mv(rows)
    for i in range(3):
        alone = sequence_fisher(module_function(SequenceActor(policies[i]), params[i]), params[i], sequences[i], family, damping=0.1)
        torch.testing.assert_close(products[i], alone.mv(rows[i]), atol=1e-12, rtol=1e-10)
        assert (products[i] - 0.1 * rows[i]).abs().max() > 1e-4  # the Fisher part is not trivially zero
    torch.testing.assert_close(operator.quadratic(rows), (rows * products).sum(-1))
    with pytest.raises(ValueError, match=r"\(3, \d+\) rows"):
        operator.mv(rows[0])
    with pytest.raises(ValueError, match="structure and tensor shapes"):
        batched_sequence_fisher(fn, params[:2], [sequences[0], tiny_sequences(policies[1], length=3)], family)
    with pytest.raises(ValueError, match="one input per parameter set"):
        batched_sequence_fisher(fn, params, sequences[:2], family)


# --- the policy and the buffer ------------------------------------------------------------------


def small_npg(cell: str = "ernn", env_id: str = "ngrl/CartPoleNoVel-v1", seed: int = 0, **kwargs) -> NPG:
    env = make_vec_env(env_id, n_envs=2, seed=seed)
    defaults = dict(n_steps=32, batch_size=32, sequence_length=8, n_critic_updates=2, cg_max_steps=5, seed=seed)
    defaults.update(kwargs)
    return NPG("MlpErnnPolicy", env, policy_kwargs=dict(cell=cell, hidden_size=8, net_arch=[8]), **defaults)


@pytest.mark.parametrize("cell, n_state_tensors", [("ernn", 1), ("lstm", 2), ("gru", 1)])
def test_npg_smoke_and_buffer_states(cell: str, n_state_tensors: int) -> None:
    model = small_npg(cell)
    model.learn(64)
    assert model.logger.name_to_value["train/kl"] > 0
    buffer = model.rollout_buffer
    assert isinstance(buffer, RecurrentRolloutBuffer)
    assert len(buffer.states.pi) == n_state_tensors and len(buffer.states.vf) == n_state_tensors
    assert buffer.states.pi[0].shape == (32, 2, 8)
    assert "_last_rnn_state" in model._excluded_save_params()


@pytest.mark.parametrize("sequence_length", [None, 8, 5])
@pytest.mark.parametrize("cell", ["ernn", "lstm"])
def test_sequences_reproduce_the_rollout(cell: str, sequence_length: int | None) -> None:
    """Re-running the policy on the stored sequences from their stored start states gives the rollout's log π and V
    (a length that does not divide n_steps = 32: windows of 5 steps, then one of 2 per env in a batch of its own)."""
    model = small_npg(cell)
    model.learn(32)  # one rollout, then one update: collect a fresh rollout with the updated policy
    model.collect_rollouts(model.env, _NullCallback(), model.rollout_buffer, model.n_steps)
    buffer = model.rollout_buffer
    assert buffer.episode_starts.sum() > 0  # CartPoleNoVel episodes end inside 32 steps: resets are exercised
    family = policy_distribution(model.policy)
    batches = list(buffer.get_sequences(sequence_length, batch_size=None))
    assert [b.sequence_length for b in batches] == {None: [32], 8: [8], 5: [5, 2]}[sequence_length]
    for seqs in batches:
        with torch.no_grad():
            log_prob = family.log_prob(SequenceActor(model.policy)(seqs), seqs.actions.long().flatten())
            values = model.policy.predict_values(seqs.observations, seqs.states.vf, seqs.episode_starts).flatten()
        torch.testing.assert_close(log_prob, seqs.old_log_prob, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(values, seqs.old_values, atol=1e-5, rtol=1e-5)
    # minibatches cover every transition exactly once
    length = sequence_length or 8
    seen = torch.cat([b.observations for b in buffer.get_sequences(length, batch_size=16)])
    assert seen.shape[0] == buffer.buffer_size * buffer.n_envs
    stored = buffer.observations.reshape(-1, seen.shape[1])
    np.testing.assert_array_equal(np.sort(seen.numpy(), axis=0), np.sort(stored, axis=0))
    # the Fisher's windows leave the remainder out
    kept = next(buffer.get_sequences(length, batch_size=None, drop_remainder=True))
    assert kept.observations.shape[0] == (32 // length) * length * buffer.n_envs


class _NullCallback:
    def on_rollout_start(self) -> None: ...

    def on_rollout_end(self) -> None: ...

    def update_locals(self, _locals) -> None: ...

    def on_step(self) -> bool:
        return True


@pytest.mark.parametrize("cell", CELLS)
def test_save_load_gives_identical_predictions_with_states(cell: str, tmp_path) -> None:
    model = small_npg(cell)
    model.learn(32)
    path = tmp_path / "model.zip"
    model.save(path)
    loaded = NPG.load(path)
    env = gym.make("ngrl/CartPoleNoVel-v1")
    obs, _ = env.reset(seed=5)
    state_a = state_b = None
    start = np.array([True])
    for _ in range(20):
        a, state_a = model.predict(obs[None], state=state_a, episode_start=start, deterministic=True)
        b, state_b = loaded.predict(obs[None], state=state_b, episode_start=start, deterministic=True)
        np.testing.assert_array_equal(a, b)
        for x, y in zip(state_a, state_b):
            np.testing.assert_array_equal(x, y)
        obs, _, terminated, truncated, _ = env.step(int(a[0]))
        start = np.array([terminated or truncated])
        if start[0]:
            obs, _ = env.reset()
    assert len(state_a) == (2 if cell == "lstm" else 1)


def test_same_seed_same_run() -> None:
    a = small_npg(seed=3).learn(64)  # the seed is applied at construction: build each model right before its run
    b = small_npg(seed=3).learn(64)
    torch.testing.assert_close(get_flat_params(list(a.policy.parameters())), get_flat_params(list(b.policy.parameters())))
    np.testing.assert_array_equal(a.rollout_buffer.actions, b.rollout_buffer.actions)


def test_predict_resets_the_state_at_episode_starts() -> None:
    model = small_npg()
    obs = np.array([[0.01, -0.02], [0.03, 0.0]], dtype=np.float32)
    _, fresh = model.predict(obs, deterministic=True)
    _, advanced = model.predict(obs, state=fresh, deterministic=True)
    assert not np.allclose(advanced[0], fresh[0])  # the state moves
    _, reset = model.predict(obs, state=advanced, episode_start=np.array([True, True]), deterministic=True)
    np.testing.assert_allclose(reset[0], fresh[0])
    with pytest.raises(ValueError, match="state does not fit"):
        model.predict(obs, state=(np.zeros((3, 8), dtype=np.float32),))


def test_cue_corridor_and_continuous_actions_run() -> None:
    small_npg("gru", env_id="ngrl/CueCorridor-v0", fisher_estimator="diagonal", preconditioner="diagonal").learn(64)
    model = small_npg("ernn", env_id="Pendulum-v1", natural_direction="cfa", sub_sampling_factor=2, line_search=True)
    before = [p.detach().clone() for p in model._actor_params]
    model.learn(64)
    # the line search keeps the measured KL within the trust region, and the CFA direction moved the actor
    assert model.logger.name_to_value["train/kl"] <= model.target_kl
    assert model.logger.name_to_value["train/line_search_steps"] >= 1
    assert any(not torch.equal(a, p) for a, p in zip(before, model._actor_params))


def test_cnn_ernn_policy_runs_on_images() -> None:
    obs_space = gym.spaces.Box(0, 255, (1, 36, 36), dtype=np.uint8)  # channel-first, as SB3 policies expect
    policy = RecurrentActorCriticCnnPolicy(obs_space, gym.spaces.Discrete(3), lambda _: 1e-3, hidden_size=8)
    obs = torch.as_tensor(np.random.default_rng(0).integers(0, 255, (4, 1, 36, 36)), dtype=torch.uint8)
    actions, values, log_prob, state = policy(obs, policy.initial_state(2), torch.zeros(4))
    assert actions.shape == (4,) and values.shape == (4, 1) and state.pi[0].shape == (2, 8)
    assert NPG.policy_aliases["CnnErnnPolicy"] is RecurrentActorCriticCnnPolicy


def test_bad_input_is_explained() -> None:
    with pytest.raises(ValueError, match="unknown recurrent cell"):
        small_npg("transformer")
    with pytest.raises(ValueError, match="sequence_length must be a positive integer, got 0"):
        small_npg(sequence_length=0)
    with pytest.raises(ValueError, match="fisher_sequence_length must be a positive integer, got -1"):
        small_npg(fisher_sequence_length=-1)
    with pytest.raises(ValueError, match="gSDE"):
        RecurrentActorCriticPolicy(gym.spaces.Box(-1, 1, (2,)), gym.spaces.Box(-1, 1, (1,)), lambda _: 1e-3, use_sde=True)
    with pytest.raises(ValueError, match="unknown ERNN readout"):
        NPG("MlpErnnPolicy", "ngrl/CartPoleNoVel-v1", policy_kwargs=dict(cell_kwargs=dict(readout="bogus")))


def test_cli_trains_and_evaluates_an_ernn_policy(tmp_path) -> None:
    train = [
        sys.executable,
        "train.py",
        "train",
        "--algo",
        "npg",
        "--env",
        "ngrl/CartPoleNoVel-v1",
        "--policy",
        "MlpErnnPolicy",
        "--n-timesteps",
        "64",
        "--log-folder",
        str(tmp_path),
        "--n-eval-episodes",
        "1",
        "--hyperparams",
        "n_envs=2",
        "n_steps=32",
        "batch_size=32",
        "sequence_length=8",
        "n_critic_updates=1",
        "policy_kwargs=dict(cell='ernn', hidden_size=8, net_arch=[8])",
    ]
    done = subprocess.run(train, cwd=ROOT, capture_output=True, text=True, timeout=300, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr
    model = next(tmp_path.glob("npg/*/*.zip"))
    evaluate = [
        sys.executable,
        "train.py",
        "eval",
        "--algo",
        "npg",
        "--env",
        "ngrl/CartPoleNoVel-v1",
        "--model",
        str(model),
        "--n-episodes",
        "2",
    ]
    done = subprocess.run(evaluate, cwd=ROOT, capture_output=True, text=True, timeout=300, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr
    assert "Evaluation of npg on ngrl/CartPoleNoVel-v1 over 2 episodes" in done.stdout


# --- learning (slow: python -m pytest -m slow) ----------------------------------------------------


def _evaluate(model: NPG, env_id: str, n_episodes: int, seed: int, **env_kwargs) -> float:
    return _evaluate_env(model, make_vec_env(env_id, n_envs=1, seed=seed, env_kwargs=env_kwargs), n_episodes)


def _evaluate_env(model: NPG, env, n_episodes: int) -> float:
    from stable_baselines3.common.evaluation import evaluate_policy

    mean, _ = evaluate_policy(model, env, n_eval_episodes=n_episodes, deterministic=True, warn=False)
    return float(mean)


@pytest.mark.slow
def test_npg_ernn_remembers_the_cue_over_10_steps() -> None:
    env = make_vec_env("ngrl/CueCorridor-v0", n_envs=8, seed=0, env_kwargs={"delay": 10})
    model = NPG(
        "MlpErnnPolicy",
        env,
        n_steps=64,
        batch_size=256,
        sequence_length=16,
        seed=0,
        policy_kwargs=dict(cell="ernn", hidden_size=64, net_arch=[32]),
    )
    model.learn(15_000)
    assert _evaluate(model, "ngrl/CueCorridor-v0", 20, seed=10_000, delay=10) >= 0.9


@pytest.mark.slow
def test_npg_ernn_balances_cartpole_without_velocities() -> None:
    """The config's NPG + ERNN (observations and rewards normalised) reaches an eval mean ≥ 475 within its budget."""
    import yaml
    from stable_baselines3.common.vec_env import VecNormalize

    config = yaml.safe_load((ROOT / "configs" / "npg.yml").read_text())["ngrl/CartPoleNoVel-v1"]
    assert config["normalize"] is True and config["policy_kwargs"]["cell"] == "ernn"
    params = {k: v for k, v in config.items() if k not in ("n_timesteps", "policy", "n_envs", "normalize")}
    env = VecNormalize(make_vec_env("ngrl/CartPoleNoVel-v1", n_envs=config["n_envs"], seed=0))
    model = NPG(config["policy"], env, seed=0, **params)
    evals = []
    while model.num_timesteps < config["n_timesteps"] and (not evals or evals[-1] < 475):
        model.learn(20_000, reset_num_timesteps=False)
        eval_env = VecNormalize(make_vec_env("ngrl/CartPoleNoVel-v1", n_envs=1, seed=10_000), training=False, norm_reward=False)
        eval_env.obs_rms = env.obs_rms
        evals.append(_evaluate_env(model, eval_env, 20))
    assert evals[-1] >= 475, f"eval means every 20k steps: {evals}"


def test_per_observation_fisher_of_a_recurrent_policy_is_refused_with_directions() -> None:
    from ngrl.fisher import policy_fisher

    model = NPG("MlpErnnPolicy", "ngrl/CartPoleNoVel-v1", n_steps=32, sequence_length=16)
    with pytest.raises(TypeError, match="sequence_fisher"):
        policy_fisher(model.policy, torch.zeros(4, 2))
