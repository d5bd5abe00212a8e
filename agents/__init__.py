"""SB3-style agents built on ngrl's natural-gradient backend."""

from agents.common import CheckpointError
from agents.npg import NPG

# The registry the command line reads: algorithm name -> class.
ALGOS = {"npg": NPG}

__all__ = ["ALGOS", "CheckpointError", "NPG"]
