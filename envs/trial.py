"""Trials of a task family for RL²: one gym episode = k episodes of one task, with the last action, reward and done flag observed.

RL² (Duan et al. 2016, "RL²: Fast Reinforcement Learning via Slow Reinforcement Learning"; Wang et al. 2016,
"Learning to reinforcement learn") trains a recurrent policy on trials: a task is drawn, the agent plays
``episodes_per_trial`` episodes of it, and its memory is kept across those episodes (it is reset only between
trials). To let the memory infer the task, the agent observes at each step, besides the family's observation
sₜ, the previous action aₜ₋₁, the previous reward rₜ₋₁ and whether the previous step ended an episode dₜ₋₁
(Duan et al. 2016, Sec. 2.2). Run by an on-policy algorithm with a recurrent policy, whose state is reset where
the VecEnv reports a done, the policy's state then carries across the episodes of a trial.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.task_family import FamilyLike, Task, check_task, family_name, make_family_env

__all__ = ["TrialEnv"]


class TrialEnv(gym.Env):
    """One episode of this env is one *trial*: ``episodes_per_trial`` episodes of the same task of ``family``.

    At ``reset`` a new task is drawn with the family's ``sample_tasks(1)`` (its RNG is seeded by ``reset(seed=s)``,
    so a seeded reset draws the same task every time) and installed with ``set_task``; ``reset(options={"task":
    task})`` plays a given task instead. The family's episodes then follow one another inside the trial: when one
    ends (terminated or truncated) the family env is reset, but this env does not report it as a gym termination,
    so the recurrent state of the agent carries on. After the k-th episode the trial *terminates*: nothing comes
    after it, so the critic must not bootstrap a value past it.

    Observation (a flat float32 Box): [sₜ, aₜ₋₁, rₜ₋₁, dₜ₋₁], sₜ the family's observation (flattened), aₜ₋₁ the
    previous action (one-hot for a Discrete action space, the action as received for a Box one), rₜ₋₁ the
    previous reward, dₜ₋₁ = 1 when the previous step ended an episode of the trial. At the start of a trial
    aₜ₋₁, rₜ₋₁ and dₜ₋₁ are zeros.

    Info of every step: ``trial_episode`` (index j of the episode the step belongs to, from 0), and when the step
    ends episode j, ``trial_episode_return`` (its undiscounted return); at the end of the trial also
    ``trial_returns`` (the k returns in order). Beside them, the family's own info of that step.

    :param family: the task family: an env id, an env instance (deep-copied: the instance is never used), an env
        class or a factory (see :func:`envs.task_family.make_family_env`)
    :param episodes_per_trial: k, episodes of the same task per trial
    :param env_kwargs: keyword arguments of the family when it is an id, a class or a factory
    """

    metadata = {"render_modes": []}

    def __init__(self, family: FamilyLike, episodes_per_trial: int = 2, env_kwargs: Mapping[str, Any] | None = None) -> None:
        if isinstance(episodes_per_trial, bool) or not isinstance(episodes_per_trial, (int, np.integer)) or episodes_per_trial < 1:
            raise ValueError(f"episodes_per_trial must be a positive integer, got {episodes_per_trial!r}")
        self.episodes_per_trial = int(episodes_per_trial)
        self.family = make_family_env(family, env_kwargs)
        obs_space, action_space = self.family.observation_space, self.family.action_space
        if not isinstance(obs_space, spaces.Box):
            raise ValueError(f"TrialEnv needs a Box observation space, {family_name(family)} has {obs_space}")
        if isinstance(action_space, spaces.Discrete):
            action_low, action_high = np.zeros(int(action_space.n)), np.ones(int(action_space.n))
        elif isinstance(action_space, spaces.Box):
            action_low, action_high = action_space.low.ravel(), action_space.high.ravel()
        else:
            raise ValueError(f"TrialEnv needs a Box or Discrete action space, {family_name(family)} has {action_space}")
        self.action_space = action_space
        self._obs_size = int(np.prod(obs_space.shape))
        self._action_size = action_low.size
        low = np.concatenate([obs_space.low.ravel(), action_low, [-np.inf], [0.0]]).astype(np.float32)
        high = np.concatenate([obs_space.high.ravel(), action_high, [np.inf], [1.0]]).astype(np.float32)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self._sample_tasks = self.family.get_wrapper_attr("sample_tasks")
        self._set_task = self.family.get_wrapper_attr("set_task")
        self._get_task = self.family.get_wrapper_attr("get_task")
        self._episode = 0
        self._episode_return = 0.0
        self._returns: list[float] = []

    def get_task(self) -> Task:
        """The task of the current trial."""
        return self._get_task()

    def sample_tasks(self, n: int) -> list[Task]:
        """n tasks of the family, drawn with the family's RNG (held-out tasks for :meth:`reset`'s ``options``)."""
        return self._sample_tasks(n)

    def _observation(self, obs: Any, action: Any, reward: float, episode_ended: bool) -> np.ndarray:
        """[sₜ, aₜ₋₁ (one-hot or raw), rₜ₋₁, dₜ₋₁] as one float32 vector; ``action`` None: zeros (start of a trial)."""
        encoded = np.zeros(self._action_size, dtype=np.float32)
        if action is not None:
            if isinstance(self.action_space, spaces.Discrete):
                encoded[int(np.asarray(action).item()) - int(self.action_space.start)] = 1.0
            else:
                encoded[:] = np.asarray(action, dtype=np.float32).ravel()
        return np.concatenate(
            [np.asarray(obs, dtype=np.float32).ravel(), encoded, np.float32([reward]), np.float32([float(episode_ended)])]
        )

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Start a trial: seed the family's RNG (when ``seed`` is given), draw a task (or take ``options["task"]``)."""
        super().reset(seed=seed)
        if seed is not None:
            self.family.reset(seed=seed)
        options = dict(options or {})
        task = options.pop("task", None)
        if task is None:
            task = self._sample_tasks(1)[0]
        else:
            task = check_task(task, tuple(self._get_task()))
        self._set_task(task)
        self._episode, self._episode_return, self._returns = 0, 0.0, []
        obs, info = self.family.reset(options=options or None)
        return self._observation(obs, None, 0.0, False), {**info, "trial_episode": 0}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._episode >= self.episodes_per_trial:
            raise RuntimeError("the trial has ended: call reset() to start the next one")
        obs, reward, terminated, truncated, info = self.family.step(action)
        reward = float(reward)
        self._episode_return += reward
        info = {**info, "trial_episode": self._episode}
        episode_ended = bool(terminated or truncated)
        trial_ended = False
        if episode_ended:
            info["trial_episode_return"] = self._episode_return
            self._returns.append(self._episode_return)
            self._episode, self._episode_return = self._episode + 1, 0.0
            trial_ended = self._episode == self.episodes_per_trial
            if trial_ended:
                info["trial_returns"] = tuple(self._returns)
            else:
                obs, _ = self.family.reset()  # the next episode of the same task: the task persists across resets
        return self._observation(obs, action, reward, episode_ended), reward, trial_ended, False, info

    def close(self) -> None:
        self.family.close()
