"""The adaptive natural gradient (Amari, Park & Fukumizu 2000) against dense float64 references.

Convergence of the running estimate to the dense F⁻¹ (or (F + λI)⁻¹) on fixed distributions, the block
and Kronecker structures, the SPD guard, the per-sample and batched forms, and one step through
``ngrl.natural_step`` recomputed densely from the documented update.
"""

from __future__ import annotations

import math

import pytest
import torch
from stable_baselines3.common.torch_layers import FlattenExtractor
from torch import nn
from torch.nn import functional as F

from agents import NGDQN, NPG
from ngrl import natural_step
from ngrl.fisher import AdaptiveConfig, AdaptiveFisher, MatvecOperator, layer_blocks
from ngrl.linearize import linearize
from tests.conftest import SB3Distribution, kl_hessian
from tests.test_ngdqn import _batch as _replay_batch
from tests.test_ngdqn import _float64_model
from tests.test_npg_oracle import _buffer_rows, _feed_forward, _score_matrix, _train

D = torch.float64


def _relative_error(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    return float(torch.linalg.norm(estimate - reference) / torch.linalg.norm(reference))


def _flat_params(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def _output_jacobian(net: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """(n, k, p) Jacobian of the outputs in the flat parameters, by torch.autograd.functional.jacobian."""
    names = [name for name, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]

    def outputs(theta: torch.Tensor) -> torch.Tensor:
        values = [chunk.view(shape) for chunk, shape in zip(torch.split(theta, [s.numel() for s in shapes]), shapes)]
        return torch.func.functional_call(net, dict(zip(names, values)), (inputs,))

    return torch.autograd.functional.jacobian(outputs, _flat_params(net))


# --- convergence to the dense inverse -------------------------------------------------------------


def test_running_estimate_converges_to_the_inverse_of_a_known_fisher():
    """Scores s = Lz, z with i.i.d. ±1 entries, so F = E[ssᵀ] = LLᵀ; the harmonic schedule averages every batch."""
    generator = torch.Generator().manual_seed(0)
    root = torch.tensor([[1.0, 0, 0, 0], [0.5, 0.8, 0, 0], [-0.3, 0.2, 0.6, 0], [0.1, -0.4, 0.3, 0.5]], dtype=D)
    inverse_fisher = torch.linalg.inv(root @ root.T)  # condition number ≈ 16
    estimate = AdaptiveFisher([torch.zeros(4, dtype=D)], AdaptiveConfig(structure="full", epsilon=1.0, schedule="harmonic"))
    errors = {}
    for batch in range(1, 2001):
        signs = torch.randint(0, 2, (100, 4), generator=generator).to(D) * 2 - 1
        estimate.update_scores(signs @ root.T)
        if batch in (2, 20, 200, 2000):
            errors[100 * batch] = _relative_error(estimate.dense_inverse(), inverse_fisher)
    samples = sorted(errors)
    assert all(errors[a] > 2 * errors[b] for a, b in zip(samples, samples[1:])), errors  # falls with the samples
    assert errors[samples[-1]] <= 1e-2, errors
    assert int(estimate.steps) == 2000


def test_a_tiny_policy_estimate_converges_to_its_damped_fisher_inverse():
    """A linear softmax policy on fixed states; actions sampled from it, scores gᵢ = e_a − p through ``update``.

    The damped step's fixed point is (F + λI)⁻¹, F the exact Fisher (1/n) Σ Jᵢᵀ(diag pᵢ − pᵢpᵢᵀ)Jᵢ formed densely.
    """
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    net = nn.Linear(3, 3).double()
    states = torch.randn(32, 3, generator=generator, dtype=D)
    jacobian = _output_jacobian(net, states)
    with torch.no_grad():
        probs = torch.softmax(net(states), -1)
    output_fisher = torch.diag_embed(probs) - probs.unsqueeze(-1) * probs.unsqueeze(-2)
    fisher = torch.einsum("nkp,nkl,nlq->pq", jacobian, output_fisher, jacobian) / 32  # singular: logits shift
    damping = 0.1
    target = torch.linalg.inv(fisher + damping * torch.eye(12, dtype=D))

    params = list(net.parameters())
    linearization = linearize(net, params, states)
    estimate = AdaptiveFisher(params, AdaptiveConfig(structure="full", epsilon=1.0, schedule="harmonic"))
    errors = []
    for step in range(1, 1001):
        actions = torch.multinomial(probs, 2, replacement=True, generator=generator)  # two actions per state
        root = (F.one_hot(actions, 3).to(D) - probs.unsqueeze(1)).transpose(1, 2) / math.sqrt(2)  # (n, k, c=2)
        estimate.update(linearization, root, damping=damping)
        if step in (10, 100, 1000):
            errors.append(_relative_error(estimate.dense_inverse(), target))
    assert errors[0] > errors[1] > errors[2] and errors[2] <= 1e-2, errors
    assert _relative_error(estimate.dense_inverse(), torch.linalg.pinv(fisher)) > 0.5  # the damping is in the fixed point


def test_kronecker_estimate_converges_where_the_factorisation_is_exact():
    """One Linear layer with inputs x and output cotangents g drawn independently: F = E[ggᵀ] ⊗ E[āāᵀ] exactly."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(2)
    net = nn.Linear(3, 2).double()
    params = list(net.parameters())
    mean = torch.tensor([0.5, -0.3, 0.2], dtype=D)
    cotangent_root = torch.tensor([[1.0, 0.0], [0.3, 0.6]], dtype=D)
    input_moment = torch.eye(3, dtype=D) + mean.outer(mean)  # E[xxᵀ] for x ~ N(mean, I)
    a = torch.cat([torch.cat([input_moment, mean[:, None]], 1), torch.cat([mean, torch.ones(1, dtype=D)])[None]], 0)
    g = cotangent_root @ cotangent_root.T
    # s = vec_row(g āᵀ) = g ⊗ ā in the order of [W | b]; the flat layout is W row-major, then b
    order = [o * 4 + i for o in range(2) for i in range(3)] + [o * 4 + 3 for o in range(2)]
    inverse_fisher = torch.linalg.inv(torch.kron(g, a)[order][:, order])

    config = dict(epsilon=1.0, schedule="harmonic")
    kronecker = AdaptiveFisher(params, AdaptiveConfig(structure="kronecker", **config), blocks=layer_blocks(net, params))
    full = AdaptiveFisher(params, AdaptiveConfig(structure="full", **config))
    assert set(kronecker.inverses()) == {"block0_a", "block0_g"}
    for _ in range(500):
        inputs = mean + torch.randn(256, 3, generator=generator, dtype=D)
        root = (torch.randn(256, 2, generator=generator, dtype=D) @ cotangent_root.T).unsqueeze(-1)
        linearization = linearize(net, params, inputs)
        kronecker.update(linearization, root)
        full.update(linearization, root)
    assert _relative_error(kronecker.dense_inverse(), inverse_fisher) <= 1e-2
    assert _relative_error(full.dense_inverse(), inverse_fisher) <= 3e-2  # the same target, from 36 noisier entries rather than 13
    assert kronecker.memory_bytes() == (4 * 4 + 2 * 2) * 8 < full.memory_bytes() == 8 * 8 * 8


# --- structures -----------------------------------------------------------------------------------


def _batch(net: nn.Module, seed: int, n: int = 6):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, net[0].in_features, generator=generator, dtype=D)
    root = torch.randn(n, net[-1].out_features, 1, generator=generator, dtype=D)
    return inputs, root


def test_block_estimate_equals_the_full_one_when_the_model_has_one_layer():
    torch.manual_seed(0)
    one_layer = nn.Sequential(nn.Linear(3, 2)).double()
    params = list(one_layer.parameters())
    assert layer_blocks(one_layer, params) == [2]
    config = dict(epsilon=0.3)
    full = AdaptiveFisher(params, AdaptiveConfig(structure="full", **config))
    block = AdaptiveFisher(params, AdaptiveConfig(structure="block", **config), blocks=layer_blocks(one_layer, params))
    for seed in range(5):
        inputs, root = _batch(one_layer, seed)
        linearization = linearize(one_layer, params, inputs)
        full.update(linearization, root, damping=0.2)
        block.update(linearization, root, damping=0.2)
    torch.testing.assert_close(block.dense_inverse(), full.dense_inverse(), rtol=1e-12, atol=1e-14)

    two_layers = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()  # teeth: two blocks differ from full
    params = list(two_layers.parameters())
    assert layer_blocks(two_layers, params) == [2, 2]
    full = AdaptiveFisher(params, AdaptiveConfig(structure="full", **config))
    block = AdaptiveFisher(params, AdaptiveConfig(structure="block", **config), blocks=layer_blocks(two_layers, params))
    inputs, root = _batch(two_layers, 0)
    linearization = linearize(two_layers, params, inputs)
    full.update(linearization, root)
    block.update(linearization, root)
    assert torch.count_nonzero(block.dense_inverse()[:16, 16:]) == 0 < torch.count_nonzero(full.dense_inverse()[:16, 16:])


def test_memory_of_each_structure_on_a_64_64_cartpole_network():
    """The module docstring's figures (p = 4610), counted on meta tensors (nothing is allocated)."""
    net = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2)).to("meta")
    params = list(net.parameters())
    blocks = layer_blocks(net, params)
    entries = {
        structure: AdaptiveFisher(params, AdaptiveConfig(structure=structure), blocks=blocks).memory_bytes() // 4
        for structure in ("full", "block", "kronecker")
    }
    assert entries == {"full": 4610**2, "block": 320**2 + 4160**2 + 130**2, "kronecker": 5**2 + 64**2 + 65**2 + 64**2 + 65**2 + 2**2}


def test_kronecker_step_matches_its_factors_formed_by_hand():
    """A 2-layer tanh MLP: A⁻¹ and G⁻¹ of each layer follow the damped step with rows ā and δ = ∂(gᵀz)/∂(pre-activation)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    params = list(net.parameters())
    estimate = AdaptiveFisher(params, AdaptiveConfig(structure="kronecker", epsilon=0.05, initial_curvature=2.0),
                              blocks=layer_blocks(net, params))
    inputs, root = _batch(net, 3, n=5)
    damping = 0.3
    update = estimate.update(linearize(net, params, inputs), root, damping=damping)
    assert update.smallest_epsilon == update.epsilon == 0.05  # the guard did not act: the formula below holds as is

    with torch.no_grad():
        hidden = torch.tanh(net[0](inputs))
    cotangent = root[..., 0]
    deltas = [(cotangent @ net[2].weight) * (1 - hidden.square()), cotangent]  # δ of layer 1, of layer 2
    layer_inputs = [inputs, hidden]
    for layer, (x, delta) in enumerate(zip(layer_inputs, deltas)):
        a_bar = torch.cat([x, torch.ones(5, 1, dtype=D)], 1)
        for factor, rows in (("a", a_bar), ("g", delta)):
            start = torch.eye(rows.shape[1], dtype=D) / 2.0
            expected = 1.05 * start - 0.05 * start @ (rows.T @ rows / 5 + math.sqrt(damping) * torch.eye(rows.shape[1], dtype=D)) @ start
            torch.testing.assert_close(estimate.inverses()[f"block{layer}_{factor}"], expected, rtol=1e-12, atol=1e-14)
    v = torch.randn(estimate.num_params, dtype=D, generator=torch.Generator().manual_seed(4))
    layer2 = estimate.inverses()["block1_g"] @ torch.cat([v[16:24].view(2, 4), v[24:26, None]], 1) @ estimate.inverses()["block1_a"]
    torch.testing.assert_close(estimate.inverse_mv(v)[16:], torch.cat([layer2[:, :4].reshape(-1), layer2[:, 4]]))  # G⁻¹[W | b]A⁻¹


# --- the SPD guard and the two forms -------------------------------------------------------------


def test_guard_keeps_the_rank_one_step_positive_definite():
    """P = I, ‖s‖² = 10, ε = 0.5: unguarded, 1.5I − 0.5ssᵀ has the eigenvalue 1.5 − 5 < 0."""
    s = torch.tensor([[3.0, 1.0, 0.0]], dtype=D)
    unguarded = 1.5 * torch.eye(3, dtype=D) - 0.5 * s.T @ s
    assert torch.linalg.eigvalsh(unguarded)[0] < 0
    for per_sample in (True, False):
        estimate = AdaptiveFisher([torch.zeros(3, dtype=D)], AdaptiveConfig(structure="full", epsilon=0.5, guard=0.5))
        update = estimate.update_scores(s, per_sample=per_sample)
        used = 0.5 / (10 - 0.5)  # κ / (sᵀPs − κ)
        assert update.epsilon == 0.5 and update.smallest_epsilon == pytest.approx(used, rel=1e-12)
        eigenvalues = torch.linalg.eigvalsh(estimate.dense_inverse())
        # the guard leaves the smallest eigenvalue at exactly (1 − κ)(1 + ε')
        assert float(eigenvalues[0]) == pytest.approx(0.5 * (1 + used), rel=1e-12)
        assert float(eigenvalues[-1]) == pytest.approx(1 + used, rel=1e-12)


def test_guard_reads_the_largest_eigenvalue_of_a_batch_and_the_damping():
    """P = I/λ₀: X = (Ŝ + λI)/λ₀ exactly, so the guarded step's smallest eigenvalue factor is (1 − κ)(1 + ε')."""
    generator = torch.Generator().manual_seed(0)
    for rows_count in (3, 9):  # fewer and more rows than the 5 parameters (both eigenvalue routes)
        scores = torch.randn(rows_count, 5, generator=generator, dtype=D) * 2
        damping, start = 0.7, 2.0
        estimate = AdaptiveFisher([torch.zeros(5, dtype=D)], AdaptiveConfig(structure="full", epsilon=0.9, initial_curvature=start))
        update = estimate.update_scores(scores, damping=damping)
        top = float(torch.linalg.eigvalsh(scores.T @ scores / rows_count)[-1] + damping) / start
        used = 0.5 / (top - 0.5)
        assert used < 0.9 and update.smallest_epsilon == pytest.approx(used, rel=1e-10)
        whitened = estimate.dense_inverse() * start  # P^-½ P' P^-½ with P = I/λ₀
        assert float(torch.linalg.eigvalsh(whitened)[0]) == pytest.approx(0.5 * (1 + used), rel=1e-9)


def test_many_large_steps_stay_positive_definite():
    """ε = 1 every step on heavy-tailed scores with damping: the guard keeps every step SPD."""
    generator = torch.Generator().manual_seed(1)
    estimate = AdaptiveFisher([torch.zeros(6, dtype=D)], AdaptiveConfig(structure="full", epsilon=1.0, initial_curvature=0.01))
    guarded = 0
    for _ in range(200):
        scores = torch.randn(4, 6, generator=generator, dtype=D) * torch.exp(2 * torch.randn(4, 1, generator=generator, dtype=D))
        update = estimate.update_scores(scores, damping=0.05)
        guarded += update.smallest_epsilon < 1.0
        assert float(torch.linalg.eigvalsh(estimate.dense_inverse())[0]) > 0
    assert guarded > 50  # the guard really acted


def test_batched_and_per_sample_forms_agree_to_first_order():
    """n rank-one steps with ε/n against one batched step with ε: the gap is O(ε²) (halving ε quarters it)."""
    generator = torch.Generator().manual_seed(3)
    scores = torch.randn(5, 4, generator=generator, dtype=D)
    gaps = []
    for epsilon in (0.02, 0.01):
        per_sample = AdaptiveFisher([torch.zeros(4, dtype=D)], AdaptiveConfig(structure="full", epsilon=epsilon / 5))
        batched = AdaptiveFisher([torch.zeros(4, dtype=D)], AdaptiveConfig(structure="full", epsilon=epsilon))
        per_sample.update_scores(scores, per_sample=True)
        batched.update_scores(scores)
        assert int(per_sample.steps) == 5 and int(batched.steps) == 1
        change = torch.linalg.norm(batched.dense_inverse() - torch.eye(4, dtype=D))
        gaps.append(float(torch.linalg.norm(batched.dense_inverse() - per_sample.dense_inverse()) / change))
    assert 0 < gaps[0] < 0.05 and gaps[0] / gaps[1] == pytest.approx(2.0, rel=0.05)  # relative gap O(ε): absolute O(ε²)


def test_schedules_and_bad_configurations():
    harmonic = AdaptiveConfig(epsilon=0.5, schedule="harmonic", min_epsilon=0.1)
    assert [harmonic.epsilon_at(t) for t in (0, 1, 2, 100)] == pytest.approx([0.5, 1 / 3, 0.25, 0.1])
    assert AdaptiveConfig(epsilon=0.2).epsilon_at(1000) == 0.2
    for field, value in (("structure", "diagonal"), ("epsilon", 0.0), ("epsilon", 1.5), ("schedule", "cosine"),
                         ("min_epsilon", 0.9), ("initial_curvature", -1.0), ("guard", 1.0), ("epsilon", math.nan)):
        with pytest.raises(ValueError, match=field):
            AdaptiveConfig(**{field: value})
    estimate = AdaptiveFisher([torch.zeros(3, dtype=D)], AdaptiveConfig(structure="full"))
    with pytest.raises(ValueError, match="damping"):
        estimate.update_scores(torch.ones(1, 3, dtype=D), damping=0.1, per_sample=True)
    with pytest.raises(ValueError, match="blocks"):
        AdaptiveFisher([torch.zeros(3), torch.zeros(2)], AdaptiveConfig(structure="block"), blocks=[1])
    net = nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 1)).double()
    with pytest.raises(ValueError, match="do not belong"):
        layer_blocks(net[0], list(net.parameters()))
    with pytest.raises(ValueError, match="structure='kronecker'"):  # refused before anything is allocated
        AdaptiveFisher([torch.zeros(200, 100, device="meta")], AdaptiveConfig(structure="full"))


def test_kronecker_needs_an_mlp_linearisation():
    net = nn.Sequential(nn.Linear(3, 2)).double()
    params = list(net.parameters())
    estimate = AdaptiveFisher(params, AdaptiveConfig(structure="kronecker"), blocks=[2])
    functional = linearize(lambda values, x: F.linear(x, *values), params, torch.randn(4, 3, dtype=D))
    with pytest.raises(ValueError, match="structure='block'"):
        estimate.update(functional, torch.ones(4, 2, 1, dtype=D))
    with pytest.raises(ValueError, match="Kronecker"):
        estimate.update_scores(torch.ones(1, 8, dtype=D))


# --- the operator and one natural step -------------------------------------------------------------


@pytest.mark.parametrize("structure", ["full", "block"])
def test_one_natural_step_equals_the_dense_adaptive_step(structure):
    """After a few steps, one more update then ``natural_step``: θ₁ = θ₀ − α P₁g with P₁ from the documented formula,
    Ŝ from the autograd Jacobian, and α = min(η, sqrt(2δ / gᵀP₁g)) (the quadratic model of Ĝ = P₁⁻¹)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    params = list(net.parameters())
    blocks = layer_blocks(net, params)
    estimate = AdaptiveFisher(params, AdaptiveConfig(structure=structure, epsilon=0.05), blocks=blocks)
    for seed in range(3):  # a P₀ that is not the identity
        inputs, root = _batch(net, seed)
        estimate.update(linearize(net, params, inputs), root, damping=0.1)
    before = estimate.dense_inverse().clone()

    inputs, root = _batch(net, 10, n=7)
    damping = 0.1
    update = estimate.update(linearize(net, params, inputs), root, damping=damping)
    assert update.smallest_epsilon == update.epsilon == 0.05
    gradient = torch.randn(26, generator=torch.Generator().manual_seed(5), dtype=D)
    operator = estimate.operator()
    step = natural_step(gradient, operator, learning_rate=10.0, max_kl=0.01, solve=operator.solve(gradient))

    scores = torch.einsum("nk,nkp->np", root[..., 0], _output_jacobian(net, inputs))  # sᵢ = Jᵢᵀgᵢ
    batch_fisher = scores.T @ scores / 7 + damping * torch.eye(26, dtype=D)
    if structure == "block":  # P₀ is block-diagonal: only the diagonal blocks of Ŝ reach P₁
        mask = torch.block_diag(torch.ones(16, 16, dtype=D), torch.ones(10, 10, dtype=D))
        batch_fisher = batch_fisher * mask
    after = 1.05 * before - 0.05 * before @ batch_fisher @ before
    torch.testing.assert_close(estimate.dense_inverse(), after, rtol=1e-12, atol=1e-14)
    direction = after @ gradient
    quadratic = float(gradient @ after @ gradient)  # wᵀĜw = gᵀP₁g
    alpha = min(10.0, math.sqrt(2 * 0.01 / quadratic))
    assert alpha < 10.0  # the KL cap binds: the quadratic model is really used
    torch.testing.assert_close(step.direction, direction, rtol=1e-12, atol=1e-14)
    assert step.step_size == pytest.approx(alpha, rel=1e-12) and step.quadratic == pytest.approx(quadratic, rel=1e-12)
    theta1 = _flat_params(net) - step.step_size * step.direction
    torch.testing.assert_close(theta1, _flat_params(net) - alpha * direction)
    # the operator is Ĝ = P₁⁻¹: its products and its quadratic form on any vector
    v = torch.randn(26, generator=torch.Generator().manual_seed(6), dtype=D)
    torch.testing.assert_close(operator.mv(v), torch.linalg.solve(after, v))
    assert operator.quadratic(v) == pytest.approx(float(v @ torch.linalg.solve(after, v)), rel=1e-10)
    assert step.solve.iterations == 0 and step.solve.converged


