"""Vanilla policy gradient: one plain gradient-ascent step of the actor per rollout, a GAE critic."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from gymnasium import spaces
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy, BasePolicy, MultiInputActorCriticPolicy
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from agents.arguments import check_arguments, check_spaces
from agents.common import CheckpointMixin
from agents.recurrent import CnnErnnPolicy, MlpErnnPolicy
from agents.policy_gradient import PolicyGradientMixin, PolicyUpdate
from agents.recurrent.on_policy import RecurrentOnPolicyMixin
from ngrl import flat_grad, get_flat_params, set_flat_params

__all__ = ["VPG"]


class VPG(CheckpointMixin, PolicyGradientMixin, RecurrentOnPolicyMixin, OnPolicyAlgorithm):
    """
    Vanilla policy gradient (Williams 1992, REINFORCE; Sutton et al. 2000, with a learned baseline):
    θ ← θ + α ĝ with ĝ = (1/N) Σₜ ∇_θ log π_θ(aₜ|sₜ) Âₜ (GAE advantages). The inner-loop step of
    MAML-RL (Finn, Abbeel & Levine 2017). ĝ is taken as the gradient of the surrogate
    E[π_θ/π_old · Â] at θ_old, which equals it. The critic is fitted with the policy's optimizer
    (Adam, ``learning_rate``); its gradients never touch the actor. Recurrent policies
    (``"MlpErnnPolicy"``, ``"CnnErnnPolicy"``) are trained on whole sequences, as in :class:`agents.NPG`.

    :param policy: the policy model ("MlpPolicy", "CnnPolicy", "MultiInputPolicy", "MlpErnnPolicy",
        "CnnErnnPolicy" or a class)
    :param env: the environment to learn from (an env id, an env or a VecEnv)
    :param learning_rate: learning rate of the critic's optimizer
    :param step_size: α, the actor's gradient-ascent step
    :param n_steps: steps per environment per update
    :param batch_size: minibatch size of the critic updates
    :param gamma: discount factor
    :param gae_lambda: λ of generalised advantage estimation
    :param n_critic_updates: epochs of critic minibatch updates per rollout
    :param normalize_advantage: standardise advantages per rollout
    :param sequence_length: recurrent policies only: steps per window in the critic's minibatches (at most
        n_steps, a shorter last window where it does not divide n_steps; default: the whole n_steps)
    :param stats_window_size: episodes averaged in the rollout logs
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

    def __init__(
        self,
        policy: str | type[BasePolicy],
        env: GymEnv | str | None,
        learning_rate: float | Schedule = 1e-3,
        step_size: float = 0.1,
        n_steps: int = 2048,
        batch_size: int = 128,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        n_critic_updates: int = 10,
        normalize_advantage: bool = True,
        sequence_length: int | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: torch.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        check_arguments(type(self), locals())
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=0.0,  # unused: no entropy bonus in the plain policy gradient
            vf_coef=0.0,  # unused: the critic has its own loss
            max_grad_norm=0.0,  # unused: the step is α ĝ as it is
            use_sde=False,
            sde_sample_freq=-1,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            device=device,
            seed=seed,
            _init_setup_model=False,
            supported_action_spaces=(spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary),
        )
        if self.env is not None:
            check_spaces(self.observation_space, self.action_space)
        if not step_size > 0:
            raise ValueError(f"step_size must be positive, got {step_size}")
        self.step_size = step_size
        self.sequence_length = sequence_length
        self.batch_size = batch_size
        self.n_critic_updates = n_critic_updates
        self.normalize_advantage = normalize_advantage
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        self._setup_actor()

    def train(self) -> PolicyUpdate:
        """θ ← θ + α ĝ on the whole rollout, then the critic's epochs."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        batch = self.policy_gradient_batch()
        params, family = self._actor_params, self._actor.family
        outputs = self._actor.outputs(batch.actor_inputs)
        gradient = flat_grad(batch.surrogate(family, outputs), params)  # ĝ = mean ∇log π · Â at θ_old
        set_flat_params(params, get_flat_params(params) + self.step_size * gradient)
        with torch.no_grad():
            kl = float(family.kl(outputs.detach(), self._actor.outputs(batch.actor_inputs)).mean())
        value_loss = self._fit_critic()

        self._n_updates += 1
        self.logger.record("train/kl", kl)
        self.logger.record("train/policy_gradient_norm", float(gradient.norm()))
        self.logger.record("train/value_loss", value_loss)
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        return PolicyUpdate(batch, kl)
