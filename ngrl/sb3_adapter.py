"""The one module of ngrl that knows SB3's policy internals: the actor view of an actor-critic policy.

An :class:`ActorView` is what the natural-gradient mathematics needs of a policy's actor, whatever its
kind, so that agents call it and never ask "is this policy recurrent?":

- ``params``: the actor's parameters θ (found by module identity, never by name);
- ``family``: the action-distribution family of its raw outputs (:mod:`ngrl.fisher.distributions`);
- ``outputs(inputs)`` (also ``view(inputs)``): the raw distribution outputs z (n, k) — logits, or
  [μ, log σ] — for a rollout's actor inputs;
- ``function``: f(param_values, inputs) ↦ z, the same map with θ substituted (for ``torch.func``);
- ``inputs_from(rollout)``: what the actor reads of a whole rollout;
- ``subsample(inputs, actions, k)``: every k-th state of the inputs, with its actions;
- ``linearization(inputs)``: J = ∂z/∂θ at the inputs (:mod:`ngrl.linearize`);
- ``fisher(inputs, ...)``: F = (1/n) Σᵢ Jᵢᵀ Hᵢ Jᵢ as a curvature operator (estimators of
  :func:`ngrl.fisher.estimators.fisher_from_linearization`);
- ``supports_kfac``: whether the KFAC factors exist for this actor.

Two views implement it. :class:`FeedForwardActor` (any SB3 ``ActorCriticPolicy``): the inputs are
observations, one row per state, so sub-sampling keeps every k-th row and the Fisher is
:func:`policy_fisher`. :class:`SequenceActor` (a policy that carries a state along sequences, as
``agents.recurrent``'s): the inputs are whole sequences with the state entering each one, a row depends
on every earlier step of its sequence, so sub-sampling keeps every k-th *sequence* and the Fisher is
:func:`ngrl.recurrent.sequence_fisher`, taken through the unrolled recurrence. :func:`actor_view`
builds the right one: a policy whose actor is not a function of single observations declares its view
by an ``actor_view()`` method (and its actor modules by ``actor_parameters()``, its critic modules by
``critic_parameters()``); every other ``ActorCriticPolicy`` gets the feed-forward view.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import preprocess_obs

from ngrl.fisher.distributions import OutputDistribution, from_sb3
from ngrl.fisher.estimators import ESTIMATORS, fisher_from_linearization
from ngrl.fisher.operator import CurvatureOperator
from ngrl.linearize import (
    BroadcastLinearization,
    ConcatLinearization,
    FunctionalLinearization,
    Linearization,
    MLPChainLinearization,
    as_chain,
    module_function,
)
from ngrl.recurrent import SequenceLinearization, sequence_fisher

__all__ = [
    "ActorOutputs",
    "ActorView",
    "FeedForwardActor",
    "SequenceActor",
    "actor_features",
    "actor_parameters",
    "actor_view",
    "critic_parameters",
    "distribution_outputs",
    "policy_distribution",
    "policy_fisher",
    "policy_linearization",
]


def _check_policy(policy: nn.Module) -> None:
    if not isinstance(policy, ActorCriticPolicy):
        raise TypeError(f"expected an SB3 ActorCriticPolicy (or subclass), got {type(policy).__name__}")


def _unique(params: Sequence[nn.Parameter]) -> list[nn.Parameter]:
    return list({id(p): p for p in params}.values())


# --- parameters and distribution family ----------------------------------------------------------


def actor_parameters(policy: ActorCriticPolicy) -> list[nn.Parameter]:
    """The parameters that shape π(a|s): actor features extractor, actor MLP, action head, log σ.

    Taken from the modules that compute the action distribution (``pi_features_extractor``,
    ``mlp_extractor.policy_net``, ``action_net``, ``log_std``), never by matching names. With a
    shared features extractor its parameters belong to the actor too (they move with the policy step).
    A policy with modules of its own in the actor's path (a recurrent core) declares them by an
    ``actor_parameters()`` method, which is used instead.
    """
    _check_policy(policy)
    own = getattr(policy, "actor_parameters", None)
    if callable(own):
        return list(own())
    modules = [policy.pi_features_extractor, policy.mlp_extractor.policy_net, policy.action_net]
    params: list[nn.Parameter] = [p for m in modules for p in m.parameters()]
    log_std = getattr(policy, "log_std", None)
    if isinstance(log_std, nn.Parameter):
        params.append(log_std)
    return [p for p in _unique(params) if p.requires_grad]


def critic_parameters(policy: ActorCriticPolicy) -> list[nn.Parameter]:
    """The value function's own parameters (critic features extractor if not shared, value MLP, value head).

    A policy with modules of its own in the critic's path (a recurrent core) declares them by a
    ``critic_parameters()`` method, which is used instead.
    """
    own = getattr(policy, "critic_parameters", None)
    if callable(own):
        return list(own())
    modules: list[nn.Module] = [policy.mlp_extractor.value_net, policy.value_net]
    if not policy.share_features_extractor:
        modules.insert(0, policy.vf_features_extractor)
    return _unique([p for m in modules for p in m.parameters()])


def policy_distribution(policy: ActorCriticPolicy) -> OutputDistribution:
    """The output family (with its analytic Fisher) of the policy's action distribution."""
    _check_policy(policy)
    return from_sb3(policy.action_dist)


