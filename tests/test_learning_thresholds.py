"""Cheap learning tests (as sb3-contrib's tests/test_identity.py): a few thousand steps on SB3's identity
envs, seconds each, so that a wrong sign anywhere in an agent's step fails the default suite.

IdentityEnv(4): reward 1 when the action equals the observed class; a uniform policy earns 25 per
100-step episode, a descending one less. IdentityEnvBox: reward 1 when |a − s| < 0.5.
"""

from __future__ import annotations

import pytest
from stable_baselines3.common.envs import IdentityEnv, IdentityEnvBox
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from agents import NGDQN, NPG
from agents.meta.vpg import VPG

TINY = dict(net_arch=[16])


def _score(model, env, deterministic: bool) -> float:
    return evaluate_policy(model, Monitor(env), n_eval_episodes=3, deterministic=deterministic)[0]


@pytest.mark.parametrize("env_class, threshold", [(IdentityEnv, 60.0), (IdentityEnvBox, 70.0)], ids=["discrete", "box"])
def test_npg_learns_the_identity(env_class, threshold):
    make = (lambda: IdentityEnv(dim=4, ep_length=100)) if env_class is IdentityEnv else (lambda: IdentityEnvBox(eps=0.5, ep_length=100))
    model = NPG("MlpPolicy", make(), n_steps=200, batch_size=200, target_kl=0.05, policy_kwargs=TINY, seed=0, device="cpu")
    model.learn(2400)
    assert _score(model, make(), deterministic=False) >= threshold  # chance: 25 (discrete), ~36 (box)


def test_vpg_learns_the_identity():
    model = VPG("MlpPolicy", IdentityEnv(dim=4, ep_length=100), n_steps=200, batch_size=200, step_size=3.0, policy_kwargs=TINY,
                seed=0, device="cpu")
    model.learn(2400)
    assert _score(model, IdentityEnv(dim=4, ep_length=100), deterministic=False) >= 55.0


def test_ngdqn_learns_the_identity():
    model = NGDQN("MlpPolicy", IdentityEnv(dim=4, ep_length=100), learning_starts=200, buffer_size=5000, gamma=0.5,
                  exploration_fraction=0.3, learning_rate=0.3, train_freq=4, policy_kwargs=TINY, seed=0, device="cpu")
    model.learn(1500)
    assert _score(model, IdentityEnv(dim=4, ep_length=100), deterministic=True) >= 90.0
