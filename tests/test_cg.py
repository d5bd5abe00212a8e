"""Conjugate gradient against torch.linalg.solve."""

import pytest
import torch

from ngrl import CGConfig, NotPositiveDefiniteError, conjugate_gradient
from ngrl.fisher import MatvecOperator

TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}


def spd_matrix(n: int, dtype: torch.dtype, condition: float = 50.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eigenvalues = torch.logspace(0, torch.log10(torch.tensor(condition)).item(), n, dtype=torch.float64)
    return ((q * eigenvalues) @ q.T).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_dense_solve(dtype):
    a = spd_matrix(20, dtype)
    b = torch.randn(20, generator=torch.Generator().manual_seed(1), dtype=dtype)
    result = conjugate_gradient(lambda v: a @ v, b, max_iter=60, tol=1e-12 if dtype == torch.float64 else 1e-6)
    expected = torch.linalg.solve(a.double(), b.double())
    assert result.x.dtype == dtype and result.x.device == b.device
    assert torch.allclose(result.x.double(), expected, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])
    assert result.converged and result.status == "converged"
    assert result.residual_norm <= (1e-12 if dtype == torch.float64 else 1e-6)


def test_damped_operator_solves_shifted_system():
    # Damping lives in the operator: CG itself has no damping argument.
    a = spd_matrix(15, torch.float64)
    b = torch.randn(15, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    operator = MatvecOperator(lambda v: a @ v, [b], damping=0.7)
    result = CGConfig(max_iter=50).solve(operator.mv, b)
    expected = torch.linalg.solve(a + 0.7 * torch.eye(15, dtype=torch.float64), b)
    assert torch.allclose(result.x, expected, atol=1e-9)
    with pytest.raises(TypeError):
        conjugate_gradient(lambda v: a @ v, b, damping=0.7)


@pytest.mark.parametrize("kwargs", [dict(max_iter=0), dict(max_iter=2.5), dict(tol=-1.0)])
def test_cg_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        CGConfig(**kwargs)


def test_exact_in_n_steps_and_reports_iterations():
    a = spd_matrix(6, torch.float64, condition=10.0)
    b = torch.ones(6, dtype=torch.float64)
    result = conjugate_gradient(lambda v: a @ v, b, max_iter=100, tol=1e-12)
    assert result.iterations <= 6 + 1
    short = conjugate_gradient(lambda v: a @ v, b, max_iter=2, tol=1e-12)
    assert short.iterations == 2 and not short.converged and short.status == "max_iter"
    assert short.residual_norm == pytest.approx(float(torch.linalg.norm(b - a @ short.x) / torch.linalg.norm(b)), rel=1e-6)


@pytest.mark.parametrize("kind", ["tensor", "callable"])
def test_diagonal_preconditioner_same_answer_fewer_iterations(kind):
    g = torch.Generator().manual_seed(3)
    scales = torch.logspace(0, 4, 40, dtype=torch.float64)
    a = spd_matrix(40, torch.float64, condition=3.0) * scales.sqrt().outer(scales.sqrt())  # badly scaled
    b = torch.randn(40, generator=g, dtype=torch.float64)
    plain = conjugate_gradient(lambda v: a @ v, b, max_iter=400, tol=1e-10)
    diag = torch.diagonal(a).clone()
    pre = diag if kind == "tensor" else (lambda r: r / diag)
    preconditioned = conjugate_gradient(lambda v: a @ v, b, max_iter=400, tol=1e-10, preconditioner=pre)
    expected = torch.linalg.solve(a, b)
    assert torch.allclose(preconditioned.x, expected, rtol=1e-6, atol=1e-8)
    assert preconditioned.iterations < plain.iterations


def test_starting_point_is_used():
    a = spd_matrix(10, torch.float64)
    b = torch.randn(10, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    exact = torch.linalg.solve(a, b)
    result = conjugate_gradient(lambda v: a @ v, b, x0=exact)
    assert result.iterations == 0 and result.converged


def test_indefinite_operator_is_reported_not_solved():
    a = torch.diag(torch.tensor([2.0, 1.0, -3.0], dtype=torch.float64))
    b = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    result = conjugate_gradient(lambda v: a @ v, b, max_iter=10)
    assert result.status == "not_positive_definite" and not result.converged
    assert "not positive definite" in result.message and "damping" in result.message
    with pytest.raises(NotPositiveDefiniteError, match="not positive definite"):
        result.raise_if_not_positive_definite()


def test_zero_operator_is_reported():
    result = conjugate_gradient(lambda v: torch.zeros_like(v), torch.ones(4, dtype=torch.float64))
    assert result.status == "not_positive_definite" and result.iterations == 0


def test_bad_inputs():
    with pytest.raises(ValueError, match="NaN"):
        conjugate_gradient(lambda v: v, torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="flat vector"):
        conjugate_gradient(lambda v: v, torch.ones(2, 2))
    with pytest.raises(ValueError, match="strictly positive"):
        conjugate_gradient(lambda v: v, torch.ones(2), preconditioner=torch.tensor([1.0, 0.0]))
    zero = conjugate_gradient(lambda v: v, torch.zeros(3))
    assert zero.converged and torch.equal(zero.x, torch.zeros(3))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    a = spd_matrix(30, torch.float64).cuda()
    b = torch.randn(30, dtype=torch.float64, device="cuda")
    result = conjugate_gradient(lambda v: a @ v, b, max_iter=100, tol=1e-12)
    assert result.x.device.type == "cuda"
    assert torch.allclose(result.x, torch.linalg.solve(a, b), atol=1e-8)


@pytest.mark.parametrize("kwargs, match", [
    (dict(tol=float("nan")), "tol"), (dict(tol=-1.0), "tol"), (dict(tol=float("inf")), "tol"),
    (dict(max_iter=0), "max_iter"), (dict(max_iter=2.5), "max_iter"),
])
def test_bad_arguments_are_refused(kwargs, match):
    a = torch.eye(3, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        conjugate_gradient(lambda v: a @ v, torch.ones(3, dtype=torch.float64), **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_singular_system_without_a_solution_is_reported(dtype):
    """A PSD matrix of rank 2 in R⁴ and b outside its range: no x solves Ax = b; CG must say so, not return a huge x."""
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))[0]
    a = (basis[:, :2] * torch.tensor([3.0, 0.5], dtype=torch.float64)) @ basis[:, :2].T
    b = basis[:, 0] + basis[:, 3]  # a component in the null space
    a, b = a.to(dtype), b.to(dtype)
    result = conjugate_gradient(lambda v: a @ v, b, max_iter=20, tol=1e-10)
    assert result.status == "singular" and not result.converged and "damping" in result.message
    with pytest.raises(NotPositiveDefiniteError, match="singular"):
        result.raise_if_not_positive_definite()
    # the same matrix with b inside its range is solved, and with damping every b is
    inside = conjugate_gradient(lambda v: a @ v, (basis[:, 0] + basis[:, 1]).to(dtype), max_iter=20, tol=1e-5)
    assert inside.status == "converged"
    damped = conjugate_gradient(lambda v: a @ v + 0.1 * v, b, max_iter=20, tol=1e-5)
    assert damped.status == "converged"


def test_a_float32_solve_to_rounding_level_is_not_called_singular():
    """Regression: a damped, low-rank-plus-λI system in float32 solved to tol 1e-10 reaches the float32 floor of the
    true residual (~1e-6): that is rounding, not a missing solution."""
    torch.manual_seed(0)
    scores = torch.randn(64, 200, dtype=torch.float64)
    a = (scores.T @ scores / 64 + 0.1 * torch.eye(200, dtype=torch.float64)).float()  # rank 64 + λI, like a score Fisher
    b = torch.randn(200)
    result = conjugate_gradient(lambda v: a @ v, b, max_iter=200, tol=1e-10)
    assert result.status in ("converged", "max_iter"), result.message
    exact = torch.linalg.solve(a.double(), b.double())
    assert torch.allclose(result.x.double(), exact, rtol=1e-3, atol=1e-4)



def test_metric_and_preconditioner_are_exclusive():
    a = spd_matrix(5, torch.float64)
    with pytest.raises(ValueError, match="metric or a preconditioner"):
        conjugate_gradient(lambda v: a @ v, torch.ones(5, dtype=torch.float64), metric=a, preconditioner=torch.ones(5, dtype=torch.float64))


def _systems():
    """(name, matvec, b, kwargs): solves that converge, run out of iterations, are preconditioned or take a metric,
    meet a direction of negative curvature, or have no solution (singular A, b outside its range)."""
    g = torch.Generator().manual_seed(3)
    m = torch.randn(8, 8, generator=g, dtype=torch.float64)
    spd = m @ m.T + 0.5 * torch.eye(8, dtype=torch.float64)
    b = torch.randn(8, generator=g, dtype=torch.float64)
    indefinite = spd - 4.0 * torch.eye(8, dtype=torch.float64) * torch.linalg.eigvalsh(spd).max()
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    singular = (q[:, :2] * torch.tensor([3.0, 0.5], dtype=torch.float64)) @ q[:, :2].T  # rank 2 in R⁴
    k = torch.randn(8, 5, generator=g, dtype=torch.float64)
    metric = k @ k.T + torch.eye(8, dtype=torch.float64)  # M = K⁻¹S is self-adjoint in ⟨a, b⟩ = aᵀKb
    return [
        ("converges", lambda v: spd @ v, b, dict(max_iter=50, tol=1e-10)),
        ("max_iter", lambda v: spd @ v, b, dict(max_iter=3, tol=0.0)),
        ("diagonal preconditioner", lambda v: spd @ v, b, dict(max_iter=50, tol=1e-10, preconditioner=torch.diagonal(spd))),
        ("metric", lambda v: torch.linalg.solve(metric, spd @ v), b, dict(max_iter=50, tol=1e-10, metric=metric)),
        ("x0", lambda v: spd @ v, b, dict(max_iter=50, tol=1e-10, x0=torch.ones(8, dtype=torch.float64))),
        ("not positive definite", lambda v: indefinite @ v, b, dict(max_iter=50, tol=1e-10)),
        ("singular", lambda v: singular @ v, q[:, 0] + q[:, 3], dict(max_iter=20, tol=1e-10)),  # b partly in the null space
    ]


@pytest.mark.parametrize("case", range(len(_systems())), ids=[s[0] for s in _systems()])
def test_the_host_reads_do_not_change_the_solve(case):
    """Reading the stopping tests every iteration, every 3rd, or only after the loop gives the same x (bit for bit),
    iterations, status and residual: the iterates are frozen on the device once a test holds."""
    name, matvec, b, kwargs = _systems()[case]
    results = [conjugate_gradient(matvec, b, check_every=k, **kwargs) for k in (1, 3, None)]
    expected = {"converges": "converged", "max_iter": "max_iter", "diagonal preconditioner": "converged", "metric": "converged",
                "x0": "converged", "not positive definite": "not_positive_definite", "singular": "singular"}[name]
    assert results[0].status == expected
    for other in results[1:]:
        assert torch.equal(other.x, results[0].x)
        assert (other.iterations, other.status, other.residual_norm, other.converged) == (
            results[0].iterations, results[0].status, results[0].residual_norm, results[0].converged)


class _CountingReads(torch.Tensor):
    """A tensor that records every read of a value by the host (what synchronises a GPU)."""

    reads: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in {"__bool__", "item", "tolist", "__float__", "__int__", "__index__"}:
            cls.reads.append(func.__name__)
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.mark.parametrize("check_every, reads_between_products", [(1, 1), (None, 0)])
def test_no_host_read_inside_the_loop_without_checks(check_every, reads_between_products):
    """check_every=None: between the first and the last product the host reads nothing (on a GPU: no synchronisation
    inside the loop); check_every=1: one read per iteration."""
    name, matvec, b, kwargs = _systems()[1]  # max_iter: every iteration runs
    seen: list[int] = []

    def counting_matvec(v):
        seen.append(len(_CountingReads.reads))
        return matvec(v)

    _CountingReads.reads = []
    result = conjugate_gradient(counting_matvec, b.as_subclass(_CountingReads), check_every=check_every, **kwargs)
    assert result.iterations == len(seen) == 3
    assert [after - before for before, after in zip(seen, seen[1:])] == [reads_between_products] * 2


def test_check_every_is_validated():
    with pytest.raises(ValueError, match="check_every"):
        conjugate_gradient(lambda v: v, torch.ones(2), check_every=0)
    with pytest.raises(ValueError, match="check_every"):
        CGConfig(check_every=True)


def test_curvature_within_rounding_of_zero_is_singular_whatever_its_sign():
    """diag(3, 0.5, −1e-17, −1e-17): the last two eigenvalues are zero up to rounding (|λ| ≪ 10·ε·λ₁) though
    negative, so b with a component there has no solution and CG must say 'singular'; at −1e-6 the operator is
    indefinite beyond rounding and CG must say so. Deterministic on every CPU, unlike float32 rounding."""
    b = torch.ones(4, dtype=torch.float64)
    near_zero = torch.tensor([3.0, 0.5, -1e-17, -1e-17], dtype=torch.float64)
    result = conjugate_gradient(lambda v: near_zero * v, b, max_iter=20, tol=1e-10)
    assert result.status == "singular" and not result.converged
    indefinite = torch.tensor([3.0, 0.5, -1e-6, -1e-6], dtype=torch.float64)
    assert conjugate_gradient(lambda v: indefinite * v, b, max_iter=20, tol=1e-10).status == "not_positive_definite"


@pytest.mark.parametrize("smallest", [-1e-17, -1e-6], ids=["singular", "not positive definite"])
def test_a_stopped_solve_keeps_the_iterate_before_the_stopping_direction(smallest):
    """A 'singular' or 'not_positive_definite' stop must not use the direction that triggered it: x is the iterate
    after the directions taken before it, bit for bit what a solve limited to that many iterations returns."""
    b = torch.ones(4, dtype=torch.float64)
    spectrum = torch.tensor([3.0, 0.5, smallest, smallest], dtype=torch.float64)
    result = conjugate_gradient(lambda v: spectrum * v, b, max_iter=20, tol=1e-10)
    assert result.status in ("singular", "not_positive_definite") and result.iterations >= 1
    before = conjugate_gradient(lambda v: spectrum * v, b, max_iter=result.iterations, tol=0.0)
    assert before.status == "max_iter"
    assert torch.equal(result.x, before.x)


# --- K systems in lockstep ---------------------------------------------------------------------------------------


def _stopping_systems(dtype=torch.float64):
    """Five systems of size 12, each meeting a different stop: converged (well and badly conditioned), b = 0, an
    indefinite matrix (stops at once), and one left at max_iter by a hard spectrum."""
    n = 12
    g = torch.Generator().manual_seed(7)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    indefinite = (q * torch.linspace(-1.0, 2.0, n, dtype=torch.float64)) @ q.T
    matrices = [spd_matrix(n, dtype, 10.0, seed=1), spd_matrix(n, dtype, 1e3, seed=2), spd_matrix(n, dtype, 5.0, seed=3),
                indefinite.to(dtype), spd_matrix(n, dtype, 1e6, seed=4)]
    b = torch.randn(5, n, generator=g, dtype=torch.float64).to(dtype)
    b[2] = 0.0
    b[3] = q[:, 0].to(dtype)  # along the negative eigenvector: p₀ᵀAp₀ < 0 at the first iteration
    return torch.stack(matrices), b


@pytest.mark.parametrize("max_iter, check_every", [(40, 1), (40, None), (6, 3)])
def test_batched_systems_are_solved_as_each_alone(max_iter, check_every):
    """Every row's x, iterations, status and residual are those of the same solve of that system alone (bit for bit:
    the systems do not interact), one product serves all the systems at each iteration, and the solutions are
    torch.linalg.solve's."""
    from ngrl import batched_conjugate_gradient

    matrices, b = _stopping_systems()
    calls = []

    def products(matrices):
        def matvec(v):
            calls.append(v.shape)
            return torch.einsum("kij,kj->ki", matrices, v)
        return matvec

    results = batched_conjugate_gradient(products(matrices), b, max_iter=max_iter, tol=1e-10, check_every=check_every)
    together = len(calls)
    assert len(results) == 5 and all(shape == b.shape for shape in calls)
    # one product per iteration for all the systems (+ one to confirm the converged ones' true residuals)
    assert together <= (max_iter if check_every is None else max(r.iterations for r in results)) + 1
    for i, got in enumerate(results):
        (alone,) = batched_conjugate_gradient(products(matrices[i : i + 1]), b[i : i + 1], max_iter=max_iter, tol=1e-10,
                                              check_every=check_every)
        assert torch.equal(got.x, alone.x) and got.x.shape == (12,)
        assert (got.status, got.iterations, got.converged, got.residual_norm) == (
            alone.status, alone.iterations, alone.converged, alone.residual_norm)
    statuses = [r.status for r in results]
    assert statuses[2:4] == ["converged", "not_positive_definite"] and results[2].iterations == 0
    assert torch.equal(results[2].x, torch.zeros(12, dtype=torch.float64))
    if max_iter == 40:
        assert statuses[:2] == ["converged", "converged"] and statuses[4] == "converged"
        for i in (0, 1):
            assert torch.allclose(results[i].x, torch.linalg.solve(matrices[i], b[i]), rtol=1e-8, atol=1e-10)
    else:
        assert statuses[0] == statuses[1] == statuses[4] == "max_iter"
    # the single-system solver is this one with K = 1
    single = conjugate_gradient(lambda v: matrices[0] @ v, b[0], max_iter=max_iter, tol=1e-10, check_every=check_every)
    assert single.status == results[0].status and torch.allclose(single.x, results[0].x, rtol=1e-9, atol=1e-12)


def test_batched_preconditioner_per_system_and_shared():
    from ngrl import batched_conjugate_gradient

    matrices, b = _stopping_systems()
    matrices, b = matrices[[0, 1]], b[[0, 1]]
    diagonals = torch.diagonal(matrices, dim1=1, dim2=2)
    matvec = lambda v: torch.einsum("kij,kj->ki", matrices, v)  # noqa: E731
    per_system = batched_conjugate_gradient(matvec, b, max_iter=40, tol=1e-10, preconditioner=diagonals)
    for i, got in enumerate(per_system):
        alone = conjugate_gradient(lambda v: matrices[i] @ v, b[i], max_iter=40, tol=1e-10, preconditioner=diagonals[i])
        assert got.status == alone.status == "converged" and torch.allclose(got.x, alone.x, rtol=1e-8, atol=1e-10)
    shared = batched_conjugate_gradient(matvec, b, max_iter=40, tol=1e-10, preconditioner=diagonals[0])
    (alone,) = batched_conjugate_gradient(lambda v: torch.einsum("kij,kj->ki", matrices[1:], v), b[1:], max_iter=40, tol=1e-10,
                                          preconditioner=diagonals[0])
    assert shared[1].iterations == alone.iterations and torch.equal(shared[1].x, alone.x)


def test_batched_shapes_are_checked():
    from ngrl import batched_conjugate_gradient

    with pytest.raises(ValueError, match=r"as rows, \(K, n\)"):
        batched_conjugate_gradient(lambda v: v, torch.ones(3))
    with pytest.raises(ValueError, match="x0 must have b's shape"):
        batched_conjugate_gradient(lambda v: v, torch.ones(2, 3), x0=torch.zeros(3))
    with pytest.raises(ValueError, match="NaN or inf"):
        batched_conjugate_gradient(lambda v: v, torch.tensor([[1.0, float("nan")]]))
