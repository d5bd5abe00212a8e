"""Dynamics-randomised classic control: CartPole (pole length, pole mass), Pendulum (mass, length, gravity).

Both are gymnasium's own envs made into families by :class:`envs.ParameterTaskFamily`.
"""

from __future__ import annotations

from collections.abc import Mapping

from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from gymnasium.envs.classic_control.pendulum import PendulumEnv

from envs.task_family import ParameterTaskFamily, Task

__all__ = ["CARTPOLE_RANGES", "PENDULUM_RANGES", "make_cartpole_dynamics", "make_pendulum_dynamics"]

# Half pole length (default 0.5) and pole mass (default 0.1).
CARTPOLE_RANGES: dict[str, tuple[float, float]] = {"length": (0.25, 1.0), "masspole": (0.05, 0.5)}
# Pendulum mass m (default 1), length l (default 1), gravity g (default 10).
PENDULUM_RANGES: dict[str, tuple[float, float]] = {"m": (0.5, 1.5), "l": (0.5, 1.5), "g": (8.0, 12.0)}


def _apply_cartpole(env: CartPoleEnv, task: Task) -> None:
    """Set the pole and the quantities CartPole derives from it (total mass, mass·half-length)."""
    for name, value in task.items():
        setattr(env, name, value)
    env.total_mass = env.masspole + env.masscart
    env.polemass_length = env.masspole * env.length


def make_cartpole_dynamics(ranges: Mapping[str, tuple[float, float]] | None = None, render_mode: str | None = None) -> ParameterTaskFamily:
    """CartPole whose tasks vary the half pole length and the pole mass (``ngrl/CartPoleDynamics-v0``, 500 steps)."""
    return ParameterTaskFamily(CartPoleEnv(render_mode=render_mode), dict(ranges or CARTPOLE_RANGES), apply=_apply_cartpole)


def make_pendulum_dynamics(ranges: Mapping[str, tuple[float, float]] | None = None, render_mode: str | None = None) -> ParameterTaskFamily:
    """Pendulum whose tasks vary mass, length and gravity (``ngrl/PendulumDynamics-v0``, 200 steps)."""
    return ParameterTaskFamily(PendulumEnv(render_mode=render_mode), dict(ranges or PENDULUM_RANGES))
