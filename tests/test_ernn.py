"""ERNN cell and sequence model: equilibrium, Jacobian −I, gradients over long horizons, resets."""

from __future__ import annotations

import math

import pytest
import torch

from ngrl import ERNN, ERNNCell

D = torch.float64


def make_cell(num_iters: int = 5, seed: int = 0, **kwargs) -> ERNNCell:
    torch.manual_seed(seed)
    return ERNNCell(3, 8, num_iters=num_iters, **kwargs).to(D)


def data(batch: int = 1, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, generator=g, dtype=D), torch.randn(batch, 8, generator=g, dtype=D)


def jacobian_h_prev(cell: ERNNCell, x: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
    return torch.autograd.functional.jacobian(lambda h: cell(x, h), h_prev).reshape(8, 8)


def newton_equilibrium(cell: ERNNCell, x: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
    """Reference root by Newton's method on g(z) = φ(Uz + Wx + b) − γz, then h = z − h_prev."""
    U = cell.recurrent_weight().detach()
    drive = (x @ cell.weight_ih.T + cell.bias).detach()
    z = h_prev.clone()
    for _ in range(50):
        pre = z @ U.T + drive
        g = torch.tanh(pre) - cell.gamma * z
        jac = (1 - torch.tanh(pre) ** 2)[0, :, None] * U - cell.gamma * torch.eye(8, dtype=D)
        z = z - torch.linalg.solve(jac, g[0]).unsqueeze(0)
    return z - h_prev


def test_iterations_converge_to_the_newton_root() -> None:
    cell = make_cell(num_iters=40)
    x, h_prev = data()
    h = cell(x, h_prev)
    reference = newton_equilibrium(cell, x, h_prev)
    torch.testing.assert_close(h, reference, atol=1e-12, rtol=0)


def test_residual_shrinks_with_num_iters() -> None:
    x, h_prev = data()
    residuals = []
    for k in (1, 2, 3, 5, 10, 20):
        cell = make_cell(num_iters=k)
        with torch.no_grad():
            residuals.append(float(cell.residual(cell(x, h_prev), h_prev, x).norm()))
    assert all(b < a for a, b in zip(residuals, residuals[1:])), residuals
    assert residuals[-1] < 1e-10


def test_jacobian_approaches_minus_identity() -> None:
    """∂h/∂h_prev by autograd through the iterations → −I (implicit-function theorem)."""
    x, h_prev = data()
    eye = torch.eye(8, dtype=D)
    errors = []
    for k in (1, 2, 3, 5, 10, 20):
        errors.append(float((jacobian_h_prev(make_cell(num_iters=k), x, h_prev) + eye).norm()))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[3] < 5e-3  # K = 5 (the paper's choice) with η = 0.25, γ = 4
    assert errors[-1] < 1e-10


def test_jacobian_matches_implicit_function_theorem() -> None:
    """−(∂f/∂h)⁻¹ ∂f/∂h_prev from dense Jacobians of f at the root equals autograd through the solver."""
    cell = make_cell(num_iters=40)
    x, h_prev = data()
    h = cell(x, h_prev).detach()
    df_dh = torch.autograd.functional.jacobian(lambda v: cell.residual(v, h_prev, x), h).reshape(8, 8)
    df_dprev = torch.autograd.functional.jacobian(lambda v: cell.residual(h, v, x), h_prev).reshape(8, 8)
    implicit = -torch.linalg.solve(df_dh, df_dprev)
    torch.testing.assert_close(implicit, -torch.eye(8, dtype=D), atol=1e-12, rtol=0)
    torch.testing.assert_close(jacobian_h_prev(cell, x, h_prev), implicit, atol=1e-10, rtol=0)


def test_gradient_over_1000_steps_neither_vanishes_nor_explodes() -> None:
    """‖∂h_T/∂h_0‖₂ over T = 1000: ERNN stays within [0.1, 10]; a tanh RNN of the same size does not."""
    torch.manual_seed(0)
    ernn = ERNN(3, 8).to(D)
    rnn = torch.nn.RNN(3, 8, batch_first=True, nonlinearity="tanh").to(D)
    x = torch.randn(1, 1000, 3, dtype=D)
    h0 = torch.zeros(1, 8, dtype=D)
    j_ernn = torch.autograd.functional.jacobian(lambda h: ernn(x, h)[1], h0).reshape(8, 8)
    j_rnn = torch.autograd.functional.jacobian(lambda h: rnn(x, h.unsqueeze(0))[1][0], h0).reshape(8, 8)
    norm_ernn = float(torch.linalg.matrix_norm(j_ernn, ord=2))
    norm_rnn = float(torch.linalg.matrix_norm(j_rnn, ord=2))
    assert 0.1 <= norm_ernn <= 10, norm_ernn
    assert not 0.1 <= norm_rnn <= 10, norm_rnn


def test_sequence_equals_repeated_cell_calls() -> None:
    torch.manual_seed(0)
    model = ERNN(3, 8).to(D)
    x = torch.randn(2, 7, 3, dtype=D)
    h = torch.randn(2, 8, dtype=D)
    outputs, last = model(x, h)
    for t in range(7):
        h = model.cell(x[:, t], h)
        torch.testing.assert_close(outputs[:, t], h)
    torch.testing.assert_close(last, h)


def test_episode_starts_separate_back_to_back_episodes() -> None:
    """Two episodes in one sequence with the start flag = each episode fed on its own from zero."""
    torch.manual_seed(0)
    model = ERNN(3, 8).to(D)
    first, second = torch.randn(1, 5, 3, dtype=D), torch.randn(1, 4, 3, dtype=D)
    h0 = torch.randn(1, 8, dtype=D)  # a stale state: must be wiped by the start flag at t = 0
    starts = torch.zeros(1, 9, dtype=D)
    starts[0, 0] = starts[0, 5] = 1
    joint, last = model(torch.cat([first, second], dim=1), h0, starts)
    alone_first, _ = model(first)
    alone_second, alone_last = model(second)
    torch.testing.assert_close(joint, torch.cat([alone_first, alone_second], dim=1))
    torch.testing.assert_close(last, alone_last)


def test_batched_equals_one_by_one() -> None:
    cell = make_cell()
    x, h_prev = data(batch=4)
    together = cell(x, h_prev)
    for i in range(4):
        torch.testing.assert_close(together[i : i + 1], cell(x[i : i + 1], h_prev[i : i + 1]))


def test_recurrent_norm_bound_keeps_the_cell_regular() -> None:
    cell = make_cell(num_iters=10)
    with torch.no_grad():
        cell.weight_hh.mul_(10.0)  # a large V: the parametrisation rescales it to ‖U‖₂ = ρ = γ/2
    assert float(torch.linalg.matrix_norm(cell.recurrent_weight().detach(), ord=2)) == pytest.approx(cell.max_recurrent_norm)
    x, h_prev = data()
    error = float((jacobian_h_prev(cell, x, h_prev) + torch.eye(8, dtype=D)).norm())
    assert error < 1e-2
    unbounded = make_cell(num_iters=10, max_recurrent_norm=math.inf)
    with torch.no_grad():
        unbounded.weight_hh.mul_(10.0)
    error_unbounded = float((jacobian_h_prev(unbounded, x, h_prev) + torch.eye(8, dtype=D)).norm())
    assert error_unbounded > 10 * error  # without the bound the iteration no longer contracts


def test_learnable_eta_gets_gradients() -> None:
    cell = make_cell(learn_eta=True)
    assert isinstance(cell.eta, torch.nn.Parameter) and cell.eta.shape == (5,)
    x, h_prev = data()
    cell(x, h_prev).square().sum().backward()
    assert cell.eta.grad is not None and torch.all(cell.eta.grad != 0)
    fixed = make_cell()
    assert "eta" not in dict(fixed.named_parameters()) and "eta" not in fixed.state_dict()


def test_learnable_eta_is_kept_where_the_iteration_contracts() -> None:
    cell = make_cell(num_iters=20, learn_eta=True)
    with torch.no_grad():
        cell.eta.fill_(10.0)  # far beyond 2/γ: an unclamped iteration would blow up
    x, h_prev = data()
    with torch.no_grad():
        h = cell(x, h_prev)
        assert torch.isfinite(h).all()
        assert float(cell.residual(h, h_prev, x).norm()) < 1e-3


def test_float32_runs() -> None:
    torch.manual_seed(0)
    model = ERNN(3, 8)
    out, last = model(torch.randn(2, 5, 3))
    assert out.dtype == torch.float32 and out.shape == (2, 5, 8) and last.shape == (2, 8)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_iters=0), "num_iters"),
        (dict(activation="softplus"), "activation"),
        (dict(eta=-1.0), "eta"),
        (dict(max_recurrent_norm=0.0), "max_recurrent_norm"),
    ],
)
def test_bad_arguments_are_explained(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        ERNNCell(3, 8, **kwargs)


def test_bad_shapes_are_explained() -> None:
    model = ERNN(3, 8)
    with pytest.raises(ValueError, match="batch, time, 3"):
        model(torch.randn(2, 3))
    with pytest.raises(ValueError, match="h0 must have shape"):
        model(torch.randn(2, 4, 3), torch.zeros(3, 8))
    with pytest.raises(ValueError, match="episode_starts"):
        model(torch.randn(2, 4, 3), None, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="3 features"):
        model.cell(torch.randn(2, 4))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_like_on_cpu() -> None:
    torch.manual_seed(0)
    model = ERNN(3, 8).to(D)
    x = torch.randn(2, 6, 3, dtype=D)
    starts = torch.zeros(2, 6, dtype=D)
    starts[:, 3] = 1
    cpu_out, _ = model(x, None, starts)
    gpu_out, _ = model.cuda()(x.cuda(), None, starts.cuda())
    assert gpu_out.device.type == "cuda"
    torch.testing.assert_close(gpu_out.cpu(), cpu_out)


@pytest.mark.parametrize("eta,gamma", [(0.25, 4.0), (0.2, 5.0)])
def test_rescaled_iteration_equals_the_plain_euler_steps(eta, gamma):
    """With ηγ = 1 the cell iterates y = z/η with (ηU): the same states as the plain Euler steps (float64)."""
    torch.manual_seed(0)
    rnn = ERNN(3, 16, eta=eta, gamma=gamma).double()
    assert rnn.cell._rescaled
    x = torch.randn(4, 50, 3, dtype=torch.float64)
    starts = (torch.rand(4, 50) < 0.1).double()
    fast, _ = rnn(x, None, starts)
    rnn.cell._rescaled = False
    plain, _ = rnn(x, None, starts)
    torch.testing.assert_close(fast, plain, rtol=1e-12, atol=1e-12)
