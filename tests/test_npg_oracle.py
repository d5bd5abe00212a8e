"""One-step dense oracles through the public ``train()`` of NPG and VPG, float64.

A short real rollout fills the buffer; the buffer is then cast to float64 with the policy, and the
new actor parameters after one ``train()`` must equal θ + αw computed here independently: the
surrogate and its gradient through SB3's own distributions, the Fisher as the autograd Hessian of the
mean KL (or from per-sample score Jacobians, or KFAC's factors formed by hand), ``torch.linalg.solve``,
and α = sqrt(2δ / wᵀ(F + λI)w) (the rule documented in ``ngrl.natural_step``).
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from stable_baselines3.common.env_util import make_vec_env
from torch.func import functional_call

from agents import NPG
from agents.meta.vpg import VPG
from agents.recurrent.on_policy import whole_rollout
from ngrl.params import get_flat_params, unflatten

from tests.conftest import SB3Distribution, kl_hessian

D = torch.float64
DAMPING = 0.1


def _collect(model) -> None:
    """Fill the rollout buffer with one real rollout (no update)."""
    _, callback = model._setup_learn(model.n_steps * model.n_envs, None)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)


def _to_float64(model) -> None:
    """The policy and everything the buffer holds in float64 (the float32 values are kept exactly)."""
    model.policy.double()
    buffer = model.rollout_buffer
    for name in ("observations", "actions", "values", "log_probs", "advantages", "returns", "episode_starts", "rewards"):
        setattr(buffer, name, getattr(buffer, name).astype(np.float64))
    if getattr(buffer, "states", None) is not None:
        buffer.states = type(buffer.states)(*(tuple(s.double() for s in part) for part in buffer.states))


def _standardised(advantages: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Centred, divided by their own std (+ 1e-8), or by a fixed ``scale`` (a meta-learner's family scale)."""
    return (advantages - advantages.mean()) / (advantages.std() + 1e-8 if scale is None else scale)


def _feed_forward(algo=NPG, n_envs: int = 2, **kwargs):
    env = make_vec_env("CartPole-v1", n_envs=n_envs, seed=0)
    model = algo("MlpPolicy", env, n_steps=16, n_critic_updates=0, seed=0, device="cpu",
                 policy_kwargs=dict(net_arch=[4]), **kwargs)
    _collect(model)
    _to_float64(model)
    return model


def _spy_fisher(model) -> dict:
    """Keep the operator NPG's ``_fisher`` builds (the score estimator's sampled actions live on it)."""
    captured: dict = {}
    original = model._fisher

    def spy(*args, **kwargs):
        built = original(*args, **kwargs)  # (operator, its states, the spectrum estimate or None)
        captured["fisher"] = built[0]
        return built

    model._fisher = spy
    return captured


