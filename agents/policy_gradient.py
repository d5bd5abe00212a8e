"""What every policy-gradient learner of ngrl shares (NPG, VPG, and the meta-learners that read their rollouts).

Written once here:

- the prepared rollout :class:`PolicyGradientBatch` (actions in the family's layout, standardised GAE
  advantages Â) and its surrogate L(θ) = mean(π_θ(a|s)/π_old(a|s) · Â), whose gradient at θ = θ_old is
  the policy gradient mean(∇log π(a|s) · Â) (Williams 1992; Sutton et al. 2000; Schulman et al. 2015, eq. 14);
- the critic fit: epochs of Adam minibatch regressions of V on the GAE returns that never move the actor;
- :class:`PolicyUpdate`, what one actor update returns (``train()``'s value), so that a caller — a
  meta-learner's inner loop — reads the update's statistics from a returned record, not from a logger.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from torch import Tensor
from torch.nn import functional as F

from stable_baselines3.common.policies import ActorCriticPolicy

from agents.common import family_actions
from agents.recurrent.on_policy import whole_rollout
from ngrl.fisher.distributions import OutputDistribution
from ngrl.sb3_adapter import ActorView, actor_view

__all__ = [
    "PolicyGradientBatch",
    "PolicyGradientMixin",
    "PolicyUpdate",
    "policy_gradient_batch",
    "policy_surrogate",
    "standardize_advantages",
    "surrogate_objective",
]

ADVANTAGE_EPS = 1e-8  # added to std(Â) before dividing


def standardize_advantages(advantages: Tensor, normalize: bool = True, scale: float | None = None) -> Tensor:
    """(Â − mean Â) / (std Â + 1e-8) when ``normalize`` and there is more than one advantage; Â otherwise.

    :param scale: a fixed scale s > 0 in place of the batch's own std: (Â − mean Â) / s when ``normalize`` (a
        meta-learner's scale of its whole family, so that a batch with little to learn keeps small advantages)
    """
    if normalize and len(advantages) > 1:
        spread = advantages.std() + ADVANTAGE_EPS if scale is None else scale
        return (advantages - advantages.mean()) / spread
    return advantages


@dataclass(frozen=True)
class PolicyGradientBatch:
    """One whole rollout, ready for a policy-gradient step.

    :param rollout: the rollout as :func:`agents.recurrent.on_policy.whole_rollout` gives it (flat
        transitions, or one sequence per env with its start state for a recurrent policy)
    :param actor_inputs: what the actor reads of it (``ActorView.inputs_from``: observations, or the sequences)
    :param actions: the actions in the layout of the policy's output family (class indices for Discrete)
    :param old_log_prob: log π_old(a|s), recorded while acting
    :param advantages: Â, standardised if the learner standardises
    """

    rollout: Any
    actor_inputs: Any
    actions: Tensor
    old_log_prob: Tensor
    advantages: Tensor

    def surrogate(self, family: OutputDistribution, outputs: Tensor) -> Tensor:
        """L = mean(π(a|s)/π_old(a|s) · Â) from the actor's raw outputs on ``actor_inputs``.

        Its gradient at π = π_old is the policy gradient mean(∇log π(a|s) · Â).
        """
        return surrogate_objective(family, outputs, self.actions, self.old_log_prob, self.advantages)


def surrogate_objective(family: OutputDistribution, outputs: Tensor, actions: Tensor, old_log_prob: Tensor, advantages: Tensor) -> Tensor:
    """L = mean(π(a|s)/π_old(a|s) · Â), π given by the family's raw ``outputs``; its gradient at π = π_old is mean(∇log π · Â)."""
    return (torch.exp(family.log_prob(outputs, actions) - old_log_prob) * advantages).mean()


def policy_surrogate(policy: ActorCriticPolicy | ActorView, batch: PolicyGradientBatch) -> Tensor:
    """``batch``'s surrogate under the current actor of ``policy`` (or of an actor view; its parameters may differ from π_old's)."""
    view = policy if isinstance(policy, ActorView) else actor_view(policy)
    return batch.surrogate(view.family, view.outputs(batch.actor_inputs))


def policy_gradient_batch(
    buffer: RolloutBuffer, action_space: spaces.Space, normalize_advantage: bool = True, *, actor: ActorView,
    advantage_scale: float | None = None,
) -> PolicyGradientBatch:
    """The whole rollout of ``buffer`` (GAE already computed) as a :class:`PolicyGradientBatch`.

    :param actor: the view of the actor that will read it (it says what the actor reads of the rollout)
    :param advantage_scale: the fixed scale the centred advantages are divided by, in place of their own std
        (see :func:`standardize_advantages`)
    :raises ValueError: when an advantage is NaN or infinite (diverged rewards or values)
    """
    rollout = whole_rollout(buffer)
    actor_inputs = actor.inputs_from(rollout)
    actions = family_actions(rollout.actions, action_space)
    if not torch.isfinite(rollout.advantages).all():
        raise ValueError(
            "NaN or inf in the advantages: the rewards or value estimates diverged. Check the env's rewards "
            "for NaN, scale large rewards (normalize: true in the config wraps the env in VecNormalize), or lower learning_rate."
        )
    advantages = standardize_advantages(rollout.advantages, normalize_advantage, advantage_scale)
    return PolicyGradientBatch(rollout, actor_inputs, actions, rollout.old_log_prob, advantages)


@dataclass(frozen=True)
class PolicyUpdate:
    """What one actor update did (returned by ``train()`` of NPG and VPG).

    :param batch: the rollout the update was computed from
    :param kl: mean KL(π_old ‖ π_new) over the rollout's states
    :param cg_iterations: iterations of the natural direction's solve (None: no solve)
    """

    batch: PolicyGradientBatch
    kl: float
    cg_iterations: int | None = None


class PolicyGradientMixin:
    """The policy-gradient parts of an on-policy learner (list it before ``RecurrentOnPolicyMixin`` and the SB3 base).

    Needs ``normalize_advantage``, ``n_critic_updates``, ``_actor`` (the actor view), ``_actor_params``
    and ``_critic_batches()`` (from :class:`agents.recurrent.on_policy.RecurrentOnPolicyMixin`).
    """

    # The scale that centred advantages are divided by in place of each rollout's own std (None: their own). A
    # meta-learner sets it on its inner learners to its family's advantage scale (MetaLearner's inner_advantage_scale).
    advantage_scale: float | None = None

    def policy_gradient_batch(self) -> PolicyGradientBatch:
        """The learner's current rollout buffer, prepared as its ``train()`` uses it (advantages standardised or not)."""
        return policy_gradient_batch(
            self.rollout_buffer, self.action_space, self.normalize_advantage, actor=self._actor,  # type: ignore[attr-defined]
            advantage_scale=self.advantage_scale,
        )

    def _fit_critic(self) -> float:
        """``n_critic_updates`` epochs of minibatch regression of V on the GAE returns with the policy's optimizer.

        The actor's gradients are dropped before every step, so a shared features extractor moves with
        the actor's update only. Returns the mean minibatch loss (0 when no update ran).
        """
        optimizer = self.policy.optimizer  # type: ignore[attr-defined]
        losses = []
        for _ in range(self.n_critic_updates):
            for batch, values in self._critic_batches():
                loss = F.mse_loss(batch.returns, values)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for p in self._actor_params:  # type: ignore[attr-defined]  # the critic must not move the actor
                    p.grad = None
                optimizer.step()
                losses.append(loss.item())
        return float(np.mean(losses)) if losses else 0.0
