"""iMAML's implicit meta-gradient against closed forms, dense solves and unrolled differentiation (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ngrl.fisher import gauss_newton
from ngrl.implicit import hessian_vector_product, implicit_meta_gradient, proximal_shrink

DTYPE = torch.float64


def _spd(n: int, generator: torch.Generator, shift: float = 0.5) -> torch.Tensor:
    m = torch.randn(n, n, generator=generator, dtype=DTYPE)
    return m @ m.T / n + shift * torch.eye(n, dtype=DTYPE)


def _quadratic_problem(seed: int = 0, n: int = 6):
    g = torch.Generator().manual_seed(seed)
    a = _spd(n, g)
    b = torch.randn(n, generator=g, dtype=DTYPE)
    w = torch.randn(3, n, generator=g, dtype=DTYPE)
    c = torch.randn(3, generator=g, dtype=DTYPE)
    theta = torch.randn(n, generator=g, dtype=DTYPE)
    inner = lambda phi: 0.5 * phi @ a @ phi - b @ phi  # noqa: E731  L̂(φ) = ½φᵀAφ − bᵀφ
    test = lambda phi: 0.5 * ((w @ phi - c) ** 2).sum()  # noqa: E731
    return a, b, theta, inner, test


@pytest.mark.parametrize("lam", [0.3, 1.0, 5.0])
def test_quadratic_closed_form(lam):
    """φ*(θ) = (A + λI)⁻¹(b + λθ); d L_test(φ*(θ))/dθ by autograd through the solve equals the implicit gradient."""
    a, b, theta, inner, test = _quadratic_problem()
    n = theta.numel()
    eye = torch.eye(n, dtype=DTYPE)
    solution = lambda th: torch.linalg.solve(a + lam * eye, b + lam * th)  # noqa: E731
    exact = torch.autograd.functional.jacobian(lambda th: test(solution(th)), theta)

    phi = solution(theta).requires_grad_(True)
    test_gradient = torch.autograd.grad(test(phi), phi)[0]
    result = implicit_meta_gradient(hessian_vector_product(inner(phi), [phi]), test_gradient, lam=lam, max_iter=50, tol=1e-14)
    assert result.converged and result.iterations <= n
    torch.testing.assert_close(result.x, exact, rtol=1e-10, atol=1e-12)
    # and the first-order (FOMAML) answer is really different: the test can fail
    assert (test_gradient - exact).norm() > 1e-3 * exact.norm()


def test_hessian_vector_product_matches_dense_hessian():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, generator=g, dtype=DTYPE)
    w = torch.randn(3, 2, generator=g, dtype=DTYPE, requires_grad=True)
    u = torch.randn(2, generator=g, dtype=DTYPE, requires_grad=True)
    unused = torch.zeros(4, dtype=DTYPE, requires_grad=True)

    def loss_of(w_, u_):
        return (torch.tanh(x @ w_) @ u_).pow(2).mean()

    mv = hessian_vector_product(loss_of(w, u), [w, u, unused])
    dense = torch.autograd.functional.hessian(lambda flat: loss_of(flat[:6].view(3, 2), flat[6:]), torch.cat([w.detach().flatten(), u.detach()]))
    v = torch.randn(12, generator=g, dtype=DTYPE)
    out = mv(v)
    torch.testing.assert_close(out[:8], dense @ v[:8], rtol=1e-10, atol=1e-12)
    assert torch.equal(out[8:], torch.zeros(4, dtype=DTYPE))
    # linear loss: zero curvature everywhere
    p = torch.ones(3, dtype=DTYPE, requires_grad=True)
    assert torch.equal(hessian_vector_product((2 * p).sum(), [p])(torch.ones(3, dtype=DTYPE)), torch.zeros(3, dtype=DTYPE))


def _mlp_problem(seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 2, generator=g, dtype=DTYPE)
    y = torch.sin(x.sum(-1, keepdim=True))
    x_test = torch.randn(8, 2, generator=g, dtype=DTYPE)
    y_test = torch.sin(x_test.sum(-1, keepdim=True))
    sizes = [(2, 4), (4,), (4, 1), (1,)]
    theta = torch.cat([torch.randn(*s, generator=g, dtype=DTYPE).flatten() * 0.5 for s in sizes])

    def net(flat: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = torch.split(flat, [8, 4, 4, 1])
        return torch.tanh(inputs @ w1.view(2, 4) + b1) @ w2.view(4, 1) + b2

    inner = lambda phi: 0.5 * ((net(phi, x) - y) ** 2).mean()  # noqa: E731
    test = lambda phi: 0.5 * ((net(phi, x_test) - y_test) ** 2).mean()  # noqa: E731
    return theta, inner, test


def test_agrees_with_long_unrolled_inner_loop():
    """Backprop through 400 gradient steps on L̂(φ) + (λ/2)‖φ − θ‖² (converged) gives the implicit gradient."""
    lam, lr, steps = 1.0, 0.3, 400
    theta0, inner, test = _mlp_problem()
    theta = theta0.clone().requires_grad_(True)
    phi = theta
    for _ in range(steps):
        objective = inner(phi) + 0.5 * lam * ((phi - theta) ** 2).sum()
        phi = phi - lr * torch.autograd.grad(objective, phi, create_graph=True)[0]
    unrolled = torch.autograd.grad(test(phi), theta)[0]

    phi_star = phi.detach().requires_grad_(True)
    stationarity = torch.autograd.grad(inner(phi_star), phi_star)[0] + lam * (phi_star - theta0)
    assert stationarity.norm() < 1e-12  # the inner problem really is solved
    test_gradient = torch.autograd.grad(test(phi_star), phi_star)[0]
    result = implicit_meta_gradient(hessian_vector_product(inner(phi_star), [phi_star]), test_gradient, lam=lam, max_iter=100, tol=1e-13)
    assert result.converged
    torch.testing.assert_close(result.x, unrolled, rtol=1e-8, atol=1e-11)
    # a short unrolled loop (inner problem not solved) disagrees: the comparison has teeth
    phi_short = theta
    for _ in range(2):
        objective = inner(phi_short) + 0.5 * lam * ((phi_short - theta) ** 2).sum()
        phi_short = phi_short - lr * torch.autograd.grad(objective, phi_short, create_graph=True)[0]
    short = torch.autograd.grad(test(phi_short), theta)[0]
    assert (short - unrolled).norm() > 1e-4 * unrolled.norm()


def test_gauss_newton_curvature_is_exact_for_linear_least_squares():
    """For f(x) = Wx + b under ½‖f − y‖² the Gauss–Newton matrix is the Hessian: the implicit gradient is exact."""
    torch.manual_seed(3)
    lam = 0.5
    model = nn.Linear(3, 2).double()
    params = list(model.parameters())
    x = torch.randn(20, 3, dtype=DTYPE)
    y = torch.randn(20, 2, dtype=DTYPE)
    x_test, y_test = torch.randn(7, 3, dtype=DTYPE), torch.randn(7, 2, dtype=DTYPE)

    def loss_at(flat, inputs, targets):
        w, b = flat[:6].view(2, 3), flat[6:]
        return 0.5 * ((inputs @ w.T + b - targets) ** 2).sum(-1).mean()

    theta = torch.cat([p.detach().flatten() for p in params])
    hessian = torch.autograd.functional.hessian(lambda f: loss_at(f, x, y), theta)
    grad0 = torch.autograd.functional.jacobian(lambda f: loss_at(f, x, y), torch.zeros_like(theta))
    # L̂ is quadratic: φ* solves (H + λI)φ = λθ − ∇L̂(0)
    solution = lambda th: torch.linalg.solve(hessian + lam * torch.eye(8, dtype=DTYPE), lam * th - grad0)  # noqa: E731
    exact = torch.autograd.functional.jacobian(lambda th: loss_at(solution(th), x_test, y_test), theta)

    phi = solution(theta)
    with torch.no_grad():
        for p, value in zip(params, (phi[:6].view(2, 3), phi[6:])):
            p.copy_(value)
    test_gradient = torch.autograd.functional.jacobian(lambda f: loss_at(f, x_test, y_test), phi)
    operator = gauss_newton(model, params, x, sigma=1.0)
    result = implicit_meta_gradient(operator.mv, test_gradient, lam=lam, max_iter=50, tol=1e-14)
    torch.testing.assert_close(result.x, exact, rtol=1e-9, atol=1e-11)


def test_psd_curvature_matches_dense_solve_on_a_network():
    """With a Gauss–Newton matrix of a tanh network the CG solution equals torch.linalg.solve(I + G/λ, v)."""
    torch.manual_seed(4)
    lam = 0.2
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    params = list(model.parameters())
    x = torch.randn(12, 3, dtype=DTYPE)
    n = sum(p.numel() for p in params)
    operator = gauss_newton(model, params, x, sigma=1.0)
    # dense G from the Jacobian, computed independently of the operator
    names = [name for name, _ in model.named_parameters()]
    flat0 = torch.cat([p.detach().flatten() for p in params])

    def outputs(flat):
        values = dict(zip(names, torch.split(flat, [p.numel() for p in params])))
        values = {k: v.view_as(p) for (k, v), p in zip(values.items(), params)}
        return torch.func.functional_call(model, values, (x,))

    jac = torch.autograd.functional.jacobian(outputs, flat0).reshape(-1, n)
    g_dense = jac.T @ jac / x.shape[0]
    v = torch.randn(n, dtype=DTYPE)
    result = implicit_meta_gradient(operator.mv, v, lam=lam, max_iter=200, tol=1e-13)
    reference = torch.linalg.solve(torch.eye(n, dtype=DTYPE) + g_dense / lam, v)
    torch.testing.assert_close(result.x, reference, rtol=1e-8, atol=1e-10)


def test_float32_tolerance():
    a, b, theta, inner, test = _quadratic_problem(seed=5)
    lam = 1.0
    exact = torch.linalg.solve(torch.eye(6, dtype=DTYPE) + a / lam, torch.ones(6, dtype=DTYPE))
    phi = theta.float().requires_grad_(True)
    a32 = a.float()
    mv = hessian_vector_product(0.5 * phi @ a32 @ phi, [phi])
    result = implicit_meta_gradient(mv, torch.ones(6), lam=lam, max_iter=30, tol=1e-6)
    assert result.x.dtype == torch.float32
    torch.testing.assert_close(result.x.double(), exact, rtol=1e-4, atol=1e-5)


def test_indefinite_system_is_reported_and_bad_lambda_rejected():
    lam = 1.0
    curvature = lambda v: -3.0 * lam * v  # noqa: E731  I + C/λ = −2I: not positive definite
    result = implicit_meta_gradient(curvature, torch.ones(4, dtype=DTYPE), lam=lam)
    assert result.status == "not_positive_definite" and not result.converged
    # an indefinite Hessian with λ large enough is fine: I + C/λ stays positive definite
    c = torch.diag(torch.tensor([-0.5, 1.0, 2.0], dtype=DTYPE))
    ok = implicit_meta_gradient(lambda v: c @ v, torch.ones(3, dtype=DTYPE), lam=lam, max_iter=10, tol=1e-14)
    torch.testing.assert_close(ok.x, torch.linalg.solve(torch.eye(3, dtype=DTYPE) + c / lam, torch.ones(3, dtype=DTYPE)))
    with pytest.raises(ValueError, match="positive"):
        implicit_meta_gradient(lambda v: v, torch.ones(3), lam=0.0)
    with pytest.raises(ValueError, match="non-negative"):
        proximal_shrink(torch.ones(2), torch.zeros(2), lam=-1.0, step=1.0)


def test_proximal_gradient_reaches_the_regularised_solution():
    """Gradient step on L̂ then proximal_shrink, iterated, converges to (A + λI)⁻¹(b + λθ)."""
    a, b, theta, _, _ = _quadratic_problem(seed=6)
    lam, step = 0.7, 0.2
    phi = theta.clone()
    for _ in range(600):
        phi = proximal_shrink(phi - step * (a @ phi - b), theta, lam=lam, step=step)
    torch.testing.assert_close(phi, torch.linalg.solve(a + lam * torch.eye(6, dtype=DTYPE), b + lam * theta), rtol=1e-10, atol=1e-12)
