"""ngrl's command line: train an agent, evaluate a checkpoint, meta-train, adapt.

    python train.py train --algo npg --env CartPole-v1 --seed 0
    python train.py eval --algo npg --env CartPole-v1 --model logs/npg/CartPole-v1_0_1/CartPole-v1.zip
    python train.py meta-train --algo imaml --env ngrl/Navigation2D-v0 --seed 0
    python train.py adapt --model logs/imaml/ngrl-Navigation2D-v0_0_1/ngrl-Navigation2D-v0.zip --n-updates 0 1 3

This module is also the configuration and run layer that the benchmarks import: hyper-parameters
come from ``configs/<algo>.yml`` (rl-baselines3-zoo format: a block per env id and a ``default:``
block), overridden by ``--hyperparams key=value``; values are read as data, never evaluated.

Bad input ends with a one-paragraph message and exit code 2, before any environment is built where
it can be told in advance. Ctrl-C (SIGINT) or SIGTERM during training saves a checkpoint and exits
130 / 143; ``--trained-agent`` continues from it.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import inspect
import json
import os
import pathlib
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs"
# Names known without importing torch (so that --help answers at once); tests check them against the registries.
ALGO_NAMES = ("npg", "ngdqn")
META_ALGO_NAMES = ("reptile", "fomaml", "imaml", "rl2", "joint")
RUN_KEYS = ("n_timesteps", "n_envs", "policy", "normalize", "env_kwargs", "seed")
META_RUN_KEYS = ("n_timesteps", "policy", "env_kwargs", "seed")
CLI_MANAGED = {"self", "policy", "env", "kwargs", "_init_setup_model", "device", "verbose", "tensorboard_log", "seed", "env_kwargs"}
ACTIVATIONS = ("Tanh", "ReLU", "ELU", "LeakyReLU", "Sigmoid", "GELU", "SiLU", "Softplus", "Mish", "SELU", "CELU")
KEEP_CHECKPOINTS = 3
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


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
    except (SyntaxError, ValueError, TypeError, RecursionError):
        return text


def _structured(key: str, value: Any) -> Any:
    """A value that must be data (a dict or list) given as text: parse it, or say where the text is broken."""
    if not isinstance(value, str):
        return value
    try:
        return _literal(ast.parse(value.strip(), mode="eval").body)
    except (SyntaxError, ValueError, TypeError, RecursionError) as error:
        raise UsageError(f"{key}={value!r} is not a valid value ({error}); write e.g. {key}=\"dict(net_arch=[64, 64])\"") from error


def parse_key_values(pairs: Sequence[str] | None, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{what} must be given as key=value, got {pair!r}")
        out[key.strip()] = parse_value(value)
    return out


def activation_class(value: Any) -> type:
    import torch

    if isinstance(value, type):
        return value
    name = str(value).removeprefix("nn.").removeprefix("torch.nn.")
    match = next((a for a in ACTIVATIONS if a.lower() == name.lower().replace("_", "")), None)
    if match is None:
        raise UsageError(f"unknown activation_fn {value!r}; choose one of {', '.join(ACTIVATIONS)}")
    return getattr(torch.nn, match)


def schedule(key: str, value: Any) -> Any:
    """'lin_3e-4' -> a schedule decaying linearly from 3e-4 to 0 (rl-zoo's notation); other values unchanged."""
    if isinstance(value, str) and value.startswith("lin_"):
        from stable_baselines3.common.utils import LinearSchedule

        try:
            start = float(value[4:])
        except ValueError as error:
            raise UsageError(f"{key}={value!r}: a linear schedule is written lin_<start>, e.g. lin_1e-3") from error
        return LinearSchedule(start, 0.0, 1.0)
    return value


# --- configuration --------------------------------------------------------------------------


def read_config(path: pathlib.Path) -> dict[str, Any]:
    try:
        with open(path) as f:
            table = yaml.safe_load(f)
    except yaml.YAMLError as error:
        raise UsageError(f"config file {path} is not valid YAML: {' '.join(str(error).split())}") from error
    except OSError as error:
        raise UsageError(f"could not read config file {path}: {error.strerror or error}") from error
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise UsageError(f"config file {path} must map env ids (and 'default') to blocks of hyper-parameters, not a {type(table).__name__}")
    return table


def load_hyperparams(algo: str, env_id: str, overrides: dict[str, Any], config: str | None = None,
                     base_config: bool = True) -> dict[str, Any]:
    """The env's block of configs/<algo>.yml (else its ``default:`` block), then ``overrides``; values as data, unconverted.
    ``base_config=False`` reads no file: ``overrides`` alone (the constructor's defaults for the rest)."""
    path = pathlib.Path(config) if config else CONFIG_DIR / f"{algo}.yml"
    if config and not path.is_file():
        raise UsageError(f"config file {config} does not exist")
    table = read_config(path) if base_config and path.is_file() else {}
    block = table.get(env_id, table.get("default", {})) or {}
    if not isinstance(block, dict):
        raise UsageError(f"the block {env_id if env_id in table else 'default'} of {path} must map hyper-parameters to values")
    params = {**block, **overrides}
    for key in ("policy_kwargs", "inner_kwargs", "env_kwargs", "meta_optimizer_kwargs", "replay_buffer_kwargs", "normalize"):
        if key in params:
            params[key] = _structured(key, params[key])
    return params


def constructor_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    """Hyper-parameters as the constructor takes them: 'lin_…' schedules and activation names become objects."""
    kwargs = dict(params)
    for key in ("learning_rate", "clip_range"):
        if key in kwargs:
            kwargs[key] = schedule(key, kwargs[key])
    policy_kwargs = kwargs.get("policy_kwargs")
    if isinstance(policy_kwargs, dict) and "activation_fn" in policy_kwargs:
        kwargs["policy_kwargs"] = {**policy_kwargs, "activation_fn": activation_class(policy_kwargs["activation_fn"])}
    return kwargs


def accepted_arguments(algo_cls: type) -> set[str]:
    """Constructor arguments of the algorithm (and of its ngrl bases, and of any base an ``__init__(..., **kwargs)``
    passes the rest on to), less those the CLI sets."""
    names: set[str] = set()
    forwarded = True  # the class's own __init__ is read
    for base in algo_cls.__mro__:  # an ngrl meta-learner passes its bases' arguments on
        if "__init__" not in vars(base) or base is object:
            continue
        parameters = inspect.signature(base.__init__).parameters
        if forwarded or base.__module__.startswith("agents"):
            names |= {name for name, p in parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        forwarded = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    return names - CLI_MANAGED


def check_hyperparams(algo_cls: type, params: dict[str, Any], algo: str, run_keys: Sequence[str]) -> None:
    """Unknown names, wrong types and out-of-range values, told before any env is built."""
    from agents.arguments import check_arguments

    accepted = accepted_arguments(algo_cls)
    unknown = sorted(set(params) - accepted)
    if unknown:
        close = {u: difflib.get_close_matches(u, sorted(accepted | set(run_keys)), n=1) for u in unknown}
        hints = "; ".join(f"{u}: did you mean {c[0]}?" for u, c in close.items() if c)
        raise UsageError(
            f"unknown hyperparameter(s) {', '.join(unknown)} for {algo}.{' ' + hints if hints else ''} Accepted: "
            f"{', '.join(sorted(a for a in accepted if not a.startswith('_')))}, plus {', '.join(run_keys)}."
        )
    try:
        check_arguments(algo_cls, constructor_kwargs(params))
    except ValueError as error:
        raise UsageError(f"bad hyperparameter for {algo}: {error}") from error


def check_device(device: str) -> None:
    import torch

    from agents.arguments import device as device_rule

    try:
        device_rule("--device", device)
    except ValueError as error:
        raise UsageError(str(error)) from error
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device} was asked for, but this machine has no CUDA device: use --device cpu (or auto)")


def pop_int(params: dict[str, Any], key: str, default: int, given: int | None = None, minimum: int = 1) -> int:
    value = given if given is not None else params.get(key, default)
    params.pop(key, None)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise UsageError(f"{key} must be a {'positive' if minimum == 1 else 'non-negative'} integer, got {value!r}")
    return value


def run_seed(given: int | None, configured: Any) -> int:
    seed = given if given is not None else configured
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UsageError(f"the seed must be a non-negative integer, got {seed!r}")
    return seed


def config_block(params: dict[str, Any], **run: Any) -> dict[str, Any]:
    """The hyper-parameters as data (YAML-safe), with the run keys: a block that ``--config`` reads back."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, type):
            return value.__name__
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise UsageError(f"the hyper-parameter value {value!r} cannot be written to config.yml; give it as data")

    return plain({**run, **params})


# --- environments ---------------------------------------------------------------------------


def import_gym_packages(packages: Sequence[str] | None) -> None:
    if str(pathlib.Path.cwd()) not in sys.path:
        sys.path.insert(0, str(pathlib.Path.cwd()))  # module:Class envs from the current folder, as users expect
    for name in packages or []:
        try:
            importlib.import_module(name)
        except Exception as error:  # an import runs the user's code: any failure is theirs to fix
            raise UsageError(f"could not import --gym-packages {name!r}: {type(error).__name__}: {error}. Install it or fix the name.") from error


def resolve_env(spec: str) -> str | Callable[..., Any]:
    """An env id registered with gymnasium, or ``module:attr`` naming an env class or factory."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers the ngrl/ ids)

    if spec in gym.registry:
        return spec
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as error:
            raise UsageError(f"could not import {module_name!r} for --env {spec}: {type(error).__name__}: {error}") from error
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


def probe_env(spec: str, target: str | Callable[..., Any], env_kwargs: dict[str, Any]) -> None:
    """Build one env apart from training, reset it and take one step: a broken env is bad input, told now."""
    import gymnasium as gym

    from agents.arguments import check_spaces

    stage = "creating it"
    try:
        env = gym.make(target, **env_kwargs) if isinstance(target, str) else target(**env_kwargs)
        if not isinstance(env, gym.Env):
            raise UsageError(f"--env {spec} returned a {type(env).__name__}, not a gymnasium.Env")
        try:
            check_spaces(env.observation_space, env.action_space)
            stage = "reset(seed=0)"
            reset = env.reset(seed=0)
            if not (isinstance(reset, tuple) and len(reset) == 2):
                raise UsageError(f"{spec}'s reset must return (observation, info) as gymnasium's API says, got {type(reset).__name__}")
            stage = "step(action)"
            env.action_space.seed(0)
            result = env.step(env.action_space.sample())
            if not (isinstance(result, tuple) and len(result) == 5):
                count = len(result) if isinstance(result, tuple) else type(result).__name__
                raise UsageError(
                    f"{spec}'s step returned {count} values; gymnasium's API returns 5: (observation, reward, terminated, "
                    "truncated, info). Port the env from the old gym API (done → terminated, truncated)."
                )
        except BaseException:
            env.close()
            raise
        stage = "close()"
        env.close()
    except UsageError:
        raise
    except TypeError as error:
        raise UsageError(f"could not create {spec} with env kwargs {env_kwargs}: {error}") from error
    except Exception as error:  # the env's own code failed: report it, it is the user's env
        raise UsageError(f"the env {spec} raised {type(error).__name__} during {stage}: {error}") from error


def make_env(spec: str, n_envs: int, seed: int, env_kwargs: dict[str, Any]) -> Any:
    from stable_baselines3.common.env_util import make_vec_env

    target = resolve_env(spec)
    probe_env(spec, target, env_kwargs)
    try:
        return make_vec_env(target, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs)
    except Exception as error:
        raise UsageError(f"could not create {spec}: {type(error).__name__}: {error}") from error


def env_name(spec: str) -> str:
    return spec.replace("/", "-").replace(":", "-")


# --- run folders and checkpoints --------------------------------------------------------------


def normalization_path(model_path: pathlib.Path) -> pathlib.Path:
    """Where the VecNormalize statistics of the checkpoint ``model_path`` live (plain arrays)."""
    return model_path.with_name(f"{model_path.stem}_vecnormalize.npz")


def new_run_dir(log_folder: str, algo: str, env: str, seed: int) -> pathlib.Path:
    """``<log_folder>/<algo>/<env>_<seed>_<n>`` with the next free n."""
    root = pathlib.Path(log_folder) / algo
    prefix = f"{env_name(env)}_{seed}_"
    try:
        root.mkdir(parents=True, exist_ok=True)
        taken = [int(p.name[len(prefix):]) for p in root.glob(f"{prefix}*") if p.name[len(prefix):].isdigit()]
        run_dir = root / f"{prefix}{1 + max(taken or [0])}"
        run_dir.mkdir()
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UsageError(
            f"cannot write runs under --log-folder {log_folder}: {error.strerror or error} ({error.filename or root}). "
            "Choose a folder you can write to."
        ) from error
    return run_dir


def write_run_files(run_dir: pathlib.Path, env: str, block: dict[str, Any], algo: str, command: Sequence[str] | None = None) -> None:
    """config.yml and command.txt (``command``, else this process's command line) in the run's folder."""
    header = f"# {algo} on {env}: the configuration this run used; rerun it with --config {run_dir / 'config.yml'}\n"
    (run_dir / "config.yml").write_text(header + yaml.safe_dump({env: block}, sort_keys=False))
    (run_dir / "command.txt").write_text(shlex.join(command or [sys.executable, *sys.argv]) + "\n")


def replay_buffer_path(model_path: pathlib.Path) -> pathlib.Path:
    return model_path.with_name(f"{model_path.stem}_replay_buffer.npz")


def save_model(model: Any, path: pathlib.Path, replay_buffer: bool = False) -> None:
    """The checkpoint and, beside it, its normalisation statistics (normalised env) and replay buffer (when asked)."""
    from stable_baselines3.common.vec_env import VecNormalize

    from agents.checkpoint import save_normalization

    model.save(path)
    venv = model.get_env()
    if isinstance(venv, VecNormalize):
        save_normalization(venv, normalization_path(path))
    if replay_buffer and getattr(model, "replay_buffer", None) is not None:
        model.save_replay_buffer(replay_buffer_path(path))


class RunControl:
    """Signal handling and periodic checkpoints around ``learn``: the first SIGINT/SIGTERM stops training
    at the next environment step (the current update finishes), a second SIGINT stops at once."""

    def __init__(self, save_freq: int, checkpoint_dir: pathlib.Path, replay_buffer: bool = False):
        self.save_freq = save_freq
        self.replay_buffer = replay_buffer
        self.checkpoint_dir = checkpoint_dir
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        print(f"\n{signal.Signals(signum).name} received: finishing the current step, then saving (Ctrl-C again to stop at once).",
              file=sys.stderr, flush=True)

    def __enter__(self) -> "RunControl":
        for signum in EXIT_SIGNAL:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def callback(self) -> Any:
        from stable_baselines3.common.callbacks import BaseCallback

        control = self

        class Control(BaseCallback):
            def _on_step(self) -> bool:
                if control.save_freq and self.num_timesteps // control.save_freq > getattr(self, "_saved_at", 0):
                    self._saved_at = self.num_timesteps // control.save_freq
                    control.checkpoint(self.model)
                return control.received is None

        return Control()

    def checkpoint(self, model: Any) -> None:
        path = self.checkpoint_dir / f"rl_model_{model.num_timesteps}_steps.zip"
        save_model(model, path, self.replay_buffer)
        saved = sorted(self.checkpoint_dir.glob("rl_model_*_steps.zip"), key=lambda p: int(p.stem.split("_")[2]))
        for old in saved[:-KEEP_CHECKPOINTS]:
            old.unlink(missing_ok=True)
            normalization_path(old).unlink(missing_ok=True)
            replay_buffer_path(old).unlink(missing_ok=True)


def learn_and_save(model: Any, n_timesteps: int, args: argparse.Namespace, run_dir: pathlib.Path, model_path: pathlib.Path,
                   tb_log_name: str, resume_command: list[str], callbacks: Sequence[Any] = ()) -> int:
    """Train, then save; on SIGINT/SIGTERM save what there is and say how to resume (exit 130/143)."""
    from agents import NonFiniteParametersError

    reset = args.trained_agent is None
    keep_buffer = getattr(args, "save_replay_buffer", False)
    with RunControl(args.save_freq, run_dir / "checkpoints", keep_buffer) as control:
        try:
            model.learn(n_timesteps, callback=[control.callback(), *callbacks], tb_log_name=tb_log_name,
                        progress_bar=not args.quiet, reset_num_timesteps=reset)
        except KeyboardInterrupt:
            control.received = signal.SIGINT
        except NonFiniteParametersError as error:  # the parameters from before the bad update are in place
            save_model(model, model_path, keep_buffer)
            print(f"error: {error}\nThe last finite parameters were saved to {model_path}.", file=sys.stderr)
            return 1
    save_model(model, model_path, keep_buffer)
    if control.received is not None:
        name = signal.Signals(control.received).name
        print(f"{name}: training stopped after {model.num_timesteps} steps. Saved model to {model_path}")
        print("Resume with: " + shlex.join([sys.executable, sys.argv[0], *resume_command, "--trained-agent", str(model_path)]))
        return EXIT_SIGNAL[control.received]
    print(f"Saved model to {model_path}")
    return 0


def resume_arguments(argv: Sequence[str]) -> list[str]:
    """The command line without --trained-agent (the resume command names its own)."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == "--trained-agent":
            skip = True
            continue
        if item.startswith("--trained-agent="):
            continue
        out.append(item)
    return out


# --- train and eval ---------------------------------------------------------------------------


CONTRIB_PEERS = ("trpo", "recurrentppo")  # sb3-contrib's (the bench extra)


def peer_algorithms() -> dict[str, type]:
    """SB3's and sb3-contrib's algorithms that ``benchmark`` runs beside ngrl's (configs/<name>.yml: rl-zoo3's entries).
    ``dqn`` is SB3's DQN with NGDQN's ``target_network`` switch (``agents.ngdqn.BaselineDQN``; on by default: SB3's DQN)."""
    from stable_baselines3 import A2C, PPO

    from agents.ngdqn import BaselineDQN

    peers: dict[str, type] = {"ppo": PPO, "a2c": A2C, "dqn": BaselineDQN}
    try:
        from sb3_contrib import TRPO, RecurrentPPO

        peers.update(trpo=TRPO, recurrentppo=RecurrentPPO)
    except ImportError:  # the bench extra is not installed
        pass
    return peers


def is_meta(name: str) -> bool:
    return name in META_ALGO_NAMES


def algorithm(name: str, meta: bool = False, peers: bool = False) -> type:
    """The class of ``name``: single-task agents (``meta=False``), meta-learners (``meta=True``); with ``peers``,
    any algorithm a benchmark grid can hold (ngrl's agents and meta-learners, SB3's peers)."""
    from agents import ALGOS, META_ALGOS

    table, other = (META_ALGOS, ALGOS) if meta else (ALGOS, META_ALGOS)
    if peers:
        table, other = {**ALGOS, **META_ALGOS, **peer_algorithms()}, {}
    if name in table:
        return table[name]
    if name in other:
        raise UsageError(f"{name} is a {'single-task' if meta else 'meta-'}algorithm: use `train.py {'train' if meta else 'meta-train'} --algo {name}`")
    if peers and name in CONTRIB_PEERS:
        raise UsageError(f"{name} is sb3-contrib's, which is not installed: python -m pip install -e \".[bench]\"")
    close = difflib.get_close_matches(name, list(table), n=1)
    hint = f" Did you mean {close[0]}?" if close else ""
    raise UsageError(f"unknown algorithm {name!r}.{hint} Available: {', '.join(table)}.")


def load_checkpoint(algo_cls: type, path: str, env: Any, args: argparse.Namespace) -> Any:
    from agents import CheckpointError

    try:
        return algo_cls.load(path, env=env, device=args.device, allow_unsafe_pickle=args.allow_unsafe_pickle)
    except CheckpointError as error:
        raise UsageError(str(error).replace("allow_unsafe_pickle=True", "--allow-unsafe-pickle")) from error


def normalized_env(venv: Any, model_path: pathlib.Path, args: argparse.Namespace, training: bool) -> Any:
    """``venv`` with the statistics saved beside the checkpoint (none: ``venv`` itself); a legacy pickle only when allowed."""
    from stable_baselines3.common.vec_env import VecNormalize

    from agents.checkpoint import UNSAFE_HINT, load_normalization

    stats = normalization_path(model_path)
    if stats.is_file():
        return load_normalization(stats, venv, training=training)
    legacy = model_path.parent / "vecnormalize.pkl"
    if legacy.is_file():
        if not args.allow_unsafe_pickle:
            raise UsageError(f"{legacy} holds normalisation statistics as a pickle. {UNSAFE_HINT.replace('allow_unsafe_pickle=True', '--allow-unsafe-pickle')}")
        normalized = VecNormalize.load(str(legacy), venv)
        normalized.training, normalized.norm_reward = training, normalized.norm_reward and training
        return normalized
    return venv


def was_normalized(path: pathlib.Path) -> bool:
    """Whether the checkpoint records training on a VecNormalize env (read from its JSON data only)."""
    from agents.checkpoint import CheckpointError, checkpoint_data

    try:
        return bool(checkpoint_data(path).get("_ngrl_vecnormalize", False))
    except CheckpointError:
        return False  # the loader reports what is wrong with the file


def existing_checkpoint(path: str) -> pathlib.Path:
    from agents.checkpoint import zip_path

    found = next((p for p in (pathlib.Path(path), zip_path(path)) if p.is_file()), None)
    if found is None:
        raise UsageError(f"no checkpoint at {path}: check the path (training prints it when it saves)")
    return found


def check_task_family(env: str, env_kwargs: dict[str, Any]) -> str | Callable[..., Any]:
    """A meta-learner's env: a task family (sample_tasks / set_task / get_task) given as a registered id or as
    ``module:Class`` / ``module:make_family`` (see :func:`resolve_env`); returns what :func:`resolve_env` returns."""
    from envs.task_family import held_out_tasks

    target = resolve_env(env)
    try:
        held_out_tasks(target, 1, 0, env_kwargs)
    except ValueError as error:
        raise UsageError(str(error)) from error
    except TypeError as error:
        raise UsageError(f"could not create {env} with env kwargs {env_kwargs}: {error}") from error
    except Exception as error:  # the env's own code failed
        raise UsageError(f"the env {env} raised {type(error).__name__} when made: {error}") from error
    return target


@dataclass
class RunSpec:
    """One training run, resolved and validated before any env is built: what ``train`` and ``benchmark`` both run."""

    algo: str
    env: str
    seed: int
    n_timesteps: int
    n_envs: int
    policy: str
    normalize: Any
    env_kwargs: dict[str, Any]
    params: dict[str, Any]  # the hyper-parameters as data (schedules 'lin_…', activations by name)

    def config_block(self) -> dict[str, Any]:
        if is_meta(self.algo):
            return config_block(self.params, n_timesteps=self.n_timesteps, policy=self.policy, env_kwargs=self.env_kwargs, seed=self.seed)
        return config_block(self.params, n_timesteps=self.n_timesteps, n_envs=self.n_envs, policy=self.policy,
                            normalize=self.normalize, env_kwargs=self.env_kwargs, seed=self.seed)


def resolve_run(algo: str, env: str, *, seed: int | None, overrides: dict[str, Any], config: str | None = None,
                env_kwargs: dict[str, Any] | None = None, n_timesteps: int | None = None, policy: str | None = None,
                base_config: bool = True) -> RunSpec:
    """The config block of ``algo`` for ``env`` with the overrides, every value checked by name, type and range
    (``base_config=False``: the overrides alone, over the constructor's defaults).

    A meta-learner (reptile, fomaml, imaml, rl2, joint) needs a task family; its sub-envs are its tasks (RL²'s, its
    ``n_envs`` trials), so it takes no ``normalize``, and no ``n_envs`` but RL²'s. ``n_timesteps=0`` (a grid row's own
    budget, never a config's): the model is built and evaluated, never trained.
    """
    algo_cls = algorithm(algo, peers=True)
    params = load_hyperparams(algo, env, overrides, config, base_config)
    kwargs = {**_mapping("env_kwargs", params.pop("env_kwargs", None) or {}), **(env_kwargs or {})}
    run_seed_ = run_seed(seed, params.pop("seed", 0))
    steps = pop_int(params, "n_timesteps", 200_000 if is_meta(algo) else 100_000, n_timesteps, minimum=0 if n_timesteps == 0 else 1)
    own_n_envs = is_meta(algo) and "n_envs" in accepted_arguments(algo_cls)  # RL²'s trials run in n_envs sub-envs
    if is_meta(algo):
        check_task_family(env, kwargs)
        for key in ("n_envs", "normalize"):
            if key in params and not (key == "n_envs" and own_n_envs):
                raise UsageError(f"{key} does not apply to the meta-learner {algo}: its sub-envs are its tasks (meta_batch_size)")
    n_envs = 1 if own_n_envs else pop_int(params, "n_envs", 1)  # RL²'s stays in params: a constructor argument
    chosen_policy = policy or params.get("policy", "MlpPolicy")
    params.pop("policy", None)
    normalize = params.pop("normalize", False)
    if not isinstance(normalize, (bool, dict)):
        raise UsageError(f"normalize must be true, false or a dict of VecNormalize arguments, got {normalize!r}")
    check_hyperparams(algo_cls, params, algo, META_RUN_KEYS if is_meta(algo) else RUN_KEYS)
    if chosen_policy not in algo_cls.policy_aliases:
        raise UsageError(f"unknown policy {chosen_policy!r} for {algo}; choose one of {', '.join(algo_cls.policy_aliases)}")
    return RunSpec(algo, env, run_seed_, steps, n_envs, chosen_policy, normalize, kwargs, params)


def build_model(spec: RunSpec, *, device: str = "auto", verbose: int = 0, tensorboard_log: str | None = None) -> Any:
    """The spec's training env (VecNormalize when asked) and a fresh model on it (a meta-learner builds its own tasks' env)."""
    from stable_baselines3.common.vec_env import VecNormalize

    if is_meta(spec.algo):
        family = resolve_env(spec.env)
        probe_env(spec.env, family, spec.env_kwargs)
        try:
            model = algorithm(spec.algo, meta=True)(spec.policy, family, env_kwargs=spec.env_kwargs, seed=spec.seed, device=device,
                                                    verbose=verbose, tensorboard_log=tensorboard_log, **constructor_kwargs(spec.params))
        except (ValueError, TypeError, AssertionError) as error:
            raise UsageError(f"{spec.algo} cannot meta-train on {spec.env}: {error}") from error
        model._ngrl_env_spec = spec.env  # recorded in the checkpoint: adapt names it when a module:Class family must be given again
        return model
    venv = make_env(spec.env, spec.n_envs, spec.seed, spec.env_kwargs)
    if spec.normalize:
        # the reward statistics are those of returns discounted by the algorithm's gamma, as rl-zoo3 sets them
        discount = {"gamma": spec.params["gamma"]} if "gamma" in spec.params else {}
        venv = VecNormalize(venv, **{**discount, **(spec.normalize if isinstance(spec.normalize, dict) else {})})
    try:
        model = algorithm(spec.algo, peers=True)(spec.policy, venv, seed=spec.seed, device=device, verbose=verbose,
                                                 tensorboard_log=tensorboard_log, **constructor_kwargs(spec.params))
    except (ValueError, TypeError, AssertionError) as error:  # arguments or spaces the algorithm refuses
        raise UsageError(f"{spec.algo} cannot train on {spec.env}: {error}") from error
    model._ngrl_vecnormalize = bool(spec.normalize)  # recorded in the checkpoint: eval then asks for the statistics
    return model


class PeriodicEvaluation:
    """Evaluate every ``every`` steps on a separate env (seed + 10,000; deterministic actions), as rl-zoo3's
    ``--eval-freq``: one row per evaluation (steps, mean, std, training seconds so far, evaluations excluded).
    A meta-learner is scored by its mean return after one inner update on ``n_episodes`` held-out tasks.
    An evaluation at the step count of the previous one (an update ran in between without env steps) replaces it."""

    def __init__(self, spec: RunSpec, every: int, n_episodes: int, quiet: bool = False):
        self.spec, self.every, self.n_episodes, self.quiet = spec, every, n_episodes, quiet
        self.rows: list[dict[str, Any]] = []
        self._env: Any = None
        self._evaluating = 0.0
        self._start = 0.0
        self._evaluated_state: list[Any] | None = None  # the policy's tensors at the last evaluation

    def is_current(self, model: Any) -> bool:
        """Whether the last evaluation scored the model as it is now: same step count and the same policy tensors
        (an evaluation taken at the last env step is stale when an update followed it, as when a budget is a
        multiple of both the rollout size and ``every``)."""
        import torch

        if not self.rows or self.rows[-1]["timesteps"] != model.num_timesteps or self._evaluated_state is None:
            return False
        now = list(model.policy.state_dict().values())
        return len(now) == len(self._evaluated_state) and all(torch.equal(a, b) for a, b in zip(now, self._evaluated_state))

    def evaluate_now(self, model: Any) -> None:
        import time

        from stable_baselines3.common.vec_env import VecNormalize, sync_envs_normalization
        from stable_baselines3.common.evaluation import evaluate_policy

        began = time.perf_counter()
        if self._env is None and not hasattr(model, "evaluate_adaptation"):
            self._env = make_env(self.spec.env, 1, self.spec.seed + 10_000, self.spec.env_kwargs)
            if isinstance(model.get_env(), VecNormalize):
                self._env = VecNormalize(self._env, training=False, norm_reward=False)
        if isinstance(self._env, VecNormalize):
            sync_envs_normalization(model.get_env(), self._env)
        if hasattr(model, "evaluate_adaptation"):  # a meta-learner: return after one inner update on held-out tasks
            returns = model.evaluate_adaptation(self.held_out_tasks(), n_updates=[1], seed=self.spec.seed + 10_000)[1]
            mean, std = float(returns.mean()), float(returns.std())
        else:
            mean, std = evaluate_policy(model, self._env, n_eval_episodes=self.n_episodes, deterministic=True, warn=False)
        self._evaluating += time.perf_counter() - began
        row = {"timesteps": int(model.num_timesteps), "mean": float(mean), "std": float(std),
               "train_seconds": round(time.perf_counter() - self._start - self._evaluating, 3)}
        if self.rows and self.rows[-1]["timesteps"] == row["timesteps"]:
            self.rows[-1] = row  # the same step count, a later policy: the earlier score is superseded
        else:
            self.rows.append(row)
        self._evaluated_state = [t.detach().clone() for t in model.policy.state_dict().values()]
        if not self.quiet:
            print(f"Eval at {row['timesteps']} steps: {row['mean']:.2f} ± {row['std']:.2f} ({row['train_seconds']:.0f} s of training)",
                  flush=True)

    def held_out_tasks(self) -> list[dict[str, float]]:
        """A meta-learner's evaluation tasks: ``n_episodes`` tasks of the family, the same at every evaluation."""
        from envs.task_family import held_out_tasks

        return held_out_tasks(resolve_env(self.spec.env), self.n_episodes, self.spec.seed + 10_000, self.spec.env_kwargs)

    def adaptation(self, model: Any, n_updates: Sequence[int]) -> dict[str, Any]:
        """A meta-learner's return on each held-out task after each number of inner updates in ``n_updates`` (the same
        tasks and seed as the periodic evaluations): ``{"tasks": [...], "returns": {"k": [one per task]}}``."""
        tasks = self.held_out_tasks()
        returns = model.evaluate_adaptation(tasks, n_updates=n_updates, seed=self.spec.seed + 10_000)
        return {"tasks": tasks, "returns": {str(k): [float(r) for r in values] for k, values in returns.items()}}

    def callback(self) -> Any:
        import time

        from stable_baselines3.common.callbacks import BaseCallback

        periodic = self
        self._start = time.perf_counter()

        class Evaluate(BaseCallback):
            def _on_step(self) -> bool:
                if periodic.every and self.num_timesteps // periodic.every > getattr(self, "_done", 0):
                    self._done = self.num_timesteps // periodic.every
                    periodic.evaluate_now(self.model)
                return True

        return Evaluate()

    def write_csv(self, path: pathlib.Path) -> None:
        import csv

        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["timesteps", "mean", "std", "train_seconds"])
            writer.writeheader()
            writer.writerows(self.rows)


