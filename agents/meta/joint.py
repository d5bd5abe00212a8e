"""Joint (multi-task) training: the baseline a meta-learner has to beat, adapted by the same inner loop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv

from agents.arguments import check_arguments
from agents.meta.base import MetaLearner, TaskAdaptation
from agents.policy_gradient import PolicyUpdate
from agents.recurrent.on_policy import is_recurrent

__all__ = ["JointTraining"]

# the arrays of SB3's RolloutBuffer, each (n_steps, n_envs, ...): what a pooled buffer takes from the tasks' buffers
BUFFER_ARRAYS = ("observations", "actions", "rewards", "returns", "episode_starts", "values", "log_probs", "advantages")


class JointTraining(MetaLearner):
    """
    Joint (multi-task) training: one policy trained on all the tasks of the family at once by the inner algorithm, with
    no inner loop and no meta-gradient — the baseline that shows what meta-learning adds.

    Each iteration samples ``meta_batch_size`` tasks, collects ``n_steps`` transitions of θ on each (one sub-env per
    task, fresh episodes, GAE with θ's critic per task), and makes one update of the inner algorithm on all of them
    pooled: with NPG, one natural step whose gradient and Fisher are averaged over every task's transitions, in one
    trust region, and one critic fit on all of them. That is NPG on a VecEnv of the tasks, the tasks drawn anew
    every ``n_steps``. ``adapt`` and ``evaluate_adaptation`` run the same inner loop as Reptile and FOMAML (the inner
    algorithm with ``inner_kwargs``), so the learned policy is adapted as the meta-learners' are.

    :param policy: the policy model ("MlpPolicy", "CnnPolicy", "MultiInputPolicy" or a class; not recurrent: the pooled
        update reads transitions, not sequences)
    :param env: a task family, in any form :class:`agents.meta.base.MetaLearner` takes
    :param inner_algo: the algorithm of the update and of adaptation: "npg" (default), "vpg" or an OnPolicyAlgorithm class
    :param meta_batch_size: tasks per update
    :param n_steps: transitions per task per update
    :param kwargs: the other arguments of :class:`agents.meta.base.MetaLearner` (``inner_kwargs`` configure both the
        update and adaptation; ``critic_step_size`` does not apply: the critic is the pooled fit's)
    """

    # the meta-iteration's rollouts of θ (no inner updates) are the "test" rollouts: θ on each task of the meta-batch
    needs_test_rollouts: ClassVar[bool] = True

    def __init__(
        self,
        policy: str | type[BasePolicy],
        env: GymEnv | str | None,
        inner_algo: str | type[OnPolicyAlgorithm] = "npg",
        meta_batch_size: int = 10,
        n_steps: int = 500,
        **kwargs: Any,
    ):
        check_arguments(type(self), locals())
        for key in ("learning_rate", "inner_updates"):
            if key in kwargs:
                raise ValueError(f"{key} does not apply to joint training: its step is the inner algorithm's, on the pooled tasks")
        # learning_rate is the meta-learners' outer step, which joint training does not take: 1.0 is a placeholder
        # (the policy's own optimizer is never stepped)
        super().__init__(policy, env, 1.0, inner_algo=inner_algo, inner_updates=0, meta_batch_size=meta_batch_size,
                         n_steps=n_steps, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        if is_recurrent(self.policy_class):
            raise ValueError("joint training pools the tasks' transitions for one update: use a feed-forward policy "
                             f"(MlpPolicy, CnnPolicy, MultiInputPolicy), got {self.policy_class.__name__}")
        self._pooled = self._make_learner(n_envs=self.meta_batch_size)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_pooled"]

    def _pool(self, learners: Sequence[OnPolicyAlgorithm]) -> None:
        """The tasks' rollout buffers (one env each) as the columns of the pooled learner's buffer, in task order.

        A task's arrays are (n_steps, 1, ...) as filled, or (n_steps, ...) once its buffer has been read (SB3's ``get``
        flattens in place, as preparing the records' batches does): both are read as (n_steps, ...)."""
        buffer = self._pooled.rollout_buffer
        buffer.reset()
        for name in BUFFER_ARRAYS:
            target = getattr(buffer, name)
            for i, learner in enumerate(learners):
                source = getattr(learner.rollout_buffer, name)
                if isinstance(target, dict):
                    for key in target:
                        target[key][:, i] = source[key].reshape(target[key].shape[0], *target[key].shape[2:])
                else:
                    target[:, i] = source.reshape(target.shape[0], *target.shape[2:])
        buffer.pos, buffer.full = buffer.buffer_size, True

    def _outer_update(self, records: Sequence[TaskAdaptation]) -> dict[str, float]:
        """θ (actor and critic) ← one update of the inner algorithm on the tasks' rollouts of θ, pooled."""
        self._pool(self._learners)
        self._start_learner(self._pooled)  # θ, actor and critic
        update = self._pooled.train()
        self.policy.load_state_dict(self._pooled.policy.state_dict())
        return {"inner_kl": float(update.kl)} if isinstance(update, PolicyUpdate) else {}

    def _update_critic(self, records: Sequence[TaskAdaptation]) -> None:
        """The critic is the pooled fit's (set by :meth:`_outer_update`), not an interpolation towards the tasks'."""
