"""Every rollout collector bootstraps time-limit truncations: the stored reward is r + γ·V(s_T).

A counting env (observation = steps since reset, reward 1) runs in two sub-envs: sub-env 0 is cut by a
TimeLimit after 3 steps (truncated: bootstrapped), sub-env 1 terminates by itself after 4 steps
(terminated: not bootstrapped). V(s_T) is recomputed here from the terminal observation (recurrent
policies: by running the critic over the whole episode from a zero state).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.wrappers import TimeLimit
from stable_baselines3.common.vec_env import DummyVecEnv

from agents import NPG
from agents.meta.rollouts import collect_task_rollouts

GAMMA = 0.9
N_STEPS = 8


class Counter(gym.Env):
    """obs = (t, t²/10) with t the steps since reset; reward 1; terminates at ``terminate_at`` (if set)."""

    observation_space = gym.spaces.Box(-100.0, 100.0, (2,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, terminate_at: int | None = None) -> None:
        self.terminate_at = terminate_at
        self.t = 0

    def _obs(self) -> np.ndarray:
        return np.array([self.t, self.t**2 / 10], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), 1.0, self.terminate_at is not None and self.t >= self.terminate_at, False, {}


def _truncating() -> gym.Env:
    return TimeLimit(Counter(), max_episode_steps=3)


def _terminating() -> gym.Env:
    return TimeLimit(Counter(terminate_at=4), max_episode_steps=10)


def _episode_values(policy, recurrent: bool, length: int) -> float:
    """V of the observation reached after ``length`` steps of an episode (the terminal one at its end)."""
    obs = torch.tensor([[t, t**2 / 10] for t in range(length + 1)], dtype=torch.float32)
    with torch.no_grad():
        if not recurrent:
            return float(policy.predict_values(obs[-1:])[0])
        starts = torch.zeros(length + 1)
        starts[0] = 1.0
        return float(policy.predict_values(obs, policy.initial_state(1).vf, starts)[-1])


def _check(rewards: np.ndarray, policy, recurrent: bool) -> None:
    """rewards: (N_STEPS, 2) as stored; sub-env 0 truncates at steps 2, 5; sub-env 1 terminates at step 3, 7."""
    bootstrap = GAMMA * _episode_values(policy, recurrent, 3)
    assert abs(bootstrap) > 1e-3  # the check has teeth: V(s_T) is not zero
    expected = np.ones((N_STEPS, 2))
    expected[[2, 5], 0] += bootstrap
    np.testing.assert_allclose(rewards, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("policy", ["MlpPolicy", "MlpErnnPolicy"])
def test_npg_collector_bootstraps_truncations_only(policy):
    env = DummyVecEnv([_truncating, _terminating])
    kwargs = dict(policy_kwargs=dict(hidden_size=4, net_arch=[4])) if policy == "MlpErnnPolicy" else {}
    model = NPG(policy, env, n_steps=N_STEPS, gamma=GAMMA, seed=0, device="cpu", **kwargs)
    _, callback = model._setup_learn(N_STEPS * 2, None)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, N_STEPS)
    _check(model.rollout_buffer.rewards, model.policy, policy == "MlpErnnPolicy")


@pytest.mark.parametrize("policy", ["MlpPolicy", "MlpErnnPolicy"])
def test_meta_collector_bootstraps_truncations_only(policy):
    env = DummyVecEnv([_truncating, _terminating])
    kwargs = dict(policy_kwargs=dict(hidden_size=4, net_arch=[4])) if policy == "MlpErnnPolicy" else {}
    learners = [
        NPG(policy, DummyVecEnv([_truncating]), n_steps=N_STEPS, gamma=GAMMA, seed=i, device="cpu", **kwargs) for i in range(2)
    ]
    collect_task_rollouts(env, learners, N_STEPS)
    recurrent = policy == "MlpErnnPolicy"
    # each sub-env's rewards live in its own learner's buffer, bootstrapped with that learner's critic
    truncated = learners[0].rollout_buffer.rewards[:, 0]
    expected = np.ones(N_STEPS)
    expected[[2, 5]] += GAMMA * _episode_values(learners[0].policy, recurrent, 3)
    assert abs(expected[2] - 1.0) > 1e-3
    np.testing.assert_allclose(truncated, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(learners[1].rollout_buffer.rewards[:, 0], np.ones(N_STEPS))