def _score_matrix(sb3: SB3Distribution, theta: torch.Tensor, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """(n, P) rows ∇_θ log π(aᵢ|sᵢ) at θ through SB3's log_prob."""
    return torch.autograd.functional.jacobian(lambda th: sb3.at(th, obs).log_prob(actions), theta)


def _kfac_dense(policy, obs: torch.Tensor) -> torch.Tensor:
    """Block-diagonal A ⊗ G for the [4]-unit tanh actor with a categorical head, formed by hand.

    A = mean āāᵀ (layer input with a 1 appended), G = mean Jᵀ H J with J = ∂logits/∂(pre-activation)
    and H the Hessian of KL(π_old ‖ softmax(z)) in the logits z. Flat layout per layer: W row-major, then b.
    """
    w1, b1 = policy.mlp_extractor.policy_net[0].weight, policy.mlp_extractor.policy_net[0].bias
    w2, b2 = policy.action_net.weight, policy.action_net.bias
    with torch.no_grad():
        h = torch.tanh(obs @ w1.T + b1)
        logits = h @ w2.T + b2
    n = obs.shape[0]
    hessians = []
    for z0 in logits:
        p_old = torch.softmax(z0, -1)
        kl = lambda z, p_old=p_old: (p_old * (torch.log(p_old) - torch.log_softmax(z, -1))).sum()  # noqa: E731
        hessians.append(torch.autograd.functional.hessian(kl, z0))
    hessians = torch.stack(hessians)  # (n, k, k)
    blocks = []
    for inputs, jac in (
        (obs, w2.detach() * (1 - h.square()).unsqueeze(1)),  # layer 1: ∂z/∂pre₁ = W₂ diag(1 − h²), (n, k, 4)
        (h, torch.eye(w2.shape[0], dtype=D).expand(n, -1, -1)),  # layer 2: ∂z/∂pre₂ = I
    ):
        a_bar = torch.cat([inputs, torch.ones(n, 1, dtype=D)], 1)
        a = a_bar.T @ a_bar / n
        g = torch.einsum("nko,nkl,nlp->op", jac, hessians, jac) / n
        full = torch.kron(g, a)  # on vec_row([W | b])
        out, width = g.shape[0], a.shape[0]
        order = [o * width + i for o in range(out) for i in range(width - 1)] + [o * width + width - 1 for o in range(out)]
        blocks.append(full[order][:, order])
    return torch.block_diag(*blocks)


SHUFFLE_SEED = 1234


def _buffer_rows(model) -> dict[str, torch.Tensor]:
    """The rollout as ``train()`` will read it: env-major rows in the order SB3's ``get()`` draws.

    ``RolloutBuffer.get`` starts with ``np.random.permutation``; the test seeds NumPy with
    ``SHUFFLE_SEED`` before ``train()`` and draws the same permutation here. Call before ``train()``
    (``get`` flattens the buffer's arrays in place).
    """
    buffer = model.rollout_buffer
    np.random.seed(SHUFFLE_SEED)
    order = torch.as_tensor(np.random.permutation(buffer.buffer_size * buffer.n_envs))
    flat = lambda a: torch.as_tensor(a.swapaxes(0, 1).reshape(-1, *a.shape[2:]))[order]  # noqa: E731
    return {
        "obs": flat(buffer.observations),
        "actions": flat(buffer.actions).long().flatten(),
        "old_log_prob": flat(buffer.log_probs).flatten(),
        "advantages": _standardised(flat(buffer.advantages).flatten(), model.advantage_scale),
    }


def _train(model) -> None:
    np.random.seed(SHUFFLE_SEED)
    model.train()


def _npg_step(model, captured: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(θ_old, θ_new): one ``train()`` of ``model`` and the same step recomputed densely from its buffer."""
    policy = model.policy
    sb3 = SB3Distribution(policy)
    rows = _buffer_rows(model)
    obs, actions, old_log_prob, advantages = rows["obs"], rows["actions"], rows["old_log_prob"], rows["advantages"]
    theta0 = sb3.theta().detach().clone()

    def surrogate(theta):
        return (torch.exp(sb3.at(theta, obs).log_prob(actions) - old_log_prob) * advantages).mean()

    gradient = torch.func.grad(surrogate)(theta0)
    fisher_obs = obs[:: model.sub_sampling_factor]  # every k-th row of what train() reads
    estimator = model.fisher_estimator
    fisher = None
    if estimator in ("exact", "diagonal"):
        fisher = kl_hessian(policy, fisher_obs)
        if estimator == "diagonal":
            fisher = torch.diag(torch.diagonal(fisher))
    elif estimator == "empirical":
        psi = _score_matrix(sb3, theta0, fisher_obs, actions[:: model.sub_sampling_factor])
        fisher = psi.T @ psi / len(fisher_obs)
    elif estimator == "kfac":
        fisher = _kfac_dense(policy, fisher_obs)
    cfa = None
    if model.natural_direction == "cfa":
        cfa = _score_matrix(sb3, theta0, obs, actions)

    _train(model)

    if estimator == "score":  # the actions the estimator drew, taken from the operator train() built
        psi = _score_matrix(sb3, theta0, fisher_obs, captured["fisher"].actions)
        fisher = psi.T @ psi / len(fisher_obs)
    eye = torch.eye(len(theta0), dtype=D)
    damped = fisher + model.cg_damping * eye
    if cfa is not None:  # ridge regression of Â on ψ: (ΨᵀΨ/n + λI)⁻¹ ΨᵀÂ/n
        w = torch.linalg.solve(cfa.T @ cfa / len(obs) + model.cg_damping * eye, cfa.T @ advantages / len(obs))
    else:
        w = torch.linalg.solve(damped, gradient)
    alpha = math.sqrt(2 * model.target_kl / float(w @ damped @ w))  # ½α²wᵀ(F + λI)w = δ
    if model.step_size is not None:  # the fixed rate, capped by the trust region
        captured["capped"] = model.step_size > alpha
        alpha = min(model.step_size, alpha)
    if not model.line_search:
        return theta0, theta0 + alpha * w
    with torch.no_grad():
        old = sb3.at(theta0, obs).distribution
        baseline = float(surrogate(theta0))
        fraction = 1.0
        for _ in range(model.line_search_max_iter):
            theta = theta0 + fraction * alpha * w
            kl = float(torch.distributions.kl_divergence(old, sb3.at(theta, obs).distribution).mean())
            if kl <= model.target_kl and float(surrogate(theta)) > baseline:
                captured["reference_fraction"] = fraction
                return theta0, theta
            fraction *= model.line_search_shrinking_factor
    captured["reference_fraction"] = 0.0
    return theta0, theta0


ROUTES = [
    pytest.param(dict(fisher_estimator="exact"), id="cg-exact"),
    pytest.param(dict(fisher_estimator="exact", preconditioner="diagonal"), id="cg-exact-diagonal-preconditioned"),
    pytest.param(dict(fisher_estimator="exact", preconditioner="kfac"), id="cg-exact-kfac-preconditioned"),
    pytest.param(dict(fisher_estimator="score"), id="cg-score"),
    pytest.param(dict(fisher_estimator="empirical"), id="cg-empirical"),
    pytest.param(dict(fisher_estimator="diagonal"), id="cg-diagonal"),
    pytest.param(dict(fisher_estimator="kfac", preconditioner="kfac"), id="cg-kfac"),
    pytest.param(dict(natural_direction="cfa"), id="cfa"),
    pytest.param(dict(line_search=True, target_kl=0.3, cg_damping=1e-3), id="line-search"),  # backtracks 2 times
    pytest.param(dict(sub_sampling_factor=3), id="sub-sampled"),
    pytest.param(dict(step_size=0.05), id="fixed-rate"),  # α = η, below the trust region's α
    pytest.param(dict(step_size=50.0), id="fixed-rate-capped"),  # α = sqrt(2δ / wᵀAw), below η
    pytest.param(dict(sub_sampling_factor=2, natural_direction="cfa"), id="cfa-sub-sampled"),
]


@pytest.mark.parametrize("options", ROUTES)
def test_npg_step_equals_the_dense_natural_gradient(options):
    options = {"target_kl": 0.02, "cg_damping": DAMPING, **options}
    model = _feed_forward(cg_max_steps=200, cg_tol=1e-13, **options)
    captured = _spy_fisher(model)
    theta0, expected = _npg_step(model, captured)
    got = get_flat_params(model._actor_params)
    assert (expected - theta0).norm() > 1e-3  # the step is not trivially small
    if options.get("line_search"):
        assert 0 < captured["reference_fraction"] < 1  # the line search really backtracks here
    if "step_size" in options:
        assert captured["capped"] == (options["step_size"] > 1)  # each fixed-rate route takes the branch it names
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("scale", [0.5, 4.0])
def test_npg_step_on_a_fixed_advantage_scale_equals_the_dense_natural_gradient(scale):
    """A meta-learner's family scale: centred advantages divided by a fixed number, then the fixed-rate step (uncapped:
    the step is η/s times the unit-scale one, so it shrinks with the advantages)."""
    model = _feed_forward(cg_max_steps=200, cg_tol=1e-13, target_kl=10.0, step_size=0.05, cg_damping=DAMPING)
    model.advantage_scale = scale
    captured = _spy_fisher(model)
    theta0, expected = _npg_step(model, captured)
    assert not captured["capped"]
    torch.testing.assert_close(get_flat_params(model._actor_params), expected, rtol=1e-7, atol=1e-9)


def test_the_oracle_has_teeth():
    """A 1.5× quadratic form in α gives a step the comparison rejects."""
    model = _feed_forward(cg_damping=DAMPING, cg_max_steps=200, cg_tol=1e-13, target_kl=0.02)
    theta0, expected = _npg_step(model, {})
    wrong = theta0 + (expected - theta0) / math.sqrt(1.5)
    assert not torch.allclose(get_flat_params(model._actor_params), wrong, rtol=1e-7, atol=1e-9)


# --- recurrent (ERNN) policy --------------------------------------------------------------------


def _sequence_distribution(policy, params, theta, seqs):
    """SB3's torch distribution of the recurrent actor at θ over whole sequences (through the policy's own head)."""
    names = {id(p): n for n, p in policy.named_parameters()}
    values = dict(zip([names[id(p)] for p in params], unflatten(theta, params)))

    class Latent(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.policy = policy

        def forward(self, s):
            latent, _ = self.policy.actor_latent(s.observations, s.states.pi, s.episode_starts)
            return self.policy._get_action_dist_from_latent(latent).distribution

    return functional_call(Latent(), {f"policy.{k}": v for k, v in values.items()}, (seqs,))


def _recurrent_model(seed: int = 0, **kwargs):
    env = make_vec_env("ngrl/CartPoleNoVel-v1", n_envs=4, seed=seed)
    model = NPG("MlpErnnPolicy", env, n_steps=8, n_critic_updates=0, seed=seed, device="cpu", cg_damping=DAMPING, cg_max_steps=200,
                cg_tol=1e-13, target_kl=0.02, policy_kwargs=dict(cell="ernn", hidden_size=3, net_arch=[4]), **kwargs)
    _collect(model)
    _to_float64(model)
    return model


def _recurrent_oracle(model, fisher_seqs, rows):
    """θ after NPG's step, computed densely: the gradient of the surrogate through the whole sequences, the Fisher
    as the Hessian of the mean KL over the rows ``rows`` of the actor run on ``fisher_seqs``."""
    policy, params = model.policy, model._actor_params
    seqs = whole_rollout(model.rollout_buffer)  # one sequence per env, env-major rows
    theta0 = get_flat_params(params).clone()
    actions = seqs.actions.long().flatten()
    advantages = _standardised(seqs.advantages)

    def surrogate(theta):
        log_prob = _sequence_distribution(policy, params, theta, seqs).log_prob(actions)
        return (torch.exp(log_prob - seqs.old_log_prob) * advantages).mean()

    gradient = torch.func.grad(surrogate)(theta0)
    with torch.no_grad():
        old_logits = _sequence_distribution(policy, params, theta0, fisher_seqs).logits[rows]

    def mean_kl(theta):
        new_logits = _sequence_distribution(policy, params, theta, fisher_seqs).logits[rows]
        return (torch.softmax(old_logits, -1) * (torch.log_softmax(old_logits, -1) - torch.log_softmax(new_logits, -1))).sum(-1).mean()

    damped = torch.autograd.functional.hessian(mean_kl, theta0) + DAMPING * torch.eye(len(theta0), dtype=D)
    w = torch.linalg.solve(damped, gradient)
    return theta0 + math.sqrt(2 * 0.02 / float(w @ damped @ w)) * w


@pytest.mark.parametrize("k", [1, 2], ids=["all-sequences", "sub-sampled"])
def test_recurrent_npg_step_equals_the_dense_natural_gradient(k):
    model = _recurrent_model(sub_sampling_factor=k)
    seqs = whole_rollout(model.rollout_buffer)
    # the Fisher on the sequences of envs 0, k, 2k, ...: rows e·n_steps … (e+1)·n_steps − 1 of each kept env
    rows = torch.cat([torch.arange(e * 8, (e + 1) * 8) for e in range(0, 4, k)])
    expected = _recurrent_oracle(model, seqs, rows)
    assert seqs.episode_starts.sum() > 0 or k == 1  # resets inside the rollout are exercised
    model.train()
    torch.testing.assert_close(get_flat_params(model._actor_params), expected, rtol=1e-7, atol=1e-9)


def _hand_windows(buffer, length: int):
    """Each env's steps 0…length−1, length…2·length−1, … (the remainder left out), built from the buffer's arrays by hand:
    window (e, c) runs from the actor state stored at step c·length of env e."""
    chunks = buffer.buffer_size // length
    pick = [(e, c) for e in range(buffer.n_envs) for c in range(chunks)]

    def rows(array):
        return torch.as_tensor(np.concatenate([array[c * length : (c + 1) * length, e] for e, c in pick]))

    pi = tuple(torch.stack([s[c * length, e] for e, c in pick]) for s in buffer.states.pi)
    states = type(buffer.states)(pi, buffer.states.vf)
    return SimpleNamespace(observations=rows(buffer.observations), episode_starts=rows(buffer.episode_starts), states=states)


@pytest.mark.parametrize("k", [1, 2], ids=["all-windows", "sub-sampled"])
def test_recurrent_npg_step_with_the_windowed_fisher_equals_the_dense_natural_gradient(k):
    """fisher_sequence_length=3 of n_steps=8: the Fisher on windows 0–2 and 3–5 of each env (steps 6–7 left out), each
    from its stored state, every k-th window kept; the gradient still through the whole sequences."""
    model = _recurrent_model(fisher_sequence_length=3, sub_sampling_factor=k)
    windows = _hand_windows(model.rollout_buffer, 3)  # 4 envs × 2 windows of 3 steps, window-major rows
    rows = torch.cat([torch.arange(w * 3, (w + 1) * 3) for w in range(0, 8, k)])
    expected = _recurrent_oracle(model, windows, rows)
    assert windows.episode_starts.sum() > 0  # resets inside the windows are exercised
    # the windowed Fisher is another matrix than the whole sequences' one: the oracle tells them apart
    whole = _recurrent_oracle(model, whole_rollout(model.rollout_buffer), torch.arange(32))
    assert not torch.allclose(whole, expected, rtol=1e-5, atol=1e-7)
    model.train()
    torch.testing.assert_close(get_flat_params(model._actor_params), expected, rtol=1e-7, atol=1e-9)


def test_recurrent_npg_steps_solved_jointly_equal_each_dense_natural_gradient():
    """Three learners (their own parameters and rollouts) solve their systems together (NPG.solve_jointly: one Fisher
    product per CG iteration for all three, each its own CG) and step: each lands on its own dense oracle's θ."""
    models = [_recurrent_model(seed=seed, fisher_sequence_length=3) for seed in (0, 1, 2)]
    expected = []
    for model in models:
        windows = _hand_windows(model.rollout_buffer, 3)
        expected.append(_recurrent_oracle(model, windows, torch.arange(24)))
    assert all(model.solves_jointly for model in models)
    problems = [model.natural_gradient_problem() for model in models]
    directions = NPG.solve_jointly(models, problems)
    assert all(d.converged and math.isfinite(d.quadratic) for d in directions)
    for model, problem, direction, theta in zip(models, problems, directions, expected):
        model.train(problem, direction)
        torch.testing.assert_close(get_flat_params(model._actor_params), theta, rtol=1e-7, atol=1e-9)
    # a direction from outside needs its wᵀ(F + λI)w, and a learner that solves jointly
    model = _recurrent_model(seed=3, fisher_sequence_length=3)
    problem = model.natural_gradient_problem()
    (direction,) = NPG.solve_jointly([model], [problem])
    with pytest.raises(ValueError, match="direction.quadratic"):
        model.train(problem, dataclasses.replace(direction, quadratic=math.nan))
    mlp = _feed_forward(NPG)
    assert not mlp.solves_jointly
    with pytest.raises(ValueError, match="solves_jointly"):
        NPG.solve_jointly([mlp], [mlp.natural_gradient_problem()])


# --- VPG ----------------------------------------------------------------------------------------


def test_vpg_step_equals_the_dense_policy_gradient():
    model = _feed_forward(VPG, step_size=0.3)
    sb3 = SB3Distribution(model.policy)
    rows = _buffer_rows(model)
    obs, actions, old_log_prob, advantages = rows["obs"], rows["actions"], rows["old_log_prob"], rows["advantages"]
    theta0 = sb3.theta().detach().clone()
    # ĝ = mean ∇log π(a|s)·Â (with the buffer's π_old, the ratio's gradient at θ_old)
    gradient = torch.func.grad(lambda th: (torch.exp(sb3.at(th, obs).log_prob(actions) - old_log_prob) * advantages).mean())(theta0)
    _train(model)
    torch.testing.assert_close(get_flat_params(model._actor_params), theta0 + 0.3 * gradient, rtol=1e-9, atol=1e-12)
