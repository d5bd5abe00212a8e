"""2D navigation whose control axes are rotated or mirrored between tasks."""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.task_family import ParameterTaskFamily

__all__ = ["RotatedControlsEnv", "make_navigation_axes"]


class RotatedControlsEnv(gym.Env):
    """A point starts uniformly in [−``start``, ``start``]² and must reach the origin; its controls are turned.

    The action moves the point by ``max_step`` · R(angle) · diag(1, mirror) · clip(a, −1, 1), where
    R(angle) is the rotation by ``angle`` (radians) and ``mirror`` = −1 flips the second control
    axis (attributes ``angle`` = 0 and ``mirror`` = 1 by default: plain controls). Reward −‖x‖; the
    observation is x. The task is not observed: at the same x the optimal action of tasks whose
    angles differ by π is opposite, so no memoryless policy does well on all tasks. No termination;
    the time limit is the registration's (50 steps for ``ngrl/Navigation2DAxes-v0``).

    :param start: half-width of the square of start positions
    :param max_step: the largest move per control axis and step
    :param render_mode: None or "rgb_array" (a 64×64 view of [−1, 1]²: the point white, the origin red)
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, start: float = 0.5, max_step: float = 0.1, render_mode: str | None = None) -> None:
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if not (start >= 0 and max_step > 0):
            raise ValueError(f"need start >= 0 and max_step > 0, got {start} and {max_step}")
        self.render_mode = render_mode
        self.start, self.max_step = float(start), float(max_step)
        self.angle = 0.0
        self.mirror = 1.0
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self._position = np.zeros(2)

    def control_matrix(self) -> np.ndarray:
        """R(angle) · diag(1, mirror): the map from a clipped action to a move (in units of ``max_step``)."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        return np.array([[c, -s], [s, c]]) @ np.diag([1.0, self.mirror])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._position = self.np_random.uniform(-self.start, self.start, size=2)
        return self._position.astype(np.float32), {}

    def step(self, action):
        control = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        self._position = self._position + self.max_step * self.control_matrix() @ control
        distance = float(np.linalg.norm(self._position))
        return self._position.astype(np.float32), -distance, False, False, {"distance": distance}

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        image = np.zeros((64, 64, 3), dtype=np.uint8)
        for position, colour in ((np.zeros(2), (255, 0, 0)), (self._position, (255, 255, 255))):
            col, row = np.clip(((np.asarray(position) + 1.0) * 32).astype(int), 0, 63)
            image[max(63 - row - 1, 0) : 63 - row + 1, max(col - 1, 0) : col + 2] = colour
        return image


def make_navigation_axes(
    angle_range: tuple[float, float] = (-math.pi, math.pi),
    mirrors: tuple[float, ...] = (-1.0, 1.0),
    start: float = 0.5,
    max_step: float = 0.1,
    render_mode: str | None = None,
) -> ParameterTaskFamily:
    """The rotated-controls family (``ngrl/Navigation2DAxes-v0``, 50 steps): tasks ``{"angle": α, "mirror": ±1}``, α
    uniform in ``angle_range``, the mirror flag drawn from ``mirrors`` with equal probabilities."""
    env = RotatedControlsEnv(start=start, max_step=max_step, render_mode=render_mode)
    return ParameterTaskFamily(env, {"angle": tuple(angle_range)}, choices={"mirror": tuple(mirrors)})
