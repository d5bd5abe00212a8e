"""The batch-space solve of a Gauss–Newton system against dense references (float64).

B, the m × p matrix of per-sample Jacobian rows, is formed here by ``torch.autograd.functional.jacobian``
of the flat-parameter network; the solve is checked against ``torch.linalg.solve`` on BᵀB/n + λI.
"""

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from ngrl import CGConfig, conjugate_gradient
from ngrl.fisher import gauss_newton
from ngrl.linearize import FunctionalLinearization, MLPChainLinearization, gram_matrix, linearize
from ngrl.params import flatten, unflatten


def q_network(widths=(3, 5, 4, 2), activation=nn.Tanh) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(activation())
    return nn.Sequential(*layers).double()


def dense_jacobian(net: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """J of shape (n, k, p): the outputs' Jacobian in the flat parameters, by autograd."""
    params = list(net.parameters())
    names = [name for name, _ in net.named_parameters()]

    def outputs(flat: torch.Tensor) -> torch.Tensor:
        values = unflatten(flat, params)
        return torch.func.functional_call(net, dict(zip(names, values)), (inputs,))

    return jacobian(outputs, flatten([p.detach() for p in params]))


def rows_of(jac: torch.Tensor, actions: torch.Tensor | None) -> torch.Tensor:
    """B: the taken action's rows Jᵢᵀe_{aᵢ} (m = n), or every output's, ordered (output, sample)."""
    if actions is not None:
        return jac[torch.arange(jac.shape[0]), actions]
    return jac.permute(1, 0, 2).reshape(-1, jac.shape[-1])


@pytest.mark.parametrize("outputs", ["action", "all"])
@pytest.mark.parametrize("damping", [0.3, 0.0])
@pytest.mark.parametrize("path", ["chain", "functional"])
def test_batch_space_solve_equals_dense_solve(outputs, damping, path):
    net = q_network()
    n = 6
    inputs = torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    actions = torch.tensor([0, 1, 1, 0, 1, 0]) if outputs == "action" else None
    fn = net if path == "chain" else (lambda values, x: torch.func.functional_call(net, dict(zip([k for k, _ in net.named_parameters()], values)), (x,)))
    curvature = gauss_newton(fn, list(net.parameters()), inputs, damping=damping, output_index=actions)
    expected_type = MLPChainLinearization if path == "chain" else FunctionalLinearization
    assert isinstance(curvature.linearization, expected_type)

    rows = rows_of(dense_jacobian(net, inputs), actions)  # (m, p)
    m, p = rows.shape
    assert m < p  # the batch space is the smaller one
    v = torch.randn(m, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    rhs = rows.T @ v
    matrix = rows.T @ rows / n + damping * torch.eye(p, dtype=torch.float64)
    assert torch.allclose(curvature.dense(), matrix, atol=1e-12)  # same operator
    if damping > 0:
        expected = torch.linalg.solve(matrix, rhs)
    else:  # singular BᵀB/n: the minimum-norm solution
        expected = torch.linalg.pinv(matrix, hermitian=True) @ rhs
    result = curvature.batch_space_solve(v)
    assert result.status == "converged" and result.iterations == 0 and result.residual_norm < 1e-10
    assert torch.allclose(result.x, expected, atol=1e-10, rtol=1e-9)
    assert torch.allclose(curvature.mv(result.x), rhs, atol=1e-10)


@pytest.mark.parametrize("outputs", ["action", "all"])
def test_cg_in_the_batch_space_takes_the_parameter_space_iterates(outputs):
    """CG on (K/n + λI)u = v with ⟨a, b⟩ = aᵀKb: x = Bᵀu is, iteration by iteration, parameter-space CG's iterate."""
    net = q_network()
    n = 8
    inputs = torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    actions = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1]) if outputs == "action" else None
    curvature = gauss_newton(net, list(net.parameters()), inputs, damping=0.05, output_index=actions)
    rows = rows_of(dense_jacobian(net, inputs), actions)
    v = torch.randn(rows.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    previous = None
    for iterations in range(1, 6):
        in_batch = curvature.batch_space_solve(v, cg=CGConfig(max_iter=iterations, tol=0.0))
        in_parameters = conjugate_gradient(curvature.mv, rows.T @ v, max_iter=iterations, tol=0.0)
        assert in_batch.iterations == in_parameters.iterations == iterations
        assert torch.allclose(in_batch.x, in_parameters.x, atol=1e-11, rtol=1e-9)
        assert in_batch.residual_norm == pytest.approx(in_parameters.residual_norm, rel=1e-6)
        if previous is not None:
            assert (in_batch.x - previous).abs().max() > 1e-8  # each iteration moves: the comparison is not vacuous
        previous = in_batch.x


def test_gram_matrix_of_a_chain_equals_stacked_per_sample_products():
    net = q_network(activation=nn.ReLU)
    inputs = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    cotangents = torch.randn(2, 5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    chain = linearize(net, list(net.parameters()), inputs)
    assert isinstance(chain, MLPChainLinearization)
    jac = dense_jacobian(net, inputs)  # (n, k, p)
    rows = torch.einsum("cnk,nkp->cnp", cotangents, jac).reshape(10, -1)
    assert torch.allclose(gram_matrix(chain, cotangents), rows @ rows.T, atol=1e-12)
    assert torch.allclose(gram_matrix(chain, cotangents[0]), rows[:5] @ rows[:5].T, atol=1e-12)


def test_batch_space_solve_checks_the_coefficients():
    net = q_network()
    inputs = torch.randn(4, 3, dtype=torch.float64)
    curvature = gauss_newton(net, list(net.parameters()), inputs, damping=0.1, output_index=torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="expected 4 coefficients"):
        curvature.batch_space_solve(torch.ones(8, dtype=torch.float64))


def test_the_batch_space_is_chosen_where_it_costs_less():
    """A minibatch of 64 rows of a 64-64 chain: batch space; 1024 rows: parameter space; a network without the
    chain's Gram shortcut: parameter space unless the minibatch is tiny."""
    net = q_network(widths=(4, 64, 64, 2))
    for rows, expected in ((64, True), (1024, False)):
        inputs = torch.randn(rows, 4, dtype=torch.float64)
        curvature = gauss_newton(net, list(net.parameters()), inputs, output_index=torch.zeros(rows, dtype=torch.long))
        assert curvature.batch_space_preferred(5) is expected
    names = [name for name, _ in net.named_parameters()]
    generic = gauss_newton(lambda values, x: torch.func.functional_call(net, dict(zip(names, values)), (x,)), list(net.parameters()),
                           torch.randn(64, 4, dtype=torch.float64), output_index=torch.zeros(64, dtype=torch.long))
    assert not generic.batch_space_preferred(5)


@pytest.mark.parametrize("cg", [None, CGConfig(max_iter=3, tol=0.0)], ids=["exact", "cg"])
def test_the_solve_reports_the_quadratic_form_of_its_solution(cg):
    net = q_network()
    inputs = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    curvature = gauss_newton(net, list(net.parameters()), inputs, damping=0.2, output_index=torch.tensor([0, 1, 1, 0, 1, 0]))
    result = curvature.batch_space_solve(torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(8)), cg=cg)
    assert result.quadratic == pytest.approx(float(result.x @ curvature.dense() @ result.x), rel=1e-10)
