"""Recurrent actor-critic policies (ERNN, LSTM, GRU bodies) and their sequence rollout buffer."""

from agents.recurrent.buffers import RecurrentRolloutBuffer, RecurrentSequences
from agents.recurrent.cores import CORES, ErnnCore, GruCore, LstmCore, RecurrentCore, make_core
from agents.recurrent.policies import (
    CnnErnnPolicy,
    MlpErnnPolicy,
    RecurrentActorCriticCnnPolicy,
    RecurrentActorCriticPolicy,
    RecurrentState,
    SequenceActor,
)

__all__ = [
    "CORES",
    "CnnErnnPolicy",
    "ErnnCore",
    "GruCore",
    "LstmCore",
    "MlpErnnPolicy",
    "RecurrentActorCriticCnnPolicy",
    "RecurrentActorCriticPolicy",
    "RecurrentCore",
    "RecurrentRolloutBuffer",
    "RecurrentSequences",
    "RecurrentState",
    "SequenceActor",
    "make_core",
]
