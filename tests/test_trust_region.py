"""Trust-region step size and backtracking line search."""


import pytest
import torch

from ngrl import backtracking_line_search, get_device, kl_step_size
from ngrl.params import flat_grad, flatten, get_flat_params, set_flat_params, unflatten


def test_step_size_puts_the_quadratic_kl_on_the_boundary():
    quadratic, delta = 3.7, 0.02
    alpha = kl_step_size(quadratic, delta)
    assert 0.5 * alpha**2 * quadratic == pytest.approx(delta)
    with pytest.raises(ValueError, match="not positive"):
        kl_step_size(0.0, delta)
    with pytest.raises(ValueError, match="not positive"):
        kl_step_size(float("nan"), delta)
    with pytest.raises(ValueError, match="max_kl"):
        kl_step_size(1.0, 0.0)


def test_line_search_shrinks_until_both_conditions_hold():
    calls = []

    def evaluate(fraction):  # objective improves only below 0.5, KL is 2·fraction²
        calls.append(fraction)
        return (1.0 if fraction < 0.5 else -1.0), 2.0 * fraction**2

    result = backtracking_line_search(evaluate, baseline_objective=0.0, max_kl=0.3, shrink=0.5, max_iter=10)
    assert result.success and result.fraction == 0.25 and result.steps == 3
    assert calls == [1.0, 0.5, 0.25]


def test_line_search_failure_returns_zero_step():
    result = backtracking_line_search(lambda f: (-1.0, 0.0), baseline_objective=0.0, max_kl=1.0, max_iter=4)
    assert not result.success and result.fraction == 0.0 and result.steps == 4
    with pytest.raises(ValueError):
        backtracking_line_search(lambda f: (0.0, 0.0), baseline_objective=0.0, max_kl=1.0, shrink=1.5)


def test_flat_parameter_round_trip():
    params = [torch.nn.Parameter(torch.randn(2, 3)), torch.nn.Parameter(torch.randn(4))]
    flat = get_flat_params(params)
    assert flat.shape == (10,)
    set_flat_params(params, flat * 2)
    assert torch.allclose(get_flat_params(params), flat * 2)
    assert [t.shape for t in unflatten(flat, params)] == [(2, 3), (4,)]
    with pytest.raises(ValueError):
        unflatten(torch.zeros(3), params)
    loss = (params[0] ** 2).sum()
    grad = flat_grad(loss, params)
    assert torch.allclose(grad, flatten([2 * params[0].detach(), torch.zeros(4)]))


def test_get_device():
    assert get_device("cpu") == torch.device("cpu")
    assert get_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            get_device("cuda")
