"""Classic-control tasks with their velocities hidden: memory tasks, as rl-baselines3-zoo's ``*NoVel`` envs.

The zoo multiplies the velocity entries by 0; here they are removed from the observation (as
``ngrl/CartPoleNoVel-v1`` does), which hides the same information without constant inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["VELOCITY_INDICES", "HideVelocity", "make_no_velocity"]

# Observation entries that are velocities, per base env (the zoo's MaskVelocityWrapper lists the same ones).
VELOCITY_INDICES: dict[str, tuple[int, ...]] = {
    "CartPole-v1": (1, 3),  # ẋ, θ̇
    "MountainCar-v0": (1,),  # ẋ
    "MountainCarContinuous-v0": (1,),
    "Pendulum-v1": (2,),  # θ̇ (the observation is cos θ, sin θ, θ̇)
    "LunarLander-v3": (2, 3, 5),  # ẋ, ẏ, angular velocity
    "LunarLanderContinuous-v3": (2, 3, 5),
}


class HideVelocity(gym.ObservationWrapper):
    """Keep only the observation entries of a flat Box that are not listed in ``hidden``."""

    def __init__(self, env: gym.Env, hidden: Sequence[int]) -> None:
        super().__init__(env)
        box = env.observation_space
        if not isinstance(box, spaces.Box) or len(box.shape) != 1:
            raise ValueError(f"HideVelocity needs a flat Box observation space, got {box}")
        if not hidden or any(not 0 <= i < box.shape[0] for i in hidden):
            raise ValueError(f"hidden={list(hidden)} must name entries of the {box.shape[0]}-dimensional observation")
        self.visible = np.array([i for i in range(box.shape[0]) if i not in set(hidden)])
        self.observation_space = spaces.Box(box.low[self.visible], box.high[self.visible], dtype=box.dtype)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation[self.visible]


def make_no_velocity(env_id: str, render_mode: str | None = None) -> gym.Env:
    """``env_id`` (with its own time limit) with the entries of :data:`VELOCITY_INDICES` removed."""
    if env_id not in VELOCITY_INDICES:
        raise ValueError(f"env_id={env_id!r} has no known velocity entries; choose one of {', '.join(VELOCITY_INDICES)}")
    return HideVelocity(gym.make(env_id, render_mode=render_mode), VELOCITY_INDICES[env_id])
