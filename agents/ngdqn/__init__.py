from agents.ngdqn.ngdqn import NGDQN

__all__ = ["NGDQN"]
