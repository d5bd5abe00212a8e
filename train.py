"""ngrl's command line: train an agent, evaluate a checkpoint.

    python train.py train --algo npg --env CartPole-v1 --seed 0
    python train.py eval --algo npg --env CartPole-v1 --model logs/npg/CartPole-v1_1/CartPole-v1.zip

Hyper-parameters come from ``configs/<algo>.yml`` (rl-baselines3-zoo format: a block per env id and
a ``default:`` block) and can be overridden with ``--hyperparams key=value``. Bad input (unknown env
or algorithm, unsupported action space, bad checkpoint) ends with a one-paragraph error and exit code 2.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import inspect
import os
import pathlib
import pickle
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import torch
import yaml
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

import envs  # noqa: F401  (registers the ngrl/ environment ids)
from agents import ALGOS, CheckpointError
from agents.meta.cli import add_meta_subcommands

CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs"
RUN_KEYS = ("n_timesteps", "n_envs", "policy", "normalize", "env_wrapper", "frame_stack")
ACTIVATIONS = {
    "tanh": torch.nn.Tanh,
    "relu": torch.nn.ReLU,
    "elu": torch.nn.ELU,
    "leaky_relu": torch.nn.LeakyReLU,
    "sigmoid": torch.nn.Sigmoid,
    "gelu": torch.nn.GELU,
    "silu": torch.nn.SiLU,
}


class UsageError(Exception):
    """Bad input from the user: printed as one paragraph, exit code 2."""


# --- values given as text -------------------------------------------------------------------


def _literal(node: ast.AST) -> Any:
    """Evaluate a restricted expression: literals, lists/dicts/tuples, dict(k=v), nn.Tanh-style names."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_literal(e) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Dict):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return {kw.arg: _literal(kw.value) for kw in node.keywords}
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "nn":
        return node.attr  # nn.ReLU -> "ReLU", mapped to a class later
    if isinstance(node, ast.Name) and node.id in ("true", "false", "null", "none", "True", "False", "None"):
        return {"true": True, "false": False}.get(node.id.lower())
    raise ValueError(f"unsupported expression {ast.dump(node)}")


def parse_value(text: str) -> Any:
    """Read a command-line value as data (never with eval): numbers, booleans, lists, dicts, else a string."""
    try:
        return _literal(ast.parse(text.strip(), mode="eval").body)
    except (SyntaxError, ValueError):
        return text


def parse_key_values(pairs: Sequence[str] | None, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"{what} must be given as key=value, got {pair!r}")
        out[key.strip()] = parse_value(value)
    return out


def _activation(value: Any) -> Any:
    if isinstance(value, str):
        key = value.lower().replace("nn.", "")
        if key not in ACTIVATIONS:
            raise UsageError(f"unknown activation_fn {value!r}; choose one of {', '.join(ACTIVATIONS)}")
        return ACTIVATIONS[key]
    return value


def _schedule(value: Any) -> Any:
    """'lin_3e-4' -> a schedule decaying linearly from 3e-4 to 0 (rl-zoo's notation)."""
    if isinstance(value, str) and value.startswith("lin_"):
        start = float(value[4:])
        return lambda progress_remaining: progress_remaining * start
    return value


# --- configuration --------------------------------------------------------------------------


def load_hyperparams(algo: str, env_id: str, overrides: dict[str, Any], config: str | None = None) -> dict[str, Any]:
    """The env's block of configs/<algo>.yml (else its ``default:`` block), then ``overrides``."""
    path = pathlib.Path(config) if config else CONFIG_DIR / f"{algo}.yml"
    table: dict[str, Any] = {}
    if path.is_file():
        with open(path) as f:
            table = yaml.safe_load(f) or {}
    elif config:
        raise UsageError(f"config file {config} does not exist")
    params = dict(table.get(env_id, table.get("default", {})) or {})
    params.update(overrides)
    for key, value in list(params.items()):
        if isinstance(value, str) and key in ("policy_kwargs", "normalize"):
            params[key] = parse_value(value)
    if isinstance(params.get("policy_kwargs"), dict) and "activation_fn" in params["policy_kwargs"]:
        params["policy_kwargs"] = {**params["policy_kwargs"], "activation_fn": _activation(params["policy_kwargs"]["activation_fn"])}
    for key in ("learning_rate", "clip_range"):
        if key in params:
            params[key] = _schedule(params[key])
    return params


