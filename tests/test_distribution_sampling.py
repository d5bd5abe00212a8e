"""Moments of every output family's ``sample()`` against the family's own parameters (the score Fisher draws from it).

200,000 draws per family; tolerances of about 5 standard errors, so a sampler with a wrong
probability, a swapped mean/log σ, σ² instead of σ or a shifted category fails.
"""

from __future__ import annotations

import torch

from ngrl.fisher.distributions import Bernoulli, Categorical, DiagGaussian, MultiCategorical

N = 200_000


def _draw(family, outputs: torch.Tensor) -> torch.Tensor:
    return family.sample(outputs.expand(N, -1), torch.Generator().manual_seed(0))


def _frequencies(samples: torch.Tensor, k: int) -> torch.Tensor:
    return torch.bincount(samples.long(), minlength=k).double() / len(samples)


def test_categorical_frequencies_are_the_softmax():
    logits = torch.tensor([[0.3, -1.2, 1.5, 0.0]], dtype=torch.float64)
    samples = _draw(Categorical(4), logits)
    assert samples.shape == (N,)
    torch.testing.assert_close(_frequencies(samples, 4), torch.softmax(logits[0], -1), atol=6e-3, rtol=0)


def test_multi_categorical_blocks_are_independent_softmaxes():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0, -0.7]], dtype=torch.float64)  # blocks of 2 and 3
    samples = _draw(MultiCategorical([2, 3]), logits)
    assert samples.shape == (N, 2)
    torch.testing.assert_close(_frequencies(samples[:, 0], 2), torch.softmax(logits[0, :2], -1), atol=6e-3, rtol=0)
    torch.testing.assert_close(_frequencies(samples[:, 1], 3), torch.softmax(logits[0, 2:], -1), atol=6e-3, rtol=0)
    joint = _frequencies(samples[:, 0] * 3 + samples[:, 1], 6).view(2, 3)
    torch.testing.assert_close(joint, torch.outer(torch.softmax(logits[0, :2], -1), torch.softmax(logits[0, 2:], -1)), atol=6e-3, rtol=0)


def test_bernoulli_means_are_the_sigmoid():
    logits = torch.tensor([[-2.0, 0.0, 1.3]], dtype=torch.float64)
    samples = _draw(Bernoulli(3), logits)
    assert set(samples.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(samples.mean(0), torch.sigmoid(logits[0]), atol=6e-3, rtol=0)


def test_diag_gaussian_mean_and_std():
    mean, log_std = torch.tensor([0.5, -2.0]), torch.tensor([-1.0, 0.7])
    outputs = torch.cat([mean, log_std]).unsqueeze(0).double()
    samples = _draw(DiagGaussian(2), outputs)
    std = log_std.double().exp()
    torch.testing.assert_close(samples.mean(0), mean.double(), atol=float(6 * std.max() / N**0.5), rtol=0)
    torch.testing.assert_close(samples.std(0), std, atol=0, rtol=0.01)
    correlation = torch.corrcoef(samples.T)[0, 1]
    assert abs(float(correlation)) < 0.01  # independent dimensions