def test_solve_sizes_the_direction_for_another_curvature():
    """x = α*Pg, α* = gᵀPg / (Pg)ᵀA(Pg); α* = 1 for A = P⁻¹ itself; a flat model along Pg gives no step."""
    generator = torch.Generator().manual_seed(7)
    like = [torch.zeros(5, dtype=D)]
    estimate = AdaptiveFisher(like, AdaptiveConfig(structure="full", epsilon=0.3))
    estimate.update_scores(torch.randn(8, 5, generator=generator, dtype=D), damping=0.1)
    gradient = torch.randn(5, generator=generator, dtype=D)
    m = torch.randn(5, 5, generator=generator, dtype=D)
    curvature = m @ m.T + 0.2 * torch.eye(5, dtype=D)
    result = estimate.solve(gradient, MatvecOperator(lambda v: curvature @ v, like))
    w = estimate.dense_inverse() @ gradient
    scale = float(gradient @ w) / float(w @ curvature @ w)
    torch.testing.assert_close(result.x, scale * w)
    assert result.residual_norm == pytest.approx(float(torch.linalg.norm(gradient - curvature @ (scale * w)) / torch.linalg.norm(gradient)))
    assert result.iterations == 0 and result.status == "max_iter" and not result.converged
    own = estimate.solve(gradient, estimate.operator())
    torch.testing.assert_close(own.x, w, rtol=1e-10, atol=1e-12)  # α* = 1 and residual 0 for A = P⁻¹
    assert own.residual_norm < 1e-10
    flat = estimate.solve(gradient, MatvecOperator(lambda v: torch.zeros_like(v), like))
    assert flat.status == "not_positive_definite" and not torch.any(flat.x != 0)


