"""HalfCheetah with a target forward velocity per task (Finn, Abbeel & Levine 2017, section 5.3).

Needs MuJoCo (``pip install "gymnasium[mujoco]"``); ``ngrl/HalfCheetahVel-v0`` is registered only when
the ``mujoco`` package is importable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

from envs.task_family import Task, TaskFamily, check_task

__all__ = ["HalfCheetahVelEnv"]


class HalfCheetahVelEnv(TaskFamily, HalfCheetahEnv):
    """Reward −|v_x − v_target| − 0.1‖a‖²; the target velocity is the task, uniform in [0, 2], not observed.

    :param velocity_low: smallest target velocity
    :param velocity_high: largest target velocity
    :param kwargs: passed to gymnasium's ``HalfCheetahEnv`` (v5)
    """

    task_names = ("velocity",)

    def __init__(self, velocity_low: float = 0.0, velocity_high: float = 2.0, **kwargs: Any) -> None:
        if not velocity_low <= velocity_high:
            raise ValueError(f"need velocity_low <= velocity_high, got {velocity_low} and {velocity_high}")
        super().__init__(**kwargs)
        self.velocity_low, self.velocity_high = float(velocity_low), float(velocity_high)
        self._target = 1.0

    def sample_tasks(self, n: int) -> list[Task]:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"sample_tasks needs a non-negative integer count, got {n!r}")
        return [{"velocity": float(v)} for v in self.np_random.uniform(self.velocity_low, self.velocity_high, size=int(n))]

    def set_task(self, task: Mapping[str, float]) -> None:
        self._target = check_task(task, self.task_names)["velocity"]

    def get_task(self) -> Task:
        return {"velocity": self._target}

    def step(self, action):
        obs, _, terminated, truncated, info = super().step(action)
        velocity_cost = abs(float(info["x_velocity"]) - self._target)
        reward = -velocity_cost + float(info["reward_ctrl"])
        info["reward_velocity"] = -velocity_cost
        return obs, reward, terminated, truncated, info
