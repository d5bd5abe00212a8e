"""ERNN recurrent policies beside LSTM, a memoryless MLP and sb3-contrib's RecurrentPPO on memory tasks.

    python bench/bench_ernn.py gradnorm                 # ‖∂h_T/∂h_0‖ of the cells at init (seconds)
    python bench/bench_ernn.py learn --seeds 0 1 2      # learning table (long on 2 cores: see --steps)
    python bench/bench_ernn.py probe                    # can the cell's state tell velocities? (minutes)
    python bench/bench_ernn.py speed                    # training seconds per 100k steps, interleaved (minutes)

Learning protocol: the same seeds and the same run for every method; a separate evaluation env,
deterministic episodes every few thousand steps (see TASKS; 20 episodes for the corridor, 10 for CartPoleNoVel;
CartPoleNoVel's observations and rewards are normalised by VecNormalize for every method, as in the zoo);
"steps to threshold" is the first evaluation at or above it (CartPoleNoVel 475; corridor 0.9, i.e. at
most one wrong choice in 20); training seconds exclude evaluation; one torch thread per run. At each
evaluation ‖∂h_T/∂h_0‖₂ of the actor's cell is measured over the last T = 200 observations of
the evaluation episodes' history (states fed through the actor's core, no resets). Results go to
bench/results/ernn_*.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
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

        # BASELINES.md's CartPoleNoVel entry (the zoo's ppo_lstm), with this task's n_steps
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
    return NPG("MlpErnnPolicy", env, policy_kwargs=dict(policy_kwargs), sequence_length=sequence_length, **npg_params)


def actor_core(model):
    """(core, features) of the actor's recurrent body, or None for a memoryless policy."""
    policy = model.policy
    if hasattr(policy, "rnn_actor"):
        return policy.rnn_actor, lambda obs: policy._features(obs, policy.pi_features_extractor), "ngrl"
    if hasattr(policy, "lstm_actor"):
        return policy.lstm_actor, lambda obs: policy.extract_features(obs, policy.pi_features_extractor), "sb3"
    return None


def hidden_gradient_norm(model, observations: np.ndarray) -> float | None:
    """‖∂h_T/∂h_0‖₂ of the actor's cell over the given observations (T = len(observations), no resets)."""
    found = actor_core(model)
    if found is None or len(observations) < 2:
        return None
    core, features_of, kind = found
    obs = torch.as_tensor(observations, device=model.device)
    with torch.no_grad():
        features = features_of(obs).float()
    hidden = core.hidden_size if kind == "sb3" else core.state_shapes[0][0]

    def last_h(h0: torch.Tensor) -> torch.Tensor:
        if kind == "sb3":
            _, (h, _) = core(features.unsqueeze(1), (h0.reshape(1, 1, -1), torch.zeros(1, 1, hidden)))
            return h.reshape(-1)
        state = tuple([h0.reshape(1, -1)] + [torch.zeros(1, *s) for s in core.state_shapes[1:]])
        _, state = core(features.unsqueeze(0), state, torch.zeros(1, len(observations)))
        return state[0].reshape(-1)

    jac = torch.autograd.functional.jacobian(last_h, torch.zeros(hidden))
    return float(torch.linalg.matrix_norm(jac, ord=2))


def count_params(model) -> int:
    return sum(p.numel() for p in model.policy.parameters())


def evaluate(model, env, n_episodes: int) -> tuple[float, np.ndarray]:
    """Mean return over deterministic episodes, and the observations of the last 200 steps seen."""
    returns, history = [], []
    obs = env.reset()
    state, start, total = None, np.ones(1, dtype=bool), 0.0
    while len(returns) < n_episodes:
        if hasattr(model.policy, "rnn_actor") or hasattr(model.policy, "lstm_actor"):
            action, state = model.predict(obs, state=state, episode_start=start, deterministic=True)
        else:
            action, _ = model.predict(obs, deterministic=True)
        history.append(obs[0].copy())
        obs, reward, done, _ = env.step(action)
        total += float(reward[0])
        start = done
        if done[0]:
            returns.append(total)
            total = 0.0
    return float(np.mean(returns)), np.asarray(history[-200:])


