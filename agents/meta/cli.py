"""The ``meta-train`` and ``adapt`` subcommands of ``train.py``.

    python train.py meta-train --algo reptile --env ngrl/Navigation2D-v0 --seed 0
    python train.py adapt --model logs/reptile/ngrl-Navigation2D-v0_1/ngrl-Navigation2D-v0.zip --n-tasks 20 --n-updates 0 1 3

Hyper-parameters come from ``configs/<algo>.yml`` (a block per env id, ``default:`` for the rest),
overridden by ``--hyperparams key=value``. Bad input ends with a one-paragraph error and exit code 2.
"""

from __future__ import annotations

import argparse
import inspect
import json
import pathlib
import shlex
import sys
import zipfile
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import yaml
from stable_baselines3.common.utils import set_random_seed

import envs  # noqa: F401  (registers the ngrl/ task families)
from agents.common import CheckpointError, zip_path
from agents.meta import META_ALGOS

__all__ = ["add_meta_subcommands", "held_out_tasks"]

RUN_KEYS = ("n_timesteps", "policy")


class _Usage(ValueError):
    """Bad input: printed as one paragraph, exit code 2."""


def held_out_tasks(env_id: str, n: int, seed: int, env_kwargs: dict[str, Any] | None = None) -> list[dict[str, float]]:
    """n tasks of the family drawn from a fresh env seeded with ``seed`` (use a seed training never used)."""
    env = gym.make(env_id, **(env_kwargs or {}))
    try:
        env.reset(seed=seed)
        return env.get_wrapper_attr("sample_tasks")(n)
    except AttributeError as error:
        raise _Usage(f"{env_id} is not a task family (no sample_tasks): use e.g. ngrl/Navigation2D-v0") from error
    finally:
        env.close()


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (CheckpointError, ValueError, gym.error.Error) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2

    return run


