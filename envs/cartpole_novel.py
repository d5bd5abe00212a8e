"""CartPole with the velocities hidden: a memory task (the agent must infer ẋ and θ̇ from history)."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

__all__ = ["CartPoleNoVelEnv"]


class CartPoleNoVelEnv(CartPoleEnv):
    """Gymnasium's CartPole whose observation keeps only the cart position x and the pole angle θ.

    Dynamics, rewards and termination are CartPole-v1's; the observation (x, ẋ, θ, θ̇) loses ẋ and θ̇,
    so a policy without memory cannot balance the pole for long (the zoo's CartPoleNoVel task).
    """

    VISIBLE = np.array([0, 2])

    def __init__(self, render_mode: str | None = None) -> None:
        super().__init__(render_mode=render_mode)
        full = self.observation_space
        self.observation_space = spaces.Box(full.low[self.VISIBLE], full.high[self.VISIBLE], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        obs, info = super().reset(seed=seed, options=options)
        return obs[self.VISIBLE], info

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = super().step(action)
        return obs[self.VISIBLE], reward, terminated, truncated, info