def learning_run(method: str, task: str, seed: int, n_timesteps: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    import envs  # noqa: F401
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    env_id, env_kwargs, threshold, n_eval, _, n_envs, eval_freq = TASKS[task]
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs)
    eval_env = make_vec_env(env_id, n_envs=1, seed=seed + 10_000, env_kwargs=env_kwargs)
    if task in NORMALIZED:
        env = VecNormalize(env)
        eval_env = VecNormalize(eval_env, training=False, norm_reward=False)
    model = make_model(method, task, seed, env)
    evals, grad_norms, train_seconds = [], [], 0.0
    while model.num_timesteps < n_timesteps:
        start = time.perf_counter()
        model.learn(eval_freq, reset_num_timesteps=False)
        train_seconds += time.perf_counter() - start
        if task in NORMALIZED:
            eval_env.obs_rms = env.obs_rms.copy()
        mean, history = evaluate(model, eval_env, n_eval)
        evals.append((int(model.num_timesteps), mean))
        grad_norms.append(hidden_gradient_norm(model, history))
    hit = next((steps for steps, mean in evals if mean >= threshold), None)
    return {
        "method": method,
        "task": task,
        "seed": seed,
        "threshold": threshold,
        "params": count_params(model),
        "evals": evals,
        "grad_norms": grad_norms,
        "steps_to_threshold": hit,
        "final_eval": evals[-1][1],
        "train_seconds": train_seconds,
        "seconds_per_100k": train_seconds / model.num_timesteps * 1e5,
        "timesteps": int(model.num_timesteps),
    }


def fmt_steps(steps: list[int | None]) -> str:
    hits = sorted(s for s in steps if s is not None)
    if not hits:
        return "—"
    return f"{statistics.median(hits) / 1e3:.0f}k [{hits[0] / 1e3:.0f}k, {hits[-1] / 1e3:.0f}k]"


def table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| task (threshold) | method | params | solved | steps to threshold | final eval (per seed) | s / 100k steps | ‖∂h_T/∂h_0‖ first → last (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task in TASKS:
        for method in METHODS:
            group = sorted((r for r in runs if r["task"] == task and r["method"] == method), key=lambda r: r["seed"])
            if not group:
                continue
            solved = sum(r["steps_to_threshold"] is not None for r in group)
            finals = ", ".join(f"{r['final_eval']:.3g}" for r in group)
            norms = [r["grad_norms"] for r in group if r["grad_norms"] and r["grad_norms"][0] is not None]
            norm_text = "—"
            if norms:
                first = statistics.median(n[0] for n in norms)
                last = statistics.median(n[-1] for n in norms)
                norm_text = f"{first:.3g} → {last:.3g}"
            lines.append(
                f"| {task} ({group[0]['threshold']:g}) | {method} | {group[0]['params']:,} | {solved}/{len(group)} | "
                f"{fmt_steps([r['steps_to_threshold'] for r in group])} | {finals} | "
                f"{statistics.median(r['seconds_per_100k'] for r in group):.0f} | {norm_text} |"
            )
    return "\n".join(lines)


def cmd_learn(args: argparse.Namespace) -> None:
    jobs = [(m, t, s) for t in args.tasks for s in args.seeds for m in args.methods]
    if args.only:  # explicit METHOD:TASK:SEED jobs instead of the product
        jobs = [(m, t, int(s)) for m, t, s in (job.split(":") for job in args.only)]
    steps = dict(zip(TASKS, args.steps))
    out = RESULTS / f"ernn_learn{args.tag}.json"
    runs: list[dict[str, Any]] = json.loads(out.read_text())["runs"] if args.resume and out.exists() else []
    done = {(r["method"], r["task"], r["seed"]) for r in runs}
    jobs = [j for j in jobs if j not in done]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = {pool.submit(learning_run, m, t, s, steps[t]): (m, t, s) for m, t, s in jobs}
        for future in as_completed(futures):
            runs.append(future.result())
            print(
                f"done {futures[future]}: final {runs[-1]['final_eval']:.3g}, hit {runs[-1]['steps_to_threshold']}", flush=True
            )
            RESULTS.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"command": " ".join(sys.argv), "steps": steps, "runs": runs}, indent=1))
    text = table(runs)
    print(text)
    (RESULTS / f"ernn_learn{args.tag}.md").write_text(
        f"`{' '.join(sys.argv)}` (and earlier runs resumed from the JSON)\n\n{text}\n"
    )


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    learn = commands.add_parser("learn")
    learn.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    learn.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    learn.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    learn.add_argument(
        "--steps", nargs=4, type=int, default=[15_000, 30_000, 45_000, 100_000], help="steps per task, in TASKS order"
    )
    learn.add_argument("--workers", type=int, default=2)
    learn.add_argument("--tag", default="", help="suffix of the results file")
    learn.add_argument("--resume", action="store_true", help="skip runs already in the results file")
    learn.add_argument("--only", nargs="+", metavar="METHOD:TASK:SEED", help="run exactly these jobs (in this order)")
    learn.set_defaults(handler=cmd_learn)
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
    probe = commands.add_parser("probe")
    probe.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    probe.add_argument("--iterations", type=int, default=1500)
    probe.set_defaults(handler=cmd_probe)
    args = parser.parse_args()
    args.handler(args)


if __name__ == "__main__":
    main()
