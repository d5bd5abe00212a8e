"""A cue-memory corridor (T-maze style): a cue at the start, a left/right choice after a delay."""

from __future__ import annotations

from typing import Any

import numpy as np
import gymnasium as gym
from gymnasium import spaces

__all__ = ["CueCorridorEnv"]


class CueCorridorEnv(gym.Env):
    """Remember a binary cue for ``delay`` steps, then choose the side it pointed to.

    Observation (3 floats): [cue, corridor, junction]. At t = 0 the cue is ±1 (drawn uniformly) and
    the other entries are 0; during the ``delay`` corridor steps only ``corridor`` = 1; at the last step
    only ``junction`` = 1. The agent walks the corridor whatever it does (actions there are ignored and
    unrewarded); at the junction action 0 (left) is right for cue −1 and action 1 (right) for cue +1,
    rewarded ``+1`` if correct and ``wrong_reward`` otherwise, which ends the episode. An episode
    lasts ``delay`` + 2 steps; a memoryless policy earns (1 + wrong_reward)/2 on average.

    :param delay: corridor steps between the cue and the junction (≥ 0)
    :param wrong_reward: reward of a wrong choice (−1 by default: chance level is 0)
    :param render_mode: "rgb_array" (a strip of cells: cue colour at the start, the agent in white) or "ansi"
    """

    metadata = {"render_modes": ["rgb_array", "ansi"]}

    def __init__(self, delay: int = 10, wrong_reward: float = -1.0, render_mode: str | None = None) -> None:
        if int(delay) != delay or delay < 0:
            raise ValueError(f"delay must be a non-negative integer, got {delay!r}")
        if not wrong_reward < 1.0:
            raise ValueError(f"wrong_reward must be below the reward of a correct choice (1), got {wrong_reward}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        self.render_mode = render_mode
        self.delay = int(delay)
        self.wrong_reward = float(wrong_reward)
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self._cue = 1
        self._t = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(3, dtype=np.float32)
        if self._t == 0:
            obs[0] = self._cue
        elif self._t <= self.delay:
            obs[1] = 1.0
        else:
            obs[2] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._cue = 1 if self.np_random.random() < 0.5 else -1
        self._t = 0
        return self._obs(), {"cue": self._cue}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        if not self.action_space.contains(action):
            raise ValueError(f"action must be 0 (left) or 1 (right), got {action!r}")
        at_junction = self._t > self.delay
        if at_junction:
            correct = int(action) == (1 if self._cue > 0 else 0)
            reward = 1.0 if correct else self.wrong_reward
            return self._obs(), reward, True, False, {"cue": self._cue, "is_success": correct}
        self._t += 1
        return self._obs(), 0.0, False, False, {"cue": self._cue}

    def render(self) -> np.ndarray | str | None:
        cells = self.delay + 2
        position = min(self._t, cells - 1)
        if self.render_mode == "ansi":
            return "".join("A" if i == position else ("+" if self._cue > 0 else "-") if i == 0 else "." for i in range(cells))
        if self.render_mode == "rgb_array":
            image = np.zeros((8, 8 * cells, 3), dtype=np.uint8)
            image[:, :8] = (0, 160, 0) if self._cue > 0 else (160, 0, 0)
            image[2:6, 8 * position + 2 : 8 * position + 6] = 255
            return image
        return None
