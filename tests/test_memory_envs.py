"""Memory tasks: CartPole without velocities and the cue corridor."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.env_checker import check_env

import envs  # noqa: F401  (registers the ngrl/ ids)
from envs.cartpole_novel import CartPoleNoVelEnv
from envs.cue_corridor import CueCorridorEnv


@pytest.mark.parametrize("env_id", ["ngrl/CartPoleNoVel-v1", "ngrl/CueCorridor-v0"])
def test_registered_envs_pass_check_env(env_id: str) -> None:
    env = gym.make(env_id)
    check_env(env.unwrapped)
    check_env(env)


def test_cartpole_novel_is_cartpole_without_velocities() -> None:
    full, hidden = gym.make("CartPole-v1"), gym.make("ngrl/CartPoleNoVel-v1")
    assert hidden.observation_space.shape == (2,)
    assert hidden.spec.max_episode_steps == 500
    obs_full, _ = full.reset(seed=3)
    obs_hidden, _ = hidden.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(300):
        np.testing.assert_array_equal(obs_hidden, obs_full[[0, 2]])
        action = int(rng.integers(2))
        obs_full, r_full, term_full, trunc_full, _ = full.step(action)
        obs_hidden, r_hidden, term_hidden, trunc_hidden, _ = hidden.step(action)
        assert (r_full, term_full, trunc_full) == (r_hidden, term_hidden, trunc_hidden)
        if term_full or trunc_full:
            break
    assert term_full  # random actions drop the pole well within 300 steps


@pytest.mark.parametrize("delay", [0, 3, 50])
def test_cue_corridor_rewards_the_cued_side_after_the_delay(delay: int) -> None:
    env = CueCorridorEnv(delay=delay)
    for seed in range(6):
        for choose_right in (False, True):
            obs, info = env.reset(seed=seed)
            cue = info["cue"]
            assert obs.tolist() == [cue, 0.0, 0.0]
            steps, done, total = 0, False, 0.0
            while not done:
                junction = obs[2] == 1.0
                action = int(choose_right) if junction else int(not choose_right)  # corridor actions are ignored
                obs, reward, done, truncated, step_info = env.step(action)
                total += reward
                steps += 1
                assert not truncated
                if not done:
                    assert obs[0] == 0.0  # the cue is shown only at t = 0
            assert steps == delay + 2
            correct = choose_right == (cue > 0)
            assert total == (1.0 if correct else -1.0)
            assert step_info["is_success"] == correct


def test_cue_corridor_is_seeded_and_balanced() -> None:
    env = CueCorridorEnv()
    cues = [env.reset(seed=s)[1]["cue"] for s in range(200)]
    assert cues == [env.reset(seed=s)[1]["cue"] for s in range(200)]
    assert 70 < sum(c > 0 for c in cues) < 130


def test_registered_corridor_takes_the_delay_as_kwarg() -> None:
    env = gym.make("ngrl/CueCorridor-v0", delay=7)
    assert env.unwrapped.delay == 7
    assert CartPoleNoVelEnv().observation_space.shape == (2,)


@pytest.mark.parametrize(
    "kwargs, match", [(dict(delay=-1), "delay"), (dict(delay=2.5), "delay"), (dict(wrong_reward=1.0), "wrong_reward")]
)
def test_cue_corridor_bad_arguments_are_explained(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        CueCorridorEnv(**kwargs)


def test_cue_corridor_rejects_invalid_actions() -> None:
    env = CueCorridorEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action must be"):
        env.step(2)


def test_cue_corridor_renders() -> None:
    env = CueCorridorEnv(delay=2, render_mode="ansi")
    env.reset(seed=0)
    assert len(env.render()) == 4 and env.render()[0] == "A"
    image = CueCorridorEnv(delay=2, render_mode="rgb_array")
    image.reset(seed=0)
    assert image.render().shape == (8, 32, 3)
    with pytest.raises(ValueError, match="render_mode"):
        CueCorridorEnv(render_mode="human")