def test_state_dict_round_trip_and_dtype():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    params = list(net.parameters())
    estimate = AdaptiveFisher(params, AdaptiveConfig(structure="kronecker", epsilon=0.2), blocks=layer_blocks(net, params))
    inputs, root = _batch(net, 0)
    estimate.update(linearize(net, params, inputs), root, damping=0.1)
    fresh = AdaptiveFisher(params, AdaptiveConfig(structure="kronecker", epsilon=0.2), blocks=layer_blocks(net, params))
    assert not torch.equal(fresh.dense_inverse(), estimate.dense_inverse())
    fresh.load_state_dict(estimate.state_dict())
    assert torch.equal(fresh.dense_inverse(), estimate.dense_inverse()) and int(fresh.steps) == 1
    assert fresh.float().dense_inverse().dtype == torch.float32


# --- the agents: one step recomputed densely, and the estimate through save/load --------------------

def _flat_order(out: int, width: int) -> list[int]:
    """Positions of the flat layout (W row-major, then b) inside vec_row([W | b])."""
    return [o * width + i for o in range(out) for i in range(width - 1)] + [o * width + width - 1 for o in range(out)]


def _dense_step(before: dict[str, torch.Tensor], structure: str, layers: list[tuple[torch.Tensor, torch.Tensor]],
                scores: torch.Tensor, damping: float, epsilon: float) -> torch.Tensor:
    """P₁ formed densely from the documented step P ← (1 + ε)P − εP(R̂ + λI)P, from the inverses ``before`` it.

    ``"full"``: R̂ = ψᵀψ/n with ψ the (n, p) score rows. ``"kronecker"``: per layer, A⁻¹ with the rows ā = [a, 1] and
    G⁻¹ with the rows δ, each with √λ, then P₁ = blockdiag(G⁻¹ ⊗ A⁻¹) in the flat layout.
    """

    def step(inverse: torch.Tensor, rows: torch.Tensor, shift: float) -> torch.Tensor:
        eye = torch.eye(inverse.shape[0], dtype=D)
        return (1 + epsilon) * inverse - epsilon * inverse @ (rows.T @ rows / rows.shape[0] + shift * eye) @ inverse

    if structure == "full":
        return step(before["block0"], scores, damping)
    blocks = []
    for index, (a_bar, delta) in enumerate(layers):
        a_inv = step(before[f"block{index}_a"], a_bar, math.sqrt(damping))
        g_inv = step(before[f"block{index}_g"], delta, math.sqrt(damping))
        order = _flat_order(delta.shape[1], a_bar.shape[1])
        blocks.append(torch.kron(g_inv, a_inv)[order][:, order])
    return torch.block_diag(*blocks)


