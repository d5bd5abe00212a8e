"""Pendulum whose motor is reversed or weakened between tasks: the same state needs opposite torques."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from gymnasium.envs.classic_control.pendulum import PendulumEnv

from envs.task_family import ParameterTaskFamily

__all__ = ["PENDULUM_GAIN_RANGE", "ActuatedPendulumEnv", "make_pendulum_actuator"]

PENDULUM_GAIN_RANGE = (0.5, 1.5)


class ActuatedPendulumEnv(PendulumEnv):
    """Pendulum whose motor applies ``direction`` · ``gain`` · clip(u, −2, 2) for the action u.

    The action space stays Pendulum's [−2, 2]; the applied torque, which both the dynamics and the cost
    (0.001·torque²) see, lies in [−2·gain, 2·gain]. With ``direction`` = −1 a torque needs the opposite
    action. Unlike CartPole, whose cart a memoryless policy can shake fast enough to hold the pole up whichever
    way it pushes (README "Meta-RL"), a torque at the pivot gives no such effect: near the top no linear policy
    u = k₁θ + k₂θ̇ stabilises both directions, since the linearised closed loops' traces are ±gain·k₂·3/(ml²) and a
    stable 2 × 2 system needs a negative trace. The task is not observed (the observation is Pendulum's).

    :param render_mode: Pendulum's render modes
    """

    def __init__(self, render_mode: str | None = None) -> None:
        super().__init__(render_mode=render_mode)
        self.nominal_torque = self.max_torque
        self.direction = 1.0
        self.gain = 1.0

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float32), -self.nominal_torque, self.nominal_torque)
        self.max_torque = abs(self.gain) * self.nominal_torque  # Pendulum clips to ±max_torque: the scaled range passes
        return super().step(self.direction * self.gain * action)


def make_pendulum_actuator(
    gain_range: tuple[float, float] = PENDULUM_GAIN_RANGE,
    directions: tuple[float, ...] = (-1.0, 1.0),
    render_mode: str | None = None,
) -> ParameterTaskFamily:
    """The actuator family (``ngrl/PendulumActuator-v0``, 200 steps): tasks ``{"gain": g, "direction": ±1}``, the gain
    uniform in ``gain_range``, the direction drawn from ``directions`` with equal probabilities."""
    choices: Mapping[str, tuple[float, ...]] = {"direction": tuple(directions)}
    return ParameterTaskFamily(ActuatedPendulumEnv(render_mode=render_mode), {"gain": tuple(gain_range)}, choices=choices)
