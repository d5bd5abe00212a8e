"""Parallel rollouts of a meta-batch: one sub-env per task, each driven by its own adapted policy."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from torch import Tensor, nn

from agents.recurrent.on_policy import is_recurrent, terminal_value
from ngrl.sb3_adapter import FeedForwardActor

__all__ = ["StackedPolicies", "collect_task_rollouts"]


def _row(obs: Any, i: int) -> Any:
    """Sub-env i's observation with its batch axis kept."""
    return {k: v[i : i + 1] for k, v in obs.items()} if isinstance(obs, dict) else obs[i : i + 1]


class _ActorCritic(nn.Module):
    """obs ↦ (raw action-distribution outputs, value): one pass of a policy, for ``torch.func``."""

    def __init__(self, policy: ActorCriticPolicy) -> None:
        super().__init__()
        self.actor = FeedForwardActor(policy)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        policy = self.actor.policy
        return self.actor(obs), policy.predict_values(obs).flatten()


class StackedPolicies:
    """n policies of one architecture evaluated in one vectorised call (``torch.func.vmap`` over stacked weights).

    Policy i sees row i of the observations. Actions are sampled from the policy's own output family,
    the distribution SB3 samples from (log-probabilities agree with ``policy.evaluate_actions``).
    """

    def __init__(self, policies: Sequence[ActorCriticPolicy]) -> None:
        modules = [_ActorCritic(p) for p in policies]
        self.params, self.buffers = torch.func.stack_module_state(modules)
        self.family = modules[0].actor.family
        template = modules[0]

        def one(params: dict[str, Tensor], buffers: dict[str, Tensor], obs: Tensor) -> tuple[Tensor, Tensor]:
            return torch.func.functional_call(template, (params, buffers), (obs,))

        self._call = torch.vmap(one)

    @staticmethod
    def supports(policies: Sequence[Any], observation_space: spaces.Space) -> bool:
        """The fast path covers plain actor-critic MLP/CNN policies on Box observations (no gSDE, no squashing, no state)."""
        return all(
            type(p) is type(policies[0]) and isinstance(p, ActorCriticPolicy) and not is_recurrent(p)
            and not p.use_sde and not p.squash_output
            for p in policies
        ) and isinstance(observation_space, spaces.Box)

    @torch.no_grad()
    def __call__(self, obs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(actions, values, log-probabilities), one row per policy."""
        outputs, values = self._call(self.params, self.buffers, obs.unsqueeze(1))
        outputs, values = outputs.squeeze(1), values.squeeze(1)
        actions = self.family.sample(outputs)
        return actions, values, self.family.log_prob(outputs, actions)


def collect_task_rollouts(
    env: VecEnv,
    learners: Sequence[OnPolicyAlgorithm],
    n_steps: int,
    on_step: Callable[[dict[str, Any]], bool] | None = None,
) -> tuple[np.ndarray, bool]:
    """Fill ``learners[i].rollout_buffer`` with ``n_steps`` transitions of sub-env i under ``learners[i].policy``.

    The sub-envs are reset first, so a batch starts with fresh episodes of the current tasks. A recurrent
    policy's state starts at zero, is carried through the batch, reset at episode starts and stored in
    the learner's (recurrent) buffer with every step. Time-limit
    truncations are bootstrapped with each learner's own critic (r ← r + γV(s_T)), as SB3 does; the
    buffers end with GAE returns and advantages, ready for ``learner.train()``.

    :param env: a VecEnv with one sub-env per learner (its tasks already set)
    :param learners: on-policy learners with one-env rollout buffers of size ``n_steps``
    :param n_steps: transitions per sub-env
    :param on_step: called after every vectorised step with the local variables; returning False stops
    :return: (mean undiscounted return of the episodes completed in the batch per sub-env — the
        running sum of the unfinished episode where none completed —, whether the batch was completed)
    """
    if env.num_envs != len(learners):
        raise ValueError(f"the VecEnv has {env.num_envs} sub-envs for {len(learners)} learners: one sub-env per task is needed")
    n = env.num_envs
    for learner in learners:
        if learner.rollout_buffer.n_envs != 1 or learner.rollout_buffer.buffer_size != n_steps:
            raise ValueError(f"each learner needs a one-env rollout buffer of {n_steps} steps (set n_steps={n_steps})")
        learner.rollout_buffer.reset()
        learner.policy.set_training_mode(False)
    action_space = env.action_space
    obs = env.reset()
    starts = np.ones(n, dtype=bool)
    running = np.zeros(n)
    totals, counts = np.zeros(n), np.zeros(n)
    stacked = StackedPolicies([learner.policy for learner in learners]) if StackedPolicies.supports(
        [learner.policy for learner in learners], env.observation_space
    ) else None
    recurrent = is_recurrent(learners[0].policy)
    states = [learner.policy.initial_state(1) for learner in learners] if recurrent else [None] * n
    new_states = list(states)
    for _ in range(n_steps):
        steps = []
        with torch.no_grad():
            if recurrent:
                for i, learner in enumerate(learners):
                    start = torch.as_tensor(starts[i : i + 1], dtype=torch.float32, device=learner.device)
                    actions, values, log_probs, new_states[i] = learner.policy(
                        obs_as_tensor(_row(obs, i), learner.device), states[i], start
                    )
                    steps.append((actions.cpu().numpy(), values, log_probs))
            elif stacked is not None:
                all_actions, all_values, all_log_probs = stacked(obs_as_tensor(obs, learners[0].device))
                all_actions = all_actions.reshape(n, *action_space.shape).cpu().numpy()
                steps = [(all_actions[i : i + 1], all_values[i : i + 1], all_log_probs[i : i + 1]) for i in range(n)]
            else:
                for i, learner in enumerate(learners):
                    actions, values, log_probs = learner.policy(obs_as_tensor(_row(obs, i), learner.device))
                    steps.append((actions.cpu().numpy(), values, log_probs))
        actions = np.concatenate([s[0] for s in steps])
        env_actions = actions
        if isinstance(action_space, spaces.Box):
            policy = learners[0].policy
            env_actions = policy.unscale_action(actions) if policy.squash_output else np.clip(actions, action_space.low, action_space.high)
        new_obs, rewards, dones, infos = env.step(env_actions)
        running += rewards
        for i in np.flatnonzero(dones):
            totals[i] += running[i]
            counts[i] += 1
            running[i] = 0.0
        if on_step is not None and not on_step(locals()):
            return _mean_returns(totals, counts, running), False
        for i, learner in enumerate(learners):
            reward = np.array(rewards[i : i + 1], dtype=np.float32)
            terminal = infos[i].get("terminal_observation")
            if dones[i] and terminal is not None and infos[i].get("TimeLimit.truncated", False):
                if recurrent:
                    reward = reward + learner.gamma * terminal_value(learner.policy, terminal, new_states[i], 0)
                else:
                    with torch.no_grad():
                        value = learner.policy.predict_values(learner.policy.obs_to_tensor(terminal)[0])[0]
                    reward = reward + learner.gamma * value.cpu().numpy()
            action = steps[i][0].reshape(1, -1) if isinstance(action_space, spaces.Discrete) else steps[i][0]
            extra = {"state": states[i]} if recurrent else {}
            learner.rollout_buffer.add(_row(obs, i), action, reward, starts[i : i + 1], steps[i][1], steps[i][2], **extra)
        obs, starts, states = new_obs, dones, list(new_states)
    for i, learner in enumerate(learners):
        with torch.no_grad():
            if recurrent:
                start = torch.as_tensor(dones[i : i + 1], dtype=torch.float32, device=learner.device)
                last_value = learner.policy.predict_values(obs_as_tensor(_row(obs, i), learner.device), states[i].vf, start)
            else:
                last_value = learner.policy.predict_values(obs_as_tensor(_row(obs, i), learner.device))
        learner.rollout_buffer.compute_returns_and_advantage(last_values=last_value, dones=dones[i : i + 1])
    return _mean_returns(totals, counts, running), True


def _mean_returns(totals: np.ndarray, counts: np.ndarray, running: np.ndarray) -> np.ndarray:
    return np.where(counts > 0, totals / np.maximum(counts, 1), running)
