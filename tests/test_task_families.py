"""Task families: check_env, seeded sample_tasks, set_task changes the dynamics, the helper and its errors."""

from __future__ import annotations

import copy
import importlib.util
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.classic_control.continuous_mountain_car import Continuous_MountainCarEnv
from stable_baselines3.common.env_checker import check_env

import envs  # noqa: F401  registers the ngrl/ ids
from envs import ParameterTaskFamily, TaskResampling, task_family_methods

FAMILIES = ["ngrl/Navigation2D-v0", "ngrl/CartPoleDynamics-v0", "ngrl/PendulumDynamics-v0", "ngrl/TargetBandit-v0",
            "ngrl/LineGoal-v0", "ngrl/CartPoleActuator-v0", "ngrl/PendulumActuator-v0", "ngrl/Navigation2DAxes-v0"]
# the task is in the reward
REWARD_FAMILIES = ("ngrl/Navigation2D-v0", "ngrl/HalfCheetahVel-v0", "ngrl/TargetBandit-v0", "ngrl/LineGoal-v0")
HAS_MUJOCO = importlib.util.find_spec("mujoco") is not None
if HAS_MUJOCO:
    FAMILIES.append("ngrl/HalfCheetahVel-v0")


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """MuJoCo writes MUJOCO_LOG.TXT into the working directory when it warns: keep it out of the repository."""
    monkeypatch.chdir(tmp_path)


def _make(env_id: str) -> gym.Env:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gym.make(env_id)


@pytest.mark.parametrize("env_id", FAMILIES)
def test_check_env(env_id):
    env = _make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pendulum's asymmetric action box warns, by gymnasium's design
        check_env(env)
    sample, set_task, _ = task_family_methods(env)
    env.reset(seed=0)
    set_task(sample(1)[0])
    check_env(env, warn=False)


@pytest.mark.parametrize("env_id", FAMILIES)
def test_sample_tasks_seeded_and_plain_data(env_id):
    def draw(seed):
        env = _make(env_id)
        env.reset(seed=seed)
        return task_family_methods(env)[0](5)

    a, b, c = draw(3), draw(3), draw(4)
    assert a == b and a != c
    assert all(isinstance(t, dict) and all(type(v) is float for v in t.values()) for t in a)
    assert len({tuple(t.values()) for t in a}) == 5  # five different tasks


def _next_obs(env, task, action, seed=0):
    _, set_task, get_task = task_family_methods(env)
    set_task(task)
    assert get_task() == pytest.approx(task)
    env.reset(seed=seed)
    obs = None
    for _ in range(3):
        obs, reward, *_ = env.step(action)
    return np.asarray(obs, dtype=np.float64), float(reward)


@pytest.mark.parametrize("env_id", FAMILIES)
def test_set_task_changes_the_dynamics_or_rewards(env_id):
    env = _make(env_id)
    env.reset(seed=1)
    sample, _, _ = task_family_methods(env)
    t1, t2 = sample(2)
    action = env.action_space.sample() if not isinstance(env.action_space, gym.spaces.Discrete) else 1
    obs1, r1 = _next_obs(env, t1, action)
    obs1_again, r1_again = _next_obs(env, t1, action)
    obs2, r2 = _next_obs(env, t2, action)
    np.testing.assert_array_equal(obs1, obs1_again)  # same task, same seed: same transition
    assert r1 == r1_again
    if env_id in REWARD_FAMILIES:
        assert r1 != r2  # the goal / target velocity / target arm is in the reward, not the dynamics
    else:
        assert not np.allclose(obs1, obs2)


def test_task_persists_across_reset_and_navigation_reward():
    env = _make("ngrl/Navigation2D-v0")
    _, set_task, get_task = task_family_methods(env)
    set_task({"goal_x": 0.3, "goal_y": -0.4})
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs, [0.0, 0.0])  # the goal is not observed
    assert get_task() == {"goal_x": 0.3, "goal_y": -0.4}
    obs, reward, terminated, truncated, _ = env.step(np.array([1.0, -5.0]))  # clipped to ±1, scaled by 0.1
    np.testing.assert_allclose(obs, [0.1, -0.1], atol=1e-7)
    assert reward == pytest.approx(-np.hypot(0.2, 0.3))
    assert not terminated and not truncated
    for _ in range(99):
        *_, truncated, _ = env.step(np.zeros(2))
    assert truncated  # horizon 100


