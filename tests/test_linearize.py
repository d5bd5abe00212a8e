"""Linearisations (J v, Jᵀu, per-sample products) against torch.autograd.functional.jacobian."""

import pytest
import torch
from torch import nn

from ngrl.linearize import FunctionalLinearization, MLPChainLinearization, as_chain, linearize, module_function
from ngrl.params import flatten, get_flat_params, unflatten

ACTIVATIONS = [nn.Tanh, nn.ReLU, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.Identity]


def dense_jacobian(module: nn.Module, params, inputs) -> torch.Tensor:
    fn = module_function(module, params)
    theta = get_flat_params(params)
    jac = torch.autograd.functional.jacobian(lambda th: fn(unflatten(th, params), inputs), theta)
    return jac.reshape(inputs.shape[0], -1, theta.numel())  # (n, k, P)


def check_against_dense(lin, jac: torch.Tensor, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    n, k, num = jac.shape
    v = torch.randn(num, generator=g, dtype=jac.dtype)
    u = torch.randn(n, k, generator=g, dtype=jac.dtype)
    assert torch.allclose(lin.jvp(unflatten(v, lin.params)), torch.einsum("nkp,p->nk", jac, v), atol=1e-12)
    assert torch.allclose(flatten(lin.vjp(u)), torch.einsum("nkp,nk->p", jac, u), atol=1e-12)
    per_sample = torch.einsum("nkp,nk->np", jac, u)
    got = torch.cat([t.reshape(n, -1) for t in lin.per_sample_vjp(u)], dim=1)
    assert torch.allclose(got, per_sample, atol=1e-12)
    assert torch.allclose(flatten(lin.squared_vjp_sum(u)), per_sample.square().sum(0), atol=1e-12)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_chain_fast_path_matches_jacobian(activation):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), activation(), nn.Linear(5, 4), activation(), nn.Linear(4, 2)).double()
    x = torch.randn(7, 3, dtype=torch.float64)
    params = list(net.parameters())
    lin = linearize(net, params, x)
    assert isinstance(lin, MLPChainLinearization)
    assert torch.allclose(lin.outputs, net(x))
    check_against_dense(lin, dense_jacobian(net, params, x))


def test_chain_without_bias_and_nested_sequential():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Sequential(nn.Linear(3, 4, bias=False), nn.Tanh()), nn.Linear(4, 2)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    params = list(net.parameters())
    lin = linearize(net, params, x)
    assert isinstance(lin, MLPChainLinearization)
    check_against_dense(lin, dense_jacobian(net, params, x))


def test_generic_path_for_other_modules_and_parameter_subsets():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(3, 6), nn.LayerNorm(6), nn.GELU(), nn.Linear(6, 2)).double()
    assert as_chain(net) is None
    x = torch.randn(9, 3, dtype=torch.float64)
    params = list(net.parameters())
    lin = linearize(net, params, x)
    assert isinstance(lin, FunctionalLinearization)
    check_against_dense(lin, dense_jacobian(net, params, x))
    # a subset of a chain's parameters also goes through torch.func, over that subset only
    chain = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    subset = [chain[2].weight]
    lin = linearize(chain, subset, x)
    assert isinstance(lin, FunctionalLinearization) and len(lin.params) == 1
    check_against_dense(lin, dense_jacobian(chain, subset, x))


def test_callable_form_and_chunked_per_sample_products():
    torch.manual_seed(3)
    w = torch.randn(2, 3, dtype=torch.float64)
    b = torch.randn(2, dtype=torch.float64)

    def fn(values, inputs):
        weight, bias = values
        return torch.sin(inputs @ weight.T + bias)

    x = torch.randn(11, 3, dtype=torch.float64)
    lin = FunctionalLinearization(fn, [w, b], x, chunk_size=4)
    jac = torch.autograd.functional.jacobian(lambda th: fn(unflatten(th, [w, b]), x), flatten([w, b])).reshape(11, 2, -1)
    check_against_dense(lin, jac)


def test_foreign_parameters_are_rejected():
    net = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="do not belong"):
        module_function(net, [nn.Parameter(torch.zeros(2))])
    with pytest.raises(TypeError):
        MLPChainLinearization([nn.Tanh()], torch.zeros(1, 2))


def test_substitution_leaves_shared_submodules_intact():
    """A module reachable under two names (SB3's shared features extractor) keeps its own parameters."""

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(2, 2).double()
            self.alias = self.body
            self.head = nn.Linear(2, 1).double()

        def forward(self, x):
            return self.head(torch.tanh(self.alias(x)))

    net = Shared()
    params = list(net.parameters())
    before = [p.detach().clone() for p in params]
    x = torch.randn(4, 2, dtype=torch.float64)
    lin = linearize(net, params, x)
    lin.jvp([torch.ones_like(p) for p in params])
    assert all(isinstance(p, nn.Parameter) for p in net.parameters())
    assert all(a is b for a, b in zip(net.parameters(), params))
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before))
    check_against_dense(lin, dense_jacobian(net, params, x))
