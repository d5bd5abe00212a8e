"""CartPole whose actuator is reversed or weakened between tasks: the same state needs opposite pushes."""

from __future__ import annotations

from collections.abc import Mapping

from gymnasium.envs.classic_control.cartpole import CartPoleEnv

from envs.task_family import ParameterTaskFamily

__all__ = ["ACTUATOR_GAIN_RANGE", "ActuatedCartPoleEnv", "make_cartpole_actuator"]

ACTUATOR_GAIN_RANGE = (0.5, 1.5)


class ActuatedCartPoleEnv(CartPoleEnv):
    """CartPole whose push is ``direction`` · ``gain`` · 10 N to the right for action 1 (its negative for action 0).

    With ``direction`` = −1 the actions are swapped: the dynamics under (−1, g) with action a equal
    those under (+1, g) with action 1 − a, so the optimal actions of the two tasks are opposite at
    every state where one action is strictly better. That does not stop one memoryless policy from doing
    well on both: joint training found one that balances the pole for 500 steps in either direction, in one
    as an ordinary balancer and in the other by shaking the cart (its pushes alternate at 60–70% of the steps;
    ``bench/bench_meta.py --memoryless``, README "Meta-RL"). ``ngrl/PendulumActuator-v0`` varies the motor the
    same way without that loophole. The task is not observed (the observation is CartPole's).

    :param render_mode: CartPole's render modes
    """

    def __init__(self, render_mode: str | None = None) -> None:
        super().__init__(render_mode=render_mode)
        self.nominal_force = self.force_mag
        self.direction = 1.0
        self.gain = 1.0

    def step(self, action):
        self.force_mag = self.direction * self.gain * self.nominal_force  # CartPole pushes with ±force_mag
        return super().step(action)


def make_cartpole_actuator(
    gain_range: tuple[float, float] = ACTUATOR_GAIN_RANGE,
    directions: tuple[float, ...] = (-1.0, 1.0),
    render_mode: str | None = None,
) -> ParameterTaskFamily:
    """The actuator family (``ngrl/CartPoleActuator-v0``, 500 steps): tasks ``{"gain": g, "direction": ±1}``, the gain
    uniform in ``gain_range``, the direction drawn from ``directions`` with equal probabilities."""
    choices: Mapping[str, tuple[float, ...]] = {"direction": tuple(directions)}
    return ParameterTaskFamily(ActuatedCartPoleEnv(render_mode=render_mode), {"gain": tuple(gain_range)}, choices=choices)
