"""2D point navigation to an unobserved goal (Finn, Abbeel & Levine 2017, section 5.3)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.task_family import Task, TaskFamily, check_task

__all__ = ["Navigation2DEnv"]


class Navigation2DEnv(TaskFamily, gym.Env):
    """A point starts at the origin and moves by 0.1·clip(a, −1, 1) per step; reward −‖x − goal‖.

    The observation is the position only: the goal (the task, uniform in [−0.5, 0.5]²) must be found
    from rewards, which is what adaptation is for. Registered as ``ngrl/Navigation2D-v0`` with a
    horizon of 100 steps (truncation, no termination). The default goal is (0.5, 0.5).

    :param goal_low: lower corner of the goal box
    :param goal_high: upper corner of the goal box
    :param max_step: the largest move per coordinate and step
    :param render_mode: None or "rgb_array" (a 64×64 top view: the point in white, the goal in red)
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    task_names = ("goal_x", "goal_y")

    def __init__(
        self, goal_low: float = -0.5, goal_high: float = 0.5, max_step: float = 0.1, render_mode: str | None = None
    ) -> None:
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        if not goal_low < goal_high:
            raise ValueError(f"need goal_low < goal_high, got {goal_low} and {goal_high}")
        if not max_step > 0:
            raise ValueError("max_step must be positive")
        self.goal_low, self.goal_high, self.max_step = float(goal_low), float(goal_high), float(max_step)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self._goal = np.array([0.5, 0.5])
        self._position = np.zeros(2)

    def sample_tasks(self, n: int) -> list[Task]:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"sample_tasks needs a non-negative integer count, got {n!r}")
        goals = self.np_random.uniform(self.goal_low, self.goal_high, size=(int(n), 2))
        return [{"goal_x": float(x), "goal_y": float(y)} for x, y in goals]

    def set_task(self, task: Mapping[str, float]) -> None:
        task = check_task(task, self.task_names)
        self._goal = np.array([task["goal_x"], task["goal_y"]])

    def get_task(self) -> Task:
        return {"goal_x": float(self._goal[0]), "goal_y": float(self._goal[1])}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._position = np.zeros(2)
        return self._position.astype(np.float32), {}

    def step(self, action):
        move = self.max_step * np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        self._position = self._position + move
        distance = float(np.linalg.norm(self._position - self._goal))
        return self._position.astype(np.float32), -distance, False, False, {"distance": distance}

    def render(self):
        """A 64×64 RGB top view of the square [−1, 1]²: the point white, the goal red."""
        if self.render_mode != "rgb_array":
            return None
        image = np.zeros((64, 64, 3), dtype=np.uint8)
        for position, colour in ((self._goal, (255, 0, 0)), (self._position, (255, 255, 255))):
            col, row = np.clip(((np.asarray(position) + 1.0) * 32).astype(int), 0, 63)
            image[max(63 - row - 1, 0) : 63 - row + 1, max(col - 1, 0) : col + 2] = colour
        return image