# --- the actor's forward pieces (shared by both views and by the recurrent policies) --------------


def actor_features(policy: ActorCriticPolicy, obs: Any, extractor: nn.Module) -> Tensor:
    """SB3's ``extract_features`` with ``extractor``, except that observations are cast to the network's
    dtype rather than always to float32, so that float64 policies (used for exact checks) work end to end."""
    dtype = policy.action_net.weight.dtype
    preprocessed = preprocess_obs(obs, policy.observation_space, normalize_images=policy.normalize_images)
    if isinstance(preprocessed, dict):
        preprocessed = {key: value.to(dtype) for key, value in preprocessed.items()}
    else:
        preprocessed = preprocessed.to(dtype)
    return extractor(preprocessed).to(dtype)


def distribution_outputs(policy: ActorCriticPolicy, latent: Tensor, family: OutputDistribution | None = None) -> Tensor:
    """The raw outputs of the action distribution from the actor's latent: logits, or [μ, log σ] (state-independent σ)."""
    outputs = policy.action_net(latent)
    log_std = getattr(policy, "log_std", None)
    if log_std is not None:
        family = policy_distribution(policy) if family is None else family
        if family.num_outputs == 2 * outputs.shape[-1]:
            outputs = torch.cat([outputs, log_std.expand_as(outputs)], dim=-1)
    return outputs


# --- the views ------------------------------------------------------------------------------------


