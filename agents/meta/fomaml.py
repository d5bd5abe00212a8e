"""First-order MAML (Finn, Abbeel & Levine 2017, section 5.2) with a policy-gradient inner loop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from agents.meta.base import MetaLearner
from agents.recurrent.on_policy import actor_module, is_recurrent, whole_rollout
from ngrl import flat_grad, unflatten
from ngrl.fisher import actor_parameters, policy_distribution

__all__ = ["FOMAML", "surrogate_loss"]


def surrogate_loss(learner: OnPolicyAlgorithm, rollout: Any) -> torch.Tensor:
    """L(φ) = −mean(π_φ(a|s)/π_old(a|s) · Â) on a rollout of ``learner`` (Â standardised as its inner algorithm does).

    Its gradient at φ = φ_old is the negative policy gradient −mean(∇log π · Â). ``rollout`` is the
    whole rollout of :func:`~agents.recurrent.on_policy.whole_rollout` (sequences for a recurrent policy).
    """
    policy = learner.policy
    actions = rollout.actions.long().flatten() if isinstance(policy.action_space, spaces.Discrete) else rollout.actions
    advantages = rollout.advantages
    if getattr(learner, "normalize_advantage", True) and len(advantages) > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    inputs = rollout if is_recurrent(policy) else rollout.observations
    log_prob = policy_distribution(policy).log_prob(actor_module(policy)(inputs), actions)
    return -(torch.exp(log_prob - rollout.old_log_prob) * advantages).mean()


class FOMAML(MetaLearner):
    """
    First-order MAML (Finn, Abbeel & Levine 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of
    Deep Networks", section 5.2; Nichol et al. 2018, section 5): adapt θ to each task by k inner updates
    (φᵢ), collect fresh rollouts of φᵢ, and step θ with the gradient of the test loss at the adapted
    point, gᵢ = ∇_φ L_test,ᵢ(φᵢ) (the second-order terms dropped): θ ← θ − β · meanᵢ gᵢ through the meta
    optimizer (Adam by default, β = ``learning_rate``). L_test is the policy-gradient surrogate
    −mean(π_φ/π_old · Â) on the adapted policy's rollouts.

    :param policy: the policy model ("MlpPolicy", ... or a class)
    :param env: a task family (env id, or VecEnv with one sub-env per task)
    :param learning_rate: β, the meta optimizer's learning rate (constant or schedule)
    :param inner_algo: "npg" (default), "vpg" or an OnPolicyAlgorithm class
    :param inner_updates: k, inner updates per task
    :param meta_batch_size: tasks per meta-iteration
    :param n_steps: transitions per task per rollout
    :param meta_optimizer_class: the torch optimizer of the meta-parameters (actor)
    :param meta_optimizer_kwargs: its keyword arguments
    :param kwargs: the other arguments of :class:`agents.meta.base.MetaLearner`
    """

    def __init__(
        self,
        policy: str | type[BasePolicy],
        env: GymEnv | str | None,
        learning_rate: float | Schedule = 3e-3,
        inner_algo: str | type[OnPolicyAlgorithm] = "npg",
        inner_updates: int = 1,
        meta_batch_size: int = 10,
        n_steps: int = 500,
        meta_optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        meta_optimizer_kwargs: dict[str, Any] | None = None,
        _init_setup_model: bool = True,
        **kwargs: Any,
    ):
        self.meta_optimizer_class = meta_optimizer_class
        self.meta_optimizer_kwargs = dict(meta_optimizer_kwargs or {})
        super().__init__(
            policy, env, learning_rate, inner_algo=inner_algo, inner_updates=inner_updates, meta_batch_size=meta_batch_size,
            n_steps=n_steps, _init_setup_model=_init_setup_model, **kwargs,
        )

    def _setup_model(self) -> None:
        super()._setup_model()
        self.meta_optimizer = self.meta_optimizer_class(self._actor_params, lr=self.lr_schedule(1.0), **self.meta_optimizer_kwargs)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "meta_optimizer", "last_meta_gradient_"]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        return ["policy", "policy.optimizer", "meta_optimizer"], []

    def _task_meta_gradient(self, learner: OnPolicyAlgorithm, test_gradient: torch.Tensor) -> torch.Tensor:
        """The meta-gradient of one task from the test gradient at φᵢ: first order, gᵢ = ∇L_test(φᵢ)."""
        return test_gradient

    def _outer_update(self, learners: Sequence[OnPolicyAlgorithm]) -> dict[str, float]:
        gradients = []
        for learner in learners:
            rollout, _ = whole_rollout(learner.rollout_buffer)  # fresh rollouts of φᵢ
            test_gradient = flat_grad(surrogate_loss(learner, rollout), actor_parameters(learner.policy))
            gradients.append(self._task_meta_gradient(learner, test_gradient))
        meta_gradient = torch.stack(gradients).mean(0)  # meanᵢ gᵢ
        self._update_learning_rate(self.meta_optimizer)
        self.meta_optimizer.zero_grad(set_to_none=True)
        for p, g in zip(self._actor_params, unflatten(meta_gradient, self._actor_params)):
            p.grad = g.clone()
        self.meta_optimizer.step()
        self.last_meta_gradient_ = meta_gradient
        return {"meta_gradient_norm": float(meta_gradient.norm())}
