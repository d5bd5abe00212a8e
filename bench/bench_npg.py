"""NPG beside sb3-contrib TRPO: the cost of a Fisher product, of CG and of one update; CG preconditioners.

    python bench/bench_npg.py fvp                       # micro-benchmark (about a minute)
    python bench/bench_npg.py update                    # one update, NPG and TRPO alternating
    python bench/bench_npg.py update --envs Hopper-v5 HalfCheetah-v5 Walker2d-v5 --tag _mujoco --repeats 10
    python bench/bench_npg.py precond                   # CG iterations per preconditioner (a few minutes)
    python bench/bench_npg.py same-update --envs HalfCheetah-v5   # NPG at TRPO's scale vs TRPO's update, same data
    python bench/bench_npg.py sensitivity               # how far one rollout moves when log σ moves by ε

The learning table (NPG beside TRPO and PPO on classic control) is a `train.py benchmark` grid:

    python train.py benchmark --algos npg trpo ppo --envs CartPole-v1 Acrobot-v1 Pendulum-v1 --seeds 0 1 2 \\
        --n-timesteps 100000 --eval-freq 5000 --n-eval-episodes 10 --out runs/classic

Timing results go to bench/results/*.json; one torch thread unless a table says 1 / 2.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # agents, ngrl and train.py (the configuration layer) from this checkout
RESULTS = ROOT / "bench" / "results"
THRESHOLDS = {"CartPole-v1": 475.0, "Acrobot-v1": -100.0, "Pendulum-v1": -200.0}

def hyperparams(algo: str, env_id: str) -> dict[str, Any]:
    """The algorithm's block of configs/<algo>.yml, read as `train.py` reads it: NPG's own, and rl-baselines3-zoo's
    tuned entries for TRPO (configs/trpo.yml) and PPO (configs/ppo.yml)."""
    import train  # the configuration layer

    params = train.load_hyperparams(algo, env_id, {})
    params.pop("n_timesteps", None)
    params.pop("policy", None)
    return train.constructor_kwargs(params)


def algo_class(algo: str):
    if algo == "npg":
        from agents import NPG

        return NPG
    if algo == "trpo":
        from sb3_contrib import TRPO

        return TRPO
    from stable_baselines3 import PPO

    return PPO


class _SpacesEnv(gym.Env):
    def __init__(self, observation_space: gym.Space, action_space: gym.Space):
        self.observation_space, self.action_space = observation_space, action_space

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


def zoo_env(algo: str, env_id: str, seed: int) -> tuple[Any, dict[str, Any]]:
    """The env of ``algo``'s entry for ``env_id`` (its n_envs, VecNormalize when the entry normalises), seeded, and the
    entry's remaining constructor arguments (gSDE's dropped: NPG has none)."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    params = hyperparams(algo, env_id)
    params.pop("use_sde", None), params.pop("sde_sample_freq", None)
    n_envs, normalize = params.pop("n_envs", 1), params.pop("normalize", False)
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    return (VecNormalize(env) if normalize else env), params