class ActorView(nn.Module):
    """The actor of an actor-critic policy as the natural-gradient mathematics sees it (see the module docstring).

    A module (``view(inputs)`` = :meth:`outputs`) holding the policy, so that ``torch.func.functional_call``
    substitutes the actor's parameters by identity (:attr:`function`).
    """

    supports_kfac: ClassVar[bool] = False

    def __init__(self, policy: ActorCriticPolicy) -> None:
        super().__init__()
        _check_policy(policy)
        self.policy = policy
        self.family = policy_distribution(policy)
        self.params = actor_parameters(policy)
        self._function: Callable[[Sequence[Tensor], Any], Tensor] | None = None

    @property
    def function(self) -> Callable[[Sequence[Tensor], Any], Tensor]:
        """f(param_values, inputs) ↦ raw outputs, the values substituted for :attr:`params` (in that order)."""
        if self._function is None:
            self._function = module_function(self, self.params)
        return self._function

    def outputs(self, inputs: Any) -> Tensor:
        """The raw distribution outputs (n, k) for the actor inputs of a rollout."""
        return self(inputs)

    def inputs_from(self, rollout: Any) -> Any:
        """What the actor reads of a whole rollout."""
        raise NotImplementedError

    def subsample(self, inputs: Any, actions: Tensor, k: int) -> tuple[Any, Tensor]:
        """Every k-th state of ``inputs`` and its actions (the inputs themselves, unchanged, when k = 1)."""
        raise NotImplementedError

    def linearization(self, inputs: Any) -> Linearization:
        """J = ∂z/∂θ of the raw outputs in :attr:`params` at ``inputs``."""
        raise NotImplementedError

    def fisher(
        self,
        inputs: Any,
        *,
        estimator: str = "exact",
        actions: Tensor | None = None,
        damping: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> CurvatureOperator:
        """F (+ λI with λ = ``damping``) over :attr:`params` on ``inputs``; estimators as :func:`policy_fisher`."""
        raise NotImplementedError


class FeedForwardActor(ActorView):
    """The actor of a feed-forward SB3 policy: observations ↦ raw distribution outputs (n, k).

    Logits for categorical, multi-categorical and Bernoulli policies; [μ, log σ] for Gaussian ones.
    Each row depends on its own observation only: a rollout's inputs are its observations (a tensor or
    a dict of tensors), sub-sampling keeps every k-th one.
    """

    supports_kfac: ClassVar[bool] = True

    def __init__(self, policy: ActorCriticPolicy) -> None:
        if callable(getattr(policy, "actor_view", None)):
            raise TypeError(
                f"{type(policy).__name__} declares its own actor view: its outputs are not a function of single "
                "observations (a recurrent policy carries a state along each sequence). Use "
                "ngrl.sb3_adapter.actor_view(policy), whose fisher() takes F over whole sequences "
                "(ngrl.recurrent.sequence_fisher), as NPG does."
            )
        super().__init__(policy)

    def features(self, obs: Any) -> Tensor:
        return actor_features(self.policy, obs, self.policy.pi_features_extractor)

    def forward(self, obs: Any) -> Tensor:
        latent = self.policy.mlp_extractor.forward_actor(self.features(obs))
        return distribution_outputs(self.policy, latent, self.family)

    def inputs_from(self, rollout: Any) -> Any:
        return rollout.observations

    def subsample(self, inputs: Any, actions: Tensor, k: int) -> tuple[Any, Tensor]:
        if k == 1:
            return inputs, actions
        rows = {key: value[::k] for key, value in inputs.items()} if isinstance(inputs, dict) else inputs[::k]
        return rows, actions[::k]

    def linearization(self, inputs: Any, params: Sequence[Tensor] | None = None) -> Linearization:
        """J at the observations ``inputs``; the MLP actor of ``MlpPolicy`` takes the hand-written fast path, anything else ``torch.func``.

        :param params: a subset of :attr:`params` to take J in (default: all of them)
        """
        own = self.params
        params = own if params is None else list(params)
        policy = self.policy
        chain = as_chain([policy.mlp_extractor.policy_net, policy.action_net])
        extractor_is_constant = not any(True for _ in policy.pi_features_extractor.parameters())
        if chain is not None and extractor_is_constant and isinstance(inputs, Tensor) and len(params) == len(own) and all(
            a is b for a, b in zip(params, own)
        ):
            with torch.no_grad():
                features = self.features(inputs)
            mean = MLPChainLinearization(chain, features)
            if isinstance(getattr(policy, "log_std", None), nn.Parameter) and policy.log_std.requires_grad:
                return ConcatLinearization([mean, BroadcastLinearization(policy.log_std, features.shape[0])])
            return mean
        function = self.function if params is own else module_function(self, params)
        return FunctionalLinearization(function, params, inputs)

    def fisher(
        self,
        inputs: Any,
        *,
        estimator: str = "exact",
        actions: Tensor | None = None,
        damping: float = 0.0,
        generator: torch.Generator | None = None,
        params: Sequence[Tensor] | None = None,
    ) -> CurvatureOperator:
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown Fisher estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
        params = self.params if params is None else list(params)
        return fisher_from_linearization(
            self.linearization(inputs, params), self.family, estimator=estimator, actions=actions, damping=damping,
            params=params, generator=generator,
        )


ActorOutputs = FeedForwardActor  # the name this view had before it grew the rest of the interface


class SequenceActor(ActorView):
    """The actor of a policy that carries a state along sequences: sequences ↦ raw outputs (n_seq · T, k).

    The inputs are a batch of whole sequences, flat and sequence-major, with ``observations``,
    ``episode_starts`` (where the state is reset), ``states.pi`` (the actor's state entering each
    sequence, tensors (n_seq, ...)) and ``sequence_length`` T (``agents.recurrent.RecurrentSequences``).
    The policy provides ``actor_outputs(observations, start_state, episode_starts)`` and
    ``actor_parameters()``. Row i depends on every earlier step of its sequence, so the Fisher is
    taken through the unrolled recurrence (:func:`ngrl.recurrent.sequence_fisher`) and sub-sampling
    keeps whole sequences. KFAC is not defined here.
    """

    def forward(self, sequences: Any) -> Tensor:
        return self.policy.actor_outputs(sequences.observations, sequences.states.pi, sequences.episode_starts)

    def inputs_from(self, rollout: Any) -> Any:
        return rollout

    def subsample(self, inputs: Any, actions: Tensor, k: int) -> tuple[Any, Tensor]:
        """Every k-th sequence whole (its rows, its start state), so each kept row keeps its history."""
        if k == 1:
            return inputs, actions
        keep = torch.arange(0, inputs.states.pi[0].shape[0], k, device=actions.device)
        length = inputs.sequence_length
        rows = (keep.unsqueeze(1) * length + torch.arange(length, device=actions.device)).flatten()
        kept = inputs._replace(
            observations=inputs.observations[rows],
            episode_starts=inputs.episode_starts[rows],
            states=type(inputs.states)(*(tuple(s[keep] for s in part) for part in inputs.states)),
        )
        return kept, actions[rows]

    def linearization(self, inputs: Any) -> Linearization:
        return SequenceLinearization(self.function, self.params, inputs)

    def fisher(
        self,
        inputs: Any,
        *,
        estimator: str = "exact",
        actions: Tensor | None = None,
        damping: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> CurvatureOperator:
        return sequence_fisher(
            self.function, self.params, inputs, self.family, estimator=estimator, actions=actions, damping=damping,
            generator=generator,
        )


def actor_view(policy: ActorCriticPolicy) -> ActorView:
    """The actor view of ``policy``: the one it declares by an ``actor_view()`` method, else :class:`FeedForwardActor`."""
    _check_policy(policy)
    declared = getattr(policy, "actor_view", None)
    return declared() if callable(declared) else FeedForwardActor(policy)


# --- the feed-forward view as functions (the backend's original API) -------------------------------


def policy_linearization(policy: ActorCriticPolicy, obs: Any, params: Sequence[Tensor] | None = None) -> Linearization:
    """J of a feed-forward actor's outputs in ``params`` (default: :func:`actor_parameters`) at ``obs``."""
    return FeedForwardActor(policy).linearization(obs, params)


def policy_fisher(
    policy: ActorCriticPolicy,
    obs: Any,
    *,
    estimator: str = "exact",
    actions: Tensor | None = None,
    damping: float = 0.0,
    params: Sequence[Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> CurvatureOperator:
    """The Fisher F = E_s E_a[∇log π ∇log πᵀ] of a feed-forward ``policy`` over the states ``obs``, as an operator.

    Estimators (all over the same parameters, all returned with ``.params``, ``.mv``, ``.dense``):

    - ``"exact"``: the expectation over actions in closed form, F = (1/n) Σᵢ Jᵢᵀ H(zᵢ) Jᵢ with H the
      output Fisher of the distribution (equal to the Hessian of the mean KL at θ_old). Default.
    - ``"score"``: Monte Carlo, F ≈ (1/n) Σᵢ sᵢsᵢᵀ with sᵢ = ∇log π(aᵢ|sᵢ) for one action aᵢ
      sampled from the policy per state (``generator`` seeds the draw).
    - ``"empirical"``: the same outer products at the given ``actions`` instead of sampled ones.
      Caveat (Kunstner, Hennig & Balles, 2019): with targets not drawn from the model this is not the
      Fisher and can badly misstate curvature; on on-policy rollouts the taken actions *are* model
      samples, which is the only setting where it estimates F. Never the default.
    - ``"diagonal"``: diag of the exact Fisher (cheap; also a good CG preconditioner).
    - ``"kfac"``: Kronecker-factored blocks per layer (Martens & Grosse 2015), with the expectation over
      actions in closed form; the operator also has ``.solve(v)`` ≈ (F + λI)⁻¹v. MLP actors only.

    A recurrent policy is refused: its Fisher is over whole sequences (``actor_view(policy).fisher``).

    :param obs: a batch of observations (tensor, or dict of tensors), on the policy's device
    :param actions: the actions for ``"empirical"``
    :param damping: λ added as λI to every product
    :param params: the parameters to take F over (default :func:`actor_parameters`)
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown Fisher estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    return FeedForwardActor(policy).fisher(obs, estimator=estimator, actions=actions, damping=damping, params=params, generator=generator)
