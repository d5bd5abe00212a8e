"""Meta-RL benchmark: memory of one meta-gradient against inner steps (the adaptation table runs on the grid).

Adaptation on held-out tasks runs through ``train.py benchmark`` (one Ray run per method, family and seed; the rows
``random-init`` and ``joint`` and the variants are entries of configs/variants.yml):

    python train.py benchmark --algos reptile fomaml imaml imaml-hessian fomaml-natural imaml-natural random-init joint \
        --envs ngrl/Navigation2D-v0 ngrl/CartPoleDynamics-v0 --seeds 0 1 2 3 4 --n-timesteps 100000 --eval-freq 25000 \
        --n-eval-episodes 20 --out bench/results/meta

Every row's final policy is adapted to the same 20 held-out tasks of its seed by its own inner loop and measured
after 0, 1 and 3 updates (``--adaptation-updates``): ``adaptation.csv`` and the adaptation tables of ``summary.md``.

This script measures the peak bytes held by autograd graphs (``SavedTensorMeter``: the distinct storages saved for
backward) during one meta-gradient with k = 1, 5, 20 inner steps: iMAML (an agent meta-iteration: k proximal
policy-gradient steps, then CG on the implicit system) against MAML by backpropagation through the same k
policy-gradient steps.

    python bench/bench_meta.py                       # k = 1 5 20; writes bench/results/meta_memory.json
    python bench/bench_meta.py --table bench/results/meta   # the README's adaptation table from the grid above
    python bench/bench_meta.py --table bench/results/meta_untuned --seeds 0 1 2 --algos fomaml-fixed-rate ...
                                                     # the same for some seeds and methods only
    python bench/bench_meta.py --adaptation-cost     # seconds of a 5-task ERNN adaptation: whole vs windowed Fisher,
                                                     # the tasks' directions solved together vs task by task
    python bench/bench_meta.py --memoryless bench/results/meta_budget/joint-untuned/ngrl-CartPoleActuator-v0_0 \
        --tag _cartpole_actuator                     # does one memoryless policy do well in both motor directions?
    python bench/bench_meta.py --memoryless-train ngrl/PendulumActuator-v0 Pendulum-v1 --tag _pendulum_actuator_joint
                                                     # the same for NPG trained on the family's tasks (--tasks direction=1:
                                                     # on one direction only)
    python bench/bench_meta.py --inner-step-sizes bench/results/meta_budget/joint-untuned/ngrl-CartPoleActuator-v0_0 \
        --tag _cartpole_actuator_joint               # the run's policy adapted at inner δ 0.1, 0.01, 0.001
    python bench/bench_meta.py --inner-step-sizes RUN [RUN ...] --deltas 0.1 --rates 1 3 10 --tag _fixed_rate_probe
                                                     # and at the fixed rates η (capped by δ 0.1, family advantage scale)
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
from typing import Any

import torch
import yaml
from stable_baselines3.common.env_util import make_vec_env

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import envs  # noqa: E402,F401
from envs import TaskResampling, task_family_methods  # noqa: E402
from agents import FOMAML, IMAML, META_ALGOS  # noqa: E402
from agents.meta.maml import maml_meta_gradient  # noqa: E402
from agents.meta.memory import SavedTensorMeter  # noqa: E402
from agents.meta.rollouts import collect_task_rollouts  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


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


BASELINES = ("random-init", "joint")


def adaptation_table(folder: pathlib.Path, baselines: tuple[str, str] = BASELINES, expert: str | None = None,
                     seeds: list[int] | None = None, algos: list[str] | None = None) -> str:
    """The README's table from a grid's adaptation.csv: per family and method, the mean return over the held-out tasks
    (mean ± std over seeds) before and after each number of updates ("—" where a method has no such row); then, per
    family, on how many seeds each other method beats both ``baselines`` (random init, joint training) after one update
    (its per-seed mean return above both baselines' of that seed), and its mean return after one update over joint
    training's (the ratio of the means over seeds; for positive returns only). With ``expert`` (the per-task expert's
    row, trained on each task alone; its best mean return over its numbers of updates is the ceiling, per seed): the
    share of the gap between joint training and the expert that each method closes after 3 updates,
    (method − joint) / (expert − joint), per seed. ``seeds`` and ``algos`` keep those seeds and methods only (the
    baselines and the expert count among the methods)."""
    import csv
    import statistics

    with open(folder / "adaptation.csv") as f:
        rows = [r for r in csv.DictReader(f) if (seeds is None or int(r["seed"]) in seeds) and (algos is None or r["algo"] in algos)]
    value = {(r["env"], r["algo"], int(r["seed"]), int(r["updates"])): float(r["mean"]) for r in rows}
    updates = sorted({k for (_, _, _, k) in value})
    lines = ["| family | method | seeds | " + " | ".join(f"after {k} update{'' if k == 1 else 's'}" for k in updates) + " |",
             "|---|---|---|" + "---|" * len(updates)]
    wins = []
    random_init, joint_row = baselines
    for env in dict.fromkeys(r["env"] for r in rows):
        algos = list(dict.fromkeys(r["algo"] for r in rows if r["env"] == env))
        for algo in algos:
            seeds = sorted({s for (e, a, s, _) in value if e == env and a == algo})
            cells = []
            for k in updates:
                means = [value[env, algo, s, k] for s in seeds if (env, algo, s, k) in value]
                cells.append(f"{statistics.mean(means):.1f} ± {statistics.pstdev(means):.1f}" if means else "—")
            lines.append(f"| {env} | {algo} | {len(seeds)} | " + " | ".join(cells) + " |")
        if all(b in algos for b in baselines) and 1 in updates:
            ceiling = {}  # seed -> the expert's best mean return over its numbers of updates
            for (e, a, s, _), v in value.items():
                if e == env and a == expert:
                    ceiling[s] = max(v, ceiling.get(s, v))
            for algo in (a for a in algos if a not in (*baselines, expert)):
                seeds = sorted({s for (e, a, s, _) in value if e == env and a == algo})
                beat = [s for s in seeds if all((env, b, s, 1) in value and value[env, algo, s, 1] > value[env, b, s, 1]
                                                for b in baselines)]
                joint = statistics.mean(value[env, joint_row, s, 1] for s in seeds if (env, joint_row, s, 1) in value)
                # a ratio reads as "× joint training" for positive returns only
                ratio = f"{statistics.mean(value[env, algo, s, 1] for s in seeds) / joint:.2f}" if joint > 0 else "—"
                line = f"| {env} | {algo} | {len(beat)} of {len(seeds)} | {ratio} |"
                if expert is not None:
                    closed = [(value[env, algo, s, 3] - value[env, joint_row, s, 3]) / (ceiling[s] - value[env, joint_row, s, 3])
                              for s in seeds if s in ceiling and (env, algo, s, 3) in value and (env, joint_row, s, 3) in value]
                    line += (f" {statistics.mean(closed):.2f} ({sum(c >= 0.5 for c in closed)} of {len(closed)}) |"
                             if closed else " — |")
                wins.append(line)
    if wins:
        header = ("| family | method | seeds on which it beats random init and joint training after 1 update | "
                  "mean return after 1 update ÷ joint training's |")
        if expert is not None:
            header += " share of the joint-to-expert gap closed after 3 updates (seeds ≥ 0.5) |"
        lines += ["", header, "|---|---|---|---|" + ("---|" if expert is not None else ""), *wins]
    return "\n".join(lines)


def adaptation_cost(n_tasks: int, n_steps: int, lengths: list[int | None], repeats: int = 1) -> dict[str, Any]:
    """Wall seconds of adapting an ERNN policy to ``n_tasks`` Navigation2D tasks by one NPG update and evaluating it
    (``evaluate_adaptation``), and the seconds spent in Fisher-vector products, for each inner
    ``fisher_sequence_length`` (None: the Fisher through whole rollouts), with the tasks' natural directions solved
    together (one Fisher product per CG iteration for all tasks: ``NPG.solve_jointly``) and task by task; settings
    interleaved, ``repeats`` times, one thread."""
    import time

    from agents import Reptile
    from envs.task_family import held_out_tasks
    from ngrl.fisher.operator import CurvatureOperator

    rows = []
    for repeat in range(repeats):
        for length in lengths:
            for joint in (True, False):
                model = Reptile("MlpErnnPolicy", "ngrl/Navigation2D-v0", meta_batch_size=n_tasks, n_steps=n_steps, seed=0,
                                inner_kwargs=dict(fisher_sequence_length=length))
                model.joint_inner_solves = joint
                tasks = held_out_tasks("ngrl/Navigation2D-v0", n_tasks, seed=1000)  # the same tasks in every row
                in_products = [0.0]
                original = CurvatureOperator.mv

                def timed_mv(self, v, _original=original):
                    start = time.perf_counter()
                    result = _original(self, v)
                    in_products[0] += time.perf_counter() - start
                    return result

                CurvatureOperator.mv = timed_mv
                try:
                    start = time.perf_counter()
                    returns = model.evaluate_adaptation(tasks, n_updates=[1], seed=1)
                    seconds = time.perf_counter() - start
                finally:
                    CurvatureOperator.mv = original
                rows.append({"fisher_sequence_length": length, "joint_solves": joint, "repeat": repeat, "seconds": seconds,
                             "fisher_product_seconds": in_products[0], "mean_return_after_1": float(returns[1].mean())})
                print(f"fisher_sequence_length={length}, {'joint' if joint else 'task by task'}: {seconds:.1f} s, of which "
                      f"Fisher products {in_products[0]:.1f} s; return after one update {rows[-1]['mean_return_after_1']:.2f}",
                      flush=True)
    return {"n_tasks": n_tasks, "n_steps": n_steps, "rows": rows}


def memoryless_check(model: Any, env_id: str, gains: list[float], episodes: int) -> list[dict[str, Any]]:
    """A policy, never adapted, on an actuator family's tasks of either motor direction (``direction`` ±1) at each gain:
    episode returns and lengths and how often the action changes from one step to the next, deterministic and sampled
    actions. A family needs adaptation only if no such policy does well on both directions."""
    import gymnasium as gym
    import numpy as np

    env = gym.make(env_id)
    set_task = task_family_methods(env)[1]
    rows = []
    for direction in (1.0, -1.0):
        for gain in gains:
            for deterministic in (True, False):
                returns, lengths, switches = [], [], []
                for episode in range(episodes):
                    set_task({"gain": gain, "direction": direction})
                    obs, _ = env.reset(seed=episode)
                    actions, total, done = [], 0.0, False
                    while not done:
                        action, _ = model.predict(obs, deterministic=deterministic)
                        obs, reward, terminated, truncated, _ = env.step(action)
                        actions.append(np.asarray(action).tolist())
                        total, done = total + float(reward), terminated or truncated
                    returns.append(total)
                    lengths.append(len(actions))
                    switches.append(float(np.mean([a != b for a, b in zip(actions[1:], actions[:-1])])) if len(actions) > 1 else 0.0)
                rows.append({"direction": direction, "gain": gain, "deterministic": deterministic, "mean_return": float(np.mean(returns)),
                             "episode_lengths": lengths, "action_switch_rate": float(np.mean(switches))})
                print(rows[-1])
    return rows


def memoryless_joint(env_id: str, base_env: str, steps: int, seed: int, tasks: str) -> Any:
    """NPG with configs/npg.yml's block of ``base_env`` (the family's own env: Pendulum-v1, CartPole-v1), trained on
    the family ``env_id``: a fresh task at every reset (``tasks="all"``, joint training of one memoryless policy), or one
    fixed task ``"direction=±1"`` at gain 1 (that direction's own policy, for comparison)."""
    import gymnasium as gym

    import train  # the configuration layer
    from agents import NPG

    params = train.load_hyperparams("npg", base_env, {})
    params.pop("n_timesteps", None)
    policy = params.pop("policy", "MlpPolicy")
    n_envs = params.pop("n_envs", 1)
    params.pop("normalize", None)
    kwargs = train.constructor_kwargs(params)

    def make() -> gym.Env:
        env = gym.make(env_id)
        if tasks == "all":
            return TaskResampling(env)
        task_family_methods(env)[1]({"gain": 1.0, "direction": float(tasks.split("=")[1])})
        return env

    model = NPG(policy, make_vec_env(make, n_envs=n_envs, seed=seed), seed=seed, device="cpu", **kwargs)
    return model.learn(steps)


def weight_norms(runs: list[pathlib.Path]) -> list[dict[str, Any]]:
    """The Frobenius norm of every parameter tensor of each run's saved policy (actor and critic alike): where
    meta-training moved the initialisation."""
    rows = []
    for run in runs:
        algorithm = json.loads((run / "result.json").read_text())["algorithm"]
        model = META_ALGOS[algorithm].load(run / "model.zip", device="cpu")
        norms = {name: float(p.detach().norm()) for name, p in model.policy.named_parameters()}
        rows.append({"run": str(run), "algorithm": algorithm, "norms": norms})
        print(run, {name: round(value, 3) for name, value in norms.items() if "action" in name or "log_std" in name})
    return rows


def inner_step_sizes(runs: list[pathlib.Path], deltas: list[float], rates: list[float], n_updates: list[int]) -> list[dict[str, Any]]:
    """Benchmark runs' trained policies adapted to their own held-out tasks (result.json's, with the benchmark's seed
    + 10000, so the run's own rule repeats its numbers) by their inner NPG under each step rule: the trust region at
    each δ of ``deltas``, then the fixed rate α = min(η, sqrt(2δ / wᵀAw)) at each η of ``rates`` (δ: the first of
    ``deltas``), the advantages divided by the family's scale (``inner_advantage_scale="family"``: the run's own record
    of it when it kept one, else the evaluation batch's). Mean return after each number of updates."""
    import numpy as np

    rules = [{"target_kl": delta} for delta in deltas] + [{"target_kl": deltas[0], "step_size": rate} for rate in rates]
    rows = []
    for run in runs:
        result = json.loads((run / "result.json").read_text())
        tasks = result["adaptation"]["tasks"]
        for rule in rules:
            model = META_ALGOS[result["algorithm"]].load(run / "model.zip", device="cpu")
            model.inner_kwargs = {**model.inner_kwargs, "step_size": None, **rule}
            if "step_size" in rule:
                model.inner_advantage_scale = "family"
            returns = model.evaluate_adaptation(tasks, n_updates=n_updates, seed=result["seed"] + 10_000)
            rows.append({"run": str(run), "algorithm": result["algorithm"], "inner_target_kl": rule["target_kl"],
                         "inner_step_size": rule.get("step_size"), "inner_advantage_scale": model.inner_advantage_scale,
                         "mean_return": {str(k): float(np.mean(v)) for k, v in returns.items()}})
            print(rows[-1])
    return rows


def write_result(name: str, content: dict[str, Any]) -> None:
    """bench/results/<name>: the command line that made it, then ``content``, as JSON."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / name
    out.write_text(json.dumps({"command": " ".join(sys.argv), **content}, indent=1))
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--memory-steps", type=int, nargs="+", default=[1, 5, 20], help="inner steps k (default 1 5 20)")
    parser.add_argument("--memory-n-steps", type=int, default=500, help="transitions per rollout (default 500)")
    parser.add_argument("--tag", default="", help="suffix of the result file")
    parser.add_argument("--table", metavar="FOLDER", help="print the README's adaptation table from a grid's --out folder "
                                                          "(its adaptation.csv) instead of measuring memory")
    parser.add_argument("--baselines", nargs=2, default=list(BASELINES), metavar=("RANDOM_INIT", "JOINT"),
                        help="--table: the rows of the never-trained policy and of joint training (default random-init joint)")
    parser.add_argument("--expert", default=None, help="--table: the per-task expert's row (the ceiling), e.g. expert")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="--table: these seeds only")
    parser.add_argument("--algos", nargs="+", default=None, help="--table: these methods only (baselines and expert included)")
    parser.add_argument("--adaptation-cost", action="store_true", help="time a 5-task ERNN adaptation, whole vs windowed "
                                                                      "Fisher, joint vs per-task solves, instead of measuring memory")
    parser.add_argument("--fisher-lengths", nargs="+", default=["whole", "64"], metavar="L",
                        help="--adaptation-cost: the inner fisher_sequence_length values (whole: None; default whole 64)")
    parser.add_argument("--repeats", type=int, default=1, help="--adaptation-cost: rounds of the interleaved settings")
    parser.add_argument("--memoryless", metavar="RUN", help="a benchmark run's folder: its policy, never adapted, on tasks of "
                                                            "both motor directions (an actuator family)")
    parser.add_argument("--memoryless-train", nargs=2, metavar=("FAMILY", "BASE_ENV"),
                        help="train NPG (configs/npg.yml's BASE_ENV block) on FAMILY's tasks, then check it as --memoryless")
    parser.add_argument("--tasks", default="all", choices=["all", "direction=1", "direction=-1"],
                        help="--memoryless-train: all (a fresh task every episode) or one direction at gain 1")
    parser.add_argument("--steps", type=int, default=100_000, help="--memoryless-train: env steps")
    parser.add_argument("--seed", type=int, default=0, help="--memoryless-train: seed")
    parser.add_argument("--gains", type=float, nargs="+", default=[0.5, 1.0, 1.5], help="--memoryless: the gains")
    parser.add_argument("--episodes", type=int, default=10, help="--memoryless: episodes per task and action mode")
    parser.add_argument("--weight-norms", nargs="+", metavar="RUN", help="benchmark runs' folders: the norms of their "
                                                                         "policies' parameter tensors")
    parser.add_argument("--inner-step-sizes", nargs="+", metavar="RUN", help="benchmark runs' folders: each policy adapted "
                        "to its held-out tasks at each inner δ of --deltas, then at each fixed rate of --rates")
    parser.add_argument("--deltas", type=float, nargs="+", default=[0.1, 0.01, 0.001], help="--inner-step-sizes: the δ")
    parser.add_argument("--rates", type=float, nargs="*", default=[], help="--inner-step-sizes: fixed natural rates η "
                        "(capped by the first δ; advantages on the family's scale)")
    args = parser.parse_args()
    if args.inner_step_sizes:
        torch.set_num_threads(1)
        rows = inner_step_sizes([pathlib.Path(run) for run in args.inner_step_sizes], args.deltas, args.rates, [0, 1, 3])
        write_result(f"meta_inner_step_sizes{args.tag}.json", {"runs": args.inner_step_sizes, "rows": rows})
        return
    if args.weight_norms:
        rows = weight_norms([pathlib.Path(run) for run in args.weight_norms])
        write_result(f"meta_weight_norms{args.tag}.json", {"rows": rows})
        return
    if args.memoryless or args.memoryless_train:
        torch.set_num_threads(1)
        if args.memoryless:
            run = pathlib.Path(args.memoryless)
            (env_id,) = yaml.safe_load((run / "config.yml").read_text())
            algorithm = json.loads((run / "result.json").read_text())["algorithm"]
            model, source = META_ALGOS[algorithm].load(run / "model.zip", device="cpu"), {"run": str(run), "algorithm": algorithm}
        else:
            env_id, base_env = args.memoryless_train
            model = memoryless_joint(env_id, base_env, args.steps, args.seed, args.tasks)
            source = {"algorithm": "npg", "config_of": base_env, "trained_on": args.tasks, "steps": args.steps, "seed": args.seed}
        rows = memoryless_check(model, env_id, args.gains, args.episodes)
        write_result(f"meta_memoryless{args.tag}.json", {"env": env_id, **source, "rows": rows})
        return
    if args.adaptation_cost:
        torch.set_num_threads(1)
        lengths = [None if length == "whole" else int(length) for length in args.fisher_lengths]
        cost = adaptation_cost(5, 500, lengths, args.repeats)
        write_result(f"meta_adaptation_cost{args.tag}.json", cost)
        return
    if args.table:
        print(adaptation_table(pathlib.Path(args.table), tuple(args.baselines), args.expert, args.seeds, args.algos))
        return
    torch.set_num_threads(1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "command": " ".join(sys.argv), "threads": 1}
    print("Peak bytes saved by autograd during one meta-gradient (Navigation2D, one task):")
    memory = {**meta, **memory_run(args.memory_steps, args.memory_n_steps, [64, 64])}
    (RESULTS / f"meta_memory{args.tag}.json").write_text(json.dumps(memory, indent=1))
    rows = memory["peak_saved_bytes"]
    print("| inner steps | " + " | ".join(rows) + " |")
    print("|---|" + "---|" * len(rows))
    for k in args.memory_steps:
        print(f"| {k} | " + " | ".join(f"{rows[name][k] / 2**20:.2f} MiB" for name in rows) + " |")


if __name__ == "__main__":
    main()
