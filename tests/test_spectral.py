"""ngrl.spectral: Lanczos, Hutchinson and the SciPy export against dense float64 references (torch.linalg)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from ngrl.fisher import DiagonalOperator, MatvecOperator, policy_fisher
from ngrl.spectral import (
    angle_degrees,
    as_linear_operator,
    largest_eigenvalue,
    relative_damping,
    trace_estimate,
)
from tests.conftest import ACTION_SPACES, tiny_policy

D = torch.float64


def spd(n: int, seed: int, dtype: torch.dtype = D) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=D)
    return (m @ m.T / n).to(dtype)


def with_spectrum(eigenvalues: torch.Tensor, seed: int) -> torch.Tensor:
    """Q diag(eigenvalues) Qᵀ with a random orthogonal Q."""
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=D))
    return q @ torch.diag(eigenvalues) @ q.T


def operator_of(matrix: torch.Tensor, damping: float = 0.0) -> MatvecOperator:
    return MatvecOperator(lambda v: matrix @ v, [torch.zeros(matrix.shape[0], dtype=matrix.dtype)], damping=damping)


@pytest.fixture
def damped_fisher(states):
    """F + 0.1·I, the exact Fisher of a tiny categorical policy (float64, 38 parameters), and its dense matrix."""
    fisher = policy_fisher(tiny_policy(ACTION_SPACES["discrete"]), states, damping=0.1)
    return fisher, fisher.dense()


def test_lanczos_with_a_full_krylov_space_is_exact():
    a = spd(30, 0)
    exact = torch.linalg.eigvalsh(a)
    result = largest_eigenvalue(operator_of(a), iterations=30)
    assert result.largest == pytest.approx(float(exact[-1]), rel=1e-12)
    assert result.smallest == pytest.approx(float(exact[0]), rel=1e-9)  # λ_min is ~1e-3 here: κ ≈ 1.5e3
    assert result.condition_number() == pytest.approx(float(exact[-1] / exact[0]), rel=1e-8)
    assert result.products == 30 and result.iterations == 30
    y = result.vector
    assert float(torch.linalg.vector_norm(y)) == pytest.approx(1.0, abs=1e-12)
    assert float(torch.linalg.vector_norm(a @ y - result.largest * y)) < 1e-12
    assert abs(float(y @ torch.linalg.eigh(a).eigenvectors[:, -1])) == pytest.approx(1.0, abs=1e-12)
    # more iterations than the dimension: capped, same answer
    again = largest_eigenvalue(lambda v: a @ v, like=torch.zeros(30, dtype=D), iterations=50)
    assert again.products == 30 and again.largest == pytest.approx(result.largest, rel=1e-13)


def test_few_iterations_bound_the_spectrum_from_inside():
    a = spd(60, 1)
    exact = torch.linalg.eigvalsh(a)
    previous_gap = math.inf
    for iterations in (4, 8, 16):
        result = largest_eigenvalue(operator_of(a), iterations=iterations)
        assert float(exact[0]) - 1e-12 <= result.smallest <= result.largest <= float(exact[-1]) + 1e-12
        assert result.condition_number() <= float(exact[-1] / exact[0])  # a lower bound of κ
        gap = float(exact[-1]) - result.largest
        assert gap < previous_gap  # Ritz values only improve with the Krylov space
        previous_gap = gap
        # the reported residual is ‖Ay − θy‖, and some eigenvalue lies within it of θ
        y = result.vector
        true_residual = float(torch.linalg.vector_norm(a @ y - result.largest * y))
        assert true_residual == pytest.approx(result.residual, rel=1e-6, abs=1e-13)
        assert float((exact - result.largest).abs().min()) <= result.residual + 1e-12
    assert previous_gap < 1e-3 * float(exact[-1])
    # a well-separated top eigenvalue converges in a handful of products
    separated = with_spectrum(torch.cat([torch.tensor([10.0], dtype=D), torch.linspace(0.1, 1.0, 59, dtype=D)]), seed=2)
    assert largest_eigenvalue(operator_of(separated), iterations=10).largest == pytest.approx(10.0, rel=1e-10)


def test_an_invariant_krylov_space_stops_lanczos_early():
    """Three distinct eigenvalues: the Krylov space is exhausted after three products, and T₃ holds them exactly."""
    diagonal = torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0], dtype=D)
    result = largest_eigenvalue(DiagonalOperator(diagonal, [diagonal]), iterations=7)
    assert result.iterations == 3 and result.products == 7
    assert result.largest == pytest.approx(3.0, abs=1e-13) and result.smallest == pytest.approx(1.0, abs=1e-13)
    assert torch.all(torch.isfinite(result.vector)) and result.residual < 1e-12
    identity = largest_eigenvalue(lambda v: v, like=torch.zeros(5, dtype=D), iterations=5)
    assert identity.iterations == 1 and identity.largest == pytest.approx(1.0) and identity.smallest == pytest.approx(1.0)


def test_damped_fisher_of_a_tiny_policy(damped_fisher):
    fisher, dense = damped_fisher
    exact = torch.linalg.eigvalsh(dense)
    p = fisher.num_params
    full = largest_eigenvalue(fisher, iterations=p)
    assert full.largest == pytest.approx(float(exact[-1]), rel=1e-10)
    assert full.smallest == pytest.approx(float(exact[0]), rel=1e-8)  # 0.1: the damping on F's null space
    short = largest_eigenvalue(fisher, iterations=12)
    assert short.largest == pytest.approx(float(exact[-1]), rel=1e-6)
    # Ritz values of F + λI are those of F shifted by λ: one run on the undamped operator serves every damping
    fisher.damping = 0.0
    undamped = largest_eigenvalue(fisher, iterations=12)
    assert undamped.largest + 0.1 == pytest.approx(short.largest, rel=1e-10)
    assert undamped.condition_number(0.1) == pytest.approx(short.condition_number(), rel=1e-8)
    assert undamped.condition_number(0.1) <= float(exact[-1] / exact[0])


def test_float32_and_determinism():
    a = spd(40, 3)
    exact = float(torch.linalg.eigvalsh(a)[-1])
    a32 = a.float()
    result = largest_eigenvalue(lambda v: a32 @ v, like=torch.zeros(40), iterations=25)
    assert result.vector.dtype == torch.float32 and result.largest == pytest.approx(exact, rel=1e-5)
    first = largest_eigenvalue(operator_of(a), iterations=6, generator=7)
    same = largest_eigenvalue(operator_of(a), iterations=6, generator=torch.Generator().manual_seed(7))
    other = largest_eigenvalue(operator_of(a), iterations=6, generator=8)
    assert first.largest == same.largest and torch.equal(first.vector, same.vector)
    assert first.largest != other.largest  # a different start: a different (unconverged) Krylov space
    state = torch.random.get_rng_state()
    largest_eigenvalue(operator_of(a), iterations=3)
    trace_estimate(operator_of(a), probes=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global random state is left alone


def test_hutchinson_on_a_dense_operator():
    a = spd(40, 4)
    probes = 400
    result = trace_estimate(operator_of(a), probes=probes, generator=1)
    exact = float(torch.trace(a))
    assert result.probes == probes
    assert abs(result.estimate - exact) <= 4 * result.standard_error
    # Var(zᵀAz) = 2 Σ_{j≠k} A²ⱼₖ for Rademacher z: the reported standard error estimates its square root over √m
    off_diagonal = a - torch.diag(torch.diagonal(a))
    expected_error = math.sqrt(2 * float((off_diagonal**2).sum()) / probes)
    assert 0.8 * expected_error < result.standard_error < 1.2 * expected_error


def test_hutchinson_is_exact_for_a_diagonal_matrix():
    diagonal = torch.linspace(-2.0, 5.0, 17, dtype=D)
    result = trace_estimate(DiagonalOperator(diagonal, [diagonal], damping=0.5), probes=3)
    assert result.estimate == pytest.approx(float(diagonal.sum()) + 0.5 * 17, abs=1e-12)
    assert result.standard_error == 0.0


def test_hutchinson_on_a_damped_fisher(damped_fisher):
    fisher, dense = damped_fisher
    result = trace_estimate(fisher, probes=64, generator=2)
    assert abs(result.estimate - float(torch.trace(dense))) <= 4 * result.standard_error
    assert result.standard_error > 0


def test_scipy_solvers_on_the_exported_fisher(damped_fisher):
    from scipy.sparse.linalg import cg, eigsh

    fisher, dense = damped_fisher
    p = fisher.num_params
    exported = as_linear_operator(fisher)
    assert exported.shape == (p, p) and exported.dtype == np.float64
    b = np.random.default_rng(0).standard_normal(p)
    x, info = cg(exported, b, rtol=1e-12, maxiter=500)
    assert info == 0
    np.testing.assert_allclose(x, torch.linalg.solve(dense, torch.from_numpy(b)).numpy(), rtol=1e-8, atol=1e-10)
    top = eigsh(exported, k=3, which="LA", return_eigenvectors=False)
    np.testing.assert_allclose(np.sort(top), torch.linalg.eigvalsh(dense)[-3:].numpy(), rtol=1e-9)
    block = np.random.default_rng(1).standard_normal((p, 4))
    np.testing.assert_allclose(exported.matmat(block), dense.numpy() @ block, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(exported.rmatvec(b), exported.matvec(b))
    assert exported.matvec(b.reshape(p, 1)).shape == (p, 1)


def test_a_float32_operator_is_exported_in_float64():
    a = spd(12, 5, torch.float32)
    exported = as_linear_operator(lambda v: a @ v, like=torch.zeros(12))
    out = exported.matvec(np.ones(12))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, (a @ torch.ones(12)).double().numpy(), rtol=1e-6)


def test_a_missing_scipy_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.sparse.linalg", None)
    with pytest.raises(ImportError, match="pip install scipy"):
        as_linear_operator(operator_of(spd(3, 0)))


def test_bad_arguments_are_refused():
    a = spd(4, 0)
    with pytest.raises(ValueError, match="like="):
        largest_eigenvalue(lambda v: a @ v)
    with pytest.raises(ValueError, match="iterations"):
        largest_eigenvalue(operator_of(a), iterations=0)
    with pytest.raises(ValueError, match="probes"):
        trace_estimate(operator_of(a), probes=1)
    with pytest.raises(ValueError, match="generator"):
        trace_estimate(operator_of(a), generator=1.5)
    with pytest.raises(TypeError, match="CurvatureOperator"):
        as_linear_operator(a)


def test_relative_damping_is_parsed_once():
    assert relative_damping("rel_1e-3") == 1e-3 and relative_damping("rel_0.5") == 0.5
    assert relative_damping(0.1) is None and relative_damping(0) is None
    for bad in ["rel_", "rel_abc", "rel_-1e-3", "rel_0", "rel_inf", "rel_nan", "1e-3", "relative_1e-3"]:
        with pytest.raises(ValueError, match="my_damping"):
            relative_damping(bad, "my_damping")


def test_angle_degrees():
    x, y = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    assert angle_degrees(x, y) == pytest.approx(45.0)
    assert angle_degrees(x, torch.tensor([0.0, -2.0])) == pytest.approx(90.0)
    assert angle_degrees(x, -x) == pytest.approx(180.0)
    assert math.isnan(angle_degrees(x, torch.zeros(2)))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_with_a_cpu_generator_the_answers_match_the_cpu_ones():
    a = spd(30, 6)
    on_gpu = a.cuda()
    operator = MatvecOperator(lambda v: on_gpu @ v, [torch.zeros(30, dtype=D, device="cuda")])
    gpu = largest_eigenvalue(operator, iterations=8, generator=3)
    cpu = largest_eigenvalue(operator_of(a), iterations=8, generator=3)
    assert gpu.vector.device.type == "cuda"
    assert gpu.largest == pytest.approx(cpu.largest, rel=1e-12) and gpu.smallest == pytest.approx(cpu.smallest, rel=1e-10)
    gpu_trace = trace_estimate(operator, probes=8, generator=4).estimate
    assert gpu_trace == pytest.approx(trace_estimate(operator_of(a), probes=8, generator=4).estimate, rel=1e-12)
    exported = as_linear_operator(operator).matvec(np.ones(30))
    np.testing.assert_allclose(exported, (a @ torch.ones(30, dtype=D)).numpy(), rtol=1e-12)
