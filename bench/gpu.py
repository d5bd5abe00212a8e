"""GPU beside CPU in one run (issue 16, part 5): the CUDA tests, the agents on CUDA, the cost of Fisher products, CG,
an NPG update and an NGDQN step on both devices, and the host–device synchronisations per update and per CG iteration.

    python bench/gpu.py --out bench/results/gpu.json                  # on a CUDA machine (sized for < 5 min: H200, 16 cores)
    python bench/gpu.py --states 512 --quick --out /tmp/gpu_cpu.json  # toy sizes, seconds (what tests/test_gpu_bench.py runs)

Without a CUDA device the script says "no CUDA device: GPU columns skipped", measures the CPU half and leaves the
GPU columns, the agents' CUDA smoke runs and the synchronisation counts null. Without ``--out`` it writes
bench/results/gpu.json only when CUDA was there.

On the H200 this project is sometimes lent (the ``device`` tool): torch there has CUDA but there is no gymnasium or
stable-baselines3, so they travel as wheels in ``.whl/`` (git-ignored). Here, once (pure-Python wheels):

    python -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \\
        gymnasium==1.4.0 stable-baselines3==2.9.2 farama-notifications==0.0.6

then one device call with ``carry=[".whl"]`` and ``timeout_s=540`` (the JSON is rewritten after every section, so a
run stopped at its limit keeps what it measured):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && \
        PYTHONUNBUFFERED=1 python3 bench/gpu.py --out $OUT/gpu.json

and copy the returned gpu.json to bench/results/gpu.json. Not yet run on a GPU: the sizes above are estimates from
CPU runs (the CPU half of a full run was estimated at about a minute on 16 cores), not measurements.

What runs, in order:

1. ``python -m pytest -q -m cuda`` on the test files that hold CUDA tests (found by their ``pytest.mark.cuda``; the
   other files are not collected, so packages the GPU machine lacks — sb3-contrib, ray, optuna — are not needed):
   pass/skip/fail counts and the output's tail. With CUDA, a smoke run of each agent on ``device="cuda"`` (NPG,
   NGDQN, iMAML on ngrl/TargetBandit-v0 with its NPG inner loop, NPG with "MlpErnnPolicy"): a few hundred steps
   of ``learn`` and a ``predict``, ok or the error.
2. Timings, median of ``--cpu-repeats`` (CPU) and ``--repeats`` (GPU) runs after one warm-up,
   ``torch.cuda.synchronize()`` before and after each GPU run; the CPU side on ``--threads`` torch threads (all
   cores by default). For 256-256 and 1024-1024 tanh Gaussian SB3 policies (17-dim observation, Box(6) action)
   over ``--states`` random states: building ``ngrl.fisher.policy_fisher(policy, states, damping=0.1)`` (one
   forward pass that stores what the products need), one exact Fisher-vector product on it, and one 10-step CG
   (``ngrl.CGConfig(max_iter=10, tol=0).solve``, exactly 10 products). One NPG ``train()`` (natural step + 10
   critic epochs, minibatch ``--npg-batch-size``) and its natural step alone (``n_critic_updates=0``) on a
   ``--rollout-envs`` × ``--rollout-steps`` rollout of a 256-256 Gaussian policy; the rollout is filled
   synthetically, not collected: random states and rewards, actions sampled from the policy, log π and V from the
   policy, episodes of 1000 steps, GAE by SB3's ``compute_returns_and_advantage`` (the update's cost does not
   depend on where the data came from, and collecting 65,536 steps would take longer than the update). One NGDQN
   gradient step (``train(gradient_steps, batch_size=1024)``, defaults: 5 CG steps in the minibatch's space,
   adaptive damping) and, for reference, one SB3 DQN step, both with a 256-256 Q-network (8-dim observation, 4
   actions, LunarLander's shapes) on a synthetically filled replay buffer. Speedup = CPU ms / GPU ms. Also the
   relative difference of the GPU's product and CG solution from the CPU's (float32: a sanity check, not a test).
3. Host–device synchronisations, counted with ``torch.cuda.set_sync_debug_mode("warn")`` (every synchronising CUDA
   call warns: device-to-host reads such as ``.item()``, ``.tolist()``, ``float(t)``, ``bool(t)``, and blocking
   host-to-device copies): in one Fisher-vector product, in CG of 5 and of 10 iterations (per iteration = their
   difference / 5), the same with ``check_every=None`` (the target: 0 per iteration), in one NPG ``train()``, its natural step alone, and one NGDQN step — each with the source lines
   that synchronised (innermost frame in ngrl/ or agents/).

JSON keys (``--out``): command, date, wall_s, torch, python, cuda {available, message, device, capability, runtime,
tf32_matmul, float32_matmul_precision}, cpu {name, cores, torch_threads}, settings, tests {ran, reason | command,
files, returncode, seconds, passed, failed, skipped, errors, deselected, tail}, smoke {ran, reason | agents
{name: {ok, seconds, error}}}, cases [{case, size, params, cpu_ms, gpu_ms, speedup, cpu_repeats, gpu_repeats,
cpu_samples_ms, gpu_samples_ms, gpu_peak_mib, gpu_vs_cpu_rel_diff, note, error}], syncs {measured, reason |
fvp, fisher_build, cg_5, cg_10, cg_5_deferred, cg_10_deferred, per_cg_iteration, per_cg_iteration_deferred, cg_outside_loop, npg_update, npg_natural_step, ngdqn_step,
where {count: {site: n}}}, errors.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # agents, envs and ngrl from this checkout
RESULTS = ROOT / "bench" / "results"
NO_CUDA = "no CUDA device: GPU columns skipped"
CPU = torch.device("cpu")
SUMMARY_COUNTS = ("passed", "failed", "skipped", "errors", "deselected")


# --- 1. the CUDA tests and the agents on CUDA ----------------------------------------------------


def cuda_test_files() -> list[str]:
    """The test files that hold a CUDA test (``pytest.mark.cuda``), relative to the repository."""
    files = (ROOT / "tests").glob("test_*.py")
    return sorted(str(path.relative_to(ROOT)) for path in files if "mark.cuda" in path.read_text())


def parse_pytest_summary(output: str) -> dict[str, int]:
    """Counts of pytest's last summary line ("3 passed, 2 skipped, 5 deselected in 1.2s"); absent outcomes are 0."""
    summary = re.compile(r"\d+ (passed|failed|skipped|deselected|errors?)|no tests ran")
    lines = [line for line in output.strip().splitlines() if summary.search(line)]
    counts = dict.fromkeys(SUMMARY_COUNTS, 0)
    for number, outcome in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)\b", lines[-1] if lines else ""):
        counts["errors" if outcome.startswith("error") else outcome] = int(number)
    return counts


