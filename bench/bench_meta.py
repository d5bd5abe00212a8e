"""Meta-RL benchmark: adaptation on held-out tasks, and memory of one meta-gradient versus inner steps.

Part 1 (``adaptation``). On each task family and seed, with one budget of environment steps for
everyone: Reptile, FOMAML and iMAML meta-train; the baselines are a randomly initialised policy (no
training) and a policy pre-trained jointly on all tasks (NPG on the family with a fresh task every
episode: multi-task training, no meta-learning). Every policy is then adapted to the same 20
held-out tasks by the same inner procedure (the meta-learners by their own, iMAML's including its
proximal step; the baselines by the plain NPG inner loop of Reptile/FOMAML) and its average return
is measured before adaptation and after 1 and 3 inner updates (a rollout batch of the adapted policy).
Variants (``VARIANTS``) rerun a method with changed settings: iMAML with the Hessian curvature, and
FOMAML / iMAML with the natural meta-step (δ chosen on seeds 10–12 by ``--seeds 10 11 12 --set
fomaml.meta_step=natural fomaml.meta_target_kl=...``; the reported seeds are not used to choose settings).

Part 2 (``memory``). Peak bytes held by autograd graphs (``SavedTensorMeter``: the distinct storages
saved for backward) during one meta-gradient with k = 1, 5, 20 inner steps: iMAML (an agent
meta-iteration: k proximal policy-gradient steps, then CG on the implicit system) against MAML by
backpropagation through the same k policy-gradient steps.

    python bench/bench_meta.py                      # both parts, defaults below
    python bench/bench_meta.py --part memory
    python bench/bench_meta.py --budget 60000 --seeds 0 1 2 --families ngrl/Navigation2D-v0
    python bench/bench_meta.py --part adaptation --families ngrl/HalfCheetahVel-v0 --budget 1000000   # MuJoCo

Writes bench/results/meta.json (adaptation) and bench/results/meta_memory.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import yaml
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.utils import set_random_seed

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import envs  # noqa: E402,F401
import train  # noqa: E402  (the configuration layer)
from agents import FOMAML, IMAML, NPG, Reptile  # noqa: E402
from envs.task_family import held_out_tasks  # noqa: E402
from agents.meta.maml import maml_meta_gradient  # noqa: E402
from agents.meta.memory import SavedTensorMeter  # noqa: E402
from agents.meta.rollouts import collect_task_rollouts  # noqa: E402
from envs import TaskResampling  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
UPDATES = (0, 1, 3)

# The task families measured. Every method's settings are its block of configs/<method>.yml (read by
# train.py's configuration layer, as `train.py meta-train` reads them); the baselines take the inner
# loop (NPG, its trust region, the rollout size, the network) of reptile.yml's block, so that it is
# shared by every method. The configs' meta_target_kl (δ of the natural meta-step, used by the
# *_natural variants) was chosen on seeds 10–12 from 0.01, 0.03, 0.1, 0.2: the best mean return after
# one update (results/meta_tune_*.json); HalfCheetahVel keeps the default.
FAMILIES = ("ngrl/Navigation2D-v0", "ngrl/CartPoleDynamics-v0", "ngrl/HalfCheetahVel-v0")  # HalfCheetahVel: gymnasium[mujoco]
SHARED_KEYS = ("policy_kwargs", "meta_batch_size", "n_steps", "gamma", "inner_algo", "inner_kwargs")
META = {"reptile": Reptile, "fomaml": FOMAML, "imaml": IMAML}
# variants of a method: its family settings with these changes
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "imaml_hessian": ("imaml", {"curvature": "hessian"}),  # the Hessian of the inner surrogate in place of the Fisher
    "fomaml_natural": ("fomaml", {"meta_step": "natural"}),  # the trust-region natural meta-step (δ: meta_target_kl)
    "imaml_natural": ("imaml", {"meta_step": "natural"}),
}


def _evaluate(model: Any, tasks: list[dict[str, float]], seed: int) -> dict[int, list[float]]:
    set_random_seed(seed)
    return {k: v.tolist() for k, v in model.evaluate_adaptation(tasks, n_updates=UPDATES, seed=seed).items()}


# --policy ernn: every method (baselines included) with an ERNN policy of this size in place of the MLP
ERNN_POLICY = {"cell": "ernn", "hidden_size": 64, "net_arch": [64]}


def method_config(method: str, env_id: str, overrides: dict[str, dict[str, Any]], policy: str = "mlp") -> dict[str, Any]:
    """``method``'s constructor arguments on ``env_id``: its config block, then ``overrides`` (``common`` first)."""
    params = train.load_hyperparams(method, env_id, {**overrides.get("common", {}), **overrides.get(method, {})})
    for key in ("n_timesteps", "policy"):
        params.pop(key, None)
    if policy == "ernn":
        params["policy_kwargs"] = dict(ERNN_POLICY)
    return train.constructor_kwargs(params)