def cmd_train(args: argparse.Namespace) -> int:
    algo_cls = algorithm(args.algo)
    if args.n_timesteps is not None and args.n_timesteps < 1:
        raise UsageError(f"--n-timesteps must be a positive number of environment steps, got {args.n_timesteps}")
    if args.n_eval_episodes < 0 or args.save_freq < 0 or args.eval_freq < 0:
        raise UsageError("--n-eval-episodes, --eval-freq and --save-freq must be >= 0")
    check_device(args.device)
    import_gym_packages(args.gym_packages)
    spec = resolve_run(args.algo, args.env, seed=args.seed, overrides=parse_key_values(args.hyperparams, "--hyperparams"),
                       config=args.config, env_kwargs=parse_key_values(args.env_kwargs, "--env-kwargs"),
                       n_timesteps=args.n_timesteps, policy=args.policy)
    trained = existing_checkpoint(args.trained_agent) if args.trained_agent else None

    if trained is not None:
        venv = make_env(spec.env, spec.n_envs, spec.seed, spec.env_kwargs)
        if was_normalized(trained) and not normalization_path(trained).is_file() and not (trained.parent / "vecnormalize.pkl").is_file():
            raise UsageError(f"{trained} was trained on a normalised env, but {normalization_path(trained)} is missing")
        venv = normalized_env(venv, trained, args, training=True)
        model = load_checkpoint(algo_cls, str(trained), venv, args)
        if replay_buffer_path(trained).is_file() and getattr(model, "replay_buffer", None) is not None:
            model.load_replay_buffer(replay_buffer_path(trained))
            print(f"Loaded the replay buffer {replay_buffer_path(trained)}")
        if model.num_timesteps >= spec.n_timesteps:
            raise UsageError(f"{trained} has already trained {model.num_timesteps} steps, the whole budget of {spec.n_timesteps}: "
                             "raise --n-timesteps")
        remaining = spec.n_timesteps - model.num_timesteps
        print(f"Continuing {trained} from step {model.num_timesteps} to {spec.n_timesteps}")
        model._ngrl_vecnormalize = bool(spec.normalize) or was_normalized(trained)
    else:
        model = build_model(spec, device=args.device, verbose=args.verbose, tensorboard_log=args.tensorboard_log)
        remaining = spec.n_timesteps

    run_dir = new_run_dir(args.log_folder, args.algo, args.env, spec.seed)
    write_run_files(run_dir, args.env, spec.config_block(), args.algo)
    model_path = run_dir / f"{env_name(args.env)}.zip"
    evaluation = PeriodicEvaluation(spec, args.eval_freq, args.n_eval_episodes or 10)
    extra = [evaluation.callback()] if args.eval_freq else []
    status = learn_and_save(model, remaining, args, run_dir, model_path, f"{args.algo.upper()}_{run_dir.name}",
                            resume_arguments(sys.argv[1:]), extra)
    if evaluation.rows:
        evaluation.write_csv(run_dir / "evaluations.csv")
    if status != 0:
        return status
    if model.num_timesteps != spec.n_timesteps:
        print(f"Ran {model.num_timesteps} environment steps for a budget of {spec.n_timesteps}: on-policy rollouts "
              f"({getattr(model, 'n_steps', 1)} steps × {spec.n_envs} envs) end whole, as in SB3.")
    if args.n_eval_episodes > 0:
        eval_venv = normalized_env(make_env(args.env, 1, spec.seed + 10_000, spec.env_kwargs), model_path, args, training=False)
        mean, std = evaluate(model, eval_venv, args.n_eval_episodes, deterministic=True)
        print(f"Evaluation of {args.algo} on {args.env} over {args.n_eval_episodes} episodes: {mean:.2f} ± {std:.2f}")
    return 0