def test_target_bandit_pays_the_distance_to_the_target():
    env = _make("ngrl/TargetBandit-v0")
    _, set_task, _ = task_family_methods(env)
    set_task({"target": 0.55})
    env.reset(seed=0)
    arms = np.linspace(-1.0, 1.0, 8)
    rewards = [env.step(a)[1] for a in range(8)]
    np.testing.assert_allclose(rewards, -np.abs(arms - 0.55))
    assert int(np.argmax(rewards)) == 5  # the arm at 3/7 ≈ 0.43
    _, _, terminated, truncated, _ = env.step(0)
    assert terminated and not truncated  # one-step episodes


def test_cartpole_derived_quantities_follow_the_task():
    env = _make("ngrl/CartPoleDynamics-v0")
    task_family_methods(env)[1]({"length": 0.8, "masspole": 0.3})
    base = env.unwrapped
    assert base.polemass_length == pytest.approx(0.24) and base.total_mass == pytest.approx(1.3)


def test_parameter_family_helper_on_a_user_env():
    family = ParameterTaskFamily(Continuous_MountainCarEnv(), {"power": (0.001, 0.003)})
    family.reset(seed=0)
    tasks = family.sample_tasks(4)
    assert all(0.001 <= t["power"] <= 0.003 for t in tasks)
    family.set_task(tasks[0])
    assert family.unwrapped.power == tasks[0]["power"] and family.get_task() == tasks[0]
    check_env(family, warn=False)
    log_family = ParameterTaskFamily(Continuous_MountainCarEnv(), {"power": (1e-4, 1e-1)}, log_uniform=True)
    log_family.reset(seed=0)
    powers = np.array([t["power"] for t in log_family.sample_tasks(400)])
    assert 0.25 < np.mean(powers < 10**-2.5) < 0.75  # half the mass below the geometric midpoint


def test_clear_errors():
    with pytest.raises(ValueError, match="no attribute 'lenght'.*length"):
        ParameterTaskFamily(gym.make("CartPole-v1").unwrapped, {"lenght": (0.1, 1.0)})
    with pytest.raises(ValueError, match="low <= high"):
        ParameterTaskFamily(Continuous_MountainCarEnv(), {"power": (2.0, 1.0)})
    with pytest.raises(ValueError, match="empty"):
        ParameterTaskFamily(Continuous_MountainCarEnv(), {})
    env = _make("ngrl/Navigation2D-v0")
    _, set_task, _ = task_family_methods(env)
    with pytest.raises(ValueError, match="missing \\['goal_y'\\]"):
        set_task({"goal_x": 0.1})
    with pytest.raises(ValueError, match="finite"):
        set_task({"goal_x": 0.1, "goal_y": float("nan")})
    with pytest.raises(ValueError, match="non-negative integer"):
        task_family_methods(env)[0](-1)
    with pytest.raises(TypeError, match="not a task family.*ParameterTaskFamily"):
        task_family_methods(gym.make("CartPole-v1"))


def test_task_resampling_draws_a_task_per_episode():
    env = TaskResampling(_make("ngrl/Navigation2D-v0"))
    _, _, get_task = task_family_methods(env)
    env.reset(seed=7)
    first = get_task()
    seen = {tuple(first.values())}
    for _ in range(4):
        env.reset()
        seen.add(tuple(get_task().values()))
    assert len(seen) == 5
    again = TaskResampling(_make("ngrl/Navigation2D-v0"))
    again.reset(seed=7)
    assert task_family_methods(again)[2]() == first


# --- families whose tasks need different policies -------------------------------------------------

NEEDS_ADAPTATION = {  # id: two tasks whose optimal actions differ
    "ngrl/LineGoal-v0": ({"goal": 0.5}, {"goal": -0.5}),
    "ngrl/CartPoleActuator-v0": ({"gain": 0.8, "direction": 1.0}, {"gain": 1.2, "direction": -1.0}),
    "ngrl/PendulumActuator-v0": ({"gain": 0.8, "direction": 1.0}, {"gain": 1.2, "direction": -1.0}),
    "ngrl/Navigation2DAxes-v0": ({"angle": 0.0, "mirror": 1.0}, {"angle": np.pi, "mirror": 1.0}),
}


@pytest.mark.parametrize("env_id", NEEDS_ADAPTATION)
def test_task_round_trip_persists_across_resets(env_id):
    env = _make(env_id)
    sample, set_task, get_task = task_family_methods(env)
    env.reset(seed=0)
    for task in sample(4):
        set_task(task)
        assert get_task() == task
        env.reset(seed=1)
        env.step(env.action_space.sample())
        env.reset()
        assert get_task() == task


