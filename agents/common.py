"""What every ngrl agent shares: safe atomic checkpoints (``agents.checkpoint``) and the critic's parameters.

The actor/critic split is defined once, in :mod:`ngrl.sb3_adapter`: the actor's parameters are its actor
view's ``params`` (:func:`ngrl.actor_view`), the critic's are :func:`critic_parameters` (re-exported here).
"""

from __future__ import annotations

from agents.checkpoint import CheckpointError, CheckpointMixin, NonFiniteParametersError, register_safe_class, zip_path
from ngrl.sb3_adapter import critic_parameters

__all__ = ["CheckpointError", "CheckpointMixin", "NonFiniteParametersError", "critic_parameters", "register_safe_class", "zip_path"]

