"""NGDQN beside SB3 DQN (rl-baselines3-zoo hyper-parameters) and SB3 DQN without a target network.

Learning runs (same seeds, same run, one torch thread each): a separate evaluation env, 10
deterministic episodes every 5k steps; steps to threshold = first evaluation at or above it; the
paper's metric, the best 100-episode average of training returns; train seconds exclude evaluation;
seconds per gradient step are the time spent inside ``train()`` divided by the gradient steps.

    # the full benchmark (what the issue asks for; ~1 h of one core per env on this machine)
    python bench/bench_ngdqn.py learn --env CartPole-v1 --seeds 0 1 2 --steps 100000 --jobs 2 --out bench/results/ngdqn_cartpole.json
    python bench/bench_ngdqn.py learn --env Acrobot-v1  --seeds 0 1 2 --steps 100000 --jobs 2 --out bench/results/ngdqn_acrobot.json
    python bench/bench_ngdqn.py learn --env LunarLander-v3 ...   # skipped cleanly without box2d
    # cost of one gradient step, same network and batch for both algorithms
    python bench/bench_ngdqn.py step-cost --out bench/results/ngdqn_step_cost.json
    # print the tables of saved results
    python bench/bench_ngdqn.py report bench/results/ngdqn_cartpole.json bench/results/ngdqn_acrobot.json

What was actually run for bench/results/ngdqn_*.json (2 shared, heavily loaded cores: absolute seconds
are inflated several-fold and differ between invocations; only the interleaved step-cost ratios hold):
    learn --env CartPole-v1 --algos dqn dqn-notarget --seeds 0 1 2 --steps 100000 --jobs 2   (ngdqn_cartpole_dqn)
    learn --env CartPole-v1 --algos ngdqn --seeds 0 1 2 --steps 100000 --jobs 3              (ngdqn_cartpole_ngdqn)
    learn --env Acrobot-v1 --algos dqn dqn-notarget --seeds 0 1 2 --steps 50000 --jobs 2     (ngdqn_acrobot_dqn; 50k, not 100k)
    learn --env Acrobot-v1 --algos ngdqn --seeds 0 1 2 --steps 50000 --jobs 3 --ngdqn-hyperparams learning_rate=lin_0.6
                                                                                              (ngdqn_acrobot_ngdqn_lin)
    step-cost --net-archs 64x64 256x256 --batch-sizes 64 128 --repeats 5 --gradient-steps 100 (ngdqn_step_cost)
ngdqn_tuning_*: the 2-seed, 50k-step runs the defaults were chosen from.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import pathlib
import platform
import sys
import time
from typing import Any

import numpy as np
import torch
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

THRESHOLDS = {"CartPole-v1": 475.0, "Acrobot-v1": -100.0, "LunarLander-v3": 200.0, "MountainCar-v0": -110.0}

RUN_KEYS = ("n_timesteps", "policy", "n_envs", "normalize")


def ngdqn_config(env_id: str) -> dict[str, Any]:
    """NGDQN's entry in configs/ngdqn.yml (the env's block, else ``default:``) as `train.py` reads it, without the run keys."""
    import train  # the configuration layer

    config = train.load_hyperparams("ngdqn", env_id, {})
    return {k: v for k, v in config.items() if k not in RUN_KEYS}


def _with_schedules(config: dict[str, Any]) -> dict[str, Any]:
    """'lin_0.6' → a linear schedule (rl-zoo's notation), as train.py builds it."""
    import train

    return train.constructor_kwargs(config)


def make_algo(algo: str, env_id: str, venv, seed: int, overrides: dict[str, Any]):
    from stable_baselines3 import DQN

    from agents import NGDQN

    if algo == "ngdqn":
        return NGDQN("MlpPolicy", venv, seed=seed, device="cpu", **_with_schedules({**ngdqn_config(env_id), **overrides}))
    if algo == "ngdqn-target":  # the same NGDQN with DQN's target network, refreshed every 500 steps
        config = {**ngdqn_config(env_id), "target_network": True, "target_update_interval": 500, **overrides}
        return NGDQN("MlpPolicy", venv, seed=seed, device="cpu", **_with_schedules(config))
    import train

    config = {k: v for k, v in train.constructor_kwargs(train.load_hyperparams("dqn", env_id, {})).items() if k not in RUN_KEYS}
    if algo == "dqn":
        return DQN("MlpPolicy", venv, seed=seed, device="cpu", **config)
    if algo == "dqn-notarget":
        # Bootstrap from the online network at every gradient step: the target alias *is* the online
        # network, and the periodic copy (which would be a self-copy) never runs.
        class DQNNoTarget(DQN):
            def _create_aliases(self) -> None:
                super()._create_aliases()
                self.q_net_target = self.q_net

        config["target_update_interval"] = 10**12
        return DQNNoTarget("MlpPolicy", venv, seed=seed, device="cpu", **config)
    raise ValueError(f"unknown algorithm {algo!r}")


def run_one(job: tuple[str, str, int, int, int, int, dict[str, Any]]) -> dict[str, Any]:
    """Train one (algo, seed) with periodic evaluation; return its curve, timings and training returns."""
    algo, env_id, seed, steps, eval_freq, eval_episodes, overrides = job
    torch.set_num_threads(1)
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    venv = make_vec_env(env_id, n_envs=1, seed=seed)
    eval_env = make_vec_env(env_id, n_envs=1, seed=seed + 10_000)
    model = make_algo(algo, env_id, venv, seed, overrides)

    timing = {"train_s": 0.0, "gradient_steps": 0}
    inner_train = model.train

    def timed_train(gradient_steps: int, batch_size: int = 100) -> None:
        start = time.perf_counter()
        inner_train(gradient_steps=gradient_steps, batch_size=batch_size)
        timing["train_s"] += time.perf_counter() - start
        timing["gradient_steps"] += gradient_steps

    model.train = timed_train  # type: ignore[method-assign]

    class Evaluate(BaseCallback):
        def _init_callback(self) -> None:
            self.curve: list[tuple[int, float]] = []
            self.eval_s = 0.0

        def _on_step(self) -> bool:
            if self.num_timesteps % eval_freq == 0:
                start = time.perf_counter()
                mean, _ = evaluate_policy(self.model, eval_env, n_eval_episodes=eval_episodes, deterministic=True)
                self.curve.append((self.num_timesteps, float(mean)))
                self.eval_s += time.perf_counter() - start
            return True

    evaluate = Evaluate()
    start = time.perf_counter()
    diverged = None
    try:
        model.learn(steps, callback=evaluate)
    except ValueError as error:  # NGDQN refuses to go on with a NaN loss: record it, do not hide it
        diverged = str(error)
    wall = time.perf_counter() - start - evaluate.eval_s
    returns = [float(r) for r in venv.envs[0].get_episode_rewards()]
    threshold = THRESHOLDS.get(env_id)
    hit = next((t for t, m in evaluate.curve if threshold is not None and m >= threshold), None)
    rolling = [float(np.mean(returns[i - 100 : i])) for i in range(100, len(returns) + 1)]
    return {
        "algo": algo,
        "env": env_id,
        "seed": seed,
        "steps": int(model.num_timesteps),
        "curve": evaluate.curve,
        "steps_to_threshold": hit,
        "final_eval": evaluate.curve[-1][1] if evaluate.curve else None,
        "evals_at_threshold": sum(m >= threshold for _, m in evaluate.curve) if threshold is not None else None,
        "best_100_episode_average": max(rolling) if rolling else None,
        "train_s": wall,
        "s_per_10k_steps": wall / max(model.num_timesteps, 1) * 10_000,
        "gradient_steps": timing["gradient_steps"],
        "s_per_gradient_step": timing["train_s"] / max(timing["gradient_steps"], 1),
        "overrides": overrides,
        "diverged": diverged,
    }


def _median_range(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{np.median(values) / 1000:g}k [{min(values) / 1000:g}k, {max(values) / 1000:g}k]"


def table(results: list[dict[str, Any]]) -> str:
    """Markdown table: one row per (env, algo), medians over seeds."""
    lines = [
        "| env (threshold) | algo | solved | steps to threshold | final eval (per seed) | evals ≥ thr | best 100-ep avg (median) "
        "| train s (median) | s / 10k steps | ms / gradient step | gradient steps |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["env"], r["algo"]), []).append(r)
    for (env_id, algo), runs in groups.items():
        runs.sort(key=lambda r: r["seed"])
        hits = [r["steps_to_threshold"] for r in runs if r["steps_to_threshold"] is not None]
        finals = ", ".join("–" if r["final_eval"] is None else f"{r['final_eval']:.1f}" for r in runs)
        lines.append(
            f"| {env_id} ({THRESHOLDS.get(env_id, float('nan')):g}) | {algo} | {len(hits)}/{len(runs)} | {_median_range(hits)} "
            f"| {finals} "
            f"| {', '.join(str(r['evals_at_threshold']) for r in runs)} of {len(runs[0]['curve'])} "
            f"| {np.median([r['best_100_episode_average'] for r in runs if r['best_100_episode_average'] is not None] or [np.nan]):.1f} "
            f"| {np.median([r['train_s'] for r in runs]):.1f} | {np.median([r['s_per_10k_steps'] for r in runs]):.2f} "
            f"| {1000 * np.median([r['s_per_gradient_step'] for r in runs]):.2f} | {int(np.median([r['gradient_steps'] for r in runs]))} |"
        )
    return "\n".join(lines)


def cmd_learn(args: argparse.Namespace) -> None:
    if args.env == "LunarLander-v3":
        try:
            import Box2D  # noqa: F401
        except ImportError:
            print("LunarLander-v3 needs box2d (pip install 'gymnasium[box2d]'); skipped.")
            return
    overrides = {}
    for pair in args.ngdqn_hyperparams or []:
        key, _, value = pair.partition("=")
        overrides[key] = yaml.safe_load(value)
    jobs = [
        (algo, args.env, seed, args.steps, args.eval_freq, args.eval_episodes, overrides if algo.startswith("ngdqn") else {})
        for seed in args.seeds
        for algo in args.algos
    ]
    meta = {"command": " ".join(sys.argv), "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
            "torch_threads_per_run": 1, "parallel_runs": args.jobs, "ngdqn_config": ngdqn_config(args.env)}
    results: list[dict[str, Any]] = []

    def record(result: dict[str, Any]) -> None:
        # Written after every finished run, so a long benchmark that is stopped keeps what it measured.
        results.append(result)
        if args.out:
            out = pathlib.Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"meta": meta, "runs": results}, indent=1))

    if args.jobs > 1:
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            for result in pool.imap_unordered(run_one, jobs, chunksize=1):
                record(result)
    else:
        for job in jobs:
            record(run_one(job))
    results.sort(key=lambda r: (args.algos.index(r["algo"]), r["seed"]))
    print(table(results))
    if args.out:
        print(f"wrote {args.out}")


