"""What every ngrl agent shares: safe atomic checkpoints (``agents.checkpoint``), actor/critic parameter lists."""

from __future__ import annotations

from torch import nn
from stable_baselines3.common.policies import ActorCriticPolicy

from agents.checkpoint import CheckpointError, CheckpointMixin, NonFiniteParametersError, register_safe_class, zip_path

__all__ = ["CheckpointError", "CheckpointMixin", "NonFiniteParametersError", "critic_parameters", "register_safe_class", "zip_path"]


def critic_parameters(policy: ActorCriticPolicy) -> list[nn.Parameter]:
    """The value function's own parameters (critic features extractor if not shared, value MLP, value head).

    A policy with modules of its own in the critic's path (a recurrent core) declares them by a
    ``critic_parameters()`` method, which is used instead.
    """
    own = getattr(policy, "critic_parameters", None)
    if callable(own):
        return list(own())
    modules: list[nn.Module] = [policy.mlp_extractor.value_net, policy.value_net]
    if not policy.share_features_extractor:
        modules.insert(0, policy.vf_features_extractor)
    return list({id(p): p for m in modules for p in m.parameters()}.values())


