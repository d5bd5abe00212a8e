"""The Python API refuses bad arguments with a ValueError naming them, and never trains into NaN."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents import FOMAML, IMAML, NGDQN, NPG, RL2, VPG, Reptile
from agents.ngdqn import BaselineDQN
from tests.fixtures.custom_envs import EmptyObservations

NAV = "ngrl/Navigation2D-v0"
META = dict(meta_batch_size=2, n_steps=20, policy_kwargs=dict(net_arch=[8]))

BAD_ARGUMENTS = [
    (NPG, "target_kl", math.nan), (NPG, "target_kl", math.inf), (NPG, "target_kl", 0.0), (NPG, "batch_size", 0),
    (NPG, "batch_size", -3), (NPG, "gamma", 1.5), (NPG, "gamma", 0.0), (NPG, "gae_lambda", -0.1), (NPG, "n_steps", 0),
    (NPG, "cg_max_steps", 0), (NPG, "cg_tol", math.nan), (NPG, "cg_damping", -1.0), (NPG, "learning_rate", math.nan),
    (NPG, "sub_sampling_factor", 0), (NPG, "line_search_shrinking_factor", 1.0), (NPG, "n_critic_updates", -1),
    (NPG, "policy_kwargs", 5), (NPG, "device", "tpu9"), (NPG, "seed", -1),
    (NPG, "cg_damping", "rel_"), (NPG, "cg_damping", "rel_-1e-3"), (NPG, "cg_damping", "rel_nan"), (NPG, "cg_damping", "0.1"),
    (NPG, "log_spectrum", 1), (NPG, "log_spectrum", "yes"),
    (VPG, "step_size", math.inf), (VPG, "batch_size", 0), (VPG, "gamma", 2.0),
    (NGDQN, "learning_rate", math.nan), (NGDQN, "batch_size", 0), (NGDQN, "gamma", -1.0), (NGDQN, "buffer_size", 0),
    (NGDQN, "exploration_final_eps", 1.5), (NGDQN, "cg_max_steps", 0), (NGDQN, "target_update_interval", 0),
    (NGDQN, "curvature", "newton"), (NGDQN, "adaptive_kwargs", dict(epsilon=2.0)), (NGDQN, "adaptive_kwargs", dict(eps=0.1)),
    (NGDQN, "adaptive_kwargs", 3), (NPG, "fisher_estimator", "adaptiv"), (NPG, "adaptive_kwargs", dict(structure="diagonal")),
    (BaselineDQN, "target_network", "no"),
]


@pytest.mark.parametrize("algo, name, value", BAD_ARGUMENTS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_constructors_name_the_bad_argument(algo, name, value):
    with pytest.raises(ValueError, match=name):
        algo("MlpPolicy", "CartPole-v1", **{name: value})


@pytest.mark.parametrize("algo, name, value", [
    (Reptile, "meta_batch_size", 0), (Reptile, "inner_updates", -1), (FOMAML, "meta_target_kl", math.nan),
    (IMAML, "lam", 0.0), (IMAML, "lam", math.inf), (Reptile, "critic_step_size", 2.0), (Reptile, "gamma", 1.01),
])
def test_meta_learners_name_the_bad_argument(algo, name, value):
    with pytest.raises(ValueError, match=name):
        algo("MlpPolicy", NAV, **{**META, name: value})


@pytest.mark.parametrize("name, value", [
    ("episodes_per_trial", 0), ("episodes_per_trial", 1.5), ("episodes_per_trial", True), ("n_envs", 0),
    ("env_kwargs", 3), ("target_kl", math.nan), ("gamma", 1.5),
])
def test_rl2_names_the_bad_argument(name, value):
    with pytest.raises(ValueError, match=name):
        RL2("MlpErnnPolicy", "ngrl/TargetBandit-v0", **{name: value})


def test_an_inner_learners_bad_argument_is_refused_at_construction():
    with pytest.raises(ValueError, match="target_kl"):
        FOMAML("MlpPolicy", NAV, **META, inner_kwargs=dict(target_kl=math.nan))


@pytest.mark.parametrize("algo", [NPG, NGDQN, VPG])
def test_an_env_with_an_empty_space_is_refused(algo):
    with pytest.raises(ValueError, match="observation space .* is empty"):
        algo("MlpPolicy", EmptyObservations())


def test_empty_spaces_are_refused():
    from agents.arguments import check_spaces

    with pytest.raises(ValueError, match="observation space"):
        check_spaces(EmptyObservations().observation_space, gym.spaces.Discrete(2))
    with pytest.raises(ValueError, match="action space"):
        check_spaces(gym.spaces.Box(-1, 1, (2,)), gym.spaces.MultiDiscrete(np.array([], dtype=np.int64)))


@pytest.mark.parametrize("make", [
    lambda: NPG("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, target_kl=1e300, policy_kwargs=dict(net_arch=[8])),
    lambda: NGDQN("MlpPolicy", "CartPole-v1", learning_rate=1e30, learning_starts=32, train_freq=4, policy_kwargs=dict(net_arch=[8])),
])
def test_a_non_finite_update_stops_training_and_keeps_the_parameters(make, tmp_path):
    model = make()
    # NonFiniteParametersError when the update itself overflows; a ValueError from CG when the gradient already has
    with pytest.raises(ValueError, match="NaN or inf"):
        model.learn(2_000)
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())
    model.save(tmp_path / "kept.zip")  # what is left is finite, so it saves
    assert type(model).load(tmp_path / "kept.zip").num_timesteps == model.num_timesteps
