"""ERNN recurrent policies beside LSTM, a memoryless MLP and sb3-contrib's RecurrentPPO on memory tasks.

    python bench/bench_ernn.py gradnorm                 # ‖∂h_T/∂h_0‖ of the cells at init (seconds)
    python bench/bench_ernn.py probe                    # can the cell's state tell velocities? (minutes)
    python bench/bench_ernn.py speed                    # training seconds per 100k steps, interleaved (minutes)
    python bench/bench_ernn.py defaults                 # the same at default arguments: NPG + ERNN beside RecurrentPPO
    python bench/bench_ernn.py table bench/results/ernn/corridor10 ...   # the README table from the grids below

The learning table is a grid of `train.py benchmark` per task, with the variants npg-ernn, npg-lstm, npg-mlp and
rppo-lstm of configs/variants.yml (the settings below, as data); each writes summary.md under its --out:

    G="python train.py benchmark --algos npg-ernn npg-lstm npg-mlp rppo-lstm --seeds 0 1 2"
    $G --envs ngrl/CueCorridor-v0 --env-kwargs delay=10 --n-timesteps 15000 --eval-freq 2500 --n-eval-episodes 20 \
       --out bench/results/ernn/corridor10
    $G --envs ngrl/CueCorridor-v0 --env-kwargs delay=50 --hyperparams n_steps=128 sequence_length=128 \
       --n-timesteps 30000 --eval-freq 5000 --n-eval-episodes 20 --out bench/results/ernn/corridor50
    $G --envs ngrl/CueCorridor-v0 --env-kwargs delay=200 --hyperparams n_steps=512 sequence_length=512 n_envs=4 \
       --n-timesteps 49152 --eval-freq 15000 --n-eval-episodes 20 --out bench/results/ernn/corridor200
    $G --envs ngrl/CartPoleNoVel-v1 --n-timesteps 102400 --eval-freq 5000 --n-eval-episodes 10 --out bench/results/ernn/cartpole_novel

Budgets are the steps the former `learn` command of this script ran (it trained in chunks of the evaluation
period, each rounded up to whole rollouts); the grid trains the same models identically (same parameters, checked
on corridor10 and CartPoleNoVel) but evaluates inside training at each multiple of --eval-freq, as SB3's
EvalCallback does. `table` prints the README's learning table from the grids' folders.

TASKS and make_model below are the models of `speed` (the same settings as the variants).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time
from typing import Any

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"

# task -> (env id, env kwargs, threshold, eval episodes, n_steps per env and update, n_envs, eval every)
# For the corridor, n_steps exceeds an episode (delay + 2 steps) so that most decisions have their
# cue inside the rollout's sequence: gradients do not flow past the stored start state of a rollout.
TASKS: dict[str, tuple[str, dict[str, Any], float, int, int, int, int]] = {
    "corridor10": ("ngrl/CueCorridor-v0", {"delay": 10}, 0.9, 20, 64, 8, 2_500),
    "corridor50": ("ngrl/CueCorridor-v0", {"delay": 50}, 0.9, 20, 128, 8, 5_000),
    "corridor200": ("ngrl/CueCorridor-v0", {"delay": 200}, 0.9, 20, 512, 4, 15_000),
    "cartpole_novel": ("ngrl/CartPoleNoVel-v1", {}, 475.0, 10, 64, 8, 5_000),
}
# tasks whose observations and rewards every method sees through VecNormalize (as the zoo's ppo_lstm
# CartPoleNoVel entry); evaluation uses the training statistics, frozen
NORMALIZED = {"cartpole_novel"}
METHODS = ("npg-ernn", "npg-lstm", "npg-mlp", "rppo-lstm")
ERNN_POLICY = dict(cell="ernn", hidden_size=64, net_arch=[32])
LSTM_POLICY = dict(cell="lstm", hidden_size=64, net_arch=[64])


def make_model(method: str, task: str, seed: int, env):
    n_steps = TASKS[task][4]
    npg_params = dict(
        n_steps=n_steps,
        batch_size=256,
        gamma=0.99,
        gae_lambda=0.95,
        target_kl=0.01,
        cg_damping=0.1,
        n_critic_updates=10,
        learning_rate=1e-3,
        seed=seed,
    )
    if method == "rppo-lstm":
        from sb3_contrib import RecurrentPPO

        # the ERNN table's settings (configs/variants.yml's rppo-lstm), not the zoo's ppo_lstm entry (configs/recurrentppo.yml)
        return RecurrentPPO(
            "MlpLstmPolicy",
            env,
            n_steps=n_steps if task != "cartpole_novel" else 32,
            batch_size=256,
            n_epochs=20,
            learning_rate=1e-3,
            gamma=0.99 if task != "cartpole_novel" else 0.999,
            gae_lambda=0.95 if task != "cartpole_novel" else 0.98,
            ent_coef=0.0,
            seed=seed,
            policy_kwargs=dict(lstm_hidden_size=64, net_arch=[64], activation_fn=torch.nn.ReLU, enable_critic_lstm=True),
        )
    from agents import NPG

    if method == "npg-mlp":
        return NPG("MlpPolicy", env, policy_kwargs=dict(net_arch=[64, 64]), **npg_params)
    policy_kwargs = ERNN_POLICY if method == "npg-ernn" else LSTM_POLICY
    sequence_length = 16 if n_steps <= 64 else n_steps
    # the Fisher through whole rollouts, as the variants of the table (configs/variants.yml)
    return NPG("MlpErnnPolicy", env, policy_kwargs=dict(policy_kwargs), sequence_length=sequence_length,
               fisher_sequence_length=None, **npg_params)


def cmd_gradnorm(args: argparse.Namespace) -> None:
    """‖∂h_T/∂h_0‖₂ for T in {10, 100, 1000} at initialisation: ERNN vs tanh RNN, LSTM, GRU (hidden 64, random inputs)."""
    torch.set_num_threads(1)
    from agents.recurrent.cores import make_core

    rows = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        x = torch.randn(1, max(args.horizons), 3)
        models = {
            "ernn": make_core("ernn", 3, 64, readout="state"),
            "lstm": make_core("lstm", 3, 64),
            "gru": make_core("gru", 3, 64),
            "tanh-rnn": torch.nn.RNN(3, 64, batch_first=True),
        }
        for name, core in models.items():
            for horizon in args.horizons:
                xs = x[:, :horizon]

                def last_h(h0: torch.Tensor) -> torch.Tensor:
                    if name == "tanh-rnn":
                        return core(xs, h0.reshape(1, 1, -1))[1].reshape(-1)
                    state = tuple([h0.reshape(1, -1)] + [torch.zeros(1, *s) for s in core.state_shapes[1:]])
                    return core(xs, state, torch.zeros(1, horizon))[1][0].reshape(-1)

                jac = torch.autograd.functional.jacobian(last_h, torch.zeros(64))
                rows.append({"cell": name, "seed": seed, "T": horizon, "norm": float(torch.linalg.matrix_norm(jac, ord=2))})
    lines = ["| cell (hidden 64, median of seeds) | " + " | ".join(f"T = {h}" for h in args.horizons) + " |"]
    lines.append("|---|" + "---|" * len(args.horizons))
    for name in ("ernn", "lstm", "gru", "tanh-rnn"):
        cells = [
            f"{statistics.median(r['norm'] for r in rows if r['cell'] == name and r['T'] == h):.3g}" for h in args.horizons
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ernn_gradnorm.json").write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))


def velocity_data(n_seq: int, steps: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CartPole sequences (each from a reset) under a noisy balancing controller: positions (x, θ), the
    previous step's velocities (ẋ, θ̇)ₖ₋₁ = (xₖ − xₖ₋₁)/τ (0 at episode starts), and episode-start flags."""
    import gymnasium as gym

    env = gym.make("CartPole-v1")
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    x = np.zeros((n_seq, steps, 2), np.float32)
    y = np.zeros((n_seq, steps, 2), np.float32)
    starts = np.zeros((n_seq, steps), np.float32)
    for i in range(n_seq):
        obs, _ = env.reset()
        start, previous = True, obs
        for t in range(steps):
            x[i, t], starts[i, t] = obs[[0, 2]], float(start)
            y[i, t] = 0.0 if start else previous[[1, 3]]
            previous = obs.copy()
            action = int(obs[2] + 0.5 * obs[3] > 0) if rng.random() > 0.3 else int(rng.integers(2))
            obs, _, terminated, truncated, _ = env.step(action)
            start = terminated or truncated
            if start:
                obs, _ = env.reset()
    return torch.as_tensor(x), torch.as_tensor(y), torch.as_tensor(starts)