def _mapping(key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UsageError(f"{key} must be a dict, got {value!r}")
    return value


def evaluate(model: Any, venv: Any, n_episodes: int, deterministic: bool = True) -> tuple[float, float]:
    from stable_baselines3.common.evaluation import evaluate_policy

    print(f"Evaluating over {n_episodes} episodes ({'deterministic' if deterministic else 'stochastic'} actions)...", flush=True)
    mean, std = evaluate_policy(model, venv, n_eval_episodes=n_episodes, deterministic=deterministic, warn=False)
    return float(mean), float(std)


def cmd_eval(args: argparse.Namespace) -> int:
    algo_cls = algorithm(args.algo)
    if args.n_episodes < 1:
        raise UsageError(f"--n-episodes must be at least 1, got {args.n_episodes}")
    check_device(args.device)
    import_gym_packages(args.gym_packages)
    env_kwargs = parse_key_values(args.env_kwargs, "--env-kwargs")
    model_path = existing_checkpoint(args.model)
    seed = args.seed if args.seed is not None else 0
    venv = make_env(args.env, 1, seed, env_kwargs)
    if not args.no_norm:
        normalized = normalized_env(venv, model_path, args, training=False)
        if normalized is venv and was_normalized(model_path):
            raise UsageError(
                f"{model_path} was trained on a normalised env, but its statistics ({normalization_path(model_path).name}) are "
                "not beside it: copy them there, or pass --no-norm to evaluate on raw observations (returns will be meaningless)"
            )
        venv = normalized
    model = load_checkpoint(algo_cls, str(model_path), venv, args)
    mean, std = evaluate(model, venv, args.n_episodes, deterministic=not args.stochastic)
    print(f"Evaluation of {args.algo} on {args.env} over {args.n_episodes} episodes: {mean:.2f} ± {std:.2f}")
    return 0


# --- meta-train and adapt ---------------------------------------------------------------------


def print_adaptation(model: Any, family: str, tasks: list[dict[str, float]], n_updates: Sequence[int], seed: int,
                     env: Any = None) -> dict[int, Any]:
    """Adapt ``model`` to ``tasks`` (on ``env``, a VecEnv of the family; None: the model's own family) and print the table."""
    from stable_baselines3.common.utils import set_random_seed

    set_random_seed(seed)
    # RL² adapts within a trial: its "k updates" are the k episodes of the trial before the one whose return is shown
    steps = "episodes of a trial" if hasattr(model, "episodes_per_trial") else "inner updates"
    print(f"Adapting to {len(tasks)} held-out tasks of {family} ({max(n_updates)} {steps} at most)...", flush=True)
    returns = model.evaluate_adaptation(tasks, n_updates=n_updates, seed=seed, env=env)
    print(f"Return on {len(tasks)} held-out tasks of {family} (mean ± std over tasks):")
    print(f"| {steps} before | return |" if steps != "inner updates" else "| inner updates | return |")
    print("|---|---|")
    for k, values in returns.items():
        print(f"| {k} | {values.mean():.2f} ± {values.std():.2f} |")
    return returns


def cmd_meta_train(args: argparse.Namespace) -> int:
    from envs.task_family import held_out_tasks

    algo_cls = algorithm(args.algo, meta=True)
    if args.n_timesteps is not None and args.n_timesteps < 1:
        raise UsageError(f"--n-timesteps must be a positive number of environment steps, got {args.n_timesteps}")
    if args.n_eval_tasks < 0 or args.save_freq < 0:
        raise UsageError("--n-eval-tasks and --save-freq must be >= 0")
    check_device(args.device)
    import_gym_packages(args.gym_packages)
    spec = resolve_run(args.algo, args.env, seed=args.seed, overrides=parse_key_values(args.hyperparams, "--hyperparams"),
                       config=args.config, env_kwargs=parse_key_values(args.env_kwargs, "--env-kwargs"),
                       n_timesteps=args.n_timesteps, policy=args.policy)
    if args.trained_agent:
        trained = existing_checkpoint(args.trained_agent)
        model = load_checkpoint(algo_cls, str(trained), None, args)
        # the family given now (id or module:Class): adapt and evaluate_adaptation copy this DummyVecEnv's sub-envs
        # when the checkpoint has no registered id to rebuild from
        venv = make_env(spec.env, getattr(model, "meta_batch_size", None) or model.n_envs, spec.seed, spec.env_kwargs)
        try:
            model.set_env(venv)
        except (ValueError, AssertionError) as error:
            raise UsageError(f"{trained} does not fit --env {spec.env}: {error}") from error
        model._ngrl_env_spec = spec.env
        if model.num_timesteps >= spec.n_timesteps:
            raise UsageError(f"{trained} has already trained {model.num_timesteps} steps, the whole budget of {spec.n_timesteps}: "
                             "raise --n-timesteps")
        remaining = spec.n_timesteps - model.num_timesteps
    else:
        model = build_model(spec, device=args.device, verbose=args.verbose, tensorboard_log=args.tensorboard_log)
        remaining = spec.n_timesteps
    run_dir = new_run_dir(args.log_folder, args.algo, args.env, spec.seed)
    write_run_files(run_dir, args.env, spec.config_block(), args.algo)
    path = run_dir / f"{env_name(args.env)}.zip"
    status = learn_and_save(model, remaining, args, run_dir, path, f"{args.algo.upper()}_{run_dir.name}", resume_arguments(sys.argv[1:]))
    if status != 0:
        return status
    if model.num_timesteps != spec.n_timesteps:
        print(f"Ran {model.num_timesteps} environment steps for a budget of {spec.n_timesteps}: a meta-iteration ends whole.")
    if args.n_eval_tasks > 0:
        tasks = held_out_tasks(resolve_env(spec.env), args.n_eval_tasks, spec.seed + 10_000, spec.env_kwargs)
        print_adaptation(model, spec.env, tasks, [0, 1], spec.seed + 10_000)
    return 0


def saved_algorithm(path: pathlib.Path) -> Any:
    """The algorithm a checkpoint records (read from its JSON data only); a CheckpointError for a bad file."""
    from agents.checkpoint import checkpoint_data

    return checkpoint_data(path).get("_ngrl_algorithm")


def cmd_adapt(args: argparse.Namespace) -> int:
    from stable_baselines3.common.utils import check_for_correct_spaces

    from agents import META_ALGOS
    from agents.checkpoint import checkpoint_data
    from envs.task_family import held_out_tasks

    if any(k < 0 for k in args.n_updates):
        raise UsageError("--n-updates takes non-negative integers")
    if args.n_tasks < 1:
        raise UsageError("--n-tasks must be at least 1")
    check_device(args.device)
    output = pathlib.Path(args.output) if args.output else None
    if output is not None:
        if output.is_dir():
            raise UsageError(f"--output {output} is a folder: name a file to write, e.g. {output / 'adaptation.json'}")
        if not output.parent.is_dir() or not os.access(output.parent, os.W_OK):
            raise UsageError(f"--output {output}: its folder {output.parent} does not exist or is not writable")
    path = existing_checkpoint(args.model)
    saved = saved_algorithm(path)
    by_class = {cls.__name__: name for name, cls in META_ALGOS.items()}
    if saved not in by_class:
        raise UsageError(f"{path} was saved by {saved or 'something other than ngrl'}, not by a meta-learner ({', '.join(META_ALGOS)}); "
                         "use `train.py eval` for ordinary agents")
    import_gym_packages(args.gym_packages)
    env_kwargs = parse_key_values(args.env_kwargs, "--env-kwargs")
    model = load_checkpoint(META_ALGOS[by_class[saved]], str(path), None, args)
    if args.env is None and model.env_id is None:
        # a module:Class family is imported only when the command line names it, never because a checkpoint does
        recorded = checkpoint_data(path).get("_ngrl_env_spec")
        raise UsageError(f"{path} was meta-trained on a task family given in code ({recorded or 'not a registered id'}), which a "
                         f"checkpoint does not hold: name it again with --env {recorded or 'package.module:MyFamily'} "
                         "(and the --env-kwargs and --gym-packages of training)")
    family = args.env or model.env_id
    if args.env is None:
        env_kwargs = {**model.env_kwargs, **env_kwargs}
    target = check_task_family(family, env_kwargs)
    tasks = held_out_tasks(target, args.n_tasks, args.seed, env_kwargs)
    venv = None  # the model's own family, as it was saved
    if args.env is not None or args.env_kwargs:
        venv = make_env(family, args.n_tasks, args.seed, env_kwargs)
        try:
            if hasattr(model, "episodes_per_trial"):  # RL² observes the trial's inputs too: compare a trial env's spaces
                from agents.meta.family import sub_env_copies
                from envs.trial import TrialEnv

                probe = TrialEnv(sub_env_copies(venv), model.episodes_per_trial)
                check_for_correct_spaces(probe, model.observation_space, model.action_space)
                probe.close()
            else:
                check_for_correct_spaces(venv, model.observation_space, model.action_space)
        except ValueError as error:
            raise UsageError(f"{path} does not fit --env {family}: {error}") from error
    returns = print_adaptation(model, family, tasks, args.n_updates, args.seed, env=venv)
    if output is not None:
        out = {"model": str(path), "env": family, "seed": args.seed, "tasks": tasks,
               "returns": {str(k): v.tolist() for k, v in returns.items()}}
        output.write_text(json.dumps(out, indent=1))
    return 0


# --- benchmark: a grid of runs on Ray ------------------------------------------------------------

THRESHOLDS = {"CartPole-v1": 475.0, "Acrobot-v1": -100.0, "Pendulum-v1": -200.0, "LunarLander-v3": 200.0,
              "MountainCar-v0": -110.0, "ngrl/CartPoleNoVel-v1": 475.0, "ngrl/CueCorridor-v0": 0.9}
RUN_FIELDS = ["algo", "env", "seed", "status", "error", "timesteps", "threshold", "steps_to_threshold", "final_eval",
              "best_eval", "evals_at_threshold", "n_evals", "training_episodes", "best_100_episode_average", "train_seconds",
              "seconds_per_100k"]
VARIANT_KEYS = {"algo", "description", "base_config", "hyperparams", "envs", "n_timesteps", "adaptation_updates"}
ADAPTATION_FIELDS = ["algo", "env", "seed", "updates", "mean", "std", "n_tasks"]


@dataclass(frozen=True)
class GridAlgorithm:
    """A name of ``benchmark --algos``: an algorithm, or a variant of one (configs/variants.yml) whose hyper-parameters
    are fixed there; ``hyperparams`` hold for every env, ``envs[env]`` for one, both over the base configuration."""

    name: str
    algo: str
    base_config: bool = True
    hyperparams: dict[str, Any] | None = None
    envs: dict[str, dict[str, Any]] | None = None
    n_timesteps: int | None = None  # the row's own budget over --n-timesteps (0: built and evaluated, never trained)
    adaptation_updates: tuple[int, ...] | None = None  # a meta-learner row's own K over --adaptation-updates

    def overrides(self, env: str) -> dict[str, Any]:
        return {**(self.hyperparams or {}), **((self.envs or {}).get(env) or {})}


def read_variants(path: pathlib.Path) -> dict[str, GridAlgorithm]:
    """The variants of ``path`` (configs/variants.yml by default), each checked for its form."""
    table = read_config(path) if path.is_file() else {}
    variants = {}
    for name, block in table.items():
        where = f"{path}: variant {name!r}"
        if not isinstance(block, dict) or "algo" not in block:
            raise UsageError(f"{where} must be a mapping with at least 'algo:' (the algorithm it runs)")
        unknown = sorted(set(block) - VARIANT_KEYS)
        if unknown:
            raise UsageError(f"{where} has unknown key(s) {', '.join(unknown)}; a variant takes {', '.join(sorted(VARIANT_KEYS))}")
        hyperparams, envs = block.get("hyperparams") or {}, block.get("envs") or {}
        if not isinstance(hyperparams, dict) or not isinstance(envs, dict) or not all(isinstance(v, dict) for v in envs.values()):
            raise UsageError(f"{where}: 'hyperparams' must map names to values and 'envs' env ids to such mappings")
        if not isinstance(block.get("base_config", True), bool):
            raise UsageError(f"{where}: base_config must be true or false, got {block['base_config']!r}")
        budget = block.get("n_timesteps")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget < 0 or budget != int(budget)):
            raise UsageError(f"{where}: n_timesteps must be a whole number of steps >= 0 (0: never trained), got {budget!r}")
        updates = block.get("adaptation_updates")
        if updates is not None and (not isinstance(updates, list) or not updates
                                    or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in updates)):
            raise UsageError(f"{where}: adaptation_updates must be a list of numbers of inner updates >= 0, got {updates!r}")
        variants[str(name)] = GridAlgorithm(str(name), str(block["algo"]), block.get("base_config", True), hyperparams, envs,
                                            None if budget is None else int(budget),
                                            None if updates is None else tuple(sorted(set(updates))))
    return variants


