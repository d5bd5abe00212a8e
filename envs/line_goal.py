"""A point on a line must reach a goal it does not observe: the smallest family that needs adaptation."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.task_family import ParameterTaskFamily

__all__ = ["GOAL_RANGE", "LineGoalEnv", "make_line_goal"]

GOAL_RANGE = (-1.0, 1.0)


class LineGoalEnv(gym.Env):
    """A point starts at x = 0 and moves by ``max_step``·clip(a, −1, 1) per step; reward −|x − goal|.

    The observation is x alone: the goal (attribute ``goal``, default 0.5) is not observed, so a
    policy that ignores the rewards can do well on goals of one side only — the optimal action at
    x = 0 is +1 for a goal on the right and −1 for one on the left. No termination; the time limit
    is the registration's (30 steps for ``ngrl/LineGoal-v0``).

    :param max_step: the largest move per step
    :param render_mode: None or "rgb_array" (a 64×8 strip of [−2, 2]: the point white, the goal red)
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, max_step: float = 0.1, render_mode: str | None = None) -> None:
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if not max_step > 0:
            raise ValueError(f"max_step must be positive, got {max_step}")
        self.render_mode = render_mode
        self.max_step = float(max_step)
        self.goal = 0.5
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)
        self._position = 0.0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._position = 0.0
        return np.array([self._position], dtype=np.float32), {}

    def step(self, action):
        self._position += self.max_step * float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
        distance = abs(self._position - self.goal)
        return np.array([self._position], dtype=np.float32), -distance, False, False, {"distance": distance}

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        image = np.zeros((8, 64, 3), dtype=np.uint8)
        for position, colour in ((self.goal, (255, 0, 0)), (self._position, (255, 255, 255))):
            col = int(np.clip((position + 2.0) * 16, 0, 63))
            image[2:6, max(col - 1, 0) : col + 2] = colour
        return image


def make_line_goal(
    goal_range: tuple[float, float] = GOAL_RANGE, max_step: float = 0.1, render_mode: str | None = None
) -> ParameterTaskFamily:
    """The line-goal family (``ngrl/LineGoal-v0``, 30 steps): tasks are goals uniform in ``goal_range``, as ``{"goal": g}``."""
    return ParameterTaskFamily(LineGoalEnv(max_step=max_step, render_mode=render_mode), {"goal": tuple(goal_range)})
