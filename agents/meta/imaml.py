"""Implicit MAML (Rajeswaran, Finn, Kakade & Levine 2019) with a policy-gradient inner loop."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from agents.arguments import check_arguments
from agents.meta.base import TaskAdaptation
from agents.meta.fomaml import FOMAML, adapted_test_gradient, rollout_fisher, surrogate_loss
from agents.policy_gradient import PolicyGradientBatch, PolicyUpdate
from ngrl import get_flat_params, set_flat_params
from ngrl.sb3_adapter import actor_parameters, actor_view
from ngrl.implicit import hessian_vector_product, implicit_meta_gradient, proximal_shrink

__all__ = ["IMAML"]



class IMAML(FOMAML):
    """
    Implicit MAML (Rajeswaran, Finn, Kakade & Levine 2019, "Meta-Learning with Implicit Gradients",
    Algorithm 2 and eq. 7). The inner problem of task i is regularised,
    φᵢ ≈ argmin_φ L̂ᵢ(φ) + (λ/2)‖φ − θ‖²: every inner update (NPG or plain policy gradient) is followed
    by the proximal step φ ← θ + (φ − θ)/(1 + ηλ) (η = ``proximal_step``; with ``inner_algo="vpg"`` and
    η its ``step_size`` this is exact proximal gradient descent on the regularised problem). The
    meta-gradient of task i is gᵢ = (I + C/λ)⁻¹ ∇_φ L_test,ᵢ(φᵢ), solved by ``ngrl.conjugate_gradient``,
    where C is taken at φᵢ on the last inner rollout: ``curvature="hessian"``, the Hessian of the inner
    surrogate L̂ᵢ (Hessian-vector products by double backprop; exact implicit gradient, may be
    indefinite in RL), or ``"fisher"``, the policy's Fisher (PSD: the system is always well posed).
    Nothing of the inner path is stored, so memory does not grow with ``inner_updates``. If CG meets
    negative curvature, the solution built so far is used (the test gradient itself if none) and
    ``meta/implicit_not_pd`` counts it. θ ← θ − β · meanᵢ gᵢ through the meta optimizer, or by the
    trust-region natural step along meanᵢ gᵢ with ``meta_step="natural"`` (see :class:`FOMAML`).

    :param policy: the policy model ("MlpPolicy", ... or a class)
    :param env: a task family: an env id, an env instance (copied), an env class or factory, or a VecEnv with one sub-env per task
    :param learning_rate: β, the meta optimizer's learning rate (constant or schedule)
    :param inner_algo: "npg" (default), "vpg" or an OnPolicyAlgorithm class
    :param inner_updates: k, inner updates per task
    :param meta_batch_size: tasks per meta-iteration
    :param n_steps: transitions per task per rollout
    :param lam: λ, strength of the proximal term
    :param proximal_step: η of the proximal step after each inner update
    :param curvature: "hessian" or "fisher" (C of the implicit system)
    :param cg_max_steps: CG iterations of the implicit solve
    :param cg_tol: relative residual at which that CG stops
    :param kwargs: the other arguments of :class:`agents.meta.fomaml.FOMAML`
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
        lam: float = 1.0,
        proximal_step: float = 0.1,
        curvature: str = "fisher",
        cg_max_steps: int = 10,
        cg_tol: float = 1e-6,
        **kwargs: Any,
    ):
        check_arguments(type(self), locals())
        if not lam > 0:
            raise ValueError(f"lam must be positive, got {lam}")
        if proximal_step < 0:
            raise ValueError(f"proximal_step must be >= 0, got {proximal_step}")
        self.lam = lam
        self.proximal_step = proximal_step
        self.curvature = curvature
        self.cg_max_steps = cg_max_steps
        self.cg_tol = cg_tol
        super().__init__(
            policy, env, learning_rate, inner_algo=inner_algo, inner_updates=inner_updates, meta_batch_size=meta_batch_size,
            n_steps=n_steps, **kwargs,
        )

    def _inner_step(self, learner: OnPolicyAlgorithm, theta: torch.Tensor, solved: tuple[Any, Any] | None = None) -> PolicyUpdate | None:
        """The inner algorithm's update, then the proximal step φ ← θ + (φ − θ)/(1 + ηλ)."""
        update = super()._inner_step(learner, theta, solved)
        params = actor_parameters(learner.policy)
        set_flat_params(params, proximal_shrink(get_flat_params(params), theta, lam=self.lam, step=self.proximal_step))
        return update

    def _curvature_mv(self, policy: BasePolicy, batch: PolicyGradientBatch) -> Callable[[torch.Tensor], torch.Tensor]:
        """v ↦ C v at the adapted actor of ``policy`` on ``batch`` (the rollout of the last inner update)."""
        actor = actor_view(policy)
        if self.curvature == "hessian":
            return hessian_vector_product(surrogate_loss(actor, batch), actor.params)
        return rollout_fisher(actor, batch.rollout).mv  # the view's Fisher (recurrent: through the unrolled recurrence)

    def _outer_update(self, records: Sequence[TaskAdaptation]) -> dict[str, float]:
        """gᵢ = (I + C/λ)⁻¹ ∇L_test(φᵢ) by conjugate gradient for each record (eq. 7 of the paper); θ moves along meanᵢ gᵢ."""
        gradients, solves = [], []
        for record in records:
            test_gradient = adapted_test_gradient(record)
            if record.inner_batch is None:  # k = 0: φᵢ = θ, dφ/dθ = I
                gradients.append(test_gradient)
                continue
            curvature_mv = self._curvature_mv(record.policy, record.inner_batch)
            result = implicit_meta_gradient(curvature_mv, test_gradient, lam=self.lam, max_iter=self.cg_max_steps, tol=self.cg_tol)
            solves.append(result)
            not_pd_at_once = result.status == "not_positive_definite" and result.iterations == 0
            gradients.append(test_gradient if not_pd_at_once else result.x)
        logs = self._meta_step(records, torch.stack(gradients).mean(0))  # meanᵢ gᵢ
        if solves:
            logs["implicit_cg_iterations"] = float(np.mean([r.iterations for r in solves]))
            logs["implicit_cg_residual"] = float(np.mean([r.residual_norm for r in solves]))
            logs["implicit_not_pd"] = float(sum(r.status == "not_positive_definite" for r in solves))
        return logs