def run_cuda_tests(timeout_s: float) -> dict[str, Any]:
    """``python -m pytest -q -m cuda`` on the files with CUDA tests, in a subprocess; its counts and output tail."""
    files = cuda_test_files()
    command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "--continue-on-collection-errors",
               *files]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, env=environment)
        output, returncode = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as expired:  # what it printed so far (bytes or text, depending on the platform)
        parts = [p.decode(errors="replace") if isinstance(p, bytes) else p for p in (expired.stdout, expired.stderr) if p]
        output, returncode = "".join(parts) + f"\n(stopped after {timeout_s:g} s)", None
    return {"ran": True, "command": " ".join(["python", *command[1:]]), "files": files, "returncode": returncode,
            "seconds": time.perf_counter() - start, **parse_pytest_summary(output), "tail": output[-3000:]}


def smoke_agents(device: torch.device) -> dict[str, dict[str, Any]]:
    """A few hundred steps of ``learn`` and one ``predict`` of each agent on ``device``: ok, seconds, or the error."""
    import envs  # noqa: F401  (registers ngrl/TargetBandit-v0)
    from agents import IMAML, NGDQN, NPG

    small = dict(seed=0, device=device)
    agents: dict[str, tuple[Callable[[], Any], int]] = {
        "npg": (lambda: NPG("MlpPolicy", "Pendulum-v1", n_steps=128, batch_size=64, n_critic_updates=2,
                            policy_kwargs=dict(net_arch=[32, 32]), **small), 256),
        "ngdqn": (lambda: NGDQN("MlpPolicy", "CartPole-v1", learning_starts=64, buffer_size=1000, batch_size=32,
                                policy_kwargs=dict(net_arch=[32, 32]), **small), 300),
        "imaml_target_bandit": (lambda: IMAML("MlpPolicy", "ngrl/TargetBandit-v0", inner_updates=1, n_steps=16,
                                              meta_batch_size=2, curvature="fisher", policy_kwargs=dict(net_arch=[16]),
                                              **small), 200),
        "npg_ernn": (lambda: NPG("MlpErnnPolicy", "CartPole-v1", n_steps=64, batch_size=64, n_critic_updates=2,
                                 policy_kwargs=dict(hidden_size=16, net_arch=[16]), **small), 256),
    }
    results = {}
    for name, (build, steps) in agents.items():
        start = time.perf_counter()
        try:
            model = build()
            model.learn(steps)
            observation = model.env.reset()
            model.predict(observation, deterministic=True)
            where = {p.device.type for p in model.policy.parameters()}
            if where != {device.type}:
                raise RuntimeError(f"parameters on {sorted(where)} after learn, expected {device.type}")
            results[name] = {"ok": True, "seconds": time.perf_counter() - start, "error": None}
        except Exception as error:  # recorded in the results and counted in the exit status, not hidden
            results[name] = {"ok": False, "seconds": time.perf_counter() - start,
                             "error": f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=-3)}"}
        print(f"  smoke {name} on {device.type}: {'ok' if results[name]['ok'] else results[name]['error']}", flush=True)
    return results