def _with_ones(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=D)], 1)


def _warm(estimate: AdaptiveFisher, seed: int) -> None:
    """Set every inverse of the estimate to a random SPD matrix (RᵀR/3 + I)⁻¹, so that P₀ is not a multiple of I."""
    generator = torch.Generator().manual_seed(seed)
    for inverse in estimate.inverses().values():
        rows = torch.randn(3, inverse.shape[0], generator=generator, dtype=D)
        inverse.copy_(torch.linalg.inv(rows.T @ rows / 3 + torch.eye(inverse.shape[0], dtype=D)))


@pytest.mark.parametrize("structure", ["full", "kronecker"])
def test_ngdqn_adaptive_step_equals_the_dense_step(structure):
    """θ₁ = θ₀ − η α* P₁∇L with P₁ = (1 + ε)P₀ − εP₀(G + dI)P₀ (rows Jᵢᵀe_{aᵢ} of the Q-network, by autograd), and
    α* = ∇Lᵀw / wᵀ(G + dI)w for w = P₁∇L."""
    damping, lr = 0.3, 0.7
    model = _float64_model(FlattenExtractor, curvature="adaptive", damping=damping,
                           adaptive_kwargs=dict(structure=structure, epsilon=0.05))
    estimate = model.policy.adaptive_fisher
    _warm(estimate, 0)
    data = _replay_batch()
    q_net = model.q_net
    names = [name for name, _ in q_net.named_parameters()]
    theta0 = _flat_params(q_net)
    actions = data.actions.reshape(-1)
    rows = torch.arange(len(actions))

    def q_values(theta: torch.Tensor, obs: torch.Tensor = data.observations) -> torch.Tensor:
        values = [c.view(p.shape) for c, p in zip(torch.split(theta, [p.numel() for p in q_net.parameters()]), q_net.parameters())]
        return torch.func.functional_call(q_net.q_net, {k.split(".", 1)[1]: v for k, v in zip(names, values)}, (obs,))

    with torch.no_grad():  # no target network: y bootstraps from the online network at θ₀
        next_q = q_values(theta0, data.next_observations).max(1).values
        target = data.rewards.reshape(-1) + (1 - data.dones.reshape(-1)) * model.gamma * next_q
    gradient = torch.func.grad(lambda th: 0.5 * (q_values(th)[rows, actions] - target).square().mean())(theta0)
    jacobian = torch.autograd.functional.jacobian(lambda th: q_values(th)[rows, actions], theta0)  # (n, p): rows Jᵢᵀe_{aᵢ}
    w1, b1, w2 = (p.detach() for p in list(q_net.parameters())[:3])
    hidden_pre = data.observations @ w1.T + b1
    e_a = F.one_hot(actions, 2).to(D)
    layers = [(_with_ones(data.observations), (e_a @ w2) * (hidden_pre > 0)), (_with_ones(torch.relu(hidden_pre)), e_a)]
    before = {name: inverse.clone() for name, inverse in estimate.inverses().items()}

    stats = model._natural_step(data, lr)
    assert stats.adaptive_epsilon == 0.05 and stats.cg_iterations == 0  # the guard did not act; no solve
    after = _dense_step(before, structure, layers, jacobian, damping, epsilon=0.05)
    torch.testing.assert_close(estimate.dense_inverse(), after, rtol=1e-10, atol=1e-12)
    gauss_newton = jacobian.T @ jacobian / len(actions) + damping * torch.eye(len(theta0), dtype=D)
    w = after @ gradient
    scale = float(gradient @ w) / float(w @ gauss_newton @ w)
    assert abs(scale - 1) > 0.05  # α* really rescales
    torch.testing.assert_close(_flat_params(q_net), theta0 - lr * scale * w, rtol=1e-9, atol=1e-11)
    residual = float(torch.linalg.norm(gradient - scale * gauss_newton @ w) / torch.linalg.norm(gradient))
    assert stats.cg_residual == pytest.approx(residual, rel=1e-8)


