from agents.ngdqn.baseline import BaselineDQN
from agents.ngdqn.ngdqn import NGDQN

__all__ = ["BaselineDQN", "NGDQN"]