# --- 2. timings ----------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_ms(fn: Callable[[], Any], device: torch.device, repeats: int) -> list[float]:
    """Milliseconds of ``repeats`` calls of ``fn`` after one warm-up call, the device drained before and after each."""
    fn()
    samples = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


class ShapeOnlyEnv(gym.Env):
    """An env that only declares its spaces (the benchmarks fill their buffers synthetically, never step it)."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space) -> None:
        self.observation_space, self.action_space = observation_space, action_space

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


OBS_DIM, ACTION_DIM = 17, 6  # HalfCheetah's shapes
GAUSSIAN_SPACES = (gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32),
                   gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32))
Q_SPACES = (gym.spaces.Box(-np.inf, np.inf, (8,), np.float32), gym.spaces.Discrete(4))  # LunarLander's shapes


def gaussian_policy(width: int):
    """An SB3 ``ActorCriticPolicy``: tanh MLP width-width, 17-dim observation, diagonal Gaussian over Box(6)."""
    from stable_baselines3.common.policies import ActorCriticPolicy

    torch.manual_seed(0)
    return ActorCriticPolicy(*GAUSSIAN_SPACES, lambda _: 3e-4, net_arch=[width, width], activation_fn=nn.Tanh)


class Bench:
    """Runs each case on the CPU and, when present, the GPU; keeps the rows and the errors."""

    def __init__(self, args: argparse.Namespace, gpu: torch.device | None) -> None:
        self.args, self.gpu = args, gpu
        self.cases: list[dict[str, Any]] = []
        self.errors: list[str] = []

    def columns(self) -> list[tuple[str, torch.device]]:
        return [("cpu", CPU)] + ([("gpu", self.gpu)] if self.gpu is not None else [])

    def case(self, name: str, size: str, run: Callable[[torch.device], tuple[Callable[[], Any], Callable[[], Any] | None]],
             params: int | None = None, note: str = "") -> dict[str, Any]:
        """Time ``run(device)``'s timed function on each device; its second function returns a tensor to compare."""
        row: dict[str, Any] = {"case": name, "size": size, "params": params, "note": note, "cpu_ms": None, "gpu_ms": None,
                               "speedup": None, "cpu_repeats": self.args.cpu_repeats, "gpu_repeats": self.args.repeats,
                               "cpu_samples_ms": None, "gpu_samples_ms": None, "gpu_peak_mib": None,
                               "gpu_vs_cpu_rel_diff": None, "error": None}
        outputs = {}
        for column, device in self.columns():
            try:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                fn, output = run(device)
                samples = timed_ms(fn, device, self.args.repeats if column == "gpu" else self.args.cpu_repeats)
                row[f"{column}_samples_ms"] = [round(s, 4) for s in samples]
                row[f"{column}_ms"] = statistics.median(samples)
                if device.type == "cuda":
                    row["gpu_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
                if output is not None:
                    outputs[column] = output().detach().to(CPU, torch.float64)
            except Exception as error:  # recorded in the row and in the exit status, not hidden
                row["error"] = f"{column}: {type(error).__name__}: {error}"
                self.errors.append(f"{name} {size}: {row['error']}")
                break
        if row["cpu_ms"] is not None and row["gpu_ms"] is not None:
            row["speedup"] = row["cpu_ms"] / row["gpu_ms"]
        if len(outputs) == 2:
            row["gpu_vs_cpu_rel_diff"] = float((outputs["gpu"] - outputs["cpu"]).norm() / outputs["cpu"].norm())
        self.cases.append(row)
        error = f"  ERROR {row['error']}" if row["error"] else ""
        print(f"  {name} {size}: CPU {_ms(row['cpu_ms'])} ms, GPU {_ms(row['gpu_ms'])} ms{error}", flush=True)
        return row


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def fisher_cases(bench: Bench, width: int, n_states: int) -> None:
    """Build, one product and a 10-step CG of the exact Fisher of a width-width Gaussian policy over ``n_states``."""
    from ngrl import CGConfig, num_params
    from ngrl.fisher import actor_parameters, policy_fisher

    policy = gaussian_policy(width)
    generator = torch.Generator().manual_seed(1)
    states = torch.randn(n_states, OBS_DIM, generator=generator)
    n_params = num_params(actor_parameters(policy))
    vector = torch.randn(n_params, generator=generator)
    size = f"{width}-{width}, {n_states:,} states"
    cg = CGConfig(max_iter=10, tol=0.0)
    deferred = CGConfig(max_iter=10, tol=0.0, check_every=None)  # the stopping tests read by the host after the loop only
    on_device: dict[torch.device, tuple[Any, torch.Tensor, torch.Tensor]] = {}

    def operands(device: torch.device):
        if device not in on_device:
            moved = copy.deepcopy(policy).to(device)
            on_device[device] = (moved, states.to(device), vector.to(device))
        return on_device[device]

    def build(device):
        moved, obs, _ = operands(device)
        return (lambda: policy_fisher(moved, obs, damping=0.1)), None

    def product(device):
        moved, obs, v = operands(device)
        fisher = policy_fisher(moved, obs, damping=0.1)
        return (lambda: fisher.mv(v)), (lambda: fisher.mv(v))

    def solve(device):
        moved, obs, v = operands(device)
        fisher = policy_fisher(moved, obs, damping=0.1)
        return (lambda: cg.solve(fisher.mv, v)), (lambda: cg.solve(fisher.mv, v).x)

    def solve_deferred(device):
        moved, obs, v = operands(device)
        fisher = policy_fisher(moved, obs, damping=0.1)
        return (lambda: deferred.solve(fisher.mv, v)), (lambda: deferred.solve(fisher.mv, v).x)

    bench.case("Fisher build (forward, stored)", size, build, n_params)
    bench.case("Fisher-vector product", size, product, n_params)
    bench.case("CG, 10 iterations", size, solve, n_params, note="on a built operator; tol=0: exactly 10 products")
    bench.case("CG, 10 iterations, check_every=None", size, solve_deferred, n_params,
               note="the same solve, the host reading the stopping tests once, after the loop")
    on_device.clear()


def npg_model(device: torch.device, args: argparse.Namespace):
    """NPG (defaults but the minibatch) with a 256-256 Gaussian policy and an ``rollout_envs`` × ``rollout_steps`` buffer."""
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.vec_env import DummyVecEnv

    from agents import NPG

    venv = DummyVecEnv([lambda: ShapeOnlyEnv(*GAUSSIAN_SPACES)] * args.rollout_envs)
    model = NPG("MlpPolicy", venv, n_steps=args.rollout_steps, batch_size=args.npg_batch_size, seed=0, device=device,
                policy_kwargs=dict(net_arch=[args.policy_width, args.policy_width]))
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


def fill_rollout(model, seed: int = 0) -> None:
    """A synthetic rollout: random states and rewards, actions from the policy, log π and V from the policy, GAE."""
    buffer = model.rollout_buffer
    buffer.reset()
    steps, n_envs = buffer.buffer_size, buffer.n_envs
    generator = torch.Generator().manual_seed(seed)
    observations = torch.randn(steps * n_envs, OBS_DIM, generator=generator)
    torch.manual_seed(seed)
    with torch.no_grad():
        observations_on = observations.to(model.device)
        distribution = model.policy.get_distribution(observations_on)
        actions = distribution.sample()
        log_probs = distribution.log_prob(actions)
        values = model.policy.predict_values(observations_on).flatten()
    buffer.observations[:] = observations.numpy().reshape(steps, n_envs, OBS_DIM)
    buffer.actions[:] = actions.cpu().numpy().reshape(steps, n_envs, ACTION_DIM)
    buffer.log_probs[:] = log_probs.cpu().numpy().reshape(steps, n_envs)
    buffer.values[:] = values.cpu().numpy().reshape(steps, n_envs)
    buffer.rewards[:] = torch.randn(steps, n_envs, generator=generator).numpy()
    buffer.episode_starts[:] = 0.0
    buffer.episode_starts[::1000] = 1.0  # episodes of 1000 steps, as MuJoCo's
    buffer.pos, buffer.full = steps, True
    buffer.compute_returns_and_advantage(last_values=torch.zeros(n_envs), dones=np.zeros(n_envs))


ROLLOUT_ARRAYS = ("observations", "actions", "rewards", "returns", "episode_starts", "values", "log_probs", "advantages")


class NPGModels:
    """One NPG model per device, starting from the same weights and the same synthetic rollout (filled once on the CPU)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        reference = npg_model(CPU, args)
        fill_rollout(reference)
        self.actor_params = sum(p.numel() for p in reference._actor_params)
        self.initial_weights = copy.deepcopy(reference.policy.state_dict())
        self.rollout = {name: getattr(reference.rollout_buffer, name).copy() for name in ROLLOUT_ARRAYS}
        self.models: dict[torch.device, Any] = {CPU: reference}

    def on(self, device: torch.device, n_critic_updates: int):
        if device not in self.models:
            model = npg_model(device, self.args)
            model.policy.load_state_dict(self.initial_weights)
            for name, array in self.rollout.items():
                setattr(model.rollout_buffer, name, array.copy())
            model.rollout_buffer.pos, model.rollout_buffer.full = self.args.rollout_steps, True
            self.models[device] = model
        model = self.models[device]
        model.n_critic_updates = n_critic_updates
        return model


def npg_cases(bench: Bench, args: argparse.Namespace) -> NPGModels:
    models = NPGModels(args)
    size = f"{args.policy_width}-{args.policy_width} Gaussian, {args.rollout_envs}×{args.rollout_steps} rollout (synthetic)"
    params = models.actor_params
    cg_steps = models.models[CPU].cg_max_steps
    bench.case("NPG update (train())", size, lambda device: (models.on(device, 10).train, None), params,
               note=f"natural step ({cg_steps} CG) + 10 critic epochs, minibatch {args.npg_batch_size}")
    bench.case("NPG natural step alone", size, lambda device: (models.on(device, 0).train, None), params,
               note="train() with n_critic_updates=0")
    return models


def q_learner(algo: str, device: torch.device, args: argparse.Namespace, buffer_size: int):
    from stable_baselines3 import DQN
    from stable_baselines3.common.logger import Logger

    from agents import NGDQN

    kwargs = dict(buffer_size=buffer_size, learning_starts=0, batch_size=args.ngdqn_batch_size, seed=0, device=device,
                  policy_kwargs=dict(net_arch=[args.q_width, args.q_width]))
    env = ShapeOnlyEnv(*Q_SPACES)
    # a small rate: the cost does not depend on it, and repeated steps on random data must not diverge
    model = NGDQN("MlpPolicy", env, learning_rate=0.05, **kwargs) if algo == "ngdqn" else DQN("MlpPolicy", env, **kwargs)
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


class QModels:
    """NGDQN and DQN per device, starting from the same weights (the CPU model's, which is built first) and the same
    replay buffer (random transitions, filled once)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.buffer_size = max(args.ngdqn_batch_size * 8, 4096)
        self.models: dict[tuple[str, torch.device], Any] = {}
        self.initial_weights: dict[str, dict[str, torch.Tensor]] = {}
        generator = np.random.default_rng(0)
        n = self.buffer_size
        self.arrays = {
            "observations": generator.standard_normal((n, 1, 8), dtype=np.float32),
            "next_observations": generator.standard_normal((n, 1, 8), dtype=np.float32),
            "actions": generator.integers(0, 4, (n, 1, 1)),
            "rewards": generator.standard_normal((n, 1), dtype=np.float32),
            "dones": (generator.random((n, 1)) < 0.01).astype(np.float32),
            "timeouts": np.zeros((n, 1), dtype=np.float32),
        }

    def on(self, algo: str, device: torch.device):
        key = (algo, device)
        if key not in self.models:
            model = q_learner(algo, device, self.args, self.buffer_size)
            if algo in self.initial_weights:
                model.policy.load_state_dict(self.initial_weights[algo])
            else:
                self.initial_weights[algo] = copy.deepcopy(model.policy.state_dict())
            buffer = model.replay_buffer
            for name, array in self.arrays.items():
                setattr(buffer, name, array.astype(getattr(buffer, name).dtype))
            buffer.pos, buffer.full = 0, True
            self.models[key] = model
        return self.models[key]

    def step(self, algo: str, device: torch.device) -> Callable[[], None]:
        model, steps = self.on(algo, device), self.args.gradient_steps
        return lambda: model.train(gradient_steps=steps, batch_size=self.args.ngdqn_batch_size)


def q_cases(bench: Bench, args: argparse.Namespace) -> QModels:
    models = QModels(args)
    size = f"{args.q_width}-{args.q_width} Q-network, batch {args.ngdqn_batch_size}"
    k = args.gradient_steps
    for algo, name, note in (("ngdqn", "NGDQN gradient step", "defaults: 5 CG steps in the batch space, adaptive damping"),
                             ("dqn", "DQN gradient step (reference)", "SB3 DQN, Adam")):
        row = bench.case(name, size, lambda device, algo=algo: (models.step(algo, device), None),
                         note=f"{note}; ms per step, {k} steps timed together")
        for column in ("cpu", "gpu"):  # one timed call runs k steps: report per step
            if row[f"{column}_ms"] is not None:
                row[f"{column}_ms"] /= k
                row[f"{column}_samples_ms"] = [round(s / k, 4) for s in row[f"{column}_samples_ms"]]
    return models


# --- 3. host–device synchronisations ------------------------------------------------------------


class SyncCounter:
    """Counts the synchronising CUDA calls made inside the ``with`` block (``torch.cuda.set_sync_debug_mode("warn")``).

    Each one is attributed to the innermost frame in ngrl/ or agents/ (else the innermost frame outside torch), so
    ``where`` says which line of ours synchronised.
    """

    def __init__(self) -> None:
        self.sites: Counter[str] = Counter()
        self.value: Any = None  # what the counted call returned

    @property
    def count(self) -> int:
        return sum(self.sites.values())

    def __enter__(self) -> "SyncCounter":
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("always")
        self._show = warnings.showwarning
        warnings.showwarning = self._record
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc: Any) -> None:
        torch.cuda.set_sync_debug_mode("default")
        self._warnings.__exit__(*exc)

    def _record(self, message, category, filename, lineno, file=None, line=None) -> None:
        if "synchroniz" not in str(message):
            self._show(message, category, filename, lineno, file, line)
            return
        frames = traceback.extract_stack()[:-1]
        ours = [f for f in frames if any(f.filename.startswith(str(ROOT / part)) for part in ("ngrl", "agents"))]
        outside_torch = [f for f in frames
                         if f"{os.sep}torch{os.sep}" not in f.filename and f.filename not in (__file__, warnings.__file__)]
        frame = (ours or outside_torch or frames)[-1]
        self.sites[f"{_relative(frame.filename)}:{frame.lineno}"] += 1


def _relative(filename: str) -> str:
    path = pathlib.Path(filename)
    if path.is_relative_to(ROOT):
        return str(path.relative_to(ROOT))
    parts = path.parts
    return str(pathlib.Path(*parts[parts.index("site-packages") + 1 :])) if "site-packages" in parts else filename


def count_syncs(fn: Callable[[], Any]) -> SyncCounter:
    fn()  # warm-up: first calls may synchronise for one-off reasons (allocations, lazy initialisation)
    with SyncCounter() as counter:
        counter.value = fn()
    return counter


def sync_counts(gpu: torch.device, args: argparse.Namespace, npg: NPGModels, q: QModels) -> dict[str, Any]:
    from ngrl import CGConfig
    from ngrl.fisher import policy_fisher

    policy = gaussian_policy(args.widths[0]).to(gpu)
    generator = torch.Generator().manual_seed(1)
    states = torch.randn(min(args.states, 4096), OBS_DIM, generator=generator).to(gpu)
    fisher = policy_fisher(policy, states, damping=0.1)
    vector = torch.randn(fisher.num_params, generator=generator).to(gpu)
    counters = {
        "fisher_build": count_syncs(lambda: policy_fisher(policy, states, damping=0.1)),
        "fvp": count_syncs(lambda: fisher.mv(vector)),
        "cg_5": count_syncs(lambda: CGConfig(max_iter=5, tol=0.0).solve(fisher.mv, vector)),
        "cg_10": count_syncs(lambda: CGConfig(max_iter=10, tol=0.0).solve(fisher.mv, vector)),
        "cg_5_deferred": count_syncs(lambda: CGConfig(max_iter=5, tol=0.0, check_every=None).solve(fisher.mv, vector)),
        "cg_10_deferred": count_syncs(lambda: CGConfig(max_iter=10, tol=0.0, check_every=None).solve(fisher.mv, vector)),
        "npg_update": count_syncs(npg.on(gpu, 10).train),
        "npg_natural_step": count_syncs(npg.on(gpu, 0).train),
        "ngdqn_step": count_syncs(lambda: q.on("ngdqn", gpu).train(gradient_steps=1, batch_size=args.ngdqn_batch_size)),
    }
    iterations = (counters["cg_5"].value.iterations, counters["cg_10"].value.iterations)
    if iterations != (5, 10):
        raise RuntimeError(f"CG stopped early ({iterations} iterations, not 5 and 10): the count per iteration would be wrong")
    result: dict[str, Any] = {"measured": True, **{name: c.count for name, c in counters.items()}}
    per_iteration = (counters["cg_10"].count - counters["cg_5"].count) / 5
    result["per_cg_iteration"] = per_iteration
    result["cg_outside_loop"] = counters["cg_10"].count - 10 * per_iteration
    result["per_cg_iteration_deferred"] = (counters["cg_10_deferred"].count - counters["cg_5_deferred"].count) / 5
    result["where"] = {name: dict(c.sites.most_common()) for name, c in counters.items()}
    return result


# --- the run -----------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    cuda, cpu = report["cuda"], report["cpu"]
    lines = [f"CPU: {cpu['name']}, {cpu['torch_threads']} torch threads; GPU: {cuda['device'] or cuda['message']}; "
             f"torch {report['torch']}", "",
             "| case | size | CPU ms | GPU ms | GPU speedup | GPU vs CPU rel. diff |", "|---|---|---|---|---|---|"]
    for row in report["cases"]:
        speedup = "–" if row["speedup"] is None else f"{row['speedup']:.1f}×"
        diff = "–" if row["gpu_vs_cpu_rel_diff"] is None else f"{row['gpu_vs_cpu_rel_diff']:.1e}"
        error = f" ERROR: {row['error']}" if row["error"] else ""
        lines.append(f"| {row['case']} | {row['size']} | {_ms(row['cpu_ms'])} | {_ms(row['gpu_ms'])} | {speedup} "
                     f"| {diff}{error} |")
    tests = report["tests"]
    lines.append("")
    if tests["ran"]:
        lines.append(f"CUDA tests ({len(tests['files'])} files): " + ", ".join(f"{tests[k]} {k}" for k in SUMMARY_COUNTS)
                     + f" (exit {tests['returncode']})")
    else:
        lines.append(f"CUDA tests: not run ({tests['reason']})")
    smoke = report["smoke"]
    if smoke["ran"]:
        agents = ", ".join(f"{name} {'ok' if r['ok'] else 'FAILED'}" for name, r in smoke["agents"].items())
        lines.append(f"Agents on CUDA: {agents}")
    else:
        lines.append(f"Agents on CUDA: not run ({smoke['reason']})")
    syncs = report["syncs"]
    if syncs["measured"]:
        lines += ["", "| host–device synchronisations in | count |", "|---|---|"]
        for key, label in (("fisher_build", "building the Fisher operator"), ("fvp", "one Fisher-vector product"),
                           ("per_cg_iteration", "CG, per iteration"), ("cg_outside_loop", "CG, outside the loop"),
                           ("per_cg_iteration_deferred", "CG with check_every=None, per iteration"),
                           ("npg_update", "one NPG train()"), ("npg_natural_step", "NPG natural step alone"),
                           ("ngdqn_step", "one NGDQN gradient step")):
            lines.append(f"| {label} | {syncs[key]:g} |")
        sites = ", ".join(f"{site} ×{n}" for site, n in syncs["where"]["cg_10"].items())
        lines.append(f"CG's synchronising lines (10 iterations): {sites}")
    else:
        lines.append(f"Host–device synchronisations: not counted ({syncs['reason']})")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None,
                        help="JSON file (default: bench/results/gpu.json, written only when CUDA is there)")
    parser.add_argument("--states", type=int, default=65_536, help="states of the Fisher cases")
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 1024],
                        help="hidden widths of the Fisher cases' policies")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per GPU case (after one warm-up)")
    parser.add_argument("--cpu-repeats", type=int, default=3, help="timed runs per CPU case (after one warm-up)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads on the CPU side (default: all cores)")
    parser.add_argument("--rollout-envs", type=int, default=16)
    parser.add_argument("--rollout-steps", type=int, default=4096)
    parser.add_argument("--npg-batch-size", type=int, default=4096, help="critic minibatch of the NPG update")
    parser.add_argument("--policy-width", type=int, default=256, help="hidden width of the NPG update's policy")
    parser.add_argument("--q-width", type=int, default=256, help="hidden width of the Q-networks")
    parser.add_argument("--ngdqn-batch-size", type=int, default=1024)
    parser.add_argument("--gradient-steps", type=int, default=10, help="Q-learning steps per timed call")
    parser.add_argument("--tests-timeout", type=float, default=180.0, help="seconds the CUDA tests may take")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the CUDA tests")
    parser.add_argument("--quick", action="store_true",
                        help="toy sizes and one repeat, no test run: checks that the script works (not a measurement)")
    args = parser.parse_args(argv)
    if args.quick:
        args.widths = [min(w, 64) for w in args.widths][:1]
        args.states = min(args.states, 512)
        args.repeats = args.cpu_repeats = 1
        args.rollout_envs, args.rollout_steps, args.npg_batch_size = 2, 64, 64
        args.policy_width = args.q_width = 32
        args.ngdqn_batch_size, args.gradient_steps = 64, 2
        args.skip_tests = True
    for name in ("states", "repeats", "cpu_repeats", "threads", "rollout_envs", "rollout_steps", "npg_batch_size",
                 "policy_width", "q_width", "ngdqn_batch_size", "gradient_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if any(w < 1 for w in args.widths):
        raise ValueError(f"--widths must be >= 1, got {args.widths}")
    return args


def cpu_name() -> str:
    """The processor's model name (Linux), else what ``platform`` knows."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    gpu = torch.device("cuda") if torch.cuda.is_available() else None
    out = pathlib.Path(args.out) if args.out else (RESULTS / "gpu.json" if gpu is not None else None)
    report: dict[str, Any] = {
        "command": " ".join(["python", "bench/gpu.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_s": None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": {"available": gpu is not None, "message": "CUDA device present" if gpu is not None else NO_CUDA,
                 "device": torch.cuda.get_device_name(gpu) if gpu is not None else None,
                 "capability": list(torch.cuda.get_device_capability(gpu)) if gpu is not None else None,
                 "runtime": torch.version.cuda, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                 "float32_matmul_precision": torch.get_float32_matmul_precision()},
        "cpu": {"name": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "tests": {"ran": False, "reason": "--skip-tests" if not args.quick else "--quick"},
        "smoke": {"ran": False, "reason": NO_CUDA},
        "cases": [],
        "syncs": {"measured": False, "reason": NO_CUDA},
        "errors": [],
    }

    def save() -> None:
        report["wall_s"] = time.perf_counter() - started
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=1))

    print(f"{report['cuda']['message']}; CPU {report['cpu']['name']}, {report['cpu']['torch_threads']} torch threads",
          flush=True)
    if not args.skip_tests:
        print("CUDA tests ...", flush=True)
        report["tests"] = run_cuda_tests(args.tests_timeout)
        save()
    if gpu is not None:
        print("agents on CUDA ...", flush=True)
        agents = smoke_agents(gpu)
        report["smoke"] = {"ran": True, "agents": agents}
        report["errors"] += [f"smoke {name}: {r['error']}" for name, r in agents.items() if not r["ok"]]
        save()

    bench = Bench(args, gpu)
    report["cases"] = bench.cases  # filled in place: save() writes what is measured so far
    print("timings ...", flush=True)
    for width in args.widths:
        fisher_cases(bench, width, args.states)
        save()
    npg = npg_cases(bench, args)
    save()
    q = q_cases(bench, args)
    report["errors"] += bench.errors
    save()
    if gpu is not None:
        print("synchronisations ...", flush=True)
        try:
            report["syncs"] = sync_counts(gpu, args, npg, q)
        except Exception as error:  # recorded, and counted in the exit status
            report["syncs"] = {"measured": False, "reason": f"{type(error).__name__}: {error}"}
            report["errors"].append(f"syncs: {type(error).__name__}: {error}")
    save()
    print()
    print(markdown(report))
    print(f"wrote {out}" if out is not None else f"{NO_CUDA}; nothing written (pass --out to keep the CPU half)")
    tests = report["tests"]
    failed_tests = tests["ran"] and (tests["failed"] or tests["errors"] or tests["returncode"] not in (0, 5))
    return 1 if report["errors"] or failed_tests else 0


if __name__ == "__main__":
    sys.exit(main())
