"""A one-step bandit family whose best arm depends on the task: the smallest meta-RL problem."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.task_family import Task, TaskFamily, _check_n, check_task

__all__ = ["TargetBanditEnv"]


class TargetBanditEnv(TaskFamily, gym.Env):
    """n arms at positions spread evenly over [−1, 1]; pulling arm j pays −|xⱼ − target| and ends the episode.

    The task is the target, uniform in [``target_low``, ``target_high``] (default [0.4, 1.0]: the right
    third of the arms), and is not observed (the observation is a constant 1). A uniform policy earns
    about −0.9; the best arm of a task about −0.07. A meta-learner that learns where the targets lie
    starts near the good arms and one adaptation step picks the best; one that moves the wrong way
    ends below the uniform policy. Registered as ``ngrl/TargetBandit-v0``; episodes last one step, so
    thousands of them take a second — the family the default suite's meta-learning tests train on.

    :param n_arms: number of arms (at least 2)
    :param target_low: lower end of the targets' range
    :param target_high: upper end of the targets' range
    :param render_mode: None or "rgb_array" (a strip of the arms, the task's best arm in red)
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 1}
    task_names = ("target",)

    def __init__(
        self, n_arms: int = 8, target_low: float = 0.4, target_high: float = 1.0, render_mode: str | None = None
    ) -> None:
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        if n_arms < 2:
            raise ValueError(f"n_arms must be at least 2, got {n_arms}")
        if not target_low <= target_high:
            raise ValueError(f"need target_low <= target_high, got {target_low} and {target_high}")
        self.arms = np.linspace(-1.0, 1.0, n_arms)
        self.target_low, self.target_high = float(target_low), float(target_high)
        self.action_space = spaces.Discrete(n_arms)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        self._target = 0.5 * (self.target_low + self.target_high)

    def sample_tasks(self, n: int) -> list[Task]:
        targets = self.np_random.uniform(self.target_low, self.target_high, size=_check_n(n))
        return [{"target": float(t)} for t in targets]

    def set_task(self, task: Mapping[str, float]) -> None:
        self._target = check_task(task, self.task_names)["target"]

    def get_task(self) -> Task:
        return {"target": float(self._target)}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        return np.ones(1, dtype=np.float32), {}

    def step(self, action):
        reward = -abs(float(self.arms[int(action)]) - self._target)
        return np.ones(1, dtype=np.float32), reward, True, False, {}

    def render(self):
        """An 8 × 8·n_arms RGB strip: one grey cell per arm, the task's best arm red."""
        if self.render_mode != "rgb_array":
            return None
        image = np.full((8, 8 * len(self.arms), 3), 96, dtype=np.uint8)
        best = int(np.argmin(np.abs(self.arms - self._target)))
        image[:, 8 * best : 8 * best + 8] = (255, 0, 0)
        return image
