"""ngrl.mirror: the KL mirror step against dense natural-gradient steps (float64, tabular and tiny network policies).

The objective is J = Σ_s d(s) Σₐ π(a|s) A(s,a) with A fixed, and every Fisher is the Hessian of the same
d-weighted KL, F = ∇²_θ' Σ_s d(s) KL(π_θ(·|s) ‖ π_θ'(·|s)) at θ' = θ, computed by autograd (never from
the closed forms the module docstring states).
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import hessian

from ngrl.mirror import mirror_step

D = torch.float64
S, K = 4, 3  # states, actions


@pytest.fixture
def table():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(S, K, generator=g, dtype=D)
    advantages = torch.randn(S, K, generator=g, dtype=D)
    weights = torch.rand(S, generator=g, dtype=D) + 0.2
    return logits, advantages, weights / weights.sum()


def objective(probabilities: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """J = Σ_s d(s) Σₐ π(a|s) A(s,a)."""
    return (weights[:, None] * probabilities * advantages).sum()


def weighted_kl(old: torch.Tensor, new: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_s d(s) KL(old(·|s) ‖ new(·|s)) for probability tables."""
    return (weights * (old * (old.log() - new.log())).sum(-1)).sum()


def natural_direction(probabilities_of, theta: torch.Tensor, advantages, weights, fisher_weights=None) -> torch.Tensor:
    """F⁺∇J for the parametrisation θ ↦ π(θ) (flat θ), both by autograd; pseudo-inverse for the null directions.

    The Fisher is weighted by ``fisher_weights`` (by J's own ``weights`` unless given).
    """
    old = probabilities_of(theta).detach()
    fisher_weights = weights if fisher_weights is None else fisher_weights
    fisher = hessian(lambda t: weighted_kl(old, probabilities_of(t), fisher_weights), theta)
    point = theta.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(objective(probabilities_of(point), advantages, weights), point)
    return torch.linalg.pinv(fisher, hermitian=True, rtol=1e-9) @ gradient


def softmax_table(theta: torch.Tensor) -> torch.Tensor:
    return torch.softmax(theta.view(S, K), dim=-1)


def test_the_mirror_step_solves_the_kl_proximal_problem(table):
    logits, advantages, _ = table
    eta = 0.7
    new = mirror_step(logits, advantages, eta)
    old = torch.softmax(logits, -1)

    def proximal(phi: torch.Tensor) -> torch.Tensor:  # Σ_s [Σₐ π'A − (1/η) KL(π' ‖ π)], concave in π'
        p = torch.softmax(phi, -1)
        return ((p * advantages).sum(-1) - (p * (p.log() - old.log())).sum(-1) / eta).sum()

    point = new.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(proximal(point), point)
    assert gradient.abs().max() < 1e-12  # stationary in the logits of π', so the maximiser
    assert torch.allclose(new.exp().sum(-1), torch.ones(S, dtype=D), atol=1e-14)  # normalised log-probabilities
    value = proximal(new)
    perturbation = torch.randn(S, K, generator=torch.Generator().manual_seed(3), dtype=D)
    assert proximal(new + 0.05 * perturbation) < value
    assert proximal(torch.log_softmax(logits, -1) + eta * advantages * 0.9) < value  # a shorter exponent
    # only relative advantages matter, and the logits' scale is normalised away
    shifted = advantages + torch.arange(S, dtype=D)[:, None]
    assert torch.allclose(mirror_step(logits + 5.0, shifted, eta), new, atol=1e-13)
    assert torch.allclose(mirror_step(logits, advantages, 0.0), torch.log_softmax(logits, -1), atol=1e-15)


@pytest.mark.parametrize("eta", [0.1, 1.0, 5.0])
def test_natural_gradient_in_the_logits_is_exactly_the_mirror_step(table, eta):
    """Raskutti & Mukherjee 2015: natural gradient in the natural parameters = KL mirror descent, at every step size."""
    logits, advantages, weights = table
    theta = logits.reshape(-1)
    direction = natural_direction(softmax_table, theta, advantages, weights)
    natural = torch.log_softmax((theta + eta * direction).view(S, K), -1)
    mirror = mirror_step(logits, advantages, eta)
    assert torch.allclose(natural, mirror, atol=1e-11)
    # teeth: the plain gradient step, and a Fisher weighted unlike J, both miss it already at first order
    point = theta.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(objective(softmax_table(point), advantages, weights), point)
    assert (torch.log_softmax((theta + eta * gradient).view(S, K), -1) - mirror).abs().max() > 1e-2 * eta
    uniform = natural_direction(softmax_table, theta, advantages, weights, fisher_weights=torch.full((S,), 1.0 / S, dtype=D))
    assert (torch.log_softmax((theta + eta * uniform).view(S, K), -1) - mirror).abs().max() > 1e-2 * eta