def adaptation_run(env_id: str, seed: int, budget: int, n_tasks: int, methods: list[str], policy: str = "mlp",
                   overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    overrides = overrides or {}
    cfg = {name: method_config(name, env_id, overrides, policy) for name in META}
    common = {key: cfg["reptile"][key] for key in SHARED_KEYS if key in cfg["reptile"]}
    policy_name = "MlpErnnPolicy" if policy == "ernn" else "MlpPolicy"
    tasks = held_out_tasks(env_id, n_tasks, seed=100_000 + seed)
    eval_seed = 200_000 + seed
    out: dict[str, Any] = {"tasks": tasks, "methods": {}}
    for name in methods:
        start = time.perf_counter()
        if name in VARIANTS:
            base, changes = VARIANTS[name]
            model = META[base](policy_name, env_id, seed=seed, **{**cfg[base], **changes})
            model.learn(budget)
            steps = model.num_timesteps
        elif name in META:
            model = META[name](policy_name, env_id, seed=seed, **cfg[name])
            model.learn(budget)
            steps = model.num_timesteps
        else:
            model = Reptile(policy_name, env_id, seed=seed, **cfg["reptile"])  # untrained: an evaluator
            steps = 0
            if name == "joint":
                n_envs = common["meta_batch_size"]
                venv = make_vec_env(env_id, n_envs=n_envs, seed=seed, wrapper_class=TaskResampling)
                joint = NPG(policy_name, venv, n_steps=common["n_steps"], gamma=common.get("gamma", 0.99), seed=seed,
                            policy_kwargs=common["policy_kwargs"], **common.get("inner_kwargs", {}))
                joint.learn(budget)
                steps = joint.num_timesteps
                model.policy.load_state_dict(joint.policy.state_dict())
        train_s = time.perf_counter() - start
        returns = _evaluate(model, tasks, eval_seed)
        out["methods"][name] = {"returns": returns, "train_s": train_s, "env_steps": steps}
        means = " ".join(f"{k}:{np.mean(v):8.2f}" for k, v in returns.items())
        print(f"  {env_id} seed {seed} {name:8s} {means}  ({train_s:.0f}s, {steps} steps)", flush=True)
    return out


def memory_run(ks: list[int], n_steps: int, net_arch: list[int]) -> dict[str, Any]:
    env_id = "ngrl/Navigation2D-v0"
    rows: dict[str, dict[int, int]] = {"imaml_hessian": {}, "imaml_fisher": {}, "maml_backprop": {}}
    for k in ks:
        for curvature in ("hessian", "fisher"):
            model = IMAML("MlpPolicy", env_id, inner_algo="vpg", inner_updates=k, curvature=curvature, lam=5.0,
                          policy_kwargs={"net_arch": net_arch}, n_steps=n_steps, meta_batch_size=1, seed=0)
            _, callback = model._setup_learn(10**9, None)
            with SavedTensorMeter() as meter:
                model._meta_iteration(callback)
            rows[f"imaml_{curvature}"][k] = meter.peak_bytes
        # MAML: k differentiable policy-gradient steps on k rollout batches of the same size.
        model = FOMAML("MlpPolicy", env_id, inner_algo="vpg", inner_updates=0, policy_kwargs={"net_arch": net_arch},
                       n_steps=n_steps, meta_batch_size=1, seed=0)
        learner = model._learners[0]
        model._start_learner(learner)
        env = make_vec_env(env_id, n_envs=1, seed=0)
        batches = []
        for _ in range(k + 1):
            collect_task_rollouts(env, [learner], n_steps)
            batches.append(next(learner.rollout_buffer.get(batch_size=None)))
        with SavedTensorMeter() as meter:
            maml_meta_gradient(learner.policy, batches[:-1], batches[-1], 0.1)
        rows["maml_backprop"][k] = meter.peak_bytes
        print(f"  k={k:2d}: iMAML(hessian) {rows['imaml_hessian'][k]:>10,d} B  iMAML(fisher) {rows['imaml_fisher'][k]:>10,d} B  "
              f"MAML {rows['maml_backprop'][k]:>10,d} B", flush=True)
    return {"peak_saved_bytes": rows, "n_steps": n_steps, "net_arch": net_arch, "env": env_id}


def _table(results: dict[str, Any]) -> str:
    lines = ["| family | method | return, 0 updates | 1 update | 3 updates | train s (median) |", "|---|---|---|---|---|---|"]
    for env_id, runs in results["families"].items():
        methods = list(next(iter(runs.values()))["methods"])
        for name in methods:
            per_seed = {k: [np.mean(run["methods"][name]["returns"][str(k)] if str(k) in run["methods"][name]["returns"]
                                    else run["methods"][name]["returns"][k]) for run in runs.values()] for k in UPDATES}
            cells = [f"{np.mean(v):.1f} ± {np.std(v):.1f}" for v in per_seed.values()]
            train_s = np.median([run["methods"][name]["train_s"] for run in runs.values()])
            lines.append(f"| {env_id} | {name} | {' | '.join(cells)} | {train_s:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["adaptation", "memory", "both"], default="both")
    parser.add_argument("--families", nargs="+", default=[f for f in FAMILIES if f in gym.registry],
                        help="default: every family of FAMILIES that is registered (HalfCheetahVel only with MuJoCo)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=int, default=100_000, help="environment steps per method (all tasks, all rollouts)")
    parser.add_argument("--n-tasks", type=int, default=20)
    parser.add_argument("--methods", nargs="+", default=["reptile", "fomaml", "imaml", "random", "joint"],
                        choices=[*META, *VARIANTS, "random", "joint"])
    parser.add_argument("--memory-steps", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--memory-n-steps", type=int, default=500)
    parser.add_argument("--policy", choices=["mlp", "ernn"], default="mlp",
                        help="policy of every method: the MLP of configs/<method>.yml, or an ERNN policy (ERNN_POLICY)")
    parser.add_argument("--set", nargs="+", default=[], metavar="METHOD.KEY=VALUE",
                        help="override a method's setting in every family, e.g. fomaml.meta_step=natural (VALUE is parsed as YAML)")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    args = parser.parse_args()
    overrides: dict[str, dict[str, Any]] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        method, _, name = key.partition(".")
        if not value or not name or method not in ("common", *META):
            parser.error(f"--set takes METHOD.KEY=VALUE with METHOD one of common, {', '.join(META)}; got {item!r}")
        overrides.setdefault(method, {})[name] = yaml.safe_load(value)
    torch.set_num_threads(1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "command": " ".join(sys.argv), "threads": 1}
    if args.part in ("adaptation", "both"):
        results: dict[str, Any] = {**meta, "policy": args.policy, "budget": args.budget, "seeds": args.seeds, "updates": list(UPDATES),
                                   "configs": {f: {m: train.load_hyperparams(m, f, {**overrides.get("common", {}), **overrides.get(m, {})})
                                                   for m in META} for f in args.families},
                                   "overrides": overrides, "families": {}}
        for env_id in args.families:
            results["families"][env_id] = {}
            for seed in args.seeds:
                results["families"][env_id][str(seed)] = adaptation_run(
                    env_id, seed, args.budget, args.n_tasks, args.methods, args.policy, overrides
                )
                (RESULTS / f"meta{args.tag}.json").write_text(json.dumps(results, indent=1))
        print("\nAverage return on held-out tasks (mean ± std over seeds of the mean over tasks):")
        print(_table(results))
    if args.part in ("memory", "both"):
        print("\nPeak bytes saved by autograd during one meta-gradient (Navigation2D, one task):")
        memory = {**meta, **memory_run(args.memory_steps, args.memory_n_steps, [64, 64])}
        (RESULTS / f"meta_memory{args.tag}.json").write_text(json.dumps(memory, indent=1))
        rows = memory["peak_saved_bytes"]
        print("| inner steps | " + " | ".join(rows) + " |")
        print("|---|" + "---|" * len(rows))
        for k in args.memory_steps:
            print(f"| {k} | " + " | ".join(f"{rows[name][k] / 2**20:.2f} MiB" for name in rows) + " |")


if __name__ == "__main__":
    main()
