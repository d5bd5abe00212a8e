"""MAML's meta-gradient by backpropagation through the inner policy-gradient steps (the reference iMAML avoids)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from agents.common import family_actions
from agents.policy_gradient import standardize_advantages, surrogate_objective
from ngrl.sb3_adapter import actor_view

__all__ = ["maml_meta_gradient"]


def maml_meta_gradient(policy: Any, inner_batches: Sequence[Any], test_batch: Any, step_size: float) -> Tensor:
    """∇_θ L_test(φ_k(θ)) through k differentiable steps φ_{j+1} = φ_j − α ∇L̂_j(φ_j), φ_0 = θ (Finn et al. 2017, eq. 1).

    Each L̂_j and L_test is the surrogate −mean(π_φ(a|s)/π_old(a|s) · Â) of one rollout batch
    (standardised advantages). Every step's graph is kept (create_graph) until the final backward,
    so memory grows linearly with k — the cost iMAML's implicit gradient removes.

    :param policy: an SB3 ActorCriticPolicy holding θ (its actor parameters are the meta-parameters)
    :param inner_batches: one rollout batch (``RolloutBufferSamples``) per inner step
    :param test_batch: the batch of the test loss
    :param step_size: α
    :return: the flat meta-gradient over the actor's parameters (``actor_view(policy).params``)
    """
    actor = actor_view(policy)
    theta = actor.params

    def loss(values: Sequence[Tensor], batch: Any) -> Tensor:
        actions = family_actions(batch.actions, policy.action_space)
        advantages = standardize_advantages(batch.advantages)
        outputs = actor.function(values, actor.inputs_from(batch))  # the actor at φ = values
        return -surrogate_objective(actor.family, outputs, actions, batch.old_log_prob, advantages)

    phi: list[Tensor] = list(theta)
    for batch in inner_batches:
        grads = torch.autograd.grad(loss(phi, batch), phi, create_graph=True)
        phi = [p - step_size * g for p, g in zip(phi, grads)]
    meta = torch.autograd.grad(loss(phi, test_batch), theta)
    return torch.cat([g.reshape(-1) for g in meta])