def check_constructor_args(algo_cls: type, kwargs: dict[str, Any], algo: str) -> None:
    accepted = set(inspect.signature(algo_cls.__init__).parameters) - {"self", "policy", "env"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise UsageError(
            f"unknown hyperparameter(s) {', '.join(unknown)} for {algo}. Accepted: "
            f"{', '.join(sorted(a for a in accepted if not a.startswith('_')))}, plus {', '.join(RUN_KEYS)}."
        )


# --- environments ---------------------------------------------------------------------------


def import_gym_packages(packages: Sequence[str] | None) -> None:
    for name in packages or []:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise UsageError(f"could not import --gym-packages {name!r}: {error}. Install it or fix the name.") from error


def resolve_env(spec: str) -> str | Callable[..., gym.Env]:
    """An env id registered with gymnasium, or ``module:attr`` naming an env class or factory."""
    if spec in gym.registry:
        return spec
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise UsageError(f"could not import {module_name!r} for --env {spec}: {error}") from error
        if not hasattr(module, attr):
            raise UsageError(f"module {module_name!r} has no attribute {attr!r} (from --env {spec})")
        factory = getattr(module, attr)
        if not callable(factory):
            raise UsageError(f"--env {spec} must name an env class or a function returning an env")
        return factory
    close = difflib.get_close_matches(spec, list(gym.registry), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UsageError(
        f"unknown environment id {spec!r}.{hint} Use a registered gymnasium id, 'package.module:EnvClass' for your own "
        "env, or --gym-packages PACKAGE to import a package that registers ids."
    )


def make_env(spec: str, n_envs: int, seed: int, env_kwargs: dict[str, Any]) -> VecEnv:
    target = resolve_env(spec)
    try:
        return make_vec_env(target, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs)
    except TypeError as error:
        raise UsageError(f"could not create {spec} with env kwargs {env_kwargs}: {error}") from error
    except gym.error.Error as error:  # e.g. DependencyNotInstalled for box2d / mujoco envs
        raise UsageError(f"could not create {spec}: {error}") from error


def wrap_normalize(venv: VecEnv, normalize: Any) -> VecEnv:
    if not normalize:
        return venv
    kwargs = normalize if isinstance(normalize, dict) else {}
    return VecNormalize(venv, **kwargs)


def env_name(spec: str) -> str:
    return spec.replace("/", "-").replace(":", "-")


def atomic_pickle(obj: Any, path: pathlib.Path) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as f:
        pickle.dump(obj, f)
    os.replace(temporary, path)


# --- commands -------------------------------------------------------------------------------


def evaluate(model: Any, venv: VecEnv, n_episodes: int, deterministic: bool = True) -> tuple[float, float]:
    mean, std = evaluate_policy(model, venv, n_eval_episodes=n_episodes, deterministic=deterministic, warn=False)
    return float(mean), float(std)


def eval_env(spec: str, seed: int, env_kwargs: dict[str, Any], stats: pathlib.Path | None) -> VecEnv:
    venv = make_env(spec, 1, seed, env_kwargs)
    if stats is not None and stats.is_file():
        venv = VecNormalize.load(str(stats), venv)
        venv.training = False
        venv.norm_reward = False
    return venv


def cmd_train(args: argparse.Namespace) -> int:
    algo_cls = ALGOS[args.algo]
    import_gym_packages(args.gym_packages)
    env_kwargs = parse_key_values(args.env_kwargs, "--env-kwargs")
    params = load_hyperparams(args.algo, args.env, parse_key_values(args.hyperparams, "--hyperparams"), args.config)
    n_timesteps = int(args.n_timesteps if args.n_timesteps is not None else params.pop("n_timesteps", 100_000))
    params.pop("n_timesteps", None)
    n_envs = int(params.pop("n_envs", 1))
    policy = args.policy or params.pop("policy", "MlpPolicy")
    params.pop("policy", None)
    normalize = params.pop("normalize", False)
    for key in RUN_KEYS:
        if key in params:
            raise UsageError(f"{key} is not supported by this command line yet; remove it from the config")
    check_constructor_args(algo_cls, params, args.algo)
    if policy not in algo_cls.policy_aliases:
        raise UsageError(f"unknown policy {policy!r} for {args.algo}; choose one of {', '.join(algo_cls.policy_aliases)}")

    venv = wrap_normalize(make_env(args.env, n_envs, args.seed, env_kwargs), normalize)
    try:
        model = algo_cls(
            policy, venv, seed=args.seed, device=args.device, verbose=args.verbose, tensorboard_log=args.tensorboard_log, **params
        )
    except AssertionError as error:  # SB3 asserts the action space is supported
        raise UsageError(f"{args.algo} cannot train on {args.env}: {error}") from error

    run_dir = pathlib.Path(args.log_folder) / args.algo
    run_dir.mkdir(parents=True, exist_ok=True)
    index = 1 + max([int(p.name.rsplit("_", 1)[1]) for p in run_dir.glob(f"{env_name(args.env)}_*") if p.name.rsplit("_", 1)[1].isdigit()] or [0])
    run_dir = run_dir / f"{env_name(args.env)}_{index}"
    run_dir.mkdir()

    resolved = {"algo": args.algo, "env": args.env, "seed": args.seed, "n_timesteps": n_timesteps, "n_envs": n_envs,
                "policy": policy, "normalize": normalize, "env_kwargs": env_kwargs,
                "hyperparams": {k: (v if isinstance(v, (int, float, str, bool, list, dict, type(None))) else repr(v)) for k, v in params.items()}}
    with open(run_dir / "config.yml", "w") as f:
        yaml.safe_dump(resolved, f, sort_keys=False)
    (run_dir / "command.txt").write_text(shlex.join([sys.executable, *sys.argv]) + "\n")

    model.learn(n_timesteps, tb_log_name=args.algo.upper(), progress_bar=args.progress)
    model_path = run_dir / f"{env_name(args.env)}.zip"
    model.save(model_path)
    stats_path = None
    if isinstance(venv, VecNormalize):
        stats_path = run_dir / "vecnormalize.pkl"
        atomic_pickle(venv, stats_path)
    print(f"Saved model to {model_path}")
    if args.n_eval_episodes > 0:
        mean, std = evaluate(model, eval_env(args.env, args.seed + 10_000, env_kwargs, stats_path), args.n_eval_episodes)
        print(f"Evaluation of {args.algo} on {args.env} over {args.n_eval_episodes} episodes: {mean:.2f} ± {std:.2f}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    algo_cls = ALGOS[args.algo]
    import_gym_packages(args.gym_packages)
    env_kwargs = parse_key_values(args.env_kwargs, "--env-kwargs")
    model_path = pathlib.Path(args.model)
    stats = model_path.parent / "vecnormalize.pkl"
    venv = eval_env(args.env, args.seed, env_kwargs, stats)
    try:
        model = algo_cls.load(model_path, env=venv, device=args.device)
    except CheckpointError as error:
        raise UsageError(str(error)) from error
    mean, std = evaluate(model, venv, args.n_episodes, deterministic=not args.stochastic)
    print(f"Evaluation of {args.algo} on {args.env} over {args.n_episodes} episodes: {mean:.2f} ± {std:.2f}")
    return 0


def _add_env_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--algo", required=True, help=f"algorithm: one of {', '.join(ALGOS)}")
    parser.add_argument("--env", required=True, help="gymnasium id, or module:EnvClass / module:make_env for your own env")
    parser.add_argument("--env-kwargs", nargs="*", metavar="KEY=VALUE", help="keyword arguments of the env (parsed as data)")
    parser.add_argument("--gym-packages", nargs="*", metavar="PACKAGE", help="packages to import first (they register env ids)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train and evaluate ngrl agents.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train an agent and save its checkpoint")
    _add_env_arguments(train)
    train.add_argument("--n-timesteps", type=int, help="environment steps (default: the config's n_timesteps)")
    train.add_argument("--policy", help="policy name (default: the config's, else MlpPolicy)")
    train.add_argument("--hyperparams", nargs="*", metavar="KEY=VALUE", help="override config entries")
    train.add_argument("--config", help="YAML file to read instead of configs/<algo>.yml")
    train.add_argument("--log-folder", default="logs", help="where runs are written (default logs/)")
    train.add_argument("--tensorboard-log", help="tensorboard log folder")
    train.add_argument("--n-eval-episodes", type=int, default=10, help="episodes of the final evaluation (0: none)")
    train.add_argument("--progress", action="store_true", help="show a progress bar")
    train.add_argument("--verbose", type=int, default=0, help="0 quiet, 1 SB3's training logs")
    train.set_defaults(handler=cmd_train)

    evaluate_cmd = commands.add_parser("eval", help="evaluate a saved checkpoint")
    _add_env_arguments(evaluate_cmd)
    evaluate_cmd.add_argument("--model", required=True, help="path of the .zip checkpoint")
    evaluate_cmd.add_argument("--n-episodes", type=int, default=10, help="episodes to evaluate (default 10)")
    evaluate_cmd.add_argument("--stochastic", action="store_true", help="sample actions instead of the deterministic policy")
    evaluate_cmd.set_defaults(handler=cmd_eval)
    add_meta_subcommands(commands, load_hyperparams, parse_key_values)  # meta-train, adapt
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "algo", None) is not None and args.algo not in ALGOS:
        close = difflib.get_close_matches(args.algo, list(ALGOS), n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        print(f"error: unknown algorithm {args.algo!r}.{hint} Available: {', '.join(ALGOS)}.", file=sys.stderr)
        return 2
    try:
        return args.handler(args)
    except (UsageError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