def grid_algorithm(name: str, variants_file: str | None = None) -> GridAlgorithm:
    """``name`` as an algorithm of the grid: one of the algorithms, or a variant of ``variants_file``."""
    from agents import ALGOS, META_ALGOS

    path = pathlib.Path(variants_file) if variants_file else CONFIG_DIR / "variants.yml"
    if variants_file and not path.is_file():
        raise UsageError(f"--variants {variants_file} does not exist")
    variants = read_variants(path)
    known = {**ALGOS, **META_ALGOS, **peer_algorithms()}
    if name in known:
        if name in variants:
            raise UsageError(f"{path}: the variant {name!r} has the name of an algorithm; rename it")
        return GridAlgorithm(name, name)
    if name in variants:
        variant = variants[name]
        if variant.algo in CONTRIB_PEERS and variant.algo not in known:
            raise UsageError(f"variant {name!r} runs {variant.algo}, sb3-contrib's, which is not installed: python -m pip install -e \".[bench]\"")
        if variant.algo not in known:
            raise UsageError(f"{path}: variant {name!r} runs algo {variant.algo!r}, which is not one of {', '.join(known)}")
        return variant
    if name in CONTRIB_PEERS:
        raise UsageError(f"{name} is sb3-contrib's, which is not installed: python -m pip install -e \".[bench]\"")
    close = difflib.get_close_matches(name, [*known, *variants], n=1)
    hint = f" Did you mean {close[0]}?" if close else ""
    raise UsageError(f"unknown algorithm {name!r}.{hint} Available: {', '.join(known)}; variants ({path}): {', '.join(variants) or 'none'}.")


