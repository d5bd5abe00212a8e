from agents.npg.npg import NPG
from agents.npg.policies import CnnPolicy, MlpPolicy, MultiInputPolicy

__all__ = ["NPG", "MlpPolicy", "CnnPolicy", "MultiInputPolicy"]