VARIANTS = ("dqn", "ngdqn-parameter-space", "ngdqn", "ngdqn-adaptive", "ngdqn-exact")


def cmd_step_cost(args: argparse.Namespace) -> None:
    """Seconds per gradient step, DQN vs NGDQN, same network, batch and replay data."""
    from stable_baselines3 import DQN
    from stable_baselines3.common.logger import Logger

    from agents import NGDQN

    torch.set_num_threads(1)
    rows = []
    for net_arch in args.net_archs:
        arch = [int(w) for w in net_arch.split("x")]
        for batch_size in args.batch_sizes:
            models = {}
            for name in VARIANTS:
                kwargs = dict(learning_starts=0, buffer_size=10_000, batch_size=batch_size, policy_kwargs=dict(net_arch=arch), seed=0, device="cpu")
                if name == "dqn":
                    model = DQN("MlpPolicy", args.env, **kwargs)
                else:
                    damping = "adaptive_0.1" if name.endswith("-adaptive") else 0.1
                    solver = "exact" if name == "ngdqn-exact" else "cg"
                    # a small rate: timing does not depend on it, and the exact solve diverges at the default 0.6 with fixed d = 0.1
                    model = NGDQN("MlpPolicy", args.env, learning_rate=0.05, cg_max_steps=args.cg_max_steps, damping=damping, solver=solver, **kwargs)
                    if name == "ngdqn-parameter-space":  # CG through the network (the path before the batch-space solve)
                        model._solves_in_batch_space = lambda rows: False
                model.learn(2_000)  # fills the buffer
                model.set_logger(Logger(folder=None, output_formats=[]))
                model.train(gradient_steps=20, batch_size=batch_size)  # warm-up
                models[name] = model
            # Rounds alternate between the algorithms so that load from other processes hits all alike.
            samples: dict[str, list[float]] = {name: [] for name in models}
            for _ in range(args.repeats):
                for name, model in models.items():
                    start = time.perf_counter()
                    model.train(gradient_steps=args.gradient_steps, batch_size=batch_size)
                    samples[name].append((time.perf_counter() - start) / args.gradient_steps)
            timings = {name: float(np.median(values)) for name, values in samples.items()}
            rows.append({"net_arch": arch, "batch_size": batch_size, "cg_max_steps": args.cg_max_steps, **{f"{k}_s": v for k, v in timings.items()}})
    lines = [
        f"| net | batch | DQN ms/step | NGDQN, {args.cg_max_steps} CG in parameter space, fixed d | {args.cg_max_steps} CG in batch space, fixed d "
        "| the same, adaptive d (default) | exact batch-space solve, fixed d |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [f"{1000 * r[f'{name}_s']:.3f} ({r[f'{name}_s'] / r['dqn_s']:.2f}×)" for name in VARIANTS[1:]]
        lines.append(f"| {r['net_arch']} | {r['batch_size']} | {1000 * r['dqn_s']:.3f} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if args.out:
        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"meta": {"command": " ".join(sys.argv), "torch": torch.__version__, "torch_threads": 1}, "rows": rows}, indent=1))
        print(f"wrote {out}")