@pytest.mark.parametrize("structure", ["full", "kronecker"])
def test_npg_adaptive_step_equals_the_dense_step(structure, monkeypatch):
    """θ₁ = θ₀ + αw, w = P₁g, P₁ from the scores ∇θ log π(ãᵢ|sᵢ) of the actions ãᵢ train() sampled (SB3's log_prob
    by autograd), α = sqrt(2δ / wᵀ(F + λI)w) with F the autograd Hessian of the mean KL (the exact Fisher)."""
    damping = 0.1
    model = _feed_forward(target_kl=0.02, cg_damping=damping, fisher_estimator="adaptive",
                          adaptive_kwargs=dict(structure=structure, epsilon=0.05))
    estimate = model.policy.adaptive_fisher
    _warm(estimate, 1)
    sampled = {}
    family = model._actor.family
    original = family.sample

    def spy(outputs, generator=None):
        sampled["actions"] = original(outputs, generator)
        return sampled["actions"]

    monkeypatch.setattr(family, "sample", spy)
    policy = model.policy
    sb3 = SB3Distribution(policy)
    rows = _buffer_rows(model)
    obs, actions, old_log_prob, advantages = rows["obs"], rows["actions"], rows["old_log_prob"], rows["advantages"]
    theta0 = sb3.theta().detach().clone()
    gradient = torch.func.grad(lambda th: (torch.exp(sb3.at(th, obs).log_prob(actions) - old_log_prob) * advantages).mean())(theta0)
    damped_fisher = kl_hessian(policy, obs) + damping * torch.eye(len(theta0), dtype=D)
    hidden_net, head = policy.mlp_extractor.policy_net[0], policy.action_net
    with torch.no_grad():
        hidden = torch.tanh(hidden_net(obs))
        probs = torch.softmax(head(hidden), -1)
        head_weight = head.weight.detach().clone()  # at θ₀ (train() moves it)
    before = {name: inverse.clone() for name, inverse in estimate.inverses().items()}

    _train(model)

    ã = sampled["actions"]
    scores = _score_matrix(sb3, theta0, obs, ã)  # (n, p)
    cotangent = F.one_hot(ã, 2).to(D) - probs  # ∇z log π(ã|z)
    layers = [(_with_ones(obs), (cotangent @ head_weight) * (1 - hidden.square())), (_with_ones(hidden), cotangent)]
    after = _dense_step(before, structure, layers, scores, damping, epsilon=0.05)
    assert model.logger.name_to_value["train/adaptive_epsilon"] == 0.05  # the guard did not act
    torch.testing.assert_close(estimate.dense_inverse(), after, rtol=1e-10, atol=1e-12)
    w = after @ gradient
    expected = theta0 + math.sqrt(2 * 0.02 / float(w @ damped_fisher @ w)) * w
    assert (expected - theta0).norm() > 1e-3
    torch.testing.assert_close(sb3.theta().detach(), expected, rtol=1e-8, atol=1e-10)


