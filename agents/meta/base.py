"""What Reptile, FOMAML and iMAML share: the meta-batch, the inner loop, adaptation, logging, checkpoints."""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy, BasePolicy, MultiInputActorCriticPolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecNormalize

import envs  # noqa: F401  (registers the ngrl/ task families)
from agents.arguments import check_arguments, check_spaces
from agents.common import CheckpointMixin, critic_parameters, isolated_random_state
from agents.meta.family import family_vec_env, missing_vec_family_methods, sample_model_tasks, sub_env_copies
from agents.meta.rollouts import collect_task_rollouts
from agents.meta.vpg import VPG
from agents.policy_gradient import ADVANTAGE_EPS, PolicyGradientBatch, PolicyUpdate
from agents.npg import NPG
from agents.recurrent import CnnErnnPolicy, MlpErnnPolicy
from envs.task_family import FamilyLike, Task, check_task, family_target, not_a_family_message
from ngrl import get_flat_params, set_flat_params
from ngrl.sb3_adapter import actor_parameters

__all__ = ["INNER_ALGOS", "MetaLearner", "TaskAdaptation"]

SelfMetaLearner = TypeVar("SelfMetaLearner", bound="MetaLearner")

# Inner algorithms: any OnPolicyAlgorithm whose ``train()`` makes one update from its rollout buffer.
INNER_ALGOS: dict[str, type[OnPolicyAlgorithm]] = {"npg": NPG, "vpg": VPG}
# What the inner loop changes of an inner algorithm's own defaults: one NPG update must move a policy far enough to
# adapt, and NPG's δ = 0.01 moves its mean about 0.14σ. δ = 0.1 was chosen by measurement across four task families
# (README "Meta-RL", choosing the defaults). Written into ``inner_kwargs`` at construction, so it is saved with the
# learner and a checkpoint made before this default keeps its own.
INNER_DEFAULTS: dict[str, dict[str, Any]] = {"npg": {"target_kl": 0.1}}
VEC_ENV_CLASSES = {"dummy": DummyVecEnv, "subproc": SubprocVecEnv}
ADVANTAGE_SCALES = ("rollout", "family")


@dataclass(frozen=True)
class TaskAdaptation:
    """What adapting θ to one task gave: the record a meta-update reads (one per task of the meta-batch).

    :param task: the task (None when it was set on the env by the caller)
    :param policy: the adapted policy: its actor holds φᵢ, its critic φ_v,ᵢ (gradients at φᵢ are taken through it)
    :param adapted_actor: φᵢ, the actor's parameters after the inner updates (flat copy)
    :param adapted_critic: φ_v,ᵢ, the critic's parameters after the inner updates (flat copy)
    :param returns: mean episode return of each rollout batch (index k: after k inner updates)
    :param inner_kl: mean KL of each inner update (as the inner algorithm returned it)
    :param cg_iterations: CG iterations of each inner update that solved for a natural direction
    :param inner_batch: the rollout the last inner update used (None without inner updates); only the last is
        kept, so the records' size does not grow with the number of inner updates
    :param test_batch: a fresh rollout of φᵢ after the inner updates (None when not collected)
    """

    task: Task | None
    policy: BasePolicy
    adapted_actor: torch.Tensor
    adapted_critic: torch.Tensor
    returns: tuple[float, ...]
    inner_kl: tuple[float, ...] = ()
    cg_iterations: tuple[int, ...] = ()
    inner_batch: PolicyGradientBatch | None = None
    test_batch: PolicyGradientBatch | None = None


