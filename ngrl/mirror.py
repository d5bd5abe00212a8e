"""Mirror descent with the KL divergence for categorical policies: the exponentiated (multiplicative) update.

For one state s with action probabilities π(·|s) and advantages A(s, ·), the KL-proximal problem

    max over π' in the simplex of   Σₐ π'(a|s) A(s,a) − (1/η) KL(π'(·|s) ‖ π(·|s))

has the closed-form solution

    π'(a|s) = π(a|s) exp(η A(s,a)) / Σ_b π(b|s) exp(η A(s,b)),   i.e.   log π' = log π + η A − log Z(s).

It is a mirror-descent (mirror-ascent) step with the negative entropy as mirror map, whose Bregman
divergence is the KL divergence (Nemirovski & Yudin 1983; Beck & Teboulle 2003), the update of
mirror-descent policy optimisation (Tomar et al. 2020) and of natural policy gradient on a tabular
softmax policy (Kakade 2002; Agarwal et al. 2021, the "soft policy iteration" form).

Its relation to the natural gradient (Raskutti & Mukherjee 2015): the categorical distribution is an
exponential family with natural parameters the logits θ and mean parameters the probabilities π. The
natural-gradient step in the natural parameters, θ' = θ + η F(θ)⁺∇_θ J, *is* mirror descent in the
mean parameters with the Bregman divergence of the dual of the log-partition function — the KL. For the
linear objective J = Σ_s d(s) Σₐ π_θ(a|s) A(s,a) with the Fisher weighted by the same d(s), F⁺∇J is the
advantage centred in each state, and softmax(θ + η F⁺∇J) is exactly the update above, for every η.
A natural-gradient step taken in other coordinates agrees with it only to first order in η: in the
probabilities themselves it is the additive step π + η π (A − E_π A), which differs from the update
above by η² · ½ π [(A − E_π A)² − Var_π A] + O(η³) (and may leave the simplex); for a general network
policy, θ + ηF⁻¹∇J moves the policy by the same first-order amount projected on what the network can
represent (compatible function approximation), with second-order terms of its own. ``tests/test_mirror.py``
checks all three statements numerically.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["mirror_step"]


def mirror_step(logits: Tensor, advantages: Tensor, step_size: float) -> Tensor:
    """The KL mirror step of a categorical policy: log π'(a|s) = log π(a|s) + η A(s,a) − log Z(s).

    Exactly: π'(a|s) = π(a|s) exp(η A(s,a)) / Σ_b π(b|s) exp(η A(s,b)), with π = softmax(``logits``) and
    η = ``step_size``; π'(·|s) maximises Σₐ π'(a|s) A(s,a) − (1/η) KL(π'(·|s) ‖ π(·|s)) in each state.
    A constant added to A(s, ·) in one state leaves π'(·|s) unchanged (only relative advantages matter).

    :param logits: unnormalised log-probabilities, shape (…, k) over k actions (any scale: they are normalised)
    :param advantages: A(s, a), the same shape as ``logits``
    :param step_size: η ≥ 0, the inverse weight of the KL term
    :return: the new normalised log-probabilities log π', shape (…, k)
    """
    if logits.shape != advantages.shape or logits.ndim == 0:
        raise ValueError(
            f"logits and advantages must have the same shape (…, k), got {tuple(logits.shape)} and {tuple(advantages.shape)}"
        )
    is_number = isinstance(step_size, (int, float)) and not isinstance(step_size, bool)
    if not (is_number and math.isfinite(step_size) and step_size >= 0):
        raise ValueError(f"step_size must be a finite number >= 0, got {step_size!r}")
    return torch.log_softmax(torch.log_softmax(logits, dim=-1) + step_size * advantages, dim=-1)
