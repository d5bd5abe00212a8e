"""Fisher information matrices of SB3 actor-critic policies, taken over the actor's parameters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import preprocess_obs

from ngrl.fisher.distributions import OutputDistribution, from_sb3
from ngrl.fisher.kfac import kfac_from_linearization
from ngrl.fisher.operator import CurvatureOperator, DiagonalOperator, GaussNewtonOperator
from ngrl.linearize import (
    BroadcastLinearization,
    ConcatLinearization,
    FunctionalLinearization,
    Linearization,
    MLPChainLinearization,
    as_chain,
    module_function,
)

__all__ = [
    "ESTIMATORS",
    "actor_parameters",
    "ActorOutputs",
    "fisher_from_linearization",
    "policy_distribution",
    "policy_linearization",
    "policy_fisher",
]

ESTIMATORS = ("exact", "score", "empirical", "diagonal", "kfac")


def _check_policy(policy: nn.Module) -> None:
    if not isinstance(policy, ActorCriticPolicy):
        raise TypeError(f"expected an SB3 ActorCriticPolicy (or subclass), got {type(policy).__name__}")


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
    unique = list({id(p): p for p in params}.values())
    return [p for p in unique if p.requires_grad]


def policy_distribution(policy: ActorCriticPolicy) -> OutputDistribution:
    """The output family (with its analytic Fisher) of the policy's action distribution."""
    _check_policy(policy)
    return from_sb3(policy.action_dist)


class ActorOutputs(nn.Module):
    """Module view of a policy's actor: obs ↦ raw distribution outputs (n, k).

    Logits for categorical, multi-categorical and Bernoulli policies; [μ, log σ] for Gaussian ones.
    """

    def __init__(self, policy: ActorCriticPolicy) -> None:
        super().__init__()
        if getattr(policy, "recurrent", False):
            raise TypeError(
                f"{type(policy).__name__} is recurrent: its outputs depend on the state carried along each sequence, "
                "not on single observations. Take its Fisher over whole sequences with ngrl.recurrent.sequence_fisher "
                "(the actor as a function of sequences: agents.recurrent.SequenceActor), as NPG does."
            )
        self.policy = policy
        self.family = policy_distribution(policy)

    def features(self, obs: Any) -> Tensor:
        # SB3's extract_features, except that observations are cast to the network's dtype rather than
        # always to float32, so that float64 policies (used for exact checks) work end to end.
        dtype = self.policy.action_net.weight.dtype
        preprocessed = preprocess_obs(obs, self.policy.observation_space, normalize_images=self.policy.normalize_images)
        if isinstance(preprocessed, dict):
            preprocessed = {key: value.to(dtype) for key, value in preprocessed.items()}
        else:
            preprocessed = preprocessed.to(dtype)
        return self.policy.pi_features_extractor(preprocessed).to(dtype)

    def forward(self, obs: Any) -> Tensor:
        latent = self.policy.mlp_extractor.forward_actor(self.features(obs))
        outputs = self.policy.action_net(latent)
        log_std = getattr(self.policy, "log_std", None)
        if log_std is not None and self.family.num_outputs == 2 * outputs.shape[-1]:
            outputs = torch.cat([outputs, log_std.expand_as(outputs)], dim=-1)
        return outputs


def policy_linearization(policy: ActorCriticPolicy, obs: Any, params: Sequence[Tensor] | None = None) -> Linearization:
    """J of the actor's outputs in ``params`` (default: :func:`actor_parameters`) at ``obs``.

    The MLP actor of ``MlpPolicy`` takes the hand-written fast path; anything else ``torch.func``.
    """
    actor = ActorOutputs(policy)
    own = actor_parameters(policy)
    params = own if params is None else list(params)
    chain = as_chain([policy.mlp_extractor.policy_net, policy.action_net])
    extractor_is_constant = not any(True for _ in policy.pi_features_extractor.parameters())
    if chain is not None and extractor_is_constant and isinstance(obs, Tensor) and len(params) == len(own) and all(
        a is b for a, b in zip(params, own)
    ):
        with torch.no_grad():
            features = actor.features(obs)
        mean = MLPChainLinearization(chain, features)
        if isinstance(getattr(policy, "log_std", None), nn.Parameter) and policy.log_std.requires_grad:
            return ConcatLinearization([mean, BroadcastLinearization(policy.log_std, features.shape[0])])
        return mean
    return FunctionalLinearization(module_function(actor, params), params, obs)


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
    """The Fisher F = E_s E_a[∇log π ∇log πᵀ] of ``policy`` over the states ``obs``, as an operator.

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

    :param obs: a batch of observations (tensor, or dict of tensors), on the policy's device
    :param actions: the actions for ``"empirical"``
    :param damping: λ added as λI to every product
    :param params: the parameters to take F over (default :func:`actor_parameters`)
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown Fisher estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    family = policy_distribution(policy)
    lin = policy_linearization(policy, obs, params)
    owner_params = actor_parameters(policy) if params is None else list(params)
    return fisher_from_linearization(
        lin, family, estimator=estimator, actions=actions, damping=damping, params=owner_params, generator=generator
    )


def fisher_from_linearization(
    linearization: Linearization,
    family: OutputDistribution,
    *,
    estimator: str = "exact",
    actions: Tensor | None = None,
    damping: float = 0.0,
    params: Sequence[Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> CurvatureOperator:
    """The chosen Fisher estimator of outputs z = f(θ) with action distribution ``family``, given J.

    Every estimator is F = (1/n) Σᵢ Jᵢᵀ Hᵢ Jᵢ with a different output-space Hᵢ: the distribution's
    Fisher H(zᵢ) (exact, diagonal, kfac) or gᵢgᵢᵀ with gᵢ = ∇_z log π(aᵢ|zᵢ) at a sampled (score) or
    given (empirical) action. Shared by :func:`policy_fisher` and the sequence Fisher of recurrent policies.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown Fisher estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    params = list(linearization.params if params is None else params)
    outputs = linearization.outputs
    if estimator == "kfac":
        return kfac_from_linearization(linearization, family.fisher_sqrt(outputs), params, damping)
    if estimator in ("exact", "diagonal"):
        operator = GaussNewtonOperator(
            linearization, lambda u: family.fisher_mv(outputs, u), lambda: family.fisher_sqrt(outputs), params=params, damping=damping
        )
        return DiagonalOperator(operator._diagonal(), params, damping) if estimator == "diagonal" else operator
    if estimator == "empirical":
        if actions is None:
            raise ValueError("the empirical Fisher needs the observed actions: pass actions=")
    else:
        with torch.no_grad():
            actions = family.sample(outputs, generator)
    score = family.score_cotangent(outputs, actions)  # gᵢ = ∇_z log π(aᵢ | zᵢ)
    operator = GaussNewtonOperator(
        linearization,
        lambda u: score * (score * u).sum(-1, keepdim=True),  # Hᵢ = gᵢgᵢᵀ
        lambda: score.unsqueeze(-1),
        params=params,
        damping=damping,
    )
    operator.actions = actions  # the sampled (score) or given (empirical) actions, for inspection
    return operator
