"""Policy aliases of NGDQN: DQN's Q-network policies without the gradient optimizer NGDQN never steps."""

from __future__ import annotations

from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.dqn.policies import CnnPolicy as DQNCnnPolicy
from stable_baselines3.dqn.policies import MlpPolicy as DQNMlpPolicy
from stable_baselines3.dqn.policies import MultiInputPolicy as DQNMultiInputPolicy

__all__ = ["CnnPolicy", "MlpPolicy", "MultiInputPolicy"]


class _WithoutOptimizer:
    """DQNPolicy._build minus the optimizer: NGDQN moves θ by its natural step, never by a torch optimizer."""

    def _build(self, lr_schedule: Schedule) -> None:
        self.q_net = self.make_q_net()
        self.q_net_target = self.make_q_net()
        self.q_net_target.load_state_dict(self.q_net.state_dict())
        self.q_net_target.set_training_mode(False)
        self.optimizer = None  # no Adam: the natural step is NGDQN.train()'s


class MlpPolicy(_WithoutOptimizer, DQNMlpPolicy):
    """DQN's MlpPolicy without an optimizer."""


class CnnPolicy(_WithoutOptimizer, DQNCnnPolicy):
    """DQN's CnnPolicy without an optimizer."""


class MultiInputPolicy(_WithoutOptimizer, DQNMultiInputPolicy):
    """DQN's MultiInputPolicy without an optimizer."""
