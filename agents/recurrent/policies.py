"""Recurrent actor-critic policies with an ERNN, LSTM or GRU body (one flag: ``cell``)."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, FlattenExtractor, MlpExtractor, NatureCNN
from stable_baselines3.common.type_aliases import Schedule

from agents.recurrent.cores import RecurrentCore, make_core
from ngrl.sb3_adapter import SequenceActor, actor_features, distribution_outputs

__all__ = [
    "RecurrentState",
    "RecurrentActorCriticPolicy",
    "RecurrentActorCriticCnnPolicy",
    "SequenceActor",
    "MlpErnnPolicy",
    "CnnErnnPolicy",
]


class RecurrentState(NamedTuple):
    """The running state of a recurrent policy: one tuple of tensors (n_envs, ...) per network.

    ERNN and GRU carry one tensor (h,), LSTM two (h, c).
    """

    pi: tuple[Tensor, ...]
    vf: tuple[Tensor, ...]


class RecurrentActorCriticPolicy(ActorCriticPolicy):
    """Actor-critic policy whose actor and critic each read the features through their own recurrent core.

    features → core (ERNN, LSTM or GRU) → MLP (``net_arch``) → action distribution / value. The state
    is reset wherever ``episode_starts`` is 1. Sequences are passed flat, sequence-major: observations
    of shape (n_seq · T, ...) with the state entering each sequence of shape (n_seq, ...); a single
    step of n_envs environments is the case T = 1. The running state is held by the caller (the
    algorithm or ``predict``), never by the policy, so it is not part of a save.
    ERNN: Kag, Zhang & Saligrama (ICLR 2020), see :mod:`ngrl.ernn`.

    :param cell: "ernn", "lstm" or "gru"
    :param hidden_size: units of the recurrent state
    :param cell_kwargs: keyword arguments of the core (ERNN: ``num_iters``, ``eta``, ``gamma``,
        ``activation``, ``learn_eta``, ``max_recurrent_norm``, ``readout``; LSTM/GRU: ``bias``)
    The other parameters are :class:`~stable_baselines3.common.policies.ActorCriticPolicy`'s.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        ortho_init: bool = True,
        use_sde: bool = False,
        log_std_init: float = 0.0,
        full_std: bool = True,
        use_expln: bool = False,
        squash_output: bool = False,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        share_features_extractor: bool = True,
        normalize_images: bool = True,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        cell: str = "ernn",
        hidden_size: int = 64,
        cell_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if use_sde:
            raise ValueError("recurrent policies do not support gSDE (use_sde=True): use the plain Gaussian policy")
        if isinstance(observation_space, spaces.Dict):
            raise ValueError("recurrent policies take Box/Discrete observations; flatten Dict observations first")
        if hidden_size < 1:
            raise ValueError(f"hidden_size must be positive, got {hidden_size}")
        # read by _build_mlp_extractor, which the parent constructor calls
        self.cell = cell
        self.hidden_size = hidden_size
        self.cell_kwargs = dict(cell_kwargs or {})
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch=net_arch,
            activation_fn=activation_fn,
            ortho_init=ortho_init,
            use_sde=use_sde,
            log_std_init=log_std_init,
            full_std=full_std,
            use_expln=use_expln,
            squash_output=squash_output,
            features_extractor_class=features_extractor_class,
            features_extractor_kwargs=features_extractor_kwargs,
            share_features_extractor=share_features_extractor,
            normalize_images=normalize_images,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
        )

    def _build_mlp_extractor(self) -> None:
        # The cores are built here so that the optimizer created next by _build includes them.
        self.rnn_actor: RecurrentCore = make_core(self.cell, self.features_dim, self.hidden_size, **self.cell_kwargs)
        self.rnn_critic: RecurrentCore = make_core(self.cell, self.features_dim, self.hidden_size, **self.cell_kwargs)
        self.mlp_extractor = MlpExtractor(
            self.rnn_actor.output_size, net_arch=self.net_arch, activation_fn=self.activation_fn, device=self.device
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(cell=self.cell, hidden_size=self.hidden_size, cell_kwargs=self.cell_kwargs)
        return data

    # --- state ---------------------------------------------------------------------------------

    def initial_state(self, n_envs: int) -> RecurrentState:
        """Zero states for ``n_envs`` environments."""
        dtype = self.action_net.weight.dtype
        return RecurrentState(
            self.rnn_actor.initial_state(n_envs, self.device, dtype), self.rnn_critic.initial_state(n_envs, self.device, dtype)
        )

    # --- the actor view and the parameters (by module, never by name) ---------------------------

    def actor_view(self) -> SequenceActor:
        """The actor as a function of whole sequences (its outputs depend on the state carried along them)."""
        return SequenceActor(self)

    def actor_parameters(self) -> list[nn.Parameter]:
        """What shapes π: actor features extractor, actor core, actor MLP, action head, log σ."""
        modules = [self.pi_features_extractor, self.rnn_actor, self.mlp_extractor.policy_net, self.action_net]
        params = [p for m in modules for p in m.parameters()]
        if isinstance(getattr(self, "log_std", None), nn.Parameter):
            params.append(self.log_std)
        return [p for p in {id(p): p for p in params}.values() if p.requires_grad]

    def critic_parameters(self) -> list[nn.Parameter]:
        """The value function's own parameters: critic core, value MLP, value head (+ unshared extractor)."""
        modules: list[nn.Module] = [self.rnn_critic, self.mlp_extractor.value_net, self.value_net]
        if not self.share_features_extractor:
            modules.insert(0, self.vf_features_extractor)
        return list({id(p): p for m in modules for p in m.parameters()}.values())

    # --- sequences -----------------------------------------------------------------------------

    def _features(self, obs: Tensor, extractor: BaseFeaturesExtractor) -> Tensor:
        return actor_features(self, obs, extractor)  # observations cast to the network's dtype (float64 checks work)

    @staticmethod
    def _run(
        core: RecurrentCore, features: Tensor, state: tuple[Tensor, ...], episode_starts: Tensor
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        n_seq = state[0].shape[0]
        if features.shape[0] % n_seq:
            raise ValueError(f"{features.shape[0]} observations do not split into {n_seq} sequences of equal length")
        x = features.reshape(n_seq, -1, features.shape[-1])
        out, state = core(x, state, episode_starts.reshape(n_seq, -1))
        return out.reshape(-1, out.shape[-1]), state

    def actor_latent(
        self, obs: Tensor, state: tuple[Tensor, ...], episode_starts: Tensor
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        latent, state = self._run(self.rnn_actor, self._features(obs, self.pi_features_extractor), state, episode_starts)
        return self.mlp_extractor.forward_actor(latent), state

    def critic_latent(
        self, obs: Tensor, state: tuple[Tensor, ...], episode_starts: Tensor
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        latent, state = self._run(self.rnn_critic, self._features(obs, self.vf_features_extractor), state, episode_starts)
        return self.mlp_extractor.forward_critic(latent), state

    def actor_outputs(self, obs: Tensor, state: tuple[Tensor, ...], episode_starts: Tensor) -> Tensor:
        """Raw outputs of the action distribution per step, (n_seq · T, k): logits, or [μ, log σ]."""
        latent, _ = self.actor_latent(obs, state, episode_starts)
        return distribution_outputs(self, latent)

    def forward(  # type: ignore[override]
        self, obs: Tensor, state: RecurrentState, episode_starts: Tensor, deterministic: bool = False
    ) -> tuple[Tensor, Tensor, Tensor, RecurrentState]:
        """One step of n_envs environments: actions, values, log π(a|·) and the next state."""
        latent_pi, state_pi = self.actor_latent(obs, state.pi, episode_starts)
        latent_vf, state_vf = self.critic_latent(obs, state.vf, episode_starts)
        distribution = self._get_action_dist_from_latent(latent_pi)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        actions = actions.reshape((-1, *self.action_space.shape))  # type: ignore[misc]
        return actions, self.value_net(latent_vf), log_prob, RecurrentState(state_pi, state_vf)

    def get_distribution(  # type: ignore[override]
        self, obs: Tensor, state: tuple[Tensor, ...], episode_starts: Tensor
    ) -> tuple[Distribution, tuple[Tensor, ...]]:
        latent_pi, state = self.actor_latent(obs, state, episode_starts)
        return self._get_action_dist_from_latent(latent_pi), state

    def predict_values(self, obs: Tensor, state: tuple[Tensor, ...], episode_starts: Tensor) -> Tensor:  # type: ignore[override]
        latent_vf, _ = self.critic_latent(obs, state, episode_starts)
        return self.value_net(latent_vf)

    def evaluate_actions(  # type: ignore[override]
        self, obs: Tensor, actions: Tensor, state: RecurrentState, episode_starts: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        distribution, _ = self.get_distribution(obs, state.pi, episode_starts)
        return self.predict_values(obs, state.vf, episode_starts), distribution.log_prob(actions), distribution.entropy()

    def _predict(self, observation: Tensor, deterministic: bool = False) -> Tensor:  # type: ignore[override]
        raise TypeError("a recurrent policy needs its state: call predict(obs, state, episode_start, deterministic)")

    def predict(  # type: ignore[override]
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """Actions for ``observation`` and the actor's next state (a tuple of arrays (n_envs, ...)).

        Pass the returned state back in at the next call, with ``episode_start`` marking the envs whose
        episode just began (their state is reset); ``state=None`` starts from zeros.
        """
        self.set_training_mode(False)
        obs, vectorized = self.obs_to_tensor(observation)
        n_envs = obs.shape[0]
        if state is None:
            actor_state = self.initial_state(n_envs).pi
        else:
            actor_state = tuple(torch.as_tensor(s, device=self.device, dtype=self.action_net.weight.dtype) for s in state)
            if len(actor_state) != len(self.rnn_actor.state_shapes) or any(s.shape[0] != n_envs for s in actor_state):
                raise ValueError(
                    f"state does not fit this policy and {n_envs} observation(s): pass the state returned by the previous "
                    "predict call for the same number of envs, or None to start from zeros"
                )
        starts = (
            torch.zeros(n_envs, device=self.device)
            if episode_start is None
            else torch.as_tensor(np.asarray(episode_start, dtype=np.float32).reshape(n_envs), device=self.device)
        )
        with torch.no_grad():
            distribution, actor_state = self.get_distribution(obs, actor_state, starts)
            actions = distribution.get_actions(deterministic=deterministic)
        actions_np = actions.cpu().numpy().reshape((-1, *self.action_space.shape))  # type: ignore[misc]
        if isinstance(self.action_space, spaces.Box):
            actions_np = np.clip(actions_np, self.action_space.low, self.action_space.high)
        if not vectorized:
            actions_np = actions_np.squeeze(axis=0)
        return actions_np, tuple(s.cpu().numpy() for s in actor_state)


class RecurrentActorCriticCnnPolicy(RecurrentActorCriticPolicy):
    """:class:`RecurrentActorCriticPolicy` with SB3's NatureCNN features extractor (image observations)."""

    def __init__(
        self, observation_space: spaces.Space, action_space: spaces.Space, lr_schedule: Schedule, **kwargs: Any
    ) -> None:
        kwargs.setdefault("features_extractor_class", NatureCNN)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)


MlpErnnPolicy = RecurrentActorCriticPolicy
CnnErnnPolicy = RecurrentActorCriticCnnPolicy
