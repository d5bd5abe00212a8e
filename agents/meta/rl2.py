"""RL²: a recurrent policy trained by NPG across trials of a task family; it adapts within a trial, without gradients."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from agents.arguments import check_arguments
from agents.common import isolated_random_state
from agents.meta.family import missing_vec_family_methods, sample_model_tasks, sub_env_copies
from agents.npg import NPG
from agents.recurrent.on_policy import is_recurrent
from envs.task_family import FamilyLike, Task, family_target, not_a_family_message
from envs.trial import TrialEnv

__all__ = ["RL2"]

SelfRL2 = TypeVar("SelfRL2", bound="RL2")


class RL2(NPG):
    """
    RL² (Duan et al. 2016, "RL²: Fast Reinforcement Learning via Slow Reinforcement Learning"; Wang et al. 2016,
    "Learning to reinforcement learn"): NPG on trials of a task family with a recurrent policy.

    A trial (:class:`envs.trial.TrialEnv`) is ``episodes_per_trial`` episodes of one task drawn from the family; the
    policy observes the family's observation with the previous action, reward and episode-ended flag, and its state
    is reset only between trials (the VecEnv reports a done only at a trial's end), so what it learned about the task
    in one episode of the trial is in its state during the next. The "slow" learning is NPG maximising the
    discounted return of whole trials (GAE and the critic run across the episodes of a trial; Duan et al. 2016,
    Sec. 2.2); the "fast" adaptation is the recurrence itself. Everything else — the natural step through the
    unrolled sequences, ``learn``, ``save``/``load``, ``predict(obs, state, episode_start)`` — is NPG's.

    The policy must be recurrent: "MlpErnnPolicy" (ERNN by default; ``policy_kwargs=dict(cell="lstm" | "gru")``
    for the others) or "CnnErnnPolicy".

    :param policy: a recurrent policy ("MlpErnnPolicy", "CnnErnnPolicy" or a recurrent policy class)
    :param env: the task family, as the meta-learners take it: an env id, an env instance (deep-copied once, then
        once per sub-env), an env class or factory (called with ``env_kwargs``), each made into ``n_envs`` trial envs;
        or a VecEnv: of :class:`envs.trial.TrialEnv` sub-envs (used as it is), or of the family (rebuilt as trial envs
        from its registered id, or from copies of its first sub-env when it is a ``DummyVecEnv``; one per sub-env).
        An id is saved with the model; a class, factory or instance is not (no code in checkpoints)
    :param episodes_per_trial: k, episodes of the same task per trial (the policy's state is carried across them)
    :param n_envs: trials run in parallel (sub-envs) when the family is not given as a VecEnv
    :param env_kwargs: keyword arguments of the family when it is given by id, class or factory
    :param learning_rate: learning rate of the critic's optimizer
    :param n_steps: steps per sub-env per update (trials continue across updates; the state is carried)
    :param gamma: discount factor (across the episodes of a trial too)
    :param gae_lambda: λ of generalised advantage estimation
    :param target_kl: trust-region radius δ of the natural step
    :param sequence_length: steps per window of the critic's minibatches (None, the default: whole rollouts, so
        that its gradients reach back across the trial's episodes; NPG's default is 16)
    :param fisher_sequence_length: steps per window of the Fisher (None, the default: whole rollouts, the trial's
        history included; NPG's default is 64)
    :param policy_kwargs: keyword arguments of the policy (``cell``, ``hidden_size``, ``net_arch`` ...)
    :param seed: random seed (sub-env i's trials draw their tasks from an RNG seeded with ``seed + i``)
    :param kwargs: any other argument of :class:`agents.NPG`
    """

    def __init__(
        self,
        policy: str | type[BasePolicy],
        env: GymEnv | FamilyLike | None,
        episodes_per_trial: int = 2,
        n_envs: int = 8,
        env_kwargs: dict[str, Any] | None = None,
        learning_rate: float | Schedule = 1e-3,
        n_steps: int = 256,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        target_kl: float = 0.01,
        sequence_length: int | None = None,
        fisher_sequence_length: int | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        seed: int | None = None,
        _init_setup_model: bool = True,
        **kwargs: Any,
    ):
        check_arguments(type(self), {"episodes_per_trial": episodes_per_trial, "n_envs": n_envs, "env_kwargs": env_kwargs})
        self.episodes_per_trial = int(episodes_per_trial)
        self.n_envs_per_family = n_envs
        self.env_kwargs = dict(env_kwargs or {})
        self.env_id: str | None = None  # the family's registered id, saved (a class, factory or instance is not)
        self._family_factory: Any = None  # how evaluate_adaptation and learn-after-load make the family (not saved)
        if env is not None:
            env = self._trial_env_from(env, n_envs, seed)
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            gamma=gamma,
            gae_lambda=gae_lambda,
            target_kl=target_kl,
            sequence_length=sequence_length,
            fisher_sequence_length=fisher_sequence_length,
            policy_kwargs=policy_kwargs,
            seed=seed,
            _init_setup_model=False,
            **kwargs,
        )
        if not is_recurrent(self.policy_class):
            raise ValueError(
                f"RL² needs a recurrent policy (its memory is what adapts within a trial): use 'MlpErnnPolicy' "
                f"(policy_kwargs=dict(cell='ernn' | 'lstm' | 'gru')), got {policy!r}"
            )
        if _init_setup_model:
            self._setup_model()

    # --- the family and its trials ---------------------------------------------------------------

    def _trial_env_from(self, env: GymEnv | FamilyLike, n_envs: int, seed: int | None) -> VecEnv:
        """A VecEnv of trial envs of the family ``env`` (any form); records the family's id or factory."""
        if not isinstance(env, VecEnv):
            target = family_target(env, self.env_kwargs)
            if isinstance(target, str):
                self.env_id = target
            else:
                self._family_factory = target
            return self._trial_vec_env(n_envs, seed, self.episodes_per_trial)
        if isinstance(env, VecNormalize):
            raise ValueError("VecNormalize is not supported by RL²: its running statistics would mix tasks")
        if env.has_attr("episodes_per_trial"):  # already trials
            found = env.get_attr("episodes_per_trial", indices=[0])[0]
            if found != self.episodes_per_trial:
                raise ValueError(f"the VecEnv's trials have {found} episodes but episodes_per_trial={self.episodes_per_trial}")
            return env
        missing = missing_vec_family_methods(env)
        if missing:
            raise ValueError(not_a_family_message("the VecEnv's sub-env", missing))
        spec = env.get_attr("spec", indices=[0])[0]
        copies = sub_env_copies(env)
        if spec is not None:
            self.env_id = spec.id
        elif copies is not None:
            self._family_factory = copies
        else:
            raise ValueError(
                "RL² cannot make trials of this VecEnv's family: its sub-envs have no registered id and do not run in this "
                "process. Pass the family as an id, an instance, a class or a factory (vec_env_class is not needed)"
            )
        return self._trial_vec_env(env.num_envs, seed, self.episodes_per_trial)

    def _family(self) -> FamilyLike:
        """The family as ``make_family_env`` takes it: the factory (class, factory or instance copies) or the id."""
        if self._family_factory is not None:
            return self._family_factory
        if self.env_id is not None:
            return self.env_id
        raise ValueError(
            "this RL² model does not know its task family (it was loaded from a checkpoint of a family given in code): "
            "pass env= (the family as an id, an instance, a class or a factory), or set_env a VecEnv of its trials"
        )

    def _trial_vec_env(self, n_envs: int, seed: int | None, episodes_per_trial: int) -> VecEnv:
        """``n_envs`` trial envs of the learner's family (sub-env i seeded with ``seed + i``)."""
        trial_kwargs = {"family": self._family(), "episodes_per_trial": episodes_per_trial, "env_kwargs": self.env_kwargs}
        return make_vec_env(TrialEnv, n_envs=n_envs, seed=seed, env_kwargs=trial_kwargs)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_family_factory"]

    def set_env(self, env: GymEnv, force_reset: bool = True) -> None:
        """As NPG's ``set_env``; a VecEnv of the family itself (not of its trials) is first made into trial envs, one per
        sub-env, as the constructor does."""
        if isinstance(env, VecEnv) and not env.has_attr("episodes_per_trial"):
            env = self._trial_env_from(env, env.num_envs, self.seed)
        super().set_env(env, force_reset)

    def sample_tasks(self, n: int) -> list[Task]:
        """n tasks of the family, drawn with the RNG of the first sub-env (seeded by ``seed``)."""
        if self.env is None:
            raise ValueError("sample_tasks needs the model's env: set_env a VecEnv of its trials, or use envs.held_out_tasks")
        return sample_model_tasks(self, n)

    def learn(
        self: SelfRL2,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "RL2",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfRL2:
        """NPG on trials for ``total_timesteps`` env steps; a loaded model without env rebuilds its trials from the
        saved family id (``n_envs`` sub-envs seeded with ``seed``)."""
        if self.env is None:
            self.set_env(self._trial_vec_env(self.n_envs_per_family, self.seed, self.episodes_per_trial))
        return super().learn(total_timesteps, callback, log_interval, tb_log_name, reset_num_timesteps, progress_bar)

    # --- adaptation within a trial ---------------------------------------------------------------

    def evaluate_adaptation(
        self,
        tasks: Sequence[Task],
        n_updates: Sequence[int] = (0, 1, 3),
        seed: int | None = None,
        env: FamilyLike | None = None,
        deterministic: bool = False,
    ) -> dict[int, np.ndarray]:
        """Per task, the return of episode k + 1 of one trial, for each k in ``n_updates``: RL²'s "after k updates".

        For RL² an adaptation step is an episode of experience held in the policy's state: the value at k is the
        undiscounted return of the (k + 1)-th episode of a trial of the task (index k from 0), played with the state
        carried from the trial's start through the k episodes before it. So 0 is the return before any adaptation,
        1 after one episode, 3 after three — the numbers the meta-learners' ``evaluate_adaptation`` gives after 0, 1
        and 3 inner updates. The trials last max(n_updates) + 1 episodes, which may exceed ``episodes_per_trial``.
        The tasks' trials run in parallel, one env each, actions sampled from the policy (``deterministic=False``).

        :param tasks: the tasks (e.g. ``envs.task_family.held_out_tasks(family, 20, seed=1000)``)
        :param n_updates: the numbers k of episodes of experience before the episode whose return is reported
        :param seed: env i is reset with ``seed + i``, and actions are sampled from torch's global generator seeded with
            ``seed`` for the call and restored after it (:func:`agents.common.isolated_random_state`); None: unseeded
            envs, the generators as they are
        :param env: the family to evaluate on, an env id, an env instance (copied), a class or a factory, or a VecEnv of
            the family (copies of its first sub-env when it is a ``DummyVecEnv``, else its registered id); default: the
            model's own family
        :param deterministic: take the policy's most likely actions instead of sampling
        :return: k -> array of the tasks' returns (in the order of ``tasks``)
        """
        if not tasks:
            raise ValueError("evaluate_adaptation needs at least one task")
        wanted = sorted({int(k) for k in n_updates})
        if not wanted or wanted[0] < 0:
            raise ValueError(f"n_updates must be non-empty numbers of episodes >= 0, got {list(n_updates)}")
        if env is None:
            family, family_kwargs = self._family(), self.env_kwargs
        elif isinstance(env, VecEnv):  # a VecEnv of the family: copies of its first sub-env, else its registered id
            spec = env.get_attr("spec", indices=[0])[0]
            family, family_kwargs = sub_env_copies(env) or (spec.id if spec is not None else None), None
            if family is None:
                raise ValueError("evaluate_adaptation cannot make trials of this VecEnv's family (no registered id, sub-envs in "
                                 "other processes): pass the family as an id, an instance, a class or a factory")
        else:
            family, family_kwargs = family_target(env), None
        trials = [TrialEnv(family, wanted[-1] + 1, family_kwargs) for _ in tasks]
        returns = np.zeros((len(tasks), wanted[-1] + 1))
        try:
            obs = np.stack([
                trial.reset(seed=None if seed is None else seed + i, options={"task": task})[0]
                for i, (trial, task) in enumerate(zip(trials, tasks))
            ])
            state, starts = None, np.ones(len(tasks), dtype=bool)
            active = np.ones(len(tasks), dtype=bool)
            with isolated_random_state(seed):
                while active.any():
                    actions, state = self.policy.predict(obs, state, starts, deterministic=deterministic)
                    starts = np.zeros(len(tasks), dtype=bool)
                    for i in np.flatnonzero(active):  # a finished trial keeps its last observation until all are done
                        obs[i], _, terminated, _, info = trials[i].step(actions[i])
                        if "trial_episode_return" in info:
                            returns[i, info["trial_episode"]] = info["trial_episode_return"]
                        active[i] = not terminated
        finally:
            for trial in trials:
                trial.close()
        return {k: returns[:, k] for k in wanted}

