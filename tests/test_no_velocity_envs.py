"""The zoo's *NoVel memory tasks: the base env's dynamics, with the velocity entries removed."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.env_checker import check_env

import envs  # noqa: F401  (registers the ngrl/ ids)
from envs.no_velocity import HideVelocity

CLASSIC = [("ngrl/PendulumNoVel-v1", "Pendulum-v1", [0, 1]), ("ngrl/MountainCarNoVel-v0", "MountainCar-v0", [0]),
           ("ngrl/MountainCarContinuousNoVel-v0", "MountainCarContinuous-v0", [0])]


@pytest.mark.parametrize("env_id, base_id, visible", CLASSIC)
def test_no_velocity_env_is_the_base_env_without_its_velocities(env_id, base_id, visible):
    hidden, full = gym.make(env_id), gym.make(base_id)
    check_env(hidden, warn=False)
    assert hidden.observation_space.shape == (len(visible),)
    np.testing.assert_array_equal(hidden.observation_space.low, full.observation_space.low[visible])
    obs_hidden, _ = hidden.reset(seed=5)
    obs_full, _ = full.reset(seed=5)
    full.action_space.seed(1)
    steps = 0
    while True:
        np.testing.assert_array_equal(obs_hidden, obs_full[visible])
        action = full.action_space.sample()
        obs_full, r_full, term_full, trunc_full, _ = full.step(action)
        obs_hidden, r_hidden, term_hidden, trunc_hidden, _ = hidden.step(action)
        assert (r_full, term_full, trunc_full) == (r_hidden, term_hidden, trunc_hidden)
        steps += 1
        if term_full or trunc_full:
            break
    assert steps == full.spec.max_episode_steps  # the base env's time limit, applied once


def test_hide_velocity_refuses_entries_outside_the_observation():
    with pytest.raises(ValueError, match="hidden"):
        HideVelocity(gym.make("Pendulum-v1"), [3])
    with pytest.raises(ValueError, match="env_id"):
        gym.make("ngrl/PendulumNoVel-v1", env_id="Humanoid-v5")