def cmd_report(args: argparse.Namespace) -> None:
    results = []
    for path in args.files:
        results.extend(json.loads(pathlib.Path(path).read_text())["runs"])
    print(table(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    learn = sub.add_parser("learn", help="learning curves of NGDQN, DQN and DQN without target network")
    learn.add_argument("--env", default="CartPole-v1", choices=sorted(THRESHOLDS))
    learn.add_argument("--algos", nargs="+", default=["ngdqn", "dqn", "dqn-notarget"])
    learn.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    learn.add_argument("--steps", type=int, default=100_000)
    learn.add_argument("--eval-freq", type=int, default=5_000)
    learn.add_argument("--eval-episodes", type=int, default=10)
    learn.add_argument("--jobs", type=int, default=1, help="runs in parallel (one torch thread each)")
    learn.add_argument("--ngdqn-hyperparams", nargs="*", metavar="KEY=VALUE", help="override configs/ngdqn.yml entries")
    learn.add_argument("--out", default=None)
    cost = sub.add_parser("step-cost", help="seconds per gradient step, same network for DQN and NGDQN")
    cost.add_argument("--env", default="CartPole-v1")
    cost.add_argument("--net-archs", nargs="+", default=["64", "64x64", "256x256"])
    cost.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 128])
    cost.add_argument("--cg-max-steps", type=int, default=5)
    cost.add_argument("--gradient-steps", type=int, default=200)
    cost.add_argument("--repeats", type=int, default=5)
    cost.add_argument("--out", default=None)
    report = sub.add_parser("report", help="print the table of saved results")
    report.add_argument("files", nargs="+")
    args = parser.parse_args()
    {"learn": cmd_learn, "step-cost": cmd_step_cost, "report": cmd_report}[args.command](args)


if __name__ == "__main__":
    main()
