"""Parallel rollouts of a meta-batch: one sub-env per task, each driven by its own adapted policy."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

__all__ = ["collect_task_rollouts"]


def _row(obs: Any, i: int) -> Any:
    """Sub-env i's observation with its batch axis kept."""
    return {k: v[i : i + 1] for k, v in obs.items()} if isinstance(obs, dict) else obs[i : i + 1]


def collect_task_rollouts(
    env: VecEnv,
    learners: Sequence[OnPolicyAlgorithm],
    n_steps: int,
    on_step: Callable[[dict[str, Any]], bool] | None = None,
) -> tuple[np.ndarray, bool]:
    """Fill ``learners[i].rollout_buffer`` with ``n_steps`` transitions of sub-env i under ``learners[i].policy``.

    The sub-envs are reset first, so a batch starts with fresh episodes of the current tasks. Time-limit
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
    for _ in range(n_steps):
        steps = []
        with torch.no_grad():
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
                with torch.no_grad():
                    terminal_value = learner.policy.predict_values(learner.policy.obs_to_tensor(terminal)[0])[0]
                reward = reward + learner.gamma * terminal_value.cpu().numpy()
            action = steps[i][0].reshape(1, -1) if isinstance(action_space, spaces.Discrete) else steps[i][0]
            learner.rollout_buffer.add(_row(obs, i), action, reward, starts[i : i + 1], steps[i][1], steps[i][2])
        obs, starts = new_obs, dones
    for i, learner in enumerate(learners):
        with torch.no_grad():
            last_value = learner.policy.predict_values(obs_as_tensor(_row(obs, i), learner.device))
        learner.rollout_buffer.compute_returns_and_advantage(last_values=last_value, dones=dones[i : i + 1])
    return _mean_returns(totals, counts, running), True


def _mean_returns(totals: np.ndarray, counts: np.ndarray, running: np.ndarray) -> np.ndarray:
    return np.where(counts > 0, totals / np.maximum(counts, 1), running)
