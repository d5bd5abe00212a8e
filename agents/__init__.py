"""SB3-style agents built on ngrl's natural-gradient backend."""

from agents.common import CheckpointError
from agents.ngdqn import NGDQN
from agents.npg import NPG
from agents.meta import FOMAML, IMAML, Reptile  # noqa: F401  (meta-learners; train.py meta-train)

# The registry the command line reads: algorithm name -> class.
ALGOS = {"npg": NPG}
ALGOS["ngdqn"] = NGDQN

__all__ = ["ALGOS", "CheckpointError", "NGDQN", "NPG"]