def test_discrete_task_entries_take_their_listed_values():
    actuator, axes = _make("ngrl/CartPoleActuator-v0"), _make("ngrl/Navigation2DAxes-v0")
    actuator.reset(seed=0)
    axes.reset(seed=0)
    actuator_tasks, axes_tasks = task_family_methods(actuator)[0](400), task_family_methods(axes)[0](400)
    directions = np.array([t["direction"] for t in actuator_tasks])
    mirrors = np.array([t["mirror"] for t in axes_tasks])
    for flags in (directions, mirrors):
        assert set(flags) == {-1.0, 1.0} and 0.4 < np.mean(flags > 0) < 0.6
    assert all(0.5 <= t["gain"] <= 1.5 for t in actuator_tasks)
    assert all(-np.pi <= t["angle"] <= np.pi for t in axes_tasks)


def test_parameter_family_choices_and_their_errors():
    family = ParameterTaskFamily(Continuous_MountainCarEnv(), {"power": (0.001, 0.003)}, choices={"goal_position": [0.3, 0.45]})
    assert family.names == ("power", "goal_position")
    family.reset(seed=0)
    tasks = family.sample_tasks(50)
    assert {t["goal_position"] for t in tasks} == {0.3, 0.45}
    family.set_task(tasks[0])
    assert family.unwrapped.goal_position == tasks[0]["goal_position"] and family.get_task() == tasks[0]
    with pytest.raises(ValueError, match="both ranges and choices"):
        ParameterTaskFamily(Continuous_MountainCarEnv(), {"power": (0.001, 0.003)}, choices={"power": [0.001]})
    with pytest.raises(ValueError, match="non-empty"):
        ParameterTaskFamily(Continuous_MountainCarEnv(), {}, choices={"power": []})
    with pytest.raises(ValueError, match="no attribute 'gaol'"):
        ParameterTaskFamily(Continuous_MountainCarEnv(), {}, choices={"gaol": [1.0]})


def test_line_goal_moves_and_pays_the_distance():
    env = _make("ngrl/LineGoal-v0")
    task_family_methods(env)[1]({"goal": -0.35})
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs, [0.0])  # the goal is not observed
    obs, reward, terminated, truncated, _ = env.step(np.array([-3.0]))  # clipped to −1, scaled by 0.1
    np.testing.assert_allclose(obs, [-0.1], atol=1e-7)
    assert reward == pytest.approx(-0.25) and not terminated and not truncated
    for _ in range(29):
        *_, truncated, _ = env.step(np.array([0.0]))
    assert truncated  # horizon 30


def test_cartpole_actuator_is_cartpole_with_the_signed_scaled_force():
    """The family's dynamics equal gymnasium's CartPole run with force_mag = direction · gain · 10 (computed by CartPole)."""
    from gymnasium.envs.classic_control.cartpole import CartPoleEnv

    family = _make("ngrl/CartPoleActuator-v0")
    task_family_methods(family)[1]({"gain": 0.7, "direction": -1.0})
    reference = CartPoleEnv()
    reference.force_mag = -7.0
    obs, _ = family.reset(seed=3)
    ref_obs, _ = reference.reset(seed=3)
    np.testing.assert_array_equal(obs, ref_obs)
    for action in (1, 1, 0, 1, 0, 0):
        obs, *_ = family.step(action)
        ref_obs, *_ = reference.step(action)
        np.testing.assert_array_equal(obs, ref_obs)
    assert not np.allclose(obs, CartPoleEnv().reset(seed=3)[0])  # the steps moved the cart


def test_pendulum_actuator_is_pendulum_with_the_signed_scaled_torque():
    """The family's dynamics and costs equal gymnasium's Pendulum driven by the torque direction · gain · clip(u, ±2)
    (a gain of 1.4 lets the applied torque reach 2.8, past Pendulum's own clip)."""
    from gymnasium.envs.classic_control.pendulum import PendulumEnv

    family = _make("ngrl/PendulumActuator-v0")
    task_family_methods(family)[1]({"gain": 1.4, "direction": -1.0})
    reference = PendulumEnv()
    reference.max_torque = 2.8
    obs, _ = family.reset(seed=3)
    ref_obs, _ = reference.reset(seed=3)
    np.testing.assert_array_equal(obs, ref_obs)
    for action in (2.0, 1.0, -0.5, 3.0, -2.0):
        obs, reward, *_ = family.step(np.array([action], dtype=np.float32))
        applied = -1.4 * float(np.clip(action, -2.0, 2.0))
        ref_obs, ref_reward, *_ = reference.step(np.array([applied], dtype=np.float32))
        np.testing.assert_allclose(obs, ref_obs, rtol=1e-6)
        assert reward == pytest.approx(ref_reward, rel=1e-6)
    assert not np.allclose(obs, PendulumEnv().reset(seed=3)[0])
    # a gain set outside the family's range, negative: the motor reversed, not a torque clipped to nothing
    flipped = _make("ngrl/PendulumActuator-v0")
    task_family_methods(flipped)[1]({"gain": -1.4, "direction": 1.0})
    flipped.reset(seed=3)
    family.reset(seed=3)
    for action in (2.0, -1.0, 0.5):
        np.testing.assert_array_equal(flipped.step(np.array([action], dtype=np.float32))[0],
                                      family.step(np.array([action], dtype=np.float32))[0])


