"""SB3-style agents built on ngrl's natural-gradient backend."""

from agents.common import CheckpointError
from agents.meta import FOMAML, IMAML, Reptile
from agents.ngdqn import NGDQN
from agents.npg import NPG

# The registry `train.py train/eval` reads: algorithm name -> class (meta-learners: `train.py meta-train`).
ALGOS = {"npg": NPG, "ngdqn": NGDQN}

__all__ = ["ALGOS", "CheckpointError", "FOMAML", "IMAML", "NGDQN", "NPG", "Reptile"]
