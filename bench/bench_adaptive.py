"""Cost of the adaptive natural gradient (Amari, Park & Fukumizu 2000) beside the CG routes: time per update, memory.

For NGDQN and NPG on CartPole-v1, configs/<algo>.yml's settings (64-64 networks), one torch thread:

- the median wall time of one update, ``train()`` as training calls it: NGDQN one gradient step on a 64-sample
  minibatch of a replay buffer filled beforehand (its config: 5 CG iterations on the minibatch's Gauss–Newton
  matrix, Levenberg–Marquardt damping); NPG one natural step on one 1024-state rollout (its config: 15 CG
  iterations on the exact Fisher), with the critic's epochs off (``n_critic_updates=0``) so that only the
  actor's step is timed;
- beside it the same update with ``curvature="adaptive"`` (NGDQN) / ``fisher_estimator="adaptive"`` (NPG) and
  each structure of the estimate (``ngrl.fisher.AdaptiveFisher``), and the bytes of each estimate.

The dense structures ("full", "block") pay O(m³) per block and update for the damping term εP(λI)P (a block of
m = 4160 here): they are timed on fewer updates (``--dense-updates``). Every run is built through train.py's
own configuration layer (``resolve_run``/``build_model``), as ``train.py train`` builds it.

    python bench/bench_adaptive.py --out bench/results/adaptive_cost.json

Learning comparisons (steps to threshold) are ``train.py benchmark`` grids: ``--hyperparams curvature=adaptive``
(NGDQN) or ``fisher_estimator=adaptive`` (NPG) applies to every algorithm of a grid, so either run a second grid
with it, or name a variant (``--variants``: ``algo: ngdqn``, ``hyperparams: {curvature: adaptive}``).
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

STRUCTURES = ("kronecker", "block", "full")


def _model(algo: str, overrides: dict) -> object:
    from stable_baselines3.common.logger import Logger

    import train

    spec = train.resolve_run(algo, "CartPole-v1", seed=0, overrides=overrides)
    model = train.build_model(spec, device="cpu")
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


def _variants(algo: str) -> dict[str, dict]:
    key = "curvature" if algo == "ngdqn" else "fisher_estimator"
    plain = {"ngdqn": "cg-gauss-newton", "npg": "cg-exact-fisher"}[algo]
    variants = {plain: {}}
    for structure in STRUCTURES:
        variants[f"adaptive-{structure}"] = {key: "adaptive", "adaptive_kwargs": {"structure": structure}}
    return variants


def _time_updates(update, count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        update()
        times.append(time.perf_counter() - start)
    return times


def measure(algo: str, name: str, overrides: dict, updates: int) -> dict:
    if algo == "ngdqn":
        model = _model(algo, {**overrides, "learning_starts": 2000})
        model.learn(2000)  # fills the replay buffer; no update yet
        update = lambda: model.train(gradient_steps=1, batch_size=model.batch_size)
    else:
        model = _model(algo, {**overrides, "n_critic_updates": 0})
        _, callback = model._setup_learn(model.n_steps * model.n_envs, None)
        model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)  # one rollout, timed on again and again
        update = model.train
    times = _time_updates(update, updates + 1)[1:]  # the first call pays one-off set-up
    estimate = getattr(model.policy, "adaptive_fisher", None)
    return {
        "algo": algo,
        "variant": name,
        "updates_timed": updates,
        "median_s_per_update": float(np.median(times)),
        "min_s_per_update": float(np.min(times)),
        "estimate_bytes": estimate.memory_bytes() if estimate is not None else 0,
        "num_params": sum(p.numel() for p in (model._q_params if algo == "ngdqn" else model._actor_params)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=30, help="updates timed for CG and the Kronecker estimate")
    parser.add_argument("--dense-updates", type=int, default=3, help="updates timed for the full and block estimates")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    rows = []
    for algo in ("ngdqn", "npg"):
        for name, overrides in _variants(algo).items():
            dense = name in ("adaptive-block", "adaptive-full")
            row = measure(algo, name, overrides, args.dense_updates if dense else args.updates)
            rows.append(row)
            print(f"{algo:6s} {name:18s} {1000 * row['median_s_per_update']:10.2f} ms/update   "
                  f"{row['estimate_bytes'] / 1e6:8.3f} MB   ({row['updates_timed']} updates)", flush=True)
    baseline = {row["algo"]: row["median_s_per_update"] for row in rows if row["variant"].startswith("cg-")}
    for row in rows:
        row["ratio_to_cg"] = row["median_s_per_update"] / baseline[row["algo"]]
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.out:
        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"command": " ".join(sys.argv), "torch": torch.__version__, "torch_threads": 1, "env": "CartPole-v1",
                "note": "2 shared cores under other people's load: absolute times are inflated; compare within one run"}
        out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