def test_ngdqn_keeps_the_estimate_through_save_and_load(tmp_path):
    model = NGDQN("MlpPolicy", "CartPole-v1", curvature="adaptive", learning_starts=50, buffer_size=1000,
                  policy_kwargs=dict(net_arch=[16]), seed=0, device="cpu")
    model.learn(300)
    state = {k: v.clone() for k, v in model.policy.adaptive_fisher.state_dict().items()}
    assert int(state["steps"]) == model._n_updates > 0
    fresh = NGDQN("MlpPolicy", "CartPole-v1", curvature="adaptive", policy_kwargs=dict(net_arch=[16]), device="cpu")
    assert not torch.equal(fresh.policy.adaptive_fisher.dense_inverse(), model.policy.adaptive_fisher.dense_inverse())
    model.save(tmp_path / "ngdqn")
    loaded = NGDQN.load(tmp_path / "ngdqn", device="cpu")
    assert loaded.curvature == "adaptive" and loaded.policy.adaptive_fisher.structure == "kronecker"
    for key, value in loaded.policy.adaptive_fisher.state_dict().items():
        assert torch.equal(value, state[key]), key
    loaded.set_env(model.get_env())
    loaded.learn(100, reset_num_timesteps=False)  # and it keeps stepping from there
    assert int(loaded.policy.adaptive_fisher.steps) > int(state["steps"])