PROBE_CELLS: dict[str, tuple[str, dict[str, Any]]] = {
    "lstm": ("lstm", {}),
    "gru": ("gru", {}),
    "ernn (ηγ = 1, K = 5; readout [h, z])": ("ernn", {}),
    "ernn (ηγ = 1, K = 5; readout h)": ("ernn", {"readout": "state"}),
    "ernn (ηγ = 1, K = 1)": ("ernn", {"num_iters": 1}),
    "ernn (η = 0.05: ηγ = 0.2, K = 5)": ("ernn", {"eta": 0.05}),
    "ernn (learned η)": ("ernn", {"learn_eta": True}),
}


def cmd_probe(args: argparse.Namespace) -> None:
    """Supervised probe of what a cell's state holds: decode the last step's (ẋ, θ̇) from CartPole positions.

    Core (hidden 32) → MLP head [32], trained by Adam (lr 3e-3, batches of 32 sequences of 64 steps) on
    256 sequences; reported: the unexplained variance on 64 held-out sequences (1 − R², per target).
    """
    torch.set_num_threads(1)
    from agents.recurrent.cores import make_core

    x_train, y_train, s_train = velocity_data(256, 64, seed=0)
    x_test, y_test, s_test = velocity_data(64, 64, seed=1)
    x_scale, y_scale = x_train.reshape(-1, 2).std(0), y_train.reshape(-1, 2).std(0)
    rows = []
    for name, (cell, kwargs) in PROBE_CELLS.items():
        for seed in args.seeds:
            torch.manual_seed(seed)
            core = make_core(cell, 2, 32, **kwargs)
            head = torch.nn.Sequential(torch.nn.Linear(core.output_size, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))
            optimizer = torch.optim.Adam([*core.parameters(), *head.parameters()], lr=3e-3)
            start = time.perf_counter()
            for _ in range(args.iterations):
                index = torch.randint(0, len(x_train), (32,))
                out, _ = core(x_train[index] / x_scale, core.initial_state(32, x_train.device), s_train[index])
                loss = ((head(out) - y_train[index] / y_scale) ** 2).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                out, _ = core(x_test / x_scale, core.initial_state(len(x_test), x_test.device), s_test)
                error = ((head(out) - y_test / y_scale) ** 2).mean(dim=(0, 1)) / ((y_test / y_scale) ** 2).mean(dim=(0, 1))
            rows.append({"cell": name, "seed": seed, "unexplained_xdot": float(error[0]), "unexplained_thetadot": float(error[1]),
                         "seconds": time.perf_counter() - start})
            print(f"{name:40s} seed {seed}: 1 − R² ẋ {error[0]:.3f}, θ̇ {error[1]:.3f}", flush=True)
    lines = ["| cell (hidden 32) | 1 − R² of ẋₖ₋₁ | 1 − R² of θ̇ₖ₋₁ |", "|---|---|---|"]
    for name in PROBE_CELLS:
        group = [r for r in rows if r["cell"] == name]
        lines.append(
            f"| {name} | {statistics.median(r['unexplained_xdot'] for r in group):.3f} | "
            f"{statistics.median(r['unexplained_thetadot'] for r in group):.3f} |"
        )
    print("\n".join(lines))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ernn_probe.json").write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))