def first_and_second_order(difference_at, etas=(0.02, 0.01, 0.005)):
    """‖diff‖/η and ‖diff‖/η² at each η, and diff/η² at the smallest."""
    norms = [float(torch.linalg.vector_norm(difference_at(eta))) for eta in etas]
    first = [n / eta for n, eta in zip(norms, etas)]
    second = [n / eta**2 for n, eta in zip(norms, etas)]
    return first, second, difference_at(etas[-1]) / etas[-1] ** 2


def test_natural_gradient_in_the_probabilities_agrees_to_first_order_only(table):
    """In the mean parameters (the probabilities, last one eliminated) the natural step is additive:
    it agrees with the mirror step to first order and differs by η²·½π[(A − E_π A)² − Var_π A] + O(η³)."""
    logits, advantages, weights = table
    probabilities = torch.softmax(logits, -1)

    def from_mean(mu: torch.Tensor) -> torch.Tensor:  # the k − 1 free probabilities of each state
        mu = mu.view(S, K - 1)
        return torch.cat([mu, 1.0 - mu.sum(-1, keepdim=True)], dim=-1)

    mean = probabilities[:, :-1].reshape(-1)
    direction = natural_direction(from_mean, mean, advantages, weights)

    def difference(eta: float) -> torch.Tensor:
        return mirror_step(logits, advantages, eta).exp() - from_mean(mean + eta * direction)

    first, second, coefficient = first_and_second_order(difference)
    assert first[0] > first[1] > first[2] and first[2] < 0.3 * first[0]  # ‖diff‖/η → 0 ...
    assert second[0] / second[1] == pytest.approx(1.0, abs=0.05) and second[1] / second[2] == pytest.approx(1.0, abs=0.03)
    centred = advantages - (probabilities * advantages).sum(-1, keepdim=True)
    variance = (probabilities * centred**2).sum(-1, keepdim=True)
    expected = 0.5 * probabilities * (centred**2 - variance)  # the second-order term of π e^{ηA}/Z
    assert expected.abs().max() > 0.01  # ... and the second-order term is not zero: they differ
    assert torch.allclose(coefficient, expected, atol=0.02 * float(expected.abs().max()))


def test_natural_gradient_of_a_network_policy_agrees_to_first_order_only(table):
    """A tanh network θ ↦ logits(s) with more parameters than centred logits: F⁺∇J moves the logits by the
    centred advantage to first order (as the mirror step), and the network's curvature adds η² terms."""
    _, advantages, weights = table
    hidden = 6
    sizes = [hidden * S, hidden, K * hidden, K]
    generator = torch.Generator().manual_seed(1)
    theta = torch.cat([torch.randn(n, generator=generator, dtype=D) for n in sizes]) * 0.8

    def network_logits(flat: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = torch.split(flat, sizes)
        features = torch.tanh(torch.eye(S, dtype=D) @ w1.view(hidden, S).T + b1)  # one-hot states
        return features @ w2.view(K, hidden).T + b2

    def network(flat: torch.Tensor) -> torch.Tensor:
        return torch.softmax(network_logits(flat), -1)

    direction = natural_direction(network, theta, advantages, weights)
    start = network_logits(theta).detach()

    def difference(eta: float) -> torch.Tensor:
        return mirror_step(start, advantages, eta).exp() - network(theta + eta * direction)

    first, second, _ = first_and_second_order(difference)
    assert first[0] > first[1] > first[2] and first[2] < 0.3 * first[0]
    assert second[1] / second[2] == pytest.approx(1.0, abs=0.03)  # ‖diff‖ ≈ c·η², c > 0
    assert second[2] > 1e-2


@pytest.mark.parametrize("step_size", [-0.1, float("nan"), float("inf"), True])
def test_bad_step_sizes_are_refused(step_size):
    with pytest.raises(ValueError, match="step_size"):
        mirror_step(torch.zeros(2, 3), torch.zeros(2, 3), step_size)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="same shape"):
        mirror_step(torch.zeros(2, 3), torch.zeros(2, 4), 0.1)