class MetaLearner(CheckpointMixin, BaseAlgorithm):
    """
    Base class of the meta-learners: the meta-parameters θ are the parameters of ``self.policy``.

    One meta-iteration samples ``meta_batch_size`` tasks, sets one per sub-env of the VecEnv, starts an
    inner learner per task at θ, runs ``inner_updates`` rollout-and-update rounds in parallel over the
    tasks (and, for FOMAML and iMAML, a rollout of each adapted policy), and returns one
    :class:`TaskAdaptation` record per task: φᵢ, the batches, the inner statistics. The algorithm's
    :meth:`_outer_update` computes the meta-update from those records alone. The critic is not meta-differentiated: it
    moves by θ_v ← θ_v + ``critic_step_size``·meanᵢ(φ_v,ᵢ − θ_v) (a warm start for the inner fits).
    Environment steps of every rollout of every task count towards ``total_timesteps``.

    Logged per meta-iteration: ``meta/return_pre`` (mean episode return of θ's rollouts),
    ``meta/return_post`` (of the adapted policies' rollouts, when the algorithm collects them),
    ``meta/inner_kl`` (mean KL of an inner update), ``meta/cg_iterations`` (CG iterations of an inner
    NPG update) and the algorithm's own keys (iMAML: ``meta/implicit_cg_iterations`` ...).

    :param policy: the policy model ("MlpPolicy", "CnnPolicy", "MultiInputPolicy", or the recurrent
        "MlpErnnPolicy"/"CnnErnnPolicy" with ``policy_kwargs=dict(cell="ernn"|"lstm"|"gru")``: each task's
        rollouts then carry the policy's state, reset at episode starts; or a class)
    :param env: a task family (an env exposing ``sample_tasks``/``set_task``/``get_task``), given as SB3 takes envs:
        an env id, an env instance (deep-copied once, then once per sub-env: the instance itself is never stepped or
        given a task), an env class or factory (called with ``env_kwargs``), each made into ``meta_batch_size``
        sub-envs; or a VecEnv with one sub-env per task. :meth:`adapt` and :meth:`evaluate_adaptation` make their
        envs from the same family (for a VecEnv: from its registered id, or copies of its first sub-env when it is a
        ``DummyVecEnv``). An id is saved with the learner; a class, factory or instance is not (no code in checkpoints)
    :param learning_rate: the outer step (meaning set by the subclass; constant or schedule)
    :param inner_algo: "npg" (natural policy gradient, default), "vpg" (vanilla policy gradient) or an
        OnPolicyAlgorithm class whose ``train()`` makes one update from its rollout buffer (FOMAML and
        iMAML need a :class:`agents.policy_gradient.PolicyGradientMixin` learner: they read its prepared
        rollouts and its ``train()``'s :class:`agents.policy_gradient.PolicyUpdate`)
    :param inner_updates: adaptation updates per task (k)
    :param meta_batch_size: tasks per meta-iteration (= sub-envs)
    :param n_steps: transitions per task per rollout (use a multiple of the horizon for whole episodes)
    :param gamma: discount factor
    :param gae_lambda: λ of generalised advantage estimation
    :param inner_kwargs: keyword arguments of the inner algorithm (e.g. ``target_kl``, ``step_size``), over its own
        defaults and, for NPG, the inner loop's: ``target_kl=0.1``
    :param critic_step_size: interpolation factor of the critic's meta-update
    :param inner_advantage_scale: what the inner learners divide their centred advantages by: "rollout" (each
        rollout's own std, SB3's normalisation) or "family" (one scale for the whole family: the root mean square of
        the centred advantages of every rollout meta-training has collected, kept with the learner; before any, that
        of the meta-batch at hand). With "family" a task on which the policy already does well keeps small
        advantages, so a fixed-rate inner step (``inner_kwargs={"step_size": η}``) is small there
    :param env_kwargs: keyword arguments of the env when it is given by id, class or factory
    :param vec_env_class: "dummy" or "subproc" when the env is not given as a VecEnv
    :param tensorboard_log: tensorboard log folder (None: no tensorboard)
    :param policy_kwargs: keyword arguments of the policy
    :param verbose: 0 silent, 1 info, 2 debug
    :param seed: random seed
    :param device: "auto", "cpu" or "cuda"
    :param _init_setup_model: build the networks at construction
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": ActorCriticPolicy,
        "CnnPolicy": ActorCriticCnnPolicy,
        "MultiInputPolicy": MultiInputActorCriticPolicy,
        "MlpErnnPolicy": MlpErnnPolicy,
        "CnnErnnPolicy": CnnErnnPolicy,
    }
    needs_test_rollouts: ClassVar[bool] = True  # the outer update uses fresh rollouts of the adapted policies
    # NPG inner learners of an ERNN policy solve their tasks' natural directions together (see _inner_updates); False:
    # each on its own (the same directions up to rounding; for comparisons)
    joint_inner_solves: bool = True

    def __init__(
        self,
        policy: str | type[BasePolicy],
        env: GymEnv | str | None,
        learning_rate: float | Schedule,
        inner_algo: str | type[OnPolicyAlgorithm] = "npg",
        inner_updates: int = 1,
        meta_batch_size: int = 10,
        n_steps: int = 500,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        inner_kwargs: dict[str, Any] | None = None,
        critic_step_size: float = 1.0,
        inner_advantage_scale: str = "rollout",
        env_kwargs: dict[str, Any] | None = None,
        vec_env_class: str = "dummy",
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: torch.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        check_arguments(type(self), locals())
        if isinstance(inner_algo, str) and inner_algo not in INNER_ALGOS:
            raise ValueError(f"inner_algo must be one of {sorted(INNER_ALGOS)} or an OnPolicyAlgorithm class, got {inner_algo!r}")
        if not isinstance(inner_algo, str) and not (isinstance(inner_algo, type) and issubclass(inner_algo, OnPolicyAlgorithm)):
            raise ValueError(f"inner_algo must be a name or an OnPolicyAlgorithm subclass, got {inner_algo!r}")
        if inner_updates < 0 or meta_batch_size < 1 or n_steps < 2:
            raise ValueError("need inner_updates >= 0, meta_batch_size >= 1 and n_steps >= 2")
        if vec_env_class not in VEC_ENV_CLASSES:
            raise ValueError(f"vec_env_class must be one of {sorted(VEC_ENV_CLASSES)}, got {vec_env_class!r}")
        algo = INNER_ALGOS[inner_algo] if isinstance(inner_algo, str) else inner_algo
        accepted = set(inspect.signature(algo.__init__).parameters) - {"self", "policy", "env", "_init_setup_model"}
        unknown = sorted(set(inner_kwargs or {}) - accepted)
        if unknown:
            raise ValueError(
                f"inner_kwargs {unknown} are not arguments of {algo.__name__} (the inner algorithm); "
                f"it accepts {', '.join(sorted(accepted))}"
            )
        managed = sorted(set(inner_kwargs or {}) & {"n_steps", "gamma", "gae_lambda", "policy_kwargs", "device"})
        if managed:
            raise ValueError(f"inner_kwargs {managed} are set by the meta-learner: pass them to it directly")
        if not 0.0 <= critic_step_size <= 1.0:
            raise ValueError(f"critic_step_size must be in [0, 1], got {critic_step_size}")
        if inner_advantage_scale not in ADVANTAGE_SCALES:
            raise ValueError(f"inner_advantage_scale must be one of {ADVANTAGE_SCALES}, got {inner_advantage_scale!r}")
        self.env_id: str | None = None
        self.env_kwargs = dict(env_kwargs or {})
        self.vec_env_class = vec_env_class
        # The family's class, factory or instance copies, from which adapt and evaluate_adaptation make envs (not saved:
        # a checkpoint holds no code; a loaded learner rebuilds from env_id, or is given its family again).
        self._family_factory: Callable[..., gym.Env] | None = None
        if env is not None and not isinstance(env, VecEnv):
            target = family_target(env, self.env_kwargs)
            if isinstance(target, str):
                self.env_id = target
            else:
                self._family_factory = target
            env = family_vec_env(target, meta_batch_size, env_kwargs=self.env_kwargs, vec_env_cls=VEC_ENV_CLASSES[vec_env_class])
        elif isinstance(env, VecEnv):
            if isinstance(env, VecNormalize):
                raise ValueError("VecNormalize is not supported by the meta-learners: its running statistics would mix tasks")
            if _init_setup_model and env.num_envs != meta_batch_size:
                raise ValueError(f"the VecEnv has {env.num_envs} sub-envs but meta_batch_size={meta_batch_size}: one sub-env per task")
            missing = missing_vec_family_methods(env)
            if missing:
                raise ValueError(not_a_family_message("the VecEnv's sub-env", missing))
            spec = env.get_attr("spec", indices=[0])[0]
            self.env_id = spec.id if spec is not None else None
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            policy_kwargs=policy_kwargs,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            device=device,
            support_multi_env=True,
            seed=seed,
            supported_action_spaces=(spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary),
        )
        if self.env is not None:
            check_spaces(self.observation_space, self.action_space)
        self.inner_algo = inner_algo
        self.inner_updates = inner_updates
        self.meta_batch_size = meta_batch_size
        self.n_steps = n_steps
        self.gamma = gamma
        self.gae_lambda = gae_lambda
        own_defaults = INNER_DEFAULTS.get(inner_algo, {}) if isinstance(inner_algo, str) else {}
        self.inner_kwargs = {**own_defaults, **(inner_kwargs or {})}
        self.critic_step_size = critic_step_size
        self.inner_advantage_scale = inner_advantage_scale
        # Σ Â² and the count over the centred advantages of every inner rollout of meta-training (the family's scale)
        self.advantage_square_sum = 0.0
        self.advantage_count = 0
        if _init_setup_model:
            self._setup_model()

    # --- construction ------------------------------------------------------------------------

    def _setup_model(self) -> None:
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        if self.env is not None:
            self.meta_batch_size = self.env.num_envs
        self.policy = self.policy_class(self.observation_space, self.action_space, self.lr_schedule, **self.policy_kwargs)
        self.policy = self.policy.to(self.device)
        self._actor_params = actor_parameters(self.policy)
        self._critic_params = critic_parameters(self.policy)
        self._learners = [self._make_learner() for _ in range(self.meta_batch_size)]

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_actor_params", "_critic_params", "_learners", "_family_factory"]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        return ["policy", "policy.optimizer"], []

    def _make_learner(self, n_envs: int = 1) -> OnPolicyAlgorithm:
        """An inner learner for one task (a rollout buffer of ``n_steps`` for ``n_envs`` envs, one by default), its
        parameters not yet set."""
        algo = INNER_ALGOS[self.inner_algo] if isinstance(self.inner_algo, str) else self.inner_algo
        kwargs = {"n_steps": self.n_steps, "gamma": self.gamma, "gae_lambda": self.gae_lambda, **self.inner_kwargs}
        learner = algo(self.policy_class, None, policy_kwargs=self.policy_kwargs, device=self.device, _init_setup_model=False, **kwargs)
        # No env of its own: the meta-learner feeds its buffer (the same route SB3's load takes).
        learner.observation_space, learner.action_space, learner.n_envs = self.observation_space, self.action_space, n_envs
        learner._setup_model()
        learner.set_logger(Logger(folder=None, output_formats=[]))
        return learner

    def _start_learner(self, learner: OnPolicyAlgorithm) -> None:
        """φ ← θ (actor and critic) and a fresh critic optimizer."""
        learner.policy.load_state_dict(self.policy.state_dict())
        policy = learner.policy
        policy.optimizer = policy.optimizer_class(policy.parameters(), lr=learner.lr_schedule(1.0), **policy.optimizer_kwargs)

    # --- the inner loop ------------------------------------------------------------------------

    def _inner_step(self, learner: OnPolicyAlgorithm, theta: torch.Tensor, solved: tuple[Any, Any] | None = None) -> PolicyUpdate | None:
        """One inner update of a task's learner from its filled rollout buffer (iMAML adds its proximal step).

        :param solved: an NPG learner's (problem, direction), when :meth:`_inner_updates` solved it with the other tasks'
        """
        return learner.train() if solved is None else learner.train(*solved)

    def _set_advantage_scale(self, learners: Sequence[OnPolicyAlgorithm], record: bool) -> None:
        """With ``inner_advantage_scale="family"``: give every learner the family's advantage scale, the root mean square
        of the centred advantages (each rollout's own mean removed) of every inner rollout meta-training collected.

        :param record: add the learners' present rollouts to that record first (meta-training; adaptation only reads it)
        """
        if self.inner_advantage_scale != "family":
            return
        centred = [np.asarray(learner.rollout_buffer.advantages, dtype=np.float64).ravel() for learner in learners]
        centred = [a - a.mean() for a in centred]
        square_sum, count = sum(float(a @ a) for a in centred), sum(a.size for a in centred)
        if record and math.isfinite(square_sum):  # NaN advantages are refused by the update itself, not recorded
            self.advantage_square_sum += square_sum
            self.advantage_count += count
        if not (math.isfinite(self.advantage_square_sum) and self.advantage_square_sum >= 0 and self.advantage_count >= 0):
            raise ValueError(
                f"the family's advantage record (advantage_square_sum={self.advantage_square_sum!r}, advantage_count="
                f"{self.advantage_count!r}) is not a sum of squares and a count: the checkpoint was altered; set both to 0"
            )
        if self.advantage_count > 0:
            square_sum, count = self.advantage_square_sum, self.advantage_count
        scale = math.sqrt(square_sum / max(count, 1)) + ADVANTAGE_EPS
        for learner in learners:
            learner.advantage_scale = scale

    def _inner_updates(self, learners: Sequence[OnPolicyAlgorithm], theta: torch.Tensor) -> list[PolicyUpdate | None]:
        """One inner update of every task's learner. NPG learners of an ERNN policy solve their natural directions
        together (``NPG.solve_jointly``: one Fisher product per CG iteration for all tasks, each task's own CG); every
        other learner, a single task, or ``joint_inner_solves = False``, updates on its own."""
        joint = all(isinstance(learner, NPG) and learner.solves_jointly for learner in learners)
        if self.joint_inner_solves and len(learners) > 1 and joint:
            problems = [learner.natural_gradient_problem() for learner in learners]
            directions = NPG.solve_jointly(learners, problems)
            return [self._inner_step(learner, theta, solved) for learner, solved in zip(learners, zip(problems, directions))]
        return [self._inner_step(learner, theta) for learner in learners]

    def _adapt_batch(
        self,
        env: VecEnv,
        learners: Sequence[OnPolicyAlgorithm],
        n_updates: int,
        on_step=None,
        final_rollout: bool = True,
        tasks: Sequence[Task] | None = None,
        test_batches: bool = False,
        record_advantage_scale: bool = False,
    ) -> tuple[list[TaskAdaptation], bool]:
        """k rounds of (rollouts, update) from θ on every task in parallel, then optionally the adapted policies' rollouts.

        :param final_rollout: collect a rollout batch of the adapted policies at the end
        :param tasks: the tasks of the sub-envs (recorded, not set here)
        :param test_batches: keep that last batch, prepared for a surrogate, in the records
        :param record_advantage_scale: add the rollouts' advantages to the family's advantage scale (meta-training)
        :return: one :class:`TaskAdaptation` per learner, and whether every rollout was completed (no records if not)
        """
        theta = get_flat_params(self._actor_params)
        for learner in learners:
            self._start_learner(learner)
        n = len(learners)
        returns: list[list[float]] = [[] for _ in range(n)]
        updates: list[list[PolicyUpdate]] = [[] for _ in range(n)]
        for k in range(n_updates + int(final_rollout)):
            batch_returns, ok = collect_task_rollouts(env, learners, self.n_steps, on_step)
            if not ok:
                return [], False
            for i in range(n):
                returns[i].append(float(batch_returns[i]))
            self._set_advantage_scale(learners, record=record_advantage_scale and k < n_updates)
            if k < n_updates:
                for i, update in enumerate(self._inner_updates(learners, theta)):
                    if isinstance(update, PolicyUpdate):  # a custom inner algorithm may return nothing
                        updates[i].append(update)
        records = []
        for i, learner in enumerate(learners):
            policy = learner.policy
            records.append(
                TaskAdaptation(
                    task=None if tasks is None else tasks[i],
                    policy=policy,
                    adapted_actor=get_flat_params(actor_parameters(policy)),
                    adapted_critic=get_flat_params(critic_parameters(policy)),
                    returns=tuple(returns[i]),
                    inner_kl=tuple(u.kl for u in updates[i]),
                    cg_iterations=tuple(u.cg_iterations for u in updates[i] if u.cg_iterations is not None),
                    inner_batch=updates[i][-1].batch if updates[i] else None,
                    test_batch=learner.policy_gradient_batch() if test_batches and final_rollout else None,
                )
            )
        return records, True

    # --- the outer loop ------------------------------------------------------------------------

    def _outer_update(self, records: Sequence[TaskAdaptation]) -> dict[str, float]:
        """The meta-update of θ's actor from the meta-batch's records; returns values to log."""
        raise NotImplementedError

    def _update_critic(self, records: Sequence[TaskAdaptation]) -> None:
        """θ_v ← θ_v + κ · meanᵢ(φ_v,ᵢ − θ_v) for the critic's parameters."""
        if not self._critic_params or self.critic_step_size == 0:
            return
        theta = get_flat_params(self._critic_params)
        adapted = torch.stack([record.adapted_critic for record in records])
        set_flat_params(self._critic_params, theta + self.critic_step_size * (adapted.mean(0) - theta))

    def sample_tasks(self, n: int) -> list[Task]:
        """n tasks from the family, drawn with the RNG of the first sub-env (seeded by ``seed``)."""
        return sample_model_tasks(self, n)

    def _set_tasks(self, env: VecEnv, tasks: Sequence[Task]) -> None:
        if len(tasks) != env.num_envs:
            raise ValueError(f"{len(tasks)} tasks for {env.num_envs} sub-envs")
        for i, task in enumerate(tasks):
            env.env_method("set_task", task, indices=[i])

    def _meta_iteration(self, callback: BaseCallback) -> bool:
        tasks = self.sample_tasks(self.meta_batch_size)
        self._set_tasks(self.env, tasks)

        def on_step(local_vars: dict[str, Any]) -> bool:
            self.num_timesteps += self.env.num_envs
            callback.update_locals(local_vars)
            return callback.on_step()

        callback.on_rollout_start()
        records, ok = self._adapt_batch(
            self.env, self._learners, self.inner_updates, on_step, final_rollout=self.needs_test_rollouts, tasks=tasks,
            test_batches=self.needs_test_rollouts, record_advantage_scale=True,
        )
        callback.on_rollout_end()
        if not ok:
            return False
        logs = self._outer_update(records)
        self._update_critic(records)
        self.logger.record("meta/return_pre", float(np.mean([record.returns[0] for record in records])))
        if self.needs_test_rollouts and self.inner_updates > 0:
            self.logger.record("meta/return_post", float(np.mean([record.returns[-1] for record in records])))
        for name in ("inner_kl", "cg_iterations"):
            values = [float(v) for j in range(self.inner_updates) for record in records for v in getattr(record, name)[j : j + 1]]
            if values:
                self.logger.record(f"meta/{name}", float(np.mean(values)))
        for key, value in logs.items():
            self.logger.record(f"meta/{key}", value)
        return True

    def learn(
        self: SelfMetaLearner,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str | None = None,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfMetaLearner:
        """Meta-train until ``total_timesteps`` environment steps (over all tasks and rollouts) are spent.

        A loaded meta-learner without an env rebuilds its task family from the saved env id (``meta_batch_size``
        sub-envs, seeded by ``seed``), so that training continues as with any SB3 agent after ``load``.
        """
        if self.env is None:
            self.set_env(self._task_env(self.meta_batch_size, self.seed))
        total_timesteps, callback = self._setup_learn(
            total_timesteps, callback, reset_num_timesteps, tb_log_name or type(self).__name__, progress_bar
        )
        callback.on_training_start(locals(), globals())
        iteration = 0
        while self.num_timesteps < total_timesteps:
            if not self._meta_iteration(callback):
                break
            iteration += 1
            self._n_updates += 1
            self._update_current_progress_remaining(self.num_timesteps, total_timesteps)
            if log_interval is not None and iteration % log_interval == 0:
                elapsed = max((time.time_ns() - self.start_time) / 1e9, 1e-9)
                self.logger.record("time/iterations", iteration, exclude="tensorboard")
                self.logger.record("time/fps", int((self.num_timesteps - self._num_timesteps_at_start) / elapsed))
                self.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
                self.logger.dump(step=self.num_timesteps)
        callback.on_training_end()
        return self

    # --- adaptation to new tasks ----------------------------------------------------------------

    def _task_env(self, n: int, seed: int | None) -> VecEnv:
        """``n`` fresh sub-envs of the learner's family, seeded with ``seed``.

        Made from the family's class, factory or instance copies when the learner was built from one, else from its
        registered id (``env_id``, with ``env_kwargs``), else from copies of the first sub-env of its own VecEnv when
        that runs in this process (a ``DummyVecEnv``).
        """
        if self._family_factory is not None:
            return family_vec_env(self._family_factory, n, seed, self.env_kwargs)
        if self.env_id is not None:
            return make_vec_env(self.env_id, n_envs=n, seed=seed, env_kwargs=self.env_kwargs)
        copies = sub_env_copies(self.env) if self.env is not None else None
        if copies is not None:
            return family_vec_env(copies, n, seed)
        raise ValueError(
            "this meta-learner cannot make envs of its task family: it was built from a VecEnv whose sub-envs have no "
            "registered id and do not run in this process (or it was loaded without its family). Pass env= (the family as "
            "an id, an instance, a class or factory, or a VecEnv) to adapt or evaluate_adaptation, or give the learner its "
            "family: build it from the family's class or factory (vec_env_class='subproc' for sub-processes), or set_env a "
            "DummyVecEnv of it"
        )

    def _family_env(self, env: FamilyLike | VecEnv | None, n: int, seed: int | None) -> tuple[VecEnv, bool]:
        """The VecEnv to adapt on: ``env`` itself when it is one (re-seeded when ``seed`` is given), ``n`` sub-envs of the
        family ``env`` in another form (id, instance, class or factory, made without env_kwargs), or ``n`` sub-envs of
        the learner's own family when ``env`` is None. Also returns whether the VecEnv was made here (to close it)."""
        if env is None:
            return self._task_env(n, seed), True
        if isinstance(env, VecEnv):
            if isinstance(env, VecNormalize):
                raise ValueError("VecNormalize is not supported by the meta-learners: its running statistics would mix tasks")
            missing = missing_vec_family_methods(env)
            if missing:
                raise ValueError(not_a_family_message("the VecEnv's sub-env", missing))
            if seed is not None:
                env.seed(seed)
            return env, False
        return family_vec_env(env, n, seed), True

    def adapt(
        self, task: Task, n_updates: int = 1, env: FamilyLike | VecEnv | None = None, seed: int | None = None
    ) -> OnPolicyAlgorithm:
        """An inner learner started at θ and adapted to ``task`` by ``n_updates`` rollout-and-update rounds.

        The returned agent is an ordinary SB3 agent (``predict``, ``learn``, ``save``) on a one-env
        VecEnv of the task; the meta-parameters are left untouched.

        :param task: a task of the family (see ``sample_tasks``)
        :param n_updates: inner updates (0 returns the meta-policy itself as an agent)
        :param env: the family to adapt on: an env id, an env instance (copied), an env class or factory, or a
            one-env VecEnv (default: a fresh env of the learner's own family, see :meth:`_task_env`)
        :param seed: seed of that env
        """
        if n_updates < 0:
            raise ValueError("n_updates must be >= 0")
        env, _ = self._family_env(env, 1, seed)
        if env.num_envs != 1:
            raise ValueError(f"adapt needs a VecEnv with a single sub-env, got {env.num_envs}")
        names = tuple(env.env_method("get_task", indices=[0])[0])
        self._set_tasks(env, [check_task(task, names)])
        learner = self._make_learner()
        self._adapt_batch(env, [learner], n_updates, final_rollout=False, tasks=[task])
        if n_updates == 0:
            self._start_learner(learner)
        learner.set_env(env)
        return learner

    def evaluate_adaptation(
        self,
        tasks: Sequence[Task],
        n_updates: Sequence[int] = (0, 1, 3),
        seed: int | None = None,
        env: FamilyLike | VecEnv | None = None,
    ) -> dict[int, np.ndarray]:
        """Average return per task after each number of inner updates in ``n_updates``, tasks adapted in parallel.

        The return after k updates is the mean undiscounted return of the episodes in a rollout batch
        (``n_steps`` transitions) of the policy adapted k times — the measure of MAML-RL.

        :param env: the family to evaluate on: an env id, an env instance (copied), an env class or factory (one
            sub-env per task is made), or a VecEnv (the tasks run in groups of its size, the last group padded with
            repeats of its last task); default: fresh envs of the learner's own family, see :meth:`_task_env`
        :param seed: seed of those envs and of the rollouts' and updates' random numbers (drawn from the global generators,
            which are seeded for the call and restored after it: see :func:`agents.common.isolated_random_state`); None:
            unseeded envs, the generators as they are
        """
        if not tasks:
            raise ValueError("evaluate_adaptation needs at least one task")
        wanted = sorted(set(int(k) for k in n_updates))
        if wanted[0] < 0:
            raise ValueError("numbers of updates must be >= 0")
        tasks = list(tasks)
        records: list[TaskAdaptation] = []
        with isolated_random_state(seed):
            env, made_here = self._family_env(env, len(tasks), seed)
            try:
                group = env.num_envs
                for start in range(0, len(tasks), group):
                    chunk = tasks[start : start + group]
                    padded = chunk + [chunk[-1]] * (group - len(chunk))
                    self._set_tasks(env, padded)
                    learners = [self._make_learner() for _ in padded]
                    chunk_records, _ = self._adapt_batch(env, learners, wanted[-1], final_rollout=True, tasks=padded)
                    records.extend(chunk_records[: len(chunk)])
            finally:
                if made_here:
                    env.close()
        return {k: np.array([record.returns[k] for record in records]) for k in wanted}
