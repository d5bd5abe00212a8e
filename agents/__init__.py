"""SB3-style agents built on ngrl's natural-gradient backend."""

from agents.common import CheckpointError, NonFiniteParametersError, register_safe_class
from agents.meta import FOMAML, IMAML, META_ALGOS, RL2, VPG, JointTraining, Reptile
from agents.ngdqn import NGDQN
from agents.npg import NPG
from agents.recurrent import RecurrentRolloutBuffer

# The registry `train.py train/eval` reads: algorithm name -> class (meta-learners: `train.py meta-train`).
ALGOS = {"npg": NPG, "ngdqn": NGDQN}

# Classes of ngrl's own that a checkpoint may name besides the algorithms and their policies.
register_safe_class(RecurrentRolloutBuffer)

__all__ = [
    "ALGOS",
    "CheckpointError",
    "FOMAML",
    "IMAML",
    "JointTraining",
    "META_ALGOS",
    "NGDQN",
    "NPG",
    "NonFiniteParametersError",
    "RL2",
    "Reptile",
    "VPG",
    "register_safe_class",
]
