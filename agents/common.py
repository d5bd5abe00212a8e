"""What every ngrl agent shares: safe atomic checkpoints (``agents.checkpoint``) and the critic's parameters.

The actor/critic split is defined once, in :mod:`ngrl.sb3_adapter`: the actor's parameters are its actor
view's ``params`` (:func:`ngrl.actor_view`), the critic's are :func:`critic_parameters` (re-exported here).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from gymnasium import spaces

from agents.checkpoint import CheckpointError, CheckpointMixin, NonFiniteParametersError, register_safe_class, zip_path
from ngrl.sb3_adapter import critic_parameters

__all__ = [
    "CheckpointError",
    "CheckpointMixin",
    "NonFiniteParametersError",
    "critic_parameters",
    "family_actions",
    "isolated_random_state",
    "register_safe_class",
    "zip_path",
]


def family_actions(actions: torch.Tensor, action_space: spaces.Space) -> torch.Tensor:
    """A rollout's stored actions in the layout of the policy's output family: class indices (n,) for a
    Discrete space, the stored rows unchanged otherwise."""
    return actions.long().flatten() if isinstance(action_space, spaces.Discrete) else actions


@contextlib.contextmanager
def isolated_random_state(seed: int | None) -> Iterator[None]:
    """Run the block with Python's, NumPy's and torch's global generators (CPU and CUDA) seeded by ``seed``, then put
    them back as they were: an evaluation inside is reproducible from ``seed`` alone, and the training around it draws
    the same numbers as without it. ``seed=None``: the block uses (and advances) the generators as they are."""
    if seed is None:
        yield
        return
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)

