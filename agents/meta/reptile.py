"""Reptile (Nichol, Achiam & Schulman 2018) with a policy-gradient inner loop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from agents.arguments import check_arguments
from agents.meta.base import MetaLearner, TaskAdaptation
from ngrl import get_flat_params, set_flat_params

__all__ = ["Reptile"]


class Reptile(MetaLearner):
    """
    Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms", Algorithm 2):
    adapt θ to each task of the meta-batch by k inner updates, giving φᵢ, then
    θ ← θ + ε · meanᵢ(φᵢ − θ). No rollouts of the adapted policies are needed. The inner updates are
    NPG steps by default (``inner_algo="vpg"``: plain policy-gradient steps). ε is ``learning_rate``
    (a schedule anneals it, as in the paper).

    :param policy: the policy model ("MlpPolicy", ... or a class)
    :param env: a task family: an env id, an env instance (copied), an env class or factory, or a VecEnv with one sub-env per task
    :param learning_rate: ε, the interpolation step towards the adapted parameters (constant or schedule); 0.2 was
        chosen across four task families (README "Meta-RL", choosing the defaults: 0.5 lost Navigation2DAxes and LineGoal)
    :param inner_algo: "npg" (default), "vpg" or an OnPolicyAlgorithm class
    :param inner_updates: k, inner updates per task
    :param meta_batch_size: tasks per meta-iteration
    :param n_steps: transitions per task per rollout
    :param kwargs: the other arguments of :class:`agents.meta.base.MetaLearner`
    """

    needs_test_rollouts: ClassVar[bool] = False

    def __init__(
        self,
        policy: str | type[BasePolicy],
        env: GymEnv | str | None,
        learning_rate: float | Schedule = 0.2,
        inner_algo: str | type[OnPolicyAlgorithm] = "npg",
        inner_updates: int = 3,
        meta_batch_size: int = 10,
        n_steps: int = 500,
        **kwargs: Any,
    ):
        check_arguments(type(self), locals())
        super().__init__(
            policy, env, learning_rate, inner_algo=inner_algo, inner_updates=inner_updates, meta_batch_size=meta_batch_size,
            n_steps=n_steps, **kwargs,
        )

    def _outer_update(self, records: Sequence[TaskAdaptation]) -> dict[str, float]:
        epsilon = float(self.lr_schedule(self._current_progress_remaining))
        theta = get_flat_params(self._actor_params)
        mean_phi = torch.stack([record.adapted_actor for record in records]).mean(0)
        step = epsilon * (mean_phi - theta)  # θ ← θ + ε · meanᵢ(φᵢ − θ)
        set_flat_params(self._actor_params, theta + step)
        return {"step_norm": float(step.norm()), "epsilon": epsilon}
