"""First-order MAML (Finn, Abbeel & Levine 2017, section 5.2) with a policy-gradient inner loop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from agents.arguments import check_arguments
from agents.meta.base import MetaLearner, TaskAdaptation
from agents.policy_gradient import PolicyGradientBatch, policy_surrogate
from ngrl import CGConfig, LineSearchConfig, flat_grad, get_flat_params, natural_step, set_flat_params, unflatten
from ngrl.fisher import CurvatureOperator, MeanOperator
from ngrl.sb3_adapter import ActorView, actor_view

__all__ = ["FOMAML", "adapted_test_gradient", "rollout_fisher", "surrogate_loss"]



def surrogate_loss(policy: BasePolicy | ActorView, batch: PolicyGradientBatch) -> torch.Tensor:
    """L(φ) = −mean(π_φ(a|s)/π_old(a|s) · Â) on a prepared rollout (Â standardised as the inner learner does).

    Its gradient at φ = φ_old is the negative policy gradient −mean(∇log π · Â).
    """
    return -policy_surrogate(policy, batch)


def adapted_test_gradient(record: TaskAdaptation) -> torch.Tensor:
    """∇_φ L_test(φᵢ): the test surrogate's gradient at the adapted actor, on the record's fresh rollout of φᵢ."""
    if record.test_batch is None:
        raise ValueError("the record has no test rollout: adapt with test_batches=True")
    actor = actor_view(record.policy)
    return flat_grad(surrogate_loss(actor, record.test_batch), actor.params)


def rollout_fisher(policy: BasePolicy | ActorView, rollout: Any, damping: float = 0.0) -> CurvatureOperator:
    """The exact Fisher of ``policy``'s actor on a whole rollout (:func:`~agents.recurrent.on_policy.whole_rollout`).

    F = (1/n) Σᵢ Jᵢᵀ H(zᵢ) Jᵢ over the rollout's states, through the actor's view (for a recurrent
    policy Jᵢ runs through the unrolled recurrence from each sequence's stored start state).
    """
    actor = policy if isinstance(policy, ActorView) else actor_view(policy)
    return actor.fisher(actor.inputs_from(rollout), estimator="exact", damping=damping)


class FOMAML(MetaLearner):
    """
    First-order MAML (Finn, Abbeel & Levine 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of
    Deep Networks", section 5.2; Nichol et al. 2018, section 5): adapt θ to each task by k inner updates
    (φᵢ), collect fresh rollouts of φᵢ, and step θ with the gradient of the test loss at the adapted
    point, gᵢ = ∇_φ L_test,ᵢ(φᵢ) (the second-order terms dropped): θ ← θ − β · meanᵢ gᵢ through the meta
    optimizer (Adam by default, β = ``learning_rate``). L_test is the policy-gradient surrogate
    −mean(π_φ/π_old · Â) on the adapted policy's rollouts. Everything the update reads comes from the
    meta-batch's :class:`~agents.meta.base.TaskAdaptation` records (the adapted policy, its test rollout
    with Â standardised as the inner learner standardises it).

    With ``meta_step="natural"`` the outer step is a natural-gradient step in a KL trust region, as
    MAML-RL's TRPO outer loop (Finn et al. 2017, section 5.3) taken to first order: with
    F = meanᵢ F(φᵢ), the Fisher of the adapted policies on their test rollouts (∂φᵢ/∂θ ≈ I),
    d = (F + λI)⁻¹ meanᵢ gᵢ by conjugate gradient and θ ← θ − α d with α = sqrt(2δ / dᵀ(F + λI)d),
    δ = ``meta_target_kl``, shrunk by TRPO's backtracking line search until the mean KL of the
    shifted adapted policies φᵢ − αd is at most δ and their mean test surrogate improves.
    ``learning_rate`` is then unused.

    :param policy: the policy model ("MlpPolicy", ... or a class)
    :param env: a task family: an env id, an env instance (copied), an env class or factory, or a VecEnv with one sub-env per task
    :param learning_rate: β, the meta optimizer's learning rate (constant or schedule)
    :param inner_algo: "npg" (default), "vpg" or an OnPolicyAlgorithm class
    :param inner_updates: k, inner updates per task
    :param meta_batch_size: tasks per meta-iteration
    :param n_steps: transitions per task per rollout
    :param meta_optimizer_class: the torch optimizer of the meta-parameters (actor), for ``meta_step="optimizer"``
    :param meta_optimizer_kwargs: its keyword arguments
    :param meta_step: "optimizer" (the meta optimizer's step) or "natural" (the trust-region natural step)
    :param meta_target_kl: δ, the trust region of the natural meta-step (mean KL in nats)
    :param meta_cg_max_steps: CG iterations of the natural meta-step's solve
    :param meta_cg_damping: λ added to the Fisher of the natural meta-step
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
        meta_step: str = "optimizer",
        meta_target_kl: float = 0.01,
        meta_cg_max_steps: int = 10,
        meta_cg_damping: float = 0.1,
        _init_setup_model: bool = True,
        **kwargs: Any,
    ):
        check_arguments(type(self), locals())
        if not meta_target_kl > 0:
            raise ValueError(f"meta_target_kl must be positive, got {meta_target_kl}")
        if meta_cg_max_steps < 1:
            raise ValueError(f"meta_cg_max_steps must be >= 1, got {meta_cg_max_steps}")
        if meta_cg_damping < 0:
            raise ValueError(f"meta_cg_damping must be >= 0, got {meta_cg_damping}")
        self.meta_step = meta_step
        self.meta_target_kl = meta_target_kl
        self.meta_cg_max_steps = meta_cg_max_steps
        self.meta_cg_damping = meta_cg_damping
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

    def _outer_update(self, records: Sequence[TaskAdaptation]) -> dict[str, float]:
        """First order: gᵢ = ∇L_test(φᵢ) on each record's test rollout; θ moves along meanᵢ gᵢ."""
        meta_gradient = torch.stack([adapted_test_gradient(record) for record in records]).mean(0)  # meanᵢ gᵢ
        return self._meta_step(records, meta_gradient)

    def _meta_step(self, records: Sequence[TaskAdaptation], meta_gradient: torch.Tensor) -> dict[str, float]:
        """θ ← θ − β · meta_gradient through the meta optimizer, or the natural meta-step; returns values to log."""
        self.last_meta_gradient_ = meta_gradient
        logs = {"meta_gradient_norm": float(meta_gradient.norm())}
        if self.meta_step == "natural":
            logs.update(self._natural_meta_step(records, meta_gradient))
            return logs
        self._update_learning_rate(self.meta_optimizer)
        self.meta_optimizer.zero_grad(set_to_none=True)
        for p, g in zip(self._actor_params, unflatten(meta_gradient, self._actor_params)):
            p.grad = g.clone()
        self.meta_optimizer.step()
        return logs

    def _natural_meta_step(self, records: Sequence[TaskAdaptation], meta_gradient: torch.Tensor) -> dict[str, float]:
        """θ ← θ − α d, d = (meanᵢ F(φᵢ) + λI)⁻¹ g, α from the KL trust region and a backtracking line search.

        Fᵢ is the Fisher of the adapted policy ``records[i].policy`` on its test rollout ``records[i].test_batch``.
        """
        actors = [actor_view(record.policy) for record in records]
        batches = [record.test_batch for record in records]
        fisher = MeanOperator(
            [rollout_fisher(actor, batch.rollout) for actor, batch in zip(actors, batches)], damping=self.meta_cg_damping
        )  # meanᵢ F(φᵢ) + λI

        # TRPO's line search on the first-order model: every adapted policy moves with θ.
        params = [actor.params for actor in actors]
        adapted = [record.adapted_actor for record in records]
        family = actors[0].family  # one architecture for θ and every φᵢ
        with torch.no_grad():
            inputs = [batch.actor_inputs for batch in batches]
            old_outputs = [actor.outputs(x) for actor, x in zip(actors, inputs)]
            baseline = float(np.mean([surrogate_loss(actor, batch).item() for actor, batch in zip(actors, batches)]))

        @torch.no_grad()
        def evaluate(step: torch.Tensor) -> tuple[float, float]:
            losses, kls = [], []
            for actor, batch, p, phi, x, old in zip(actors, batches, params, adapted, inputs, old_outputs):
                set_flat_params(p, phi - step)
                losses.append(surrogate_loss(actor, batch).item())
                kls.append(family.kl(old, actor.outputs(x)).mean().item())
            return -float(np.mean(losses)), float(np.mean(kls))

        try:  # d = (meanᵢ F(φᵢ) + λI)⁻¹ g, α = sqrt(2δ / dᵀ(meanᵢ F(φᵢ) + λI)d), backtracked (ngrl.natural_step)
            step = natural_step(
                meta_gradient,
                fisher,
                max_kl=self.meta_target_kl,
                cg=CGConfig(max_iter=self.meta_cg_max_steps),
                line_search=LineSearchConfig(),
                evaluate=evaluate,
                baseline_objective=-baseline,
            )
        finally:
            for p, phi in zip(params, adapted):
                set_flat_params(p, phi)
        if step.fraction > 0.0:
            theta = get_flat_params(self._actor_params)
            set_flat_params(self._actor_params, theta - step.step_size * step.direction)
        return {
            "natural_kl": step.measured_kl,
            "natural_step_size": step.step_size,
            "natural_cg_iterations": float(step.solve.iterations),
            "natural_line_search_steps": float(step.line_search_steps),
        }