def cmd_speed(args: argparse.Namespace) -> None:
    """Training wall time per 100k steps of each method, runs interleaved (method order rotates every
    repetition) so that a change in machine load hits every method alike; one torch thread; the
    models of ``learn`` (same hyper-parameters), timed after one warm-up rollout, no evaluation."""
    torch.set_num_threads(1)
    import envs  # noqa: F401
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    rows = []
    for task in args.tasks:
        env_id, env_kwargs, _, _, n_steps, n_envs, _ = TASKS[task]
        for rep in range(args.repeats):
            order = args.methods[rep % len(args.methods):] + args.methods[: rep % len(args.methods)]
            for method in order:
                env = make_vec_env(env_id, n_envs=n_envs, seed=rep, env_kwargs=env_kwargs)
                if task in NORMALIZED:
                    env = VecNormalize(env)
                model = make_model(method, task, rep, env)
                model.learn(n_steps * n_envs)  # warm-up: one rollout and update
                start = time.perf_counter()
                model.learn(args.steps, reset_num_timesteps=False)
                seconds = time.perf_counter() - start
                done = model.num_timesteps - n_steps * n_envs
                rows.append({"task": task, "method": method, "repeat": rep, "steps": done, "seconds": seconds,
                             "seconds_per_100k": seconds / done * 1e5})
                print(f"{task} {method} rep {rep}: {rows[-1]['seconds_per_100k']:.0f} s / 100k steps", flush=True)
    lines = ["| task | method | s / 100k steps (median) | ratio to npg-lstm |", "|---|---|---|---|"]
    for task in args.tasks:
        medians = {m: statistics.median(r["seconds_per_100k"] for r in rows if r["task"] == task and r["method"] == m)
                   for m in args.methods}
        for method, value in medians.items():
            ratio = f"{value / medians['npg-lstm']:.2f}" if "npg-lstm" in medians else "—"
            lines.append(f"| {task} | {method} | {value:.0f} | {ratio} |")
    print("\n".join(lines))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ernn_speed.json").write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))