def write_result(name: str, content: dict[str, Any]) -> None:
    """bench/results/<name>: the command line that made it, then ``content``, as JSON."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / name
    out.write_text(json.dumps({"command": " ".join(sys.argv), **content}, indent=1))
    print(f"wrote {out}")


def _interleaved_ms(first, second, repeats: int) -> tuple[float, float]:
    """Median milliseconds of two functions timed alternately (so other load hits both alike)."""
    first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, bucket in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return statistics.median(times[0]) * 1000, statistics.median(times[1]) * 1000


def fvp_case(name: str, obs_dim: int, action_space: gym.Space, net_arch: list[int], n_states: int, repeats: int) -> dict[str, Any]:
    """One FVP and one 10-step CG solve: ngrl's exact Fisher operator beside TRPO's own KL double-backprop."""
    from sb3_contrib import TRPO
    from sb3_contrib.common.utils import conjugate_gradient_solver
    from stable_baselines3.common.distributions import kl_divergence

    from ngrl import conjugate_gradient
    from ngrl.fisher import policy_fisher

    obs_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), dtype=np.float32)
    trpo = TRPO("MlpPolicy", _SpacesEnv(obs_space, action_space), policy_kwargs=dict(net_arch=net_arch), seed=0, device="cpu")
    policy = trpo.policy
    obs = torch.randn(n_states, obs_dim, generator=torch.Generator().manual_seed(0))
    # TRPO's path: mean KL(old ‖ new) with a copied old distribution, its gradient with create_graph,
    # then each product is a backward pass through that gradient (sb3_contrib.TRPO.hessian_vector_product).
    import copy

    def trpo_build():
        with torch.no_grad():
            old = copy.copy(policy.get_distribution(obs))
        new = policy.get_distribution(obs)
        kl = kl_divergence(new, old).mean()
        log_prob_term = new.log_prob(new.sample()).mean()  # a stand-in objective: TRPO needs its gradient too
        return trpo._compute_actor_grad(kl, log_prob_term)

    actor_params, gradient, grad_kl, _ = trpo_build()
    vector = torch.randn_like(gradient)

    def trpo_fvp():
        return trpo.hessian_vector_product(actor_params, grad_kl, vector)

    def trpo_cg():
        params, g, gk, _ = trpo_build()
        return conjugate_gradient_solver(lambda v: trpo.hessian_vector_product(params, gk, v), g, max_iter=10)

    fisher = policy_fisher(policy, obs, damping=0.1)

    def ours_fvp():
        return fisher.mv(vector)

    # A gradient of the surrogate mean(r(θ)Â), r = π(a|s)/π_old(a|s), on the same states: forward and backward.
    with torch.no_grad():
        old = policy.get_distribution(obs)
        sampled_actions = old.sample()
        old_log_prob = old.log_prob(sampled_actions)
    advantages = torch.randn(n_states, generator=torch.Generator().manual_seed(1))

    def surrogate_gradient():
        ratio = torch.exp(policy.get_distribution(obs).log_prob(sampled_actions) - old_log_prob)
        return torch.autograd.grad((ratio * advantages).mean(), actor_params)

    def ours_cg():
        op = policy_fisher(policy, obs, damping=0.1)
        return conjugate_gradient(op.mv, gradient, max_iter=10, tol=0.0)

    # Same numbers? TRPO's product includes its damping 0.1 (cg_damping default); ours too. TRPO orders
    # the parameters as named_parameters() does (log σ first), so compare parameter by parameter.
    from ngrl.params import flatten, unflatten

    trpo_out = dict(zip(map(id, actor_params), unflatten(trpo_fvp(), actor_params)))
    vector_by_param = dict(zip(map(id, actor_params), unflatten(vector, actor_params)))
    ours_vector = flatten(vector_by_param[id(p)] for p in fisher.params)
    ours_out = fisher.mv(ours_vector)
    # TRPO takes .mean() of SB3's per-dimension Gaussian KL, i.e. it averages over action dimensions
    # as well as states: its undamped product is F/d for a d-dimensional Box (d = 1 otherwise).
    kl_scale = int(np.prod(action_space.shape)) if isinstance(action_space, gym.spaces.Box) else 1
    trpo_undamped = flatten(trpo_out[id(p)] for p in fisher.params) - 0.1 * ours_vector
    agree = torch.allclose(kl_scale * trpo_undamped, ours_out - 0.1 * ours_vector, rtol=1e-3, atol=1e-4)
    result = {"case": name, "actor_params": fisher.num_params, "states": n_states, "products_agree": bool(agree)}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        result[f"trpo_fvp_ms_{threads}t"], result[f"ours_fvp_ms_{threads}t"] = _interleaved_ms(trpo_fvp, ours_fvp, repeats)
        result[f"trpo_cg10_ms_{threads}t"], result[f"ours_cg10_ms_{threads}t"] = _interleaved_ms(trpo_cg, ours_cg, max(5, repeats // 2))
        result[f"gradient_ms_{threads}t"], fvp_ms = _interleaved_ms(surrogate_gradient, ours_fvp, repeats)
        result[f"fvp_in_gradients_{threads}t"] = fvp_ms / result[f"gradient_ms_{threads}t"]
    return result


def cmd_fvp(args: argparse.Namespace) -> None:
    cases = [
        fvp_case("64-64 tanh, 4 obs → Discrete(2)", 4, gym.spaces.Discrete(2), [64, 64], args.states, args.repeats),
        fvp_case("256-256 tanh, 17 obs → Box(6)", 17, gym.spaces.Box(-1, 1, (6,), dtype=np.float32), [256, 256], args.states,
                 args.repeats),
    ]
    print(f"Fisher-vector products on {args.states} states, medians of {args.repeats} (1 / 2 torch threads)")
    print("| policy | actor params | TRPO FVP (ms) | ngrl FVP (ms) | ratio | TRPO 10-step CG (ms) | ngrl 10-step CG (ms) | ratio | same product¹ |")
    print("|---|---|---|---|---|---|---|---|---|")
    for c in cases:
        print(f"| {c['case']} | {c['actor_params']:,} | {c['trpo_fvp_ms_1t']:.2f} / {c['trpo_fvp_ms_2t']:.2f} | "
              f"{c['ours_fvp_ms_1t']:.2f} / {c['ours_fvp_ms_2t']:.2f} | "
              f"{c['ours_fvp_ms_1t'] / c['trpo_fvp_ms_1t']:.2f} / {c['ours_fvp_ms_2t'] / c['trpo_fvp_ms_2t']:.2f} | "
              f"{c['trpo_cg10_ms_1t']:.1f} / {c['trpo_cg10_ms_2t']:.1f} | {c['ours_cg10_ms_1t']:.1f} / {c['ours_cg10_ms_2t']:.1f} | "
              f"{c['ours_cg10_ms_1t'] / c['trpo_cg10_ms_1t']:.2f} / {c['ours_cg10_ms_2t'] / c['trpo_cg10_ms_2t']:.2f} | "
              f"{'yes' if c['products_agree'] else 'NO'} |")
    print("¹ ngrl's product equals TRPO's times d, the action dimension: TRPO averages its Gaussian KL over dimensions.")
    print()
    print("| policy | surrogate gradient, forward + backward (ms) | ngrl FVP in gradient-equivalents |")
    print("|---|---|---|")
    for c in cases:
        print(f"| {c['case']} | {c['gradient_ms_1t']:.2f} / {c['gradient_ms_2t']:.2f} | "
              f"{c['fvp_in_gradients_1t']:.2f} / {c['fvp_in_gradients_2t']:.2f} |")
    write_result("npg_fvp.json", {"cases": cases})


# --- CG preconditioners -----------------------------------------------------------------------


def precond_case(name: str, obs_dim: int, action_space: gym.Space, net_arch: list[int], n_states: int, damping: float,
                 head_gain: float, max_iter: int, threshold: float) -> dict[str, Any]:
    """CG iterations each preconditioner needs to reach cosine ≥ ``threshold`` to the exact (F + λI)⁻¹g.

    float64 throughout. F is the exact Fisher of an SB3 policy on ``n_states`` random states, g a policy
    gradient mean(∇log π(a|s)·Â) with sampled actions and standard-normal Â. SB3 initialises the action
    head with gain 0.01 (a near-uniform policy); ``head_gain`` multiplies it (100: gain 1, a policy with
    decided actions, as after training). The reference is a dense solve where F fits in memory, else
    CG preconditioned by KFAC run to a relative residual ≤ 1e-10.
    """
    from stable_baselines3 import PPO

    from ngrl import CGConfig, flat_grad
    from ngrl.fisher import actor_parameters, kfac_from_linearization, policy_distribution, policy_fisher
    from ngrl.fisher.policy import ActorOutputs

    torch.set_num_threads(1)
    obs_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), dtype=np.float32)
    policy = PPO("MlpPolicy", _SpacesEnv(obs_space, action_space), policy_kwargs=dict(net_arch=net_arch), seed=0,
                 device="cpu").policy.to(torch.float64)
    with torch.no_grad():
        policy.action_net.weight.mul_(head_gain)
    generator = torch.Generator().manual_seed(0)
    obs = torch.randn(n_states, obs_dim, generator=generator, dtype=torch.float64)
    family, params = policy_distribution(policy), actor_parameters(policy)
    outputs = ActorOutputs(policy)(obs)
    with torch.no_grad():
        actions = family.sample(outputs, generator)
    advantages = torch.randn(n_states, generator=generator, dtype=torch.float64)
    gradient = flat_grad((family.log_prob(outputs, actions) * advantages).mean(), params)

    fisher = policy_fisher(policy, obs, damping=damping)  # F + λI, exact
    n = fisher.num_params
    lin = fisher.linearization
    kfac = kfac_from_linearization(lin, family.fisher_sqrt(lin.outputs), params, damping)
    start = time.perf_counter()
    if n <= 8000:
        exact = torch.linalg.solve(fisher.dense(max_params=8000), gradient)
        reference = "dense solve"
    else:
        solve = CGConfig(max_iter=5000, tol=1e-10).solve(fisher.mv, gradient, preconditioner=kfac.solve)
        assert solve.converged, solve.message
        exact, reference = solve.x, f"CG to residual {solve.residual_norm:.1e} ({solve.iterations} it.)"
    reference_s = time.perf_counter() - start

    def cosine(x: torch.Tensor) -> float:
        return float(torch.dot(x, exact) / (x.norm() * exact.norm()))

    build = {
        "none": lambda: None,
        "diagonal": lambda: fisher.diagonal(),
        "kfac": lambda: kfac_from_linearization(lin, family.fisher_sqrt(lin.outputs), params, damping).solve,
    }
    kfac_matrix = policy_fisher(policy, obs, estimator="kfac", damping=damping)
    result: dict[str, Any] = {"case": name, "actor_params": n, "states": n_states, "damping": damping, "head_gain": head_gain,
                              "reference": reference,
                              "reference_s": reference_s, "threshold": threshold}
    for kind, make in build.items():
        t0 = time.perf_counter()
        preconditioner = make()
        if callable(preconditioner):
            preconditioner(gradient)  # KFAC factors its blocks on first use
        setup_ms = (time.perf_counter() - t0) * 1000
        needed, cosines = None, []
        for k in range(1, max_iter + 1):
            x = CGConfig(max_iter=k, tol=0.0).solve(fisher.mv, gradient, preconditioner=preconditioner).x
            cosines.append(cosine(x))
            if needed is None and cosines[-1] >= threshold:
                needed = k
            if needed is not None and k >= 15:
                break
        result[kind] = {"iterations_to_threshold": needed, "cosine_at_5": cosines[4] if len(cosines) > 4 else None,
                        "cosine_at_15": cosines[14] if len(cosines) > 14 else None, "setup_ms": setup_ms}
    # fisher_estimator="kfac" before the split: CG on the KFAC matrix itself, preconditioned by its own inverse
    x = CGConfig(max_iter=15, tol=1e-10).solve(kfac_matrix.mv, gradient, preconditioner=kfac_matrix.solve).x
    result["kfac_matrix_cosine_at_15"] = cosine(x)
    return result


def cmd_precond(args: argparse.Namespace) -> None:
    policies = [
        ("64-64 tanh, 4 obs → Discrete(2)", 4, gym.spaces.Discrete(2), [64, 64]),
        ("256-256 tanh, 17 obs → Box(6)", 17, gym.spaces.Box(-1, 1, (6,), dtype=np.float32), [256, 256]),
    ]
    cases = [
        precond_case(name, obs_dim, space, arch, args.states, damping, gain, args.max_iter, args.threshold)
        for damping in args.damping for gain in args.head_gain for name, obs_dim, space, arch in policies
    ]
    print(f"CG iterations to cosine ≥ {args.threshold} with the exact (F + λI)⁻¹g, {args.states} states, float64")
    print("| policy | head gain | λ | none | diagonal | kfac | cosine at 15 it. (none / diagonal / kfac) | KFAC matrix, self-preconditioned: cosine at 15 |")
    print("|---|---|---|---|---|---|---|---|")
    for c in cases:
        iters = [c[k]["iterations_to_threshold"] for k in ("none", "diagonal", "kfac")]
        text = [str(i) if i is not None else f"> {args.max_iter}" for i in iters]
        cos15 = " / ".join(f"{c[k]['cosine_at_15']:.3f}" for k in ("none", "diagonal", "kfac"))
        print(f"| {c['case']} | {0.01 * c['head_gain']:g} | {c['damping']:g} | {text[0]} | {text[1]} | {text[2]} | {cos15} | "
              f"{c['kfac_matrix_cosine_at_15']:.3f} |")
    write_result("npg_precond.json", {"cases": cases})


# --- one update, interleaved -------------------------------------------------------------------


def cmd_update(args: argparse.Namespace) -> None:
    """Wall time of one update (``train()`` on a full rollout), NPG and TRPO alternating in one process.

    Alternating the two on the same machine state makes the ratio robust to other load; each model
    first collects one rollout with its zoo configuration, then ``train()`` is timed repeatedly on it.
    """
    torch.set_num_threads(1)
    rows = []
    for env_id in args.envs:
        models = {}
        for algo in ("npg", "trpo"):
            env, params = zoo_env(algo, env_id, seed=0)
            model = algo_class(algo)("MlpPolicy", env, seed=0, device="cpu", **params)
            model.learn(model.n_steps * env.num_envs)  # one rollout (and one update) to fill the buffer
            models[algo] = model
        times = {algo: [] for algo in models}
        for _ in range(args.repeats):
            for algo, model in models.items():
                start = time.perf_counter()
                model.train()
                times[algo].append(time.perf_counter() - start)
        row = {"env": env_id, **{f"{algo}_ms": statistics.median(t) * 1000 for algo, t in times.items()},
               **{f"{algo}_states": models[algo].n_steps * models[algo].n_envs for algo in models}}
        row["ratio"] = row["npg_ms"] / row["trpo_ms"]
        rows.append(row)
    print(f"One update (train() on a full rollout), medians of {args.repeats}, NPG and TRPO alternating, 1 thread")
    print("| env | states/update (NPG / TRPO) | NPG ms | TRPO ms | NPG / TRPO |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['env']} | {r['npg_states']} / {r['trpo_states']} | {r['npg_ms']:.1f} | {r['trpo_ms']:.1f} | {r['ratio']:.2f} |")
    write_result(f"npg_update{args.tag}.json", {"rows": rows})


def cmd_same_update(args: argparse.Namespace) -> None:
    """How far NPG at sb3-contrib TRPO's scale is from TRPO's own update, from the same state and rollout.

    TRPO runs its zoo entry (configs/trpo.yml) and trains ``--warmup`` steps; NPG gets its parameters and a copy of its
    optimiser state, and δ·d, λ·d and the line search (d action dimensions: TRPO's KL is the mean over them). TRPO
    collects one more rollout, both ``train()`` on it (same critic minibatch order), and the parameter changes are
    compared, actor and critic apart: the relative difference ‖Δ_NPG − Δ_TRPO‖ / ‖Δ_TRPO‖.
    """
    import copy

    from stable_baselines3.common.logger import Logger

    torch.set_num_threads(1)
    rows = []
    for env_id in args.envs:
        env, params = zoo_env("trpo", env_id, seed=args.seed)
        params.pop("sub_sampling_factor", None)
        d = int(np.prod(env.action_space.shape))
        trpo = algo_class("trpo")("MlpPolicy", env, seed=args.seed, device="cpu", **params)
        trpo.learn(args.warmup)
        scaled = {**params, "target_kl": params.get("target_kl", 0.01) * d, "cg_damping": params.get("cg_damping", 0.1) * d}
        npg = algo_class("npg")("MlpPolicy", env, seed=args.seed, device="cpu", line_search=True, **scaled)
        npg.policy.load_state_dict(trpo.policy.state_dict())
        npg.policy.optimizer.load_state_dict(copy.deepcopy(trpo.policy.optimizer.state_dict()))  # no shared moments
        _, callback = trpo._setup_learn(trpo.n_steps * env.num_envs, callback=None, reset_num_timesteps=False)
        callback.on_training_start(locals(), globals())
        trpo.collect_rollouts(trpo.env, callback, trpo.rollout_buffer, n_rollout_steps=trpo.n_steps)
        npg.rollout_buffer = trpo.rollout_buffer
        npg.set_logger(Logger(folder=None, output_formats=[]))
        start = {name: p.detach().clone() for name, p in trpo.policy.named_parameters()}
        changes = {}
        for name, model in (("trpo", trpo), ("npg", npg)):
            np.random.seed(args.seed)  # the critic's minibatch order
            model.train()
            changes[name] = {key: (p.detach() - start[key]).flatten() for key, p in model.policy.named_parameters()}
        row = {"env": env_id, "action_dims": d, "warmup_steps": args.warmup, "npg_target_kl": scaled["target_kl"], "npg_cg_damping": scaled["cg_damping"]}
        for part in ("actor", "critic"):
            keys = [key for key in start if ("value" in key) == (part == "critic")]
            want = torch.cat([changes["trpo"][k] for k in keys])
            have = torch.cat([changes["npg"][k] for k in keys])
            row[f"{part}_change_norm"] = float(want.norm())
            row[f"{part}_relative_difference"] = float((have - want).norm() / want.norm())
        rows.append(row)
        print(row)
    write_result("npg_trpo_same_update.json", {"rows": rows})


def cmd_sensitivity(args: argparse.Namespace) -> None:
    """Whether two runs of the same update rule can be compared step by step: how far one rollout moves when the
    policy's log σ moves by ε.

    TRPO runs its zoo entry (configs/trpo.yml) for ``--warmup`` steps, once per ε, each run built afresh from the same
    seed (so up to there they are one run); then log σ + ε, and each collects one more rollout from the same torch
    seed (the same action noise). The largest differences of observations and rewards from the ε = 0 run are
    recorded; ε = 0 run twice is the control, which must repeat the rollout exactly.
    """
    torch.set_num_threads(1)
    rows = []
    for env_id in args.envs:
        reference = None
        for epsilon in [0.0, 0.0, *args.epsilons]:
            env, params = zoo_env("trpo", env_id, seed=args.seed)
            run = algo_class("trpo")("MlpPolicy", env, seed=args.seed, device="cpu", **params)
            run.learn(args.warmup)
            _, callback = run._setup_learn(run.n_steps * env.num_envs, callback=None, reset_num_timesteps=False)
            with torch.no_grad():
                run.policy.log_std.add_(epsilon)
            torch.manual_seed(args.seed)
            run.collect_rollouts(run.env, callback, run.rollout_buffer, n_rollout_steps=run.n_steps)
            observations, rewards = run.rollout_buffer.observations.copy(), run.rollout_buffer.rewards.copy()
            if reference is None:
                reference = observations, rewards
            apart = np.abs(observations - reference[0]).max(axis=(1, 2))
            row = {
                "env": env_id, "warmup_steps": args.warmup, "rollout_steps": run.n_steps * env.num_envs, "log_std_shift": epsilon,
                "max_observation_difference": float(apart.max()),
                "max_reward_difference": float(np.abs(rewards - reference[1]).max()),
                "first_step_observations_differ_by_0.1": next((int(t) for t in np.flatnonzero(apart > 0.1)), None),
            }
            rows.append(row)
            print(row)
    write_result("rollout_sensitivity.json", {"rows": rows})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    fvp = commands.add_parser("fvp", help="Fisher-vector product and CG micro-benchmark")
    fvp.add_argument("--states", type=int, default=2048)
    fvp.add_argument("--repeats", type=int, default=20)
    fvp.set_defaults(handler=cmd_fvp)
    precond = commands.add_parser("precond", help="CG iterations to cosine 0.99 per preconditioner (none, diagonal, kfac)")
    precond.add_argument("--states", type=int, default=2048)
    precond.add_argument("--damping", type=float, nargs="+", default=[0.1, 0.001])
    precond.add_argument("--head-gain", type=float, nargs="+", default=[1.0, 100.0])
    precond.add_argument("--max-iter", type=int, default=60)
    precond.add_argument("--threshold", type=float, default=0.99)
    precond.set_defaults(handler=cmd_precond)
    update = commands.add_parser("update", help="wall time of one update, NPG and TRPO alternating")
    update.add_argument("--envs", nargs="+", default=list(THRESHOLDS))
    update.add_argument("--repeats", type=int, default=20)
    update.add_argument("--tag", default="", help="suffix of the result file: bench/results/npg_update<TAG>.json")
    update.set_defaults(handler=cmd_update)
    same = commands.add_parser("same-update", help="NPG at TRPO's scale against TRPO's update on the same rollout")
    same.add_argument("--envs", nargs="+", default=["HalfCheetah-v5", "Hopper-v5"])
    same.add_argument("--warmup", type=int, default=8192, help="TRPO steps before the compared update")
    same.add_argument("--seed", type=int, default=1)
    same.set_defaults(handler=cmd_same_update)
    sensitivity = commands.add_parser("sensitivity", help="how far one rollout moves when log σ moves by ε")
    sensitivity.add_argument("--envs", nargs="+", default=["HalfCheetah-v5", "Hopper-v5", "Walker2d-v5"])
    sensitivity.add_argument("--warmup", type=int, default=8192, help="TRPO steps before the compared rollout")
    sensitivity.add_argument("--epsilons", type=float, nargs="+", default=[1e-7, 1e-5, 1e-3])
    sensitivity.add_argument("--seed", type=int, default=1)
    sensitivity.set_defaults(handler=cmd_sensitivity)
    args = parser.parse_args()
    args.handler(args)


if __name__ == "__main__":
    main()