def test_npg_keeps_the_estimate_through_save_and_load(tmp_path):
    model = NPG("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, n_critic_updates=1, fisher_estimator="adaptive",
                adaptive_kwargs=dict(structure="block", epsilon=0.2), policy_kwargs=dict(net_arch=[8]), seed=0, device="cpu")
    model.learn(128)
    estimate = model.policy.adaptive_fisher
    assert int(estimate.steps) == 2 and estimate.structure == "block"
    model.save(tmp_path / "npg")
    loaded = NPG.load(tmp_path / "npg", device="cpu")
    assert loaded.adaptive_kwargs == dict(structure="block", epsilon=0.2)
    torch.testing.assert_close(loaded.policy.adaptive_fisher.dense_inverse(), estimate.dense_inverse(), rtol=0, atol=0)
    assert int(loaded.policy.adaptive_fisher.steps) == 2


@pytest.mark.parametrize("make, match", [
    (lambda: NPG("MlpPolicy", "CartPole-v1", fisher_estimator="adaptive", natural_direction="cfa"), "natural_direction"),
    (lambda: NPG("MlpPolicy", "CartPole-v1", fisher_estimator="adaptive", preconditioner="diagonal"), "preconditioner"),
    (lambda: NPG("MlpErnnPolicy", "ngrl/CartPoleNoVel-v1", n_steps=8, fisher_estimator="adaptive"), "feed-forward"),
    (lambda: NGDQN("MlpPolicy", "CartPole-v1", curvature="adaptive", solver="exact"), "solver"),
    (lambda: NGDQN("MlpPolicy", "CartPole-v1", curvature="adaptive", adaptive_kwargs=dict(epsilon=0.0)), "adaptive_kwargs: epsilon"),
    (lambda: NGDQN("MlpPolicy", "CartPole-v1", curvature="adaptive", adaptive_kwargs=dict(rate=0.1)), "adaptive_kwargs takes"),
])
def test_agents_refuse_what_the_adaptive_estimate_cannot_do(make, match):
    with pytest.raises(ValueError, match=match):
        make()