# rows of `defaults`: (label, a grid name: an algorithm or a variant of configs/variants.yml, overrides over it)
DEFAULT_ROWS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("npg-ernn-defaults", "npg-ernn-defaults", {}),
    ("npg-ernn-defaults-whole", "npg-ernn-defaults-whole", {}),
    ("rppo-defaults", "recurrentppo", {"base_config": False, "policy": "MlpLstmPolicy", "normalize": True}),
    ("rppo-zoo", "recurrentppo", {}),
)


def cmd_defaults(args: argparse.Namespace) -> None:
    """Training wall time per 100k steps on CartPoleNoVel of NPG("MlpErnnPolicy", env) at its defaults (and at the
    former ones: critic and Fisher through whole rollouts) beside sb3-contrib's RecurrentPPO at its defaults and at the
    zoo's ppo_lstm entry; every model built as `train.py benchmark` builds it (VecNormalize for all), runs interleaved
    (the order rotates every repetition), one torch thread, timed after one warm-up rollout, no evaluation."""
    torch.set_num_threads(1)
    import train

    rows = []
    labels = [row for row in DEFAULT_ROWS if row[0] in args.methods]
    for rep in range(args.repeats):
        order = labels[rep % len(labels):] + labels[: rep % len(labels)]
        for label, name, extra in order:
            grid = train.grid_algorithm(name)
            overrides = {**grid.overrides(args.env), **{k: v for k, v in extra.items() if k != "base_config"}}
            spec = train.resolve_run(grid.algo, args.env, seed=rep, overrides=overrides,
                                     base_config=extra.get("base_config", grid.base_config))
            model = train.build_model(spec, device="cpu")
            rollout = model.n_steps * model.n_envs
            model.learn(rollout)  # warm-up: one rollout and update
            start = time.perf_counter()
            model.learn(args.steps, reset_num_timesteps=False)
            seconds = time.perf_counter() - start
            done = model.num_timesteps - rollout
            rows.append({"method": label, "algo": spec.algo, "repeat": rep, "n_envs": model.n_envs, "n_steps": model.n_steps,
                         "parameters": sum(p.numel() for p in model.policy.parameters()), "steps": done,
                         "seconds": seconds, "seconds_per_100k": seconds / done * 1e5})
            print(f"{label} rep {rep}: {rows[-1]['seconds_per_100k']:.0f} s / 100k steps", flush=True)
    lines = ["| method | n_envs × n_steps | params | s / 100k steps (median) | ratio to rppo-zoo |", "|---|---|---|---|---|"]
    medians = {label: statistics.median(r["seconds_per_100k"] for r in rows if r["method"] == label) for label, _, _ in labels}
    for label, _, _ in labels:
        first = next(r for r in rows if r["method"] == label)
        ratio = f"{medians[label] / medians['rppo-zoo']:.2f}" if "rppo-zoo" in medians else "—"
        lines.append(f"| {label} | {first['n_envs']} × {first['n_steps']} | {first['parameters']:,} | {medians[label]:.0f} | {ratio} |")
    print("\n".join(lines))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ernn_defaults_speed.json").write_text(json.dumps({"command": " ".join(sys.argv), "env": args.env, "rows": rows}, indent=1))