def test_navigation_axes_moves_by_the_turned_controls():
    env = _make("ngrl/Navigation2DAxes-v0")
    task_family_methods(env)[1]({"angle": np.pi / 2, "mirror": -1.0})
    start, _ = env.reset(seed=0)
    assert np.all(np.abs(start) <= 0.5) and np.any(start != 0)
    # R(π/2)·diag(1, −1): the first control moves along +y, the second along +x
    obs, reward, *_ = env.step(np.array([1.0, 0.0]))
    np.testing.assert_allclose(obs - start, [0.0, 0.1], atol=1e-6)
    moved, reward, *_ = env.step(np.array([0.0, 1.0]))
    np.testing.assert_allclose(moved - obs, [0.1, 0.0], atol=1e-6)
    assert reward == pytest.approx(-np.linalg.norm(moved), abs=1e-6)


def _best_first_action(env: gym.Env, candidates, horizon: int):
    """The first action of the best action sequence of ``horizon`` steps from the env's state (exhaustive search on copies)."""
    def best_return(node: gym.Env, depth: int) -> float:
        if depth == 0:
            return 0.0
        values = []
        for action in candidates:
            child = copy.deepcopy(node)
            _, reward, terminated, _, _ = child.step(action)
            values.append(reward + (0.0 if terminated else best_return(child, depth - 1)))
        return max(values)

    returns = []
    for action in candidates:
        child = copy.deepcopy(env)
        _, reward, terminated, _, _ = child.step(action)
        returns.append(reward + (0.0 if terminated else best_return(child, horizon - 1)))
    best = max(returns)
    return [action for action, value in zip(candidates, returns) if value == best]


def test_the_optimal_action_at_a_state_changes_sign_between_tasks():
    """For each family, two tasks whose optimal first actions at the same state have opposite signs (found by exhaustive
    search over a short horizon): no memoryless policy can be optimal on both."""
    grid = [np.array([a]) for a in (-1.0, -0.5, 0.0, 0.5, 1.0)]
    plane = [np.array([a, b]) for a in (-1.0, 0.0, 1.0) for b in (-1.0, 0.0, 1.0)]
    best = {}
    for env_id, tasks in NEEDS_ADAPTATION.items():
        for k, task in enumerate(tasks):
            env = _make(env_id)
            task_family_methods(env)[1](task)
            env.reset(seed=0)
            if env_id == "ngrl/LineGoal-v0":
                best[env_id, k] = _best_first_action(env, grid, horizon=3)
            elif env_id == "ngrl/CartPoleActuator-v0":
                env.unwrapped.state = np.array([0.0, 0.0, 0.1, 1.2])  # the pole leans and falls right: one push saves it
                best[env_id, k] = _best_first_action(env.unwrapped, [0, 1], horizon=10)
            elif env_id == "ngrl/PendulumActuator-v0":
                env.unwrapped.state = np.array([0.3, 1.0])  # near the top, falling away from it
                best[env_id, k] = _best_first_action(env.unwrapped, [2.0 * a for a in grid], horizon=3)
            else:
                env.unwrapped._position = np.array([0.3, -0.2])
                best[env_id, k] = _best_first_action(env, plane, horizon=2)
    assert [a.tolist() for a in best["ngrl/LineGoal-v0", 0]] == [[1.0]] and [a.tolist() for a in best["ngrl/LineGoal-v0", 1]] == [[-1.0]]
    assert best["ngrl/CartPoleActuator-v0", 0] == [1] and best["ngrl/CartPoleActuator-v0", 1] == [0]  # push right / push left
    assert [a.tolist() for a in best["ngrl/PendulumActuator-v0", 0]] == [[-2.0]]  # full torque back towards the top
    assert [a.tolist() for a in best["ngrl/PendulumActuator-v0", 1]] == [[2.0]]  # the motor reversed: the other sign
    first, second = best["ngrl/Navigation2DAxes-v0", 0], best["ngrl/Navigation2DAxes-v0", 1]
    assert len(first) == len(second) == 1
    np.testing.assert_array_equal(first[0], [-1.0, 1.0])  # towards the origin from (0.3, −0.2)
    np.testing.assert_array_equal(second[0], -first[0])  # the controls turned by π: the opposite action