def training_returns_callback(returns: list[float]) -> Any:
    """A callback appending each training episode's return (Monitor's, in the env's own units) as episodes end."""
    from stable_baselines3.common.callbacks import BaseCallback

    class RecordReturns(BaseCallback):
        def _on_step(self) -> bool:
            returns.extend(float(info["episode"]["r"]) for info in self.locals.get("infos", ()) if "episode" in info)
            return True

    return RecordReturns()


def best_window_average(returns: Sequence[float], window: int = 100) -> float | None:
    """max over k of the mean of returns[k : k + window]: the best 100-episode average of training returns (the
    metric of Knight & Lerner 2018, and of gymnasium's "solved"); None with fewer than ``window`` episodes."""
    import numpy as np

    if len(returns) < window:
        return None
    sums = np.convolve(np.asarray(returns, dtype=float), np.ones(window), mode="valid")
    return float(sums.max() / window)


def benchmark_run(task: dict[str, Any]) -> dict[str, Any]:
    """One (algo, env, seed) of a benchmark grid, the training path of ``train``: resolve, build, learn with
    periodic evaluation, save. Writes ``result.json`` in the run's folder last, so a rerun skips a finished run.
    ``task["algo"]`` names the grid's row (an algorithm or a variant), ``task["run_algo"]`` the algorithm it runs."""
    import time

    import torch

    torch.set_num_threads(1)
    run_dir = pathlib.Path(task["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = resolve_run(task.get("run_algo", task["algo"]), task["env"], seed=task["seed"], overrides=task["overrides"],
                       n_timesteps=task["n_timesteps"], env_kwargs=task.get("env_kwargs"), base_config=task.get("base_config", True))
    model = build_model(spec, device=task.get("device", "cpu"))
    label = spec.algo if task["algo"] == spec.algo else f"{task['algo']} (a variant of {spec.algo})"
    write_run_files(run_dir, spec.env, spec.config_block(), label, task.get("command"))  # the grid's command, not the worker's
    evaluation = PeriodicEvaluation(spec, task["eval_freq"], task["n_eval_episodes"], quiet=True)
    returns: list[float] = []
    began = time.perf_counter()
    model.learn(spec.n_timesteps, callback=[evaluation.callback(), training_returns_callback(returns)])
    if not evaluation.is_current(model):
        evaluation.evaluate_now(model)  # the final policy is always evaluated
    wall = time.perf_counter() - began
    model.save(run_dir / "model.zip")
    evaluation.write_csv(run_dir / "evaluations.csv")
    result = {"algo": task["algo"], "algorithm": spec.algo, "env": spec.env, "seed": spec.seed, "status": "ok", "error": "",
              "random_score": random_policy_score(spec, task["n_eval_episodes"]),
              "timesteps": int(model.num_timesteps), "evaluations": evaluation.rows,
              "training_episodes": len(returns), "best_100_episode_average": best_window_average(returns),
              "train_seconds": evaluation.rows[-1]["train_seconds"], "wall_seconds": round(wall, 3)}
    if hasattr(model, "evaluate_adaptation"):  # a meta-learner: the trained θ adapted to the held-out tasks, 0, 1, 3… updates
        result["adaptation"] = evaluation.adaptation(model, task.get("adaptation_updates") or [0, 1, 3])
    _write_json(run_dir / "result.json", result)
    return result


def random_policy_score(spec: RunSpec, n_episodes: int) -> float:
    """Mean return of uniformly random actions on the evaluation env (seeded): the 0 of normalised scores."""
    import numpy as np

    venv = make_env(spec.env, 1, spec.seed + 20_000, spec.env_kwargs)
    venv.action_space.seed(spec.seed)
    returns, total = [], 0.0
    venv.reset()
    while len(returns) < n_episodes:
        _, rewards, dones, _ = venv.step(np.array([venv.action_space.sample()]))
        total += float(rewards[0])
        if dones[0]:
            returns.append(total)
            total = 0.0
    venv.close()
    return float(np.mean(returns))


def _write_json(path: pathlib.Path, data: Any) -> None:
    """Write ``data`` atomically, creating the folder: a run whose worker died before starting it has none yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=1))
    os.replace(temporary, path)


def summarize_run(result: dict[str, Any], threshold: float | None) -> dict[str, Any]:
    """A run's row of runs.csv: steps to the threshold (first evaluation at or above it), final and best evaluation,
    the best 100-episode average of its training returns."""
    rows = result.get("evaluations", [])
    means = [r["mean"] for r in rows]
    reached = [r["timesteps"] for r in rows if threshold is not None and r["mean"] >= threshold]
    seconds = result.get("train_seconds")
    return {
        "algo": result["algo"], "env": result["env"], "seed": result["seed"], "status": result["status"],
        "error": result.get("error", ""), "timesteps": result.get("timesteps", ""), "threshold": "" if threshold is None else threshold,
        "steps_to_threshold": reached[0] if reached else "", "final_eval": means[-1] if means else "",
        "best_eval": max(means) if means else "", "evals_at_threshold": len(reached) if threshold is not None else "",
        "n_evals": len(means), "training_episodes": result.get("training_episodes", ""),
        "best_100_episode_average": "" if result.get("best_100_episode_average") is None else result["best_100_episode_average"],
        "train_seconds": seconds if seconds is not None else "",
        "seconds_per_100k": round(seconds * 100_000 / result["timesteps"], 1) if seconds and result.get("timesteps") else "",
    }


def write_benchmark_tables(out: pathlib.Path, thresholds: dict[str, float]) -> list[dict[str, Any]]:
    """evaluations.csv, runs.csv and summary.md under ``out`` from every run's result.json."""
    import csv
    import statistics

    results = [json.loads(p.read_text()) for p in sorted(out.glob("*/*/result.json"))]
    results.sort(key=lambda r: (r["env"], r["algo"], r["seed"]))
    with open(out / "evaluations.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["algo", "env", "seed", "timesteps", "mean", "std", "train_seconds"])
        for r in results:
            for row in r.get("evaluations", []):
                writer.writerow([r["algo"], r["env"], r["seed"], row["timesteps"], row["mean"], row["std"], row["train_seconds"]])
    runs = [summarize_run(r, thresholds.get(r["env"])) for r in results]
    with open(out / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RUN_FIELDS)
        writer.writeheader()
        writer.writerows(runs)

    def k(steps: float) -> str:
        return f"{steps / 1000:g}k"

    lines = ["| env (threshold) | algo | solved | steps to threshold (median [min, max]) | final eval (per seed) | "
             "best eval (per seed) | evals ≥ thr | best 100-episode training average (per seed) | train s / 100k (median) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (env, algo) in dict.fromkeys((r["env"], r["algo"]) for r in runs):
        group = [r for r in runs if r["env"] == env and r["algo"] == algo]
        done = [r for r in group if r["status"] == "ok"]
        reached = [r["steps_to_threshold"] for r in done if r["steps_to_threshold"] != ""]
        steps = f"{k(statistics.median(reached))} [{k(min(reached))}, {k(max(reached))}]" if reached else "—"
        threshold = thresholds.get(env)
        speed = [r["seconds_per_100k"] for r in done if r["seconds_per_100k"] != ""]
        failed = f" ({len(group) - len(done)} failed)" if len(done) < len(group) else ""
        cells = [
            f"{env} ({'—' if threshold is None else f'{threshold:g}'})", algo, f"{len(reached)}/{len(group)}{failed}", steps,
            ", ".join(f"{r['final_eval']:.1f}" for r in done), ", ".join(f"{r['best_eval']:.1f}" for r in done),
            ", ".join(str(r["evals_at_threshold"]) for r in done),
            ", ".join("—" if r["best_100_episode_average"] == "" else f"{r['best_100_episode_average']:.1f}" for r in done),
            f"{statistics.median(speed):.0f}" if speed else "—",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += adaptation_tables(out, results)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return runs


def adaptation_tables(out: pathlib.Path, results: list[dict[str, Any]]) -> list[str]:
    """The meta-learners' final adaptation returns (result.json's ``adaptation``): ``adaptation.csv`` (one row per run and
    number of updates: mean and std over the held-out tasks) and the lines of summary.md's adaptation tables (mean ± std
    over seeds of the per-seed mean over tasks; then each seed's mean). No meta-learner in the grid: no file, no lines."""
    import csv

    import numpy as np

    adapted = [r for r in results if r.get("status") == "ok" and "adaptation" in r]
    if not adapted:
        return []
    rows = []
    for r in adapted:
        for k, returns in r["adaptation"]["returns"].items():
            rows.append({"algo": r["algo"], "env": r["env"], "seed": r["seed"], "updates": int(k), "mean": float(np.mean(returns)),
                         "std": float(np.std(returns)), "n_tasks": len(returns)})
    with open(out / "adaptation.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ADAPTATION_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    updates = sorted({row["updates"] for row in rows})
    header = " | ".join(f"{k} update{'' if k == 1 else 's'}" for k in updates)
    lines = ["", "Adaptation on held-out tasks (meta-learners): mean return over the tasks, mean ± std over seeds", "",
             f"| env | algo | seeds | {header} |", "|---|---|---|" + "---|" * len(updates)]
    per_seed = ["", "Per seed (mean return over the held-out tasks):", "", "| env | algo | updates | per seed |", "|---|---|---|---|"]
    for (env, algo) in dict.fromkeys((row["env"], row["algo"]) for row in rows):
        group = [row for row in rows if row["env"] == env and row["algo"] == algo]
        seeds = sorted({row["seed"] for row in group})
        cells = []
        for k in updates:
            means = [row["mean"] for row in group if row["updates"] == k]
            cells.append(f"{np.mean(means):.4g} ± {np.std(means):.2g}" if means else "—")
            if means:
                per_seed.append(f"| {env} | {algo} | {k} | " + ", ".join(f"{m:.4g}" for m in means) + " |")
        lines.append(f"| {env} | {algo} | {', '.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    return lines + per_seed


def cmd_benchmark(args: argparse.Namespace) -> int:
    if args.n_timesteps < 1 or args.eval_freq < 1 or args.n_eval_episodes < 1 or args.max_retries < 0:
        raise UsageError("--n-timesteps, --eval-freq and --n-eval-episodes must be positive, --max-retries >= 0")
    if min(args.adaptation_updates) < 0:
        raise UsageError(f"--adaptation-updates takes numbers of inner updates >= 0, got {args.adaptation_updates}")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    import_gym_packages(args.gym_packages)
    thresholds = {**THRESHOLDS, **{k: float(v) for k, v in parse_key_values(args.thresholds, "--thresholds").items()}}
    overrides = parse_key_values(args.hyperparams, "--hyperparams")
    env_kwargs = parse_key_values(args.env_kwargs, "--env-kwargs")
    out = pathlib.Path(args.out)
    grid = [grid_algorithm(name, args.variants) for name in args.algos]
    accepted = {entry.name: accepted_arguments(algorithm(entry.algo, peers=True)) | set(RUN_KEYS) for entry in grid}
    unknown = sorted(set(overrides) - set().union(*accepted.values()))
    if unknown:
        raise UsageError(f"--hyperparams {', '.join(unknown)}: no algorithm of the grid ({', '.join(args.algos)}) takes them")
    tasks = []
    for entry in grid:
        for env in args.envs:
            resolve_env(env)
            # the variant's values, then the command line's (those this algorithm takes)
            run_overrides = {**entry.overrides(env), **{k: v for k, v in overrides.items() if k in accepted[entry.name]}}
            budget = args.n_timesteps if entry.n_timesteps is None else entry.n_timesteps
            resolve_run(entry.algo, env, seed=0, overrides=run_overrides, n_timesteps=budget, env_kwargs=env_kwargs,
                        base_config=entry.base_config)  # bad input: told now
            for seed in args.seeds:
                run_dir = out / entry.name / f"{env_name(env)}_{seed}"
                result = run_dir / "result.json"
                if result.is_file() and json.loads(result.read_text()).get("status") == "ok":
                    continue  # finished in an earlier invocation
                tasks.append({"algo": entry.name, "run_algo": entry.algo, "base_config": entry.base_config, "env": env, "seed": seed,
                              "overrides": run_overrides, "env_kwargs": env_kwargs, "n_timesteps": budget,
                              "eval_freq": args.eval_freq, "n_eval_episodes": args.n_eval_episodes, "run_dir": str(run_dir),
                              "adaptation_updates": list(entry.adaptation_updates or args.adaptation_updates),
                              "command": [sys.executable, *sys.argv]})
    total = len(args.algos) * len(args.envs) * len(args.seeds)
    print(f"{total - len(tasks)} of {total} runs already finished under {out}; {len(tasks)} to run.", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    status = 0
    if tasks:
        status = _run_on_ray(tasks, args)
    runs = write_benchmark_tables(out, thresholds)
    print((out / "summary.md").read_text())
    print(f"Wrote {out / 'evaluations.csv'}, {out / 'runs.csv'} and {out / 'summary.md'}")
    failed = [r for r in runs if r["status"] != "ok"]
    if failed and status == 0:
        print(f"{len(failed)} run(s) failed; see the error column of runs.csv (rerun the command to retry them)", file=sys.stderr)
        status = 1
    return status


def start_ray(args: argparse.Namespace) -> bool:
    """Join the cluster at ``--ray-address``, or start a local Ray with ``--workers`` CPUs; True when started here."""
    import ray

    if ray.is_initialized():
        return False
    if args.ray_address:
        ray.init(address=args.ray_address, log_to_driver=False)
    else:  # workers import this checkout and run torch on one thread
        # Ray starts its workers at niceness 15; a run is the work here, and one that yields to every other process
        # on the machine is slower than the same run through `train` (measured: 106 s against 66 s under load)
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(num_cpus=args.workers or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(pathlib.Path(__file__).resolve().parent)}})
    return True


def _run_on_ray(tasks: list[dict[str, Any]], args: argparse.Namespace) -> int:
    """Each task a Ray task with one CPU; a local Ray with --workers CPUs unless --ray-address joins a cluster."""
    import time

    try:
        import ray
    except ImportError as error:
        raise UsageError("benchmark needs Ray: python -m pip install -e \".[experiments]\"") from error
    import train as run_layer  # workers import the module (not __main__) to run its functions

    started_here = start_ray(args)
    remote = ray.remote(num_cpus=1, num_gpus=args.gpus_per_run, max_retries=args.max_retries, retry_exceptions=True)(
        run_layer.benchmark_run
    )
    pending = {remote.remote(task): task for task in tasks}
    done = failed = 0
    began = time.perf_counter()
    received = signal.SIGINT

    def terminate(signum: int, _frame: Any) -> None:  # SIGTERM (`kill`, a scheduler) stops the grid as Ctrl-C does
        nonlocal received
        received = signum
        raise KeyboardInterrupt

    try:
        previous_term = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread (e.g. called from a notebook's worker thread): SIGTERM keeps its handler
        previous_term = None
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=30.0)
            for ref in ready:
                task = pending.pop(ref)
                try:
                    ray.get(ref)
                    done += 1
                except Exception as error:  # the run raised (after its retries) or its worker died
                    failed += 1
                    message = str(getattr(error, "cause", None) or error).strip().splitlines()
                    run_layer._write_json(pathlib.Path(task["run_dir"]) / "result.json", {
                        "algo": task["algo"], "env": task["env"], "seed": task["seed"], "status": "failed",
                        "error": (message[-1] if message else type(error).__name__)[:500], "evaluations": []})
            finished = done + failed
            elapsed = time.perf_counter() - began
            eta = f", about {elapsed / finished * len(pending) / 60:.1f} min left" if finished else ""
            print(f"[benchmark] {done} done, {failed} failed, {len(pending)} to go{eta}", flush=True)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        print(f"Interrupted ({signal.Signals(received).name}): {done} runs finished and are kept; rerun the same command to "
              f"run the other {len(pending)}.", file=sys.stderr)
        return EXIT_SIGNAL[received]
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        if started_here:
            ray.shutdown()
    return 0


# --- tune: hyper-parameter search on Ray Tune, Optuna's TPE, each trial scored on several seeds ------------


def search_space(algo: str, path: str | None, fixed: dict[str, Any]) -> dict[str, Any]:
    """The algorithm's block of configs/search_spaces.yml (or ``path``) as Ray Tune domains, less the ``fixed`` keys."""
    from ray import tune

    file = pathlib.Path(path) if path else CONFIG_DIR / "search_spaces.yml"
    table = read_config(file) if file.is_file() else {}
    if algo not in table:
        raise UsageError(f"{file} has no search space for {algo}: add a block '{algo}:' (see configs/search_spaces.yml)")
    kinds = {"loguniform": tune.loguniform, "uniform": tune.uniform, "randint": tune.randint, "choice": tune.choice}
    space = {}
    for key, spec in (table[algo] or {}).items():
        if key in fixed or key.split(".")[0] in fixed:
            continue
        if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in kinds):
            raise UsageError(f"{file}: {algo}.{key} must be one of {', '.join('{' + k + ': ...}' for k in kinds)}, got {spec!r}")
        ((kind, arguments),) = spec.items()
        space[key] = kinds[kind](arguments) if kind == "choice" else kinds[kind](*arguments)
    return space


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    """{'policy_kwargs.net_arch': [64]} -> {'policy_kwargs': {'net_arch': [64]}}."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, last = key.split(".")
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
        node[last] = value
    return out


def tune_trial(config: dict[str, Any], task: dict[str, Any]) -> None:
    """One trial: the sampled hyper-parameters trained on every seed in turn, by the path of ``train``; after each
    seed it reports the mean (and the worst) final evaluation so far, which the median rule prunes on."""
    import numpy as np
    import torch
    from ray import tune

    torch.set_num_threads(1)
    overrides = {**task["fixed"], **nested(config)}
    finals: list[float] = []
    for done, seed in enumerate(task["seeds"], start=1):
        spec = resolve_run(task["algo"], task["env"], seed=seed, overrides=overrides, n_timesteps=task["n_timesteps"])
        model = build_model(spec, device="cpu")
        model.learn(spec.n_timesteps)
        evaluation = PeriodicEvaluation(spec, 0, task["n_eval_episodes"], quiet=True)
        evaluation.evaluate_now(model)
        finals.append(evaluation.rows[-1]["mean"])
        tune.report({"score": float(np.mean(finals)), "worst": float(np.min(finals)), "seeds_done": done})


def cmd_tune(args: argparse.Namespace) -> int:
    try:
        import optuna
        import ray
        from ray import tune
        from ray.tune.schedulers import MedianStoppingRule
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as error:
        raise UsageError('tune needs Ray Tune and Optuna: python -m pip install -e ".[experiments]"') from error
    import csv

    import train as run_layer  # the workers import the module, not __main__

    if args.n_trials < 1 or args.n_timesteps < 1 or args.n_eval_episodes < 1 or not args.seeds:
        raise UsageError("--n-trials, --n-timesteps and --n-eval-episodes must be positive, and --seeds non-empty")
    import_gym_packages(args.gym_packages)
    resolve_env(args.env)
    fixed = parse_key_values(args.hyperparams, "--hyperparams")
    resolve_run(args.algo, args.env, seed=args.seeds[0], overrides=fixed, n_timesteps=args.n_timesteps)  # bad input: now
    space = search_space(args.algo, args.search_space, fixed)
    out = pathlib.Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(args.storage) if args.storage else None
    searcher = OptunaSearch(metric="score", mode="max", sampler=optuna.samplers.TPESampler(seed=args.sampler_seed),
                            study_name=f"{args.algo}-{env_name(args.env)}", storage=storage)
    task = {"algo": args.algo, "env": args.env, "seeds": args.seeds, "n_timesteps": args.n_timesteps,
            "n_eval_episodes": args.n_eval_episodes, "fixed": fixed}
    started_here = start_ray(args)
    try:
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(run_layer.tune_trial, task=task), {"cpu": 1}),
            param_space=space,
            tune_config=tune.TuneConfig(
                search_alg=searcher, num_samples=args.n_trials, max_concurrent_trials=args.workers or os.cpu_count(),
                scheduler=MedianStoppingRule(time_attr="seeds_done", metric="score", mode="max", grace_period=1,
                                             min_samples_required=3),
            ),
            run_config=tune.RunConfig(storage_path=str(out), name="ray_tune", verbose=0),
        )
        grid = tuner.fit()
    finally:
        if started_here:
            ray.shutdown()
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        rows.append({**{f"param:{k}": v for k, v in (result.config or {}).items()}, "score": metrics.get("score"),
                     "worst": metrics.get("worst"), "seeds_done": metrics.get("seeds_done", 0),
                     "status": "error" if result.error else ("pruned" if metrics.get("seeds_done", 0) < len(args.seeds) else "complete"),
                     "error": str(result.error).strip().splitlines()[-1][:300] if result.error else ""})
    fields = sorted({k for row in rows for k in row if k.startswith("param:")}) + ["score", "worst", "seeds_done", "status", "error"]
    with open(out / "trials.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    complete = [r for r in rows if r["status"] == "complete"]
    if not complete:
        print(f"No trial completed all {len(args.seeds)} seeds; see {out / 'trials.csv'}", file=sys.stderr)
        return 1
    best = max(complete, key=lambda r: (r["score"], r["worst"]))  # ties broken by the worst seed
    params = {**fixed, **nested({k.removeprefix("param:"): v for k, v in best.items() if k.startswith("param:")})}
    block = config_block(params, n_timesteps=args.n_timesteps)
    header = (f"# train.py tune: best of {len(complete)} complete trials ({len(rows)} in all) for {args.algo} on {args.env}, "
              f"mean final evaluation {best['score']:.2f} over seeds {args.seeds} (worst {best['worst']:.2f}). "
              f"Paste the block into configs/{args.algo}.yml.\n")
    (out / "best.yml").write_text(header + yaml.safe_dump({args.env: block}, sort_keys=False))
    print((out / "best.yml").read_text())
    print(f"Wrote {out / 'best.yml'} and {out / 'trials.csv'}")
    return 0


# --- plot: learning curves and aggregate scores of benchmark folders ----------------------------------


def _bootstrap_interval(samples: Sequence[Sequence[float]], statistic: Callable[[Any], float], rng: Any,
                        n_resamples: int = 2000) -> tuple[float, float]:
    """95% percentile interval of ``statistic`` over stratified bootstrap resamples: each stratum (an env's runs,
    or one curve point's seeds) resampled with replacement within itself, as rliable does."""
    import numpy as np

    values = []
    for _ in range(n_resamples):
        resampled = [np.asarray(group)[rng.integers(0, len(group), len(group))] for group in samples]
        values.append(statistic(np.concatenate(resampled)))
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def interquartile_mean(values: Any) -> float:
    """Mean of the middle 50% of the values (the 25% trimmed mean of Agarwal et al. 2021)."""
    import numpy as np

    ordered = np.sort(np.asarray(values, dtype=float))
    cut = int(np.floor(0.25 * len(ordered)))
    return float(ordered[cut:len(ordered) - cut].mean())


def optimality_gap(values: Any) -> float:
    """Mean shortfall of the normalised scores below 1 (the threshold): 0 when every run reached it."""
    import numpy as np

    return float(np.mean(np.maximum(0.0, 1.0 - np.asarray(values, dtype=float))))


def cmd_plot(args: argparse.Namespace) -> int:
    import numpy as np

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise UsageError('plot needs matplotlib: python -m pip install -e ".[experiments]"') from error
    thresholds = {**THRESHOLDS, **{k: float(v) for k, v in parse_key_values(args.thresholds, "--thresholds").items()}}
    results = []
    for folder in args.folders:
        found = sorted(pathlib.Path(folder).glob("*/*/result.json"))
        if not found:
            raise UsageError(f"{folder} holds no benchmark runs (*/*/result.json): point to a `train.py benchmark --out` folder")
        results += [r for r in (json.loads(p.read_text()) for p in found) if r.get("status") == "ok"]
    if not results:
        raise UsageError("no finished runs to plot")
    envs = list(dict.fromkeys(r["env"] for r in results))
    algos = list(dict.fromkeys(r["algo"] for r in results))
    rng = np.random.default_rng(args.seed)

    figure, axes = plt.subplots(1, len(envs), figsize=(5 * len(envs), 3.6), squeeze=False)
    for ax, env in zip(axes[0], envs):
        for algo in algos:
            runs = [r for r in results if r["env"] == env and r["algo"] == algo]
            if not runs:
                continue
            steps = sorted({row["timesteps"] for r in runs for row in r["evaluations"]})
            per_step = [[row["mean"] for r in runs for row in r["evaluations"] if row["timesteps"] == t] for t in steps]
            means = [float(np.mean(v)) for v in per_step]
            bands = [_bootstrap_interval([v], np.mean, rng, 500) if len(v) > 1 else (v[0], v[0]) for v in per_step]
            line = ax.plot(steps, means, label=f"{algo} ({len(runs)} seeds)")[0]
            ax.fill_between(steps, [b[0] for b in bands], [b[1] for b in bands], color=line.get_color(), alpha=0.2)
        if env in thresholds:
            ax.axhline(thresholds[env], color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(env)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("evaluation return")
        ax.legend(fontsize=8)
    figure.tight_layout()
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=args.dpi)
    plt.close(figure)

    scored = [e for e in envs if e in thresholds]
    lines = [f"Final evaluation, normalised per env as (score − random) / (threshold − random), over {', '.join(scored) or 'no env'}; "
             "95% stratified-bootstrap intervals (2000 resamples).", "",
             "| algo | runs | IQM | optimality gap |", "|---|---|---|---|"]
    for algo in algos:
        strata = []
        for env in scored:
            runs = [r for r in results if r["env"] == env and r["algo"] == algo and r["evaluations"]]
            randoms = [r["random_score"] for r in results if r["env"] == env and "random_score" in r]
            if not runs or not randoms:
                continue
            low = float(np.mean(randoms))
            strata.append([(r["evaluations"][-1]["mean"] - low) / (thresholds[env] - low) for r in runs])
        if not strata:
            continue
        pooled = np.concatenate([np.asarray(s) for s in strata])
        iqm_low, iqm_high = _bootstrap_interval(strata, interquartile_mean, rng)
        gap_low, gap_high = _bootstrap_interval(strata, optimality_gap, rng)
        lines.append(f"| {algo} | {len(pooled)} | {interquartile_mean(pooled):.3f} [{iqm_low:.3f}, {iqm_high:.3f}] | "
                     f"{optimality_gap(pooled):.3f} [{gap_low:.3f}, {gap_high:.3f}] |")
    table = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(table)
    print(table)
    print(f"Wrote {out} and {out.with_suffix('.md')}")
    return 0


# --- the parser -------------------------------------------------------------------------------


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument("--num-threads", type=int, default=1,
                        help="torch threads (default 1: fastest for the small networks of RL; raise it for large CNNs)")
    parser.add_argument("--allow-unsafe-pickle", action="store_true",
                        help="also load checkpoints and statistics in pickle format (older ngrl, SB3): unpickling can run "
                             "arbitrary code, so only for files you trust")


def _add_training(parser: argparse.ArgumentParser, default_log: str = "logs") -> None:
    parser.add_argument("--n-timesteps", type=int, help="environment steps (default: the config's n_timesteps)")
    parser.add_argument("--policy", help="policy name (default: the config's, else MlpPolicy)")
    parser.add_argument("--hyperparams", nargs="*", metavar="KEY=VALUE", help="override config entries")
    parser.add_argument("--config", help="YAML file to read instead of configs/<algo>.yml (e.g. a run's config.yml)")
    parser.add_argument("--log-folder", default=default_log, help="where runs are written (default logs/)")
    parser.add_argument("--tensorboard-log", help="tensorboard log folder")
    parser.add_argument("--save-freq", type=int, default=0, metavar="N",
                        help=f"also save a checkpoint every N steps under <run>/checkpoints/ (the last {KEEP_CHECKPOINTS} are kept)")
    parser.add_argument("--trained-agent", metavar="PATH", help="continue training this checkpoint (its step counter, "
                        "optimizer state and normalisation statistics) up to --n-timesteps steps in all")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--progress", action="store_true", help=argparse.SUPPRESS)  # progress is the default now
    parser.add_argument("--verbose", type=int, default=0, help="0: progress bar only, 1: SB3's training logs too")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train and evaluate ngrl agents.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train an agent and save its checkpoint")
    train.add_argument("--algo", required=True, help=f"algorithm: one of {', '.join(ALGO_NAMES)}")
    train.add_argument("--env", required=True, help="gymnasium id, or module:EnvClass / module:make_env for your own env")
    train.add_argument("--env-kwargs", nargs="*", metavar="KEY=VALUE", help="keyword arguments of the env (parsed as data)")
    train.add_argument("--gym-packages", nargs="*", metavar="PACKAGE", help="packages to import first (they register env ids)")
    train.add_argument("--seed", type=int, help="random seed (default: the config's, else 0)")
    train.add_argument("--n-eval-episodes", type=int, default=10, help="episodes of each evaluation (0: no final evaluation)")
    train.add_argument("--eval-freq", type=int, default=0, metavar="N",
                       help="also evaluate every N steps on a separate env (one line each; <run>/evaluations.csv)")
    train.add_argument("--save-replay-buffer", action="store_true",
                       help="off-policy agents (ngdqn): also save the replay buffer with each checkpoint (plain arrays), "
                            "so that --trained-agent continues with it")
    _add_training(train)
    _add_common(train)
    train.set_defaults(handler=cmd_train)

    evaluate_cmd = commands.add_parser("eval", help="evaluate a saved checkpoint")
    evaluate_cmd.add_argument("--algo", required=True, help=f"algorithm: one of {', '.join(ALGO_NAMES)}")
    evaluate_cmd.add_argument("--env", required=True, help="gymnasium id, or module:EnvClass / module:make_env")
    evaluate_cmd.add_argument("--env-kwargs", nargs="*", metavar="KEY=VALUE", help="keyword arguments of the env (parsed as data)")
    evaluate_cmd.add_argument("--gym-packages", nargs="*", metavar="PACKAGE", help="packages to import first (they register env ids)")
    evaluate_cmd.add_argument("--seed", type=int, help="seed of the evaluation env (default 0)")
    evaluate_cmd.add_argument("--model", required=True, help="path of the .zip checkpoint")
    evaluate_cmd.add_argument("--n-episodes", type=int, default=10, help="episodes to evaluate (default 10)")
    evaluate_cmd.add_argument("--stochastic", action="store_true", help="sample actions instead of the deterministic policy")
    evaluate_cmd.add_argument("--no-norm", action="store_true",
                              help="evaluate a model trained with normalize on raw observations (its statistics are missing)")
    _add_common(evaluate_cmd)
    evaluate_cmd.set_defaults(handler=cmd_eval)

    meta = commands.add_parser("meta-train", help="meta-train Reptile, FOMAML, iMAML or RL² on a task family")
    meta.add_argument("--algo", required=True, help=f"meta-learner: one of {', '.join(META_ALGO_NAMES)}")
    meta.add_argument("--env", required=True,
                      help="a task family: a registered id (e.g. ngrl/Navigation2D-v0), or module:FamilyClass / module:make_family")
    meta.add_argument("--env-kwargs", nargs="*", metavar="KEY=VALUE", help="keyword arguments of the env (parsed as data)")
    meta.add_argument("--gym-packages", nargs="*", metavar="PACKAGE", help="packages to import first (they register env ids)")
    meta.add_argument("--seed", type=int, help="random seed (default: the config's, else 0)")
    meta.add_argument("--n-eval-tasks", type=int, default=0, help="held-out tasks to report adaptation on after training")
    _add_training(meta)
    _add_common(meta)
    meta.set_defaults(handler=cmd_meta_train)

    adapt = commands.add_parser("adapt", help="returns of a meta-trained model on held-out tasks before and after adaptation")
    adapt.add_argument("--model", required=True, help="path of the .zip written by meta-train")
    adapt.add_argument("--n-tasks", type=int, default=20, help="held-out tasks (default 20)")
    adapt.add_argument("--n-updates", type=int, nargs="+", default=[0, 1, 3], help="inner updates to report (default 0 1 3)")
    adapt.add_argument("--seed", type=int, default=12345, help="seed of the held-out tasks and rollouts (default 12345)")
    adapt.add_argument("--output", help="also write the returns per task to this JSON file")
    adapt.add_argument("--env", help="the task family to adapt on (default: the model's registered id); a family given as "
                                     "module:Class in training must be named again")
    adapt.add_argument("--env-kwargs", nargs="*", metavar="KEY=VALUE", help="keyword arguments of the env (parsed as data)")
    adapt.add_argument("--gym-packages", nargs="*", metavar="PACKAGE", help="packages to import first (they register env ids)")
    _add_common(adapt)
    adapt.set_defaults(handler=cmd_adapt)

    bench = commands.add_parser("benchmark", help="a grid of algorithms × envs × seeds on Ray, with learning curves and tables")
    bench.add_argument("--algos", nargs="+", required=True,
                       help=f"ngrl's ({', '.join(ALGO_NAMES)}) and SB3's peers (ppo, a2c, dqn; trpo, recurrentppo with the bench extra), "
                            "or variants of configs/variants.yml (e.g. dqn-notarget, npg-ernn)")
    bench.add_argument("--envs", nargs="+", required=True, help="gymnasium ids or module:EnvClass")
    bench.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    bench.add_argument("--n-timesteps", type=int, default=100_000, help="environment steps per run (default 100000)")
    bench.add_argument("--eval-freq", type=int, default=5_000, help="evaluate every N steps (default 5000)")
    bench.add_argument("--n-eval-episodes", type=int, default=10,
                       help="deterministic episodes per evaluation; a meta-learner's held-out tasks (default 10)")
    bench.add_argument("--adaptation-updates", type=int, nargs="+", default=[0, 1, 3], metavar="K",
                       help="a meta-learner's final returns on its held-out tasks after K inner updates (default 0 1 3)")
    bench.add_argument("--hyperparams", nargs="*", metavar="KEY=VALUE", help="override config entries (for the algos that take them)")
    bench.add_argument("--env-kwargs", nargs="*", metavar="KEY=VALUE", help="keyword arguments of every env of the grid (parsed as data)")
    bench.add_argument("--variants", help="YAML file of named variants (default configs/variants.yml)")
    bench.add_argument("--thresholds", nargs="*", metavar="ENV=VALUE", help="reward thresholds for 'steps to threshold'")
    bench.add_argument("--out", required=True, help="output folder: one folder per run, evaluations.csv, runs.csv, summary.md")
    bench.add_argument("--workers", type=int, help="CPUs of the local Ray instance (default: all cores)")
    bench.add_argument("--ray-address", help="join a running Ray cluster (e.g. auto, or HOST:6379) instead of starting one")
    bench.add_argument("--gpus-per-run", type=float, default=0.0, help="GPUs reserved per run (default 0)")
    bench.add_argument("--max-retries", type=int, default=1, help="retries of a run that raises or whose worker dies (default 1)")
    bench.add_argument("--gym-packages", nargs="*", metavar="PACKAGE", help="packages to import first (they register env ids)")
    bench.set_defaults(handler=cmd_benchmark, num_threads=1, allow_unsafe_pickle=False, device="cpu")

    tune_cmd = commands.add_parser("tune", help="hyper-parameter search (Optuna TPE on Ray Tune), each trial scored on several seeds")
    tune_cmd.add_argument("--algo", required=True, help=f"algorithm: one of {', '.join(ALGO_NAMES)}")
    tune_cmd.add_argument("--env", required=True, help="gymnasium id or module:EnvClass")
    tune_cmd.add_argument("--n-trials", type=int, default=50, help="trials (default 50)")
    tune_cmd.add_argument("--n-timesteps", type=int, default=50_000, help="environment steps per seed of a trial (default 50000)")
    tune_cmd.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds each trial is scored on (default 0 1 2)")
    tune_cmd.add_argument("--n-eval-episodes", type=int, default=10, help="episodes of each final evaluation (default 10)")
    tune_cmd.add_argument("--hyperparams", nargs="*", metavar="KEY=VALUE", help="fixed values (not searched)")
    tune_cmd.add_argument("--search-space", help="YAML file of search spaces (default configs/search_spaces.yml)")
    tune_cmd.add_argument("--out", required=True, help="output folder: best.yml, trials.csv and Ray Tune's records")
    tune_cmd.add_argument("--storage", help="an Optuna storage URL (e.g. sqlite:///study.db): the study resumes from it")
    tune_cmd.add_argument("--sampler-seed", type=int, default=0, help="seed of the TPE sampler (default 0)")
    tune_cmd.add_argument("--workers", type=int, help="concurrent trials / CPUs of the local Ray instance (default: all cores)")
    tune_cmd.add_argument("--ray-address", help="join a running Ray cluster instead of starting one")
    tune_cmd.add_argument("--gym-packages", nargs="*", metavar="PACKAGE", help="packages to import first (they register env ids)")
    tune_cmd.set_defaults(handler=cmd_tune, num_threads=1, allow_unsafe_pickle=False, device="cpu")

    plot = commands.add_parser("plot", help="learning curves (PNG) and aggregate scores of benchmark folders")
    plot.add_argument("folders", nargs="+", help="folders written by `train.py benchmark --out`")
    plot.add_argument("--out", default="curves.png", help="the PNG to write (the aggregate table goes beside it as .md)")
    plot.add_argument("--thresholds", nargs="*", metavar="ENV=VALUE", help="reward thresholds (the 1 of normalised scores)")
    plot.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling (default 0)")
    plot.add_argument("--dpi", type=int, default=120)
    plot.set_defaults(handler=cmd_plot, num_threads=1, allow_unsafe_pickle=False, device="cpu")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_threads < 1:
        print(f"error: --num-threads must be at least 1, got {args.num_threads}", file=sys.stderr)
        return 2
    import torch

    from agents import CheckpointError

    torch.set_num_threads(args.num_threads)
    try:
        return args.handler(args)
    except (UsageError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
