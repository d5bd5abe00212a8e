"""Every entry of every file in configs/ builds its model through train.py's run layer (construction only, no learning)."""

from __future__ import annotations

import pathlib

import gymnasium as gym
import pytest
import yaml
from stable_baselines3.common.vec_env import VecNormalize

import envs  # noqa: F401  (registers the ngrl/ ids)
import train

CONFIGS = pathlib.Path(train.CONFIG_DIR)
NOT_ALGORITHMS = {"search_spaces", "variants"}


def config_entries() -> list[tuple[str, str]]:
    entries = []
    for path in sorted(CONFIGS.glob("*.yml")):
        if path.stem in NOT_ALGORITHMS:
            continue
        entries += [(path.stem, env) for env in yaml.safe_load(path.read_text()) if env != "default"]
    return entries


def skip_if_unavailable(env_id: str) -> None:
    """Entries for envs whose optional dependency (box2d, MuJoCo) is not installed here are skipped, not failed."""
    if env_id not in gym.registry:
        pytest.skip(f"{env_id} is registered only with its optional dependency")
    try:
        gym.make(env_id).close()
    except gym.error.DependencyNotInstalled as error:
        pytest.skip(f"{env_id}: {error}")


def skip_if_not_installed(algo: str) -> None:
    """Entries of sb3-contrib's algorithms are skipped where sb3-contrib is not installed (the test and bench extras bring it)."""
    import importlib.util

    if algo in train.CONTRIB_PEERS and importlib.util.find_spec("sb3_contrib") is None:
        pytest.skip(f"{algo} needs sb3-contrib: python -m pip install -e \".[bench]\"")


def test_every_algorithm_file_is_read():
    files = {algo for algo, _ in config_entries()}
    assert {"npg", "ngdqn", "ppo", "a2c", "dqn", "trpo", "recurrentppo", "reptile", "fomaml", "imaml"} <= files


@pytest.mark.parametrize("algo, env_id", config_entries(), ids=lambda x: str(x))
def test_config_entry_builds_its_model(algo, env_id):
    skip_if_not_installed(algo)
    skip_if_unavailable(env_id)
    spec = train.resolve_run(algo, env_id, seed=0, overrides={})
    model = train.build_model(spec, device="cpu")
    assert type(model) is train.algorithm(algo, peers=True)
    expected = {**yaml.safe_load((CONFIGS / f"{algo}.yml").read_text())[env_id]}
    for key in ("n_timesteps", "n_envs", "policy", "normalize", "env_kwargs", "seed"):
        expected.pop(key, None)
    for key, value in expected.items():  # the numbers reach the model as written (schedules, train_freq: objects there)
        stored = getattr(model, key, None)
        if isinstance(value, (bool, int, float)) and isinstance(stored, (bool, int, float)):
            assert stored == value, key
    if not train.is_meta(algo):
        assert model.get_env().num_envs == spec.n_envs
        assert isinstance(model.get_env(), VecNormalize) == bool(spec.normalize)
    model.get_env().close()


def test_normalized_rewards_are_discounted_with_the_algorithms_gamma():
    """As in rl-zoo3: VecNormalize's return statistics use the entry's gamma (a2c Pendulum-v1: 0.9), else its default."""
    spec = train.resolve_run("a2c", "Pendulum-v1", seed=0, overrides={})
    assert train.build_model(spec, device="cpu").get_env().gamma == 0.9
    spec = train.resolve_run("a2c", "Acrobot-v1", seed=0, overrides={})  # no gamma in the entry: VecNormalize's 0.99
    assert train.build_model(spec, device="cpu").get_env().gamma == 0.99
    spec = train.resolve_run("a2c", "Pendulum-v1", seed=0, overrides={"normalize": {"gamma": 0.5}})  # an explicit one wins
    assert train.build_model(spec, device="cpu").get_env().gamma == 0.5


def variant_entries() -> list[tuple[str, str]]:
    """Each variant of configs/variants.yml on each env it has a block for (CartPole-v1 when it has none, a meta-learner's
    Navigation2D); the ERNN table's variants also on the cue corridor, the task they were made for."""
    table = yaml.safe_load((CONFIGS / "variants.yml").read_text())
    entries = [(name, env) for name, block in table.items()
               for env in (block.get("envs") or {"ngrl/Navigation2D-v0" if train.is_meta(block["algo"]) else "CartPole-v1": {}})]
    return entries + [(name, "ngrl/CueCorridor-v0") for name in ("npg-ernn", "npg-lstm", "npg-mlp", "rppo-lstm")]


@pytest.mark.parametrize("name, env_id", variant_entries(), ids=lambda x: str(x))
def test_variant_builds_its_model_with_its_values(name, env_id):
    skip_if_unavailable(env_id)
    skip_if_not_installed(train.read_variants(CONFIGS / "variants.yml")[name].algo)
    variant = train.grid_algorithm(name)
    spec = train.resolve_run(variant.algo, env_id, seed=0, overrides=variant.overrides(env_id), base_config=variant.base_config,
                             n_timesteps=variant.n_timesteps)
    assert variant.n_timesteps is None or spec.n_timesteps == variant.n_timesteps
    model = train.build_model(spec, device="cpu")
    assert type(model) is train.algorithm(variant.algo, peers=True)
    for key, value in variant.overrides(env_id).items():
        stored = getattr(model, key, None)
        if isinstance(value, (bool, int, float)) and isinstance(stored, (bool, int, float)):
            assert stored == value, key
    # normalize: the variant's own value, else its base configuration's (e.g. a MuJoCo block of configs/npg.yml)
    overrides = variant.overrides(env_id)
    if "normalize" in overrides:
        expected = overrides["normalize"]
    else:
        expected = train.resolve_run(variant.algo, env_id, seed=0, overrides={}, base_config=variant.base_config,
                                     n_timesteps=variant.n_timesteps).normalize
    assert isinstance(model.get_env(), VecNormalize) == bool(expected)
    model.get_env().close()


def test_the_ernn_variants_are_the_settings_of_the_ernn_table():
    """npg-ernn on CartPoleNoVel is configs/npg.yml's entry (the one the slow test learns with), pinned."""
    variant = train.grid_algorithm("npg-ernn")
    pinned = train.resolve_run("npg", "ngrl/CartPoleNoVel-v1", seed=0, overrides=variant.overrides("ngrl/CartPoleNoVel-v1"),
                               base_config=False)
    configured = train.resolve_run("npg", "ngrl/CartPoleNoVel-v1", seed=0, overrides={})
    assert pinned.config_block() | {"n_timesteps": 0} == configured.config_block() | {"n_timesteps": 0}
    assert train.grid_algorithm("dqn-notarget").overrides("CartPole-v1") == {"target_network": False}