def _meta_train(args: argparse.Namespace, load_hyperparams, parse_key_values) -> int:
    algo_cls = META_ALGOS[args.meta_algo]
    if args.env not in gym.registry:
        raise _Usage(f"unknown environment id {args.env!r}: meta-train needs a registered task family such as ngrl/Navigation2D-v0")
    env_kwargs = parse_key_values(args.env_kwargs, "--env-kwargs")
    params = load_hyperparams(args.meta_algo, args.env, parse_key_values(args.hyperparams, "--hyperparams"), args.config)
    n_timesteps = int(args.n_timesteps if args.n_timesteps is not None else params.pop("n_timesteps", 200_000))
    params.pop("n_timesteps", None)
    policy = params.pop("policy", "MlpPolicy")
    policy = args.policy or policy
    accepted: set[str] = set()
    for base in algo_cls.__mro__:  # the meta-learner's own arguments and those it passes on
        if base.__module__.startswith("agents.meta") and "__init__" in vars(base):
            accepted |= set(inspect.signature(base.__init__).parameters)
    accepted -= {"self", "policy", "env", "kwargs", "env_kwargs", "seed", "device", "verbose", "tensorboard_log"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        choices = sorted(a for a in accepted if not a.startswith("_"))
        raise _Usage(
            f"unknown hyperparameter(s) {', '.join(unknown)} for {args.meta_algo}. Accepted: {', '.join(choices)}, plus {', '.join(RUN_KEYS)}."
        )
    model = algo_cls(
        policy, args.env, env_kwargs=env_kwargs, seed=args.seed, device=args.device, verbose=args.verbose,
        tensorboard_log=args.tensorboard_log, **params,
    )
    run_root = pathlib.Path(args.log_folder) / args.meta_algo
    run_root.mkdir(parents=True, exist_ok=True)
    name = args.env.replace("/", "-")
    taken = [int(p.name.rsplit("_", 1)[1]) for p in run_root.glob(f"{name}_*") if p.name.rsplit("_", 1)[1].isdigit()]
    run_dir = run_root / f"{name}_{1 + max(taken or [0])}"
    run_dir.mkdir()
    resolved = {"algo": args.meta_algo, "env": args.env, "seed": args.seed, "n_timesteps": n_timesteps, "policy": policy,
                "env_kwargs": env_kwargs, "hyperparams": {k: v if isinstance(v, (int, float, str, bool, list, dict, type(None))) else repr(v) for k, v in params.items()}}
    with open(run_dir / "config.yml", "w") as f:
        yaml.safe_dump(resolved, f, sort_keys=False)
    (run_dir / "command.txt").write_text(shlex.join([sys.executable, *sys.argv]) + "\n")
    model.learn(n_timesteps, tb_log_name=args.meta_algo.upper(), progress_bar=args.progress)
    path = run_dir / f"{name}.zip"
    model.save(path)
    print(f"Saved model to {path}")
    if args.n_eval_tasks > 0:
        _print_adaptation(model, held_out_tasks(args.env, args.n_eval_tasks, args.seed + 10_000, env_kwargs), [0, 1], args.seed + 10_000)
    return 0


def _saved_algorithm(path: pathlib.Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("data").decode()).get("_ngrl_algorithm")
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable ngrl checkpoint ({error}); point to the .zip meta-train wrote") from error


def _print_adaptation(model: Any, tasks: list[dict[str, float]], n_updates: Sequence[int], seed: int) -> dict[int, np.ndarray]:
    set_random_seed(seed)
    returns = model.evaluate_adaptation(tasks, n_updates=n_updates, seed=seed)
    print(f"Return on {len(tasks)} held-out tasks of {model.env_id} (mean ± std over tasks):")
    print("| inner updates | return |")
    print("|---|---|")
    for k, values in returns.items():
        print(f"| {k} | {values.mean():.2f} ± {values.std():.2f} |")
    return returns


def _adapt(args: argparse.Namespace, load_hyperparams, parse_key_values) -> int:
    path = zip_path(args.model) if not pathlib.Path(args.model).is_file() else pathlib.Path(args.model)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {args.model}: check the path (meta-train prints it after training)")
    saved = _saved_algorithm(path)
    by_class = {cls.__name__: name for name, cls in META_ALGOS.items()}
    if saved not in by_class:
        raise CheckpointError(f"{path} was saved by {saved or 'something other than ngrl'}, not by a meta-learner ({', '.join(META_ALGOS)}); "
                              "use `train.py eval` for ordinary agents")
    model = META_ALGOS[by_class[saved]].load(path, device=args.device)
    if any(k < 0 for k in args.n_updates):
        raise _Usage("--n-updates takes non-negative integers")
    if args.n_tasks < 1:
        raise _Usage("--n-tasks must be at least 1")
    tasks = held_out_tasks(model.env_id, args.n_tasks, args.seed, model.env_kwargs)
    returns = _print_adaptation(model, tasks, args.n_updates, args.seed)
    if args.output:
        out = {"model": str(path), "env": model.env_id, "seed": args.seed, "tasks": tasks,
               "returns": {str(k): v.tolist() for k, v in returns.items()}}
        pathlib.Path(args.output).write_text(json.dumps(out, indent=1))
    return 0


def add_meta_subcommands(commands: Any, load_hyperparams: Callable[..., dict[str, Any]], parse_key_values: Callable[..., dict[str, Any]]) -> None:
    """Add ``meta-train`` and ``adapt`` to train.py's subparsers, reusing its config and key=value readers."""
    meta = commands.add_parser("meta-train", help="meta-train Reptile, FOMAML or iMAML on a task family")
    meta.add_argument("--algo", dest="meta_algo", required=True, choices=sorted(META_ALGOS), help="meta-learner")
    meta.add_argument("--env", required=True, help="a registered task family, e.g. ngrl/Navigation2D-v0")
    meta.add_argument("--env-kwargs", nargs="*", metavar="KEY=VALUE", help="keyword arguments of the env (parsed as data)")
    meta.add_argument("--n-timesteps", type=int, help="environment steps over all tasks (default: the config's n_timesteps)")
    meta.add_argument(
        "--policy", help="policy name: MlpPolicy (default, else the config's) or MlpErnnPolicy (cell set by policy_kwargs)"
    )
    meta.add_argument("--hyperparams", nargs="*", metavar="KEY=VALUE", help="override config entries")
    meta.add_argument("--config", help="YAML file to read instead of configs/<algo>.yml")
    meta.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    meta.add_argument("--device", default="auto", help="auto, cpu or cuda")
    meta.add_argument("--log-folder", default="logs", help="where runs are written (default logs/)")
    meta.add_argument("--tensorboard-log", help="tensorboard log folder")
    meta.add_argument("--n-eval-tasks", type=int, default=0, help="held-out tasks to report adaptation on after training")
    meta.add_argument("--progress", action="store_true", help="show a progress bar")
    meta.add_argument("--verbose", type=int, default=0, help="0 quiet, 1 training logs")
    meta.set_defaults(handler=_guarded(lambda args: _meta_train(args, load_hyperparams, parse_key_values)))

    adapt = commands.add_parser("adapt", help="returns of a meta-trained model on held-out tasks before and after adaptation")
    adapt.add_argument("--model", required=True, help="path of the .zip written by meta-train")
    adapt.add_argument("--n-tasks", type=int, default=20, help="held-out tasks (default 20)")
    adapt.add_argument("--n-updates", type=int, nargs="+", default=[0, 1, 3], help="inner updates to report (default 0 1 3)")
    adapt.add_argument("--seed", type=int, default=12345, help="seed of the held-out tasks and rollouts (default 12345)")
    adapt.add_argument("--device", default="auto", help="auto, cpu or cuda")
    adapt.add_argument("--output", help="also write the returns per task to this JSON file")
    adapt.set_defaults(handler=_guarded(lambda args: _adapt(args, load_hyperparams, parse_key_values)))