def parameter_count(run_dir: pathlib.Path, algo: str) -> int:
    """Parameters of the policy a grid run saved (actor and critic, as the models are compared whole)."""
    import train

    variant = train.grid_algorithm(algo)
    model = train.algorithm(variant.algo, peers=True).load(run_dir / "model.zip", device="cpu")
    return sum(p.numel() for p in model.policy.parameters())


def cmd_table(args: argparse.Namespace) -> None:
    """The README's learning table from the grids' folders: each task's runs.csv, with parameter counts read from the
    runs' checkpoints; solved = evaluations at or above the task's threshold at least once."""
    import csv

    from train import env_name

    def k(steps: float) -> str:
        return f"{steps / 1000:g}k"

    lines = ["| task (threshold) | method | params | solved | steps to threshold (median [min, max]) | final eval (per seed) | "
             "s / 100k steps (median) |", "|---|---|---|---|---|---|---|"]
    for folder in args.folders:
        folder = pathlib.Path(folder)
        with open(folder / "runs.csv") as f:
            runs = list(csv.DictReader(f))
        for algo in dict.fromkeys(r["algo"] for r in runs):
            group = [r for r in runs if r["algo"] == algo and r["status"] == "ok"]
            reached = [float(r["steps_to_threshold"]) for r in group if r["steps_to_threshold"]]
            steps = f"{k(statistics.median(reached))} [{k(min(reached))}, {k(max(reached))}]" if reached else "—"
            params = parameter_count(folder / algo / f"{env_name(group[0]['env'])}_{group[0]['seed']}", algo)
            speed = statistics.median(float(r["seconds_per_100k"]) for r in group)
            finals = ", ".join(f"{float(r['final_eval']):g}" for r in group)
            lines.append(f"| {folder.name} ({float(group[0]['threshold']):g}) | {algo} | {params:,} | {len(reached)}/{len(group)} | "
                         f"{steps} | {finals} | {speed:.0f} |")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    grad = commands.add_parser("gradnorm")
    grad.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    grad.add_argument("--horizons", nargs="+", type=int, default=[10, 100, 1000])
    grad.set_defaults(handler=cmd_gradnorm)
    speed = commands.add_parser("speed")
    speed.add_argument("--tasks", nargs="+", default=["corridor50", "cartpole_novel"], choices=list(TASKS))
    speed.add_argument("--methods", nargs="+", default=["npg-ernn", "npg-lstm", "rppo-lstm"], choices=list(METHODS))
    speed.add_argument("--repeats", type=int, default=3)
    speed.add_argument("--steps", type=int, default=10_240)
    speed.set_defaults(handler=cmd_speed)
    defaults = commands.add_parser("defaults")
    defaults.add_argument("--env", default="ngrl/CartPoleNoVel-v1")
    defaults.add_argument("--methods", nargs="+", default=[row[0] for row in DEFAULT_ROWS], choices=[row[0] for row in DEFAULT_ROWS])
    defaults.add_argument("--repeats", type=int, default=3)
    defaults.add_argument("--steps", type=int, default=10_240)
    defaults.set_defaults(handler=cmd_defaults)
    probe = commands.add_parser("probe")
    probe.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    probe.add_argument("--iterations", type=int, default=1500)
    probe.set_defaults(handler=cmd_probe)
    table = commands.add_parser("table")
    table.add_argument("folders", nargs="+", help="the grids' --out folders (bench/results/ernn/corridor10 ...)")
    table.set_defaults(handler=cmd_table)
    args = parser.parse_args()
    args.handler(args)


if __name__ == "__main__":
    main()
