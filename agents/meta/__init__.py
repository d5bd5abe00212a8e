"""Meta-learners over task families: Reptile, FOMAML, iMAML (NPG or vanilla policy-gradient inner loops) and RL²; and
joint (multi-task) training, their baseline."""

from agents.meta.base import INNER_ALGOS, MetaLearner, TaskAdaptation
from agents.meta.fomaml import FOMAML
from agents.meta.imaml import IMAML
from agents.meta.joint import JointTraining
from agents.meta.reptile import Reptile
from agents.meta.rl2 import RL2
from agents.meta.vpg import VPG

# The registry ``train.py meta-train`` reads: algorithm name -> class.
META_ALGOS = {"reptile": Reptile, "fomaml": FOMAML, "imaml": IMAML, "rl2": RL2, "joint": JointTraining}

__all__ = ["FOMAML", "IMAML", "INNER_ALGOS", "JointTraining", "META_ALGOS", "MetaLearner", "RL2", "Reptile", "TaskAdaptation", "VPG"]
