"""Cost of one NGDQN gradient step beside SB3 DQN's: a timing micro-benchmark (same network, batch and replay data).

The learning benchmark (NGDQN beside rl-zoo3's DQN and DQN without a target network) is a grid of
`train.py benchmark`; the README's NGDQN table comes from its summary.md:

    python train.py benchmark --algos ngdqn dqn dqn-notarget --envs CartPole-v1 --seeds 0 1 2 \
        --n-timesteps 100000 --eval-freq 5000 --n-eval-episodes 10 --out bench/results/ngdqn
    python train.py benchmark --algos ngdqn dqn dqn-notarget --envs Acrobot-v1 --seeds 0 1 2 \
        --n-timesteps 50000 --eval-freq 5000 --n-eval-episodes 10 --out bench/results/ngdqn

(`dqn-notarget` is a variant in configs/variants.yml; runs.csv holds the paper's metric, the best
100-episode average of training returns, beside the evaluations.)

    # cost of one gradient step, same network and batch for both algorithms
    python bench/bench_ngdqn.py step-cost --out bench/results/ngdqn_step_cost.json

What was run for bench/results/ngdqn_step_cost.json (2 shared, heavily loaded cores: absolute seconds are
inflated and differ between invocations; only the interleaved ratios hold):
    step-cost --net-archs 64x64 256x256 --batch-sizes 64 128 --repeats 5 --gradient-steps 100
bench/results/ngdqn_tuning_*: the 2-seed, 50k-step runs configs/ngdqn.yml's settings were chosen from (made
by this script's former `learn` command); ngdqn_cartpole_*.json and ngdqn_acrobot_*.json: that command's
earlier learning runs, before the grid.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def gauss_newton_product_cost(model, batch_size: int, repeats: int) -> dict[str, float]:
    """Seconds of one parameter-space product (G + dI)v of NGDQN's Q-network against one gradient of the TD loss
    (forward and backward) on the same minibatch; the linearisation is built once, as in a CG solve."""
    from ngrl.fisher import gauss_newton
    from ngrl.params import flatten

    data = model.replay_buffer.sample(batch_size)
    actions = data.actions.long().reshape(-1, 1)
    target = model._td_target(data)
    fn, inputs = model._q_function(data.observations)
    curvature = gauss_newton(fn, model._q_params, inputs, damping=0.1, output_index=actions.reshape(-1))
    vector = torch.randn(curvature.num_params, generator=torch.Generator().manual_seed(0))

    def gradient():
        q = model._q_values(model.q_net, data.observations).gather(1, actions).reshape(-1)
        return torch.autograd.grad(0.5 * (q - target).square().mean(), model._q_params)

    def product():
        return curvature.mv(vector)

    times: dict[str, list[float]] = {"gradient_s": [], "product_s": []}
    for fn_ in (gradient, product):
        fn_()
    for _ in range(repeats):
        for key, fn_ in (("gradient_s", gradient), ("product_s", product)):
            start = time.perf_counter()
            flatten(fn_()) if key == "gradient_s" else fn_()
            times[key].append(time.perf_counter() - start)
    return {key: float(np.median(values)) for key, values in times.items()}


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
                        model._solves_in_batch_space = lambda curvature: False
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
            product = gauss_newton_product_cost(models["ngdqn"], batch_size, args.repeats * 20)
            rows.append({"net_arch": arch, "batch_size": batch_size, "cg_max_steps": args.cg_max_steps,
                         **{f"{k}_s": v for k, v in timings.items()}, **product})
    lines = [
        f"| net | batch | DQN ms/step | NGDQN, {args.cg_max_steps} CG in parameter space, fixed d | {args.cg_max_steps} CG in the cheaper space (batch or parameters), fixed d "
        "| the same, adaptive d (default) | exact batch-space solve, fixed d |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [f"{1000 * r[f'{name}_s']:.3f} ({r[f'{name}_s'] / r['dqn_s']:.2f}×)" for name in VARIANTS[1:]]
        lines.append(f"| {r['net_arch']} | {r['batch_size']} | {1000 * r['dqn_s']:.3f} | " + " | ".join(cells) + " |")
    lines += ["", "| net | batch | TD-loss gradient, forward + backward (ms) | one Gauss–Newton product (ms) | in gradient-equivalents |",
              "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['net_arch']} | {r['batch_size']} | {1000 * r['gradient_s']:.3f} | {1000 * r['product_s']:.3f} "
                     f"| {r['product_s'] / r['gradient_s']:.2f} |")
    print("\n".join(lines))
    if args.out:
        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"meta": {"command": " ".join(sys.argv), "torch": torch.__version__, "torch_threads": 1}, "rows": rows}, indent=1))
        print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    cost = sub.add_parser("step-cost", help="seconds per gradient step, same network for DQN and NGDQN")
    cost.add_argument("--env", default="CartPole-v1")
    cost.add_argument("--net-archs", nargs="+", default=["64", "64x64", "256x256"])
    cost.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 128])
    cost.add_argument("--cg-max-steps", type=int, default=5)
    cost.add_argument("--gradient-steps", type=int, default=200)
    cost.add_argument("--repeats", type=int, default=5)
    cost.add_argument("--out", default=None)
    args = parser.parse_args()
    cmd_step_cost(args)


if __name__ == "__main__":
    main()
