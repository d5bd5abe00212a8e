"""Slow learning tests: NPG reaches the thresholds the issues set (run with: python -m pytest -m slow)."""

import gymnasium as gym
import pytest
import torch
import yaml
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from agents import NPG
from tests.test_cli import ROOT


def zoo_config(algo: str, env_id: str) -> dict:
    params = yaml.safe_load((ROOT / "configs" / f"{algo}.yml").read_text())[env_id]
    return {k: v for k, v in params.items() if k not in ("n_timesteps", "policy", "normalize")}


@pytest.mark.slow
def test_npg_solves_cartpole_within_100k_steps():
    torch.set_num_threads(1)
    params = zoo_config("npg", "CartPole-v1")
    n_envs = params.pop("n_envs", 1)
    model = NPG("MlpPolicy", make_vec_env("CartPole-v1", n_envs=n_envs, seed=0), seed=0, **params)
    best = 0.0
    while model.num_timesteps < 100_000 and best < 475:
        model.learn(10_000, reset_num_timesteps=False)
        mean, _ = evaluate_policy(model, gym.make("CartPole-v1"), n_eval_episodes=10, deterministic=True, warn=False)
        best = max(best, mean)
    assert best >= 475, f"best evaluation {best} after {model.num_timesteps} steps"
