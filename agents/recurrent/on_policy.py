"""What an SB3 on-policy algorithm needs to train a recurrent policy: state-carrying rollouts, whole
sequences for the actor, sequence windows for the critic. Mixed into NPG and VPG.

Only the plumbing depends on the policy's kind here (which rollout buffer, the state carried through
the environment steps, the critic's minibatches); the actor's mathematics goes through its view
(:func:`ngrl.actor_view`), the same interface for both kinds."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import MaybeCallback
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

from agents.common import critic_parameters, family_actions
from agents.recurrent.buffers import RecurrentRolloutBuffer
from agents.recurrent.policies import RecurrentActorCriticPolicy
from ngrl.sb3_adapter import actor_view

__all__ = ["RecurrentOnPolicyMixin", "is_recurrent", "whole_rollout"]


def is_recurrent(policy: BasePolicy | type) -> bool:
    """Whether ``policy`` (an instance or a class) is a recurrent actor-critic policy."""
    cls = policy if isinstance(policy, type) else type(policy)
    return issubclass(cls, RecurrentActorCriticPolicy)


def whole_rollout(buffer: RolloutBuffer) -> Any:
    """The whole rollout in one batch.

    A recurrent buffer gives one sequence per environment with the state that entered its first step,
    a plain one the flat transitions (in the shuffled order of SB3's ``get``: every use of them is a mean);
    what the actor reads of either is its view's ``inputs_from(rollout)``.
    """
    if isinstance(buffer, RecurrentRolloutBuffer):
        return next(buffer.get_sequences(batch_size=None))
    return next(buffer.get(batch_size=None))


class RecurrentOnPolicyMixin:
    """Recurrent-policy support for an ``OnPolicyAlgorithm`` subclass (list it before the SB3 base).

    Call :meth:`_setup_actor` from ``_setup_model`` (it wraps SB3's): with a recurrent policy the
    rollout buffer keeps the state entering every step, :meth:`collect_rollouts` carries the state
    (reset at episode starts), :meth:`_critic_batches` yields windows of ``sequence_length`` steps and
    :meth:`_fisher_batch` cuts the rollout into windows of ``fisher_sequence_length`` steps.
    The running state is not saved: a loaded model starts episodes from zero states.
    """

    sequence_length: int | None = None
    fisher_sequence_length: int | None = None  # a checkpoint saved before it existed: whole sequences, as then

    def _setup_actor(self) -> None:
        """SB3's setup, then ``_recurrent`` (plumbing only), ``_actor`` (the actor view), ``_actor_params``, ``_critic_params``."""
        self._recurrent = is_recurrent(self.policy_class)
        if self._recurrent:
            if self.rollout_buffer_class is None:
                self.rollout_buffer_class = RecurrentRolloutBuffer
            elif not issubclass(self.rollout_buffer_class, RecurrentRolloutBuffer):
                raise ValueError("a recurrent policy needs a RecurrentRolloutBuffer (leave rollout_buffer_class unset)")
        super()._setup_model()  # type: ignore[misc]
        self._actor = actor_view(self.policy)
        self._actor_params = self._actor.params
        self._critic_params = critic_parameters(self.policy)
        if self._recurrent:
            self._last_rnn_state = self.policy.initial_state(self.n_envs)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_actor", "_actor_params", "_critic_params", "_last_rnn_state"]  # type: ignore[misc]

    def _setup_learn(
        self,
        total_timesteps: int,
        callback: MaybeCallback = None,
        reset_num_timesteps: bool = True,
        tb_log_name: str = "run",
        progress_bar: bool = False,
    ):
        result = super()._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar)  # type: ignore[misc]
        if self._recurrent and (reset_num_timesteps or self._last_rnn_state.pi[0].shape[0] != self.n_envs):
            self._last_rnn_state = self.policy.initial_state(self.n_envs)
        return result

    def collect_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        """SB3's rollout loop; with a recurrent policy the state is carried, reset at episode starts and stored."""
        if not self._recurrent:
            return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)  # type: ignore[misc]
        assert self._last_obs is not None, "No previous observation was provided"
        self.policy.set_training_mode(False)
        rollout_buffer.reset()
        callback.on_rollout_start()
        state = self._last_rnn_state
        n_steps = 0
        while n_steps < n_rollout_steps:
            with torch.no_grad():
                obs_tensor = obs_as_tensor(self._last_obs, self.device)
                starts = torch.as_tensor(self._last_episode_starts, dtype=torch.float32, device=self.device)
                actions, values, log_probs, new_state = self.policy(obs_tensor, state, starts)
            actions = actions.cpu().numpy()
            clipped_actions = actions
            if isinstance(self.action_space, spaces.Box):
                clipped_actions = np.clip(actions, self.action_space.low, self.action_space.high)
            new_obs, rewards, dones, infos = env.step(clipped_actions)
            self.num_timesteps += env.num_envs
            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            n_steps += 1
            if isinstance(self.action_space, spaces.Discrete):
                actions = actions.reshape(-1, 1)
            # Bootstrap truncated episodes with the critic's value of the terminal observation, its
            # state being the one the critic reached in that env (SB3 issue #633).
            for idx, done in enumerate(dones):
                truncated = infos[idx].get("TimeLimit.truncated", False)
                if done and truncated and infos[idx].get("terminal_observation") is not None:
                    rewards[idx] += self.gamma * terminal_value(self.policy, infos[idx]["terminal_observation"], new_state, idx)
            rollout_buffer.add(self._last_obs, actions, rewards, self._last_episode_starts, values, log_probs, state=state)
            self._last_obs = new_obs
            self._last_episode_starts = dones
            state = new_state
        self._last_rnn_state = state
        with torch.no_grad():
            starts = torch.as_tensor(dones, dtype=torch.float32, device=self.device)
            values = self.policy.predict_values(obs_as_tensor(new_obs, self.device), state.vf, starts)
        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    def _fisher_batch(self, inputs: Any, actions: Tensor) -> tuple[Any, Tensor]:
        """The actor inputs and actions to take the Fisher on.

        The rollout's own (``inputs``, ``actions``) for a feed-forward policy, or when ``fisher_sequence_length``
        is None or covers n_steps. Otherwise each environment's rollout cut into windows of
        ``fisher_sequence_length`` steps, each run from the state stored at its first step: at θ_old these
        are the very states the whole sequence reaches there, so the outputs are the rollout's, and only
        the Jacobians ∂zᵢ/∂θ stop at the window's start (truncated backpropagation through time). The last
        n_steps mod ``fisher_sequence_length`` steps of each environment are left out.
        """
        length = self.fisher_sequence_length
        if not self._recurrent or length is None or length >= self.n_steps:  # type: ignore[attr-defined]
            return inputs, actions
        windows = next(self.rollout_buffer.get_sequences(length, None, drop_remainder=True))  # type: ignore[attr-defined]
        return self._actor.inputs_from(windows), family_actions(windows.actions, self.action_space)  # type: ignore[attr-defined]

    def _critic_batches(self) -> Iterator[tuple[Any, Tensor]]:
        """One epoch of the critic's minibatches, each with its predicted values (flat)."""
        if self._recurrent:
            length = None if self.sequence_length is None else min(self.sequence_length, self.n_steps)  # type: ignore[attr-defined]
            for batch in self.rollout_buffer.get_sequences(length, self.batch_size):
                yield batch, self.policy.predict_values(batch.observations, batch.states.vf, batch.episode_starts).flatten()
        else:
            for batch in self.rollout_buffer.get(self.batch_size):
                yield batch, self.policy.predict_values(batch.observations).flatten()


@torch.no_grad()
def terminal_value(policy: RecurrentActorCriticPolicy, terminal_obs: Any, state: Any, index: int) -> float:
    """V(s_T) of env ``index``'s terminal observation, the critic's state being the one it reached in that env."""
    obs = policy.obs_to_tensor(terminal_obs)[0]
    critic_state = tuple(s[index : index + 1] for s in state.vf)
    return float(policy.predict_values(obs, critic_state, torch.zeros(1, device=obs.device))[0])
