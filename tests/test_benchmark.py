"""`train.py benchmark`: a grid of runs on a local Ray instance (and on a two-process Ray cluster)."""

import csv
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys

import pytest
import torch

import train
from agents import NPG

pytest.importorskip("ray")
ROOT = pathlib.Path(__file__).resolve().parents[1]
GRID = ["--n-timesteps", "1024", "--eval-freq", "512", "--n-eval-episodes", "2", "--workers", "2"]


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_grid_runs_resumes_and_matches_train(tmp_path, capsys):
    out = tmp_path / "bench"
    assert train.main(["benchmark", "--algos", "npg", "ppo", "--envs", "CartPole-v1", "--seeds", "0", "1", "--out", str(out), *GRID]) == 0
    runs = read_csv(out / "runs.csv")
    assert [(r["algo"], r["seed"], r["status"]) for r in runs] == [("npg", "0", "ok"), ("npg", "1", "ok"), ("ppo", "0", "ok"), ("ppo", "1", "ok")]
    assert list(runs[0]) == train.RUN_FIELDS and all(int(r["timesteps"]) >= 1024 and int(r["n_evals"]) >= 2 for r in runs)
    evaluations = read_csv(out / "evaluations.csv")
    assert {(e["algo"], e["seed"]) for e in evaluations} == {("npg", "0"), ("npg", "1"), ("ppo", "0"), ("ppo", "1")}
    assert [int(e["timesteps"]) for e in evaluations if e["algo"] == "npg" and e["seed"] == "0"] == [512, 1024]
    summary = (out / "summary.md").read_text()
    assert "| CartPole-v1 (475) | npg |" in summary and "| CartPole-v1 (475) | ppo |" in summary

    # the same training path as `train.py train`: identical parameters for the same seed
    assert train.main(["train", "--algo", "npg", "--env", "CartPole-v1", "--seed", "1", "--n-timesteps", "1024", "--quiet",
                       "--n-eval-episodes", "0", "--log-folder", str(tmp_path / "logs")]) == 0
    alone = NPG.load(tmp_path / "logs" / "npg" / "CartPole-v1_1_1" / "CartPole-v1.zip")
    in_grid = NPG.load(out / "npg" / "CartPole-v1_1" / "model.zip")
    assert all(torch.equal(p, q) for p, q in zip(alone.policy.parameters(), in_grid.policy.parameters()))

    # learning curves and the aggregate table
    assert train.main(["plot", str(out), "--out", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "curves.md").read_text()
    assert "| npg | 2 |" in table and "| ppo | 2 |" in table
    assert all("random_score" in json.loads(p.read_text()) for p in out.glob("*/*/result.json"))

    # rerunning retrains nothing
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*/result.json")}
    capsys.readouterr()
    assert train.main(["benchmark", "--algos", "npg", "ppo", "--envs", "CartPole-v1", "--seeds", "0", "1", "--out", str(out), *GRID]) == 0
    assert "4 of 4 runs already finished" in capsys.readouterr().out
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("*/*/result.json")}


def test_a_failing_run_is_recorded_and_the_others_finish(tmp_path):
    out = tmp_path / "bench"
    code = train.main(["benchmark", "--algos", "npg", "--envs", "CartPole-v1", "tests.fixtures.custom_envs:ResetRaises",
                       "--seeds", "0", "--out", str(out), "--max-retries", "0", *GRID])
    assert code == 1
    runs = {r["env"]: r for r in read_csv(out / "runs.csv")}
    assert runs["CartPole-v1"]["status"] == "ok"
    assert runs["tests.fixtures.custom_envs:ResetRaises"]["status"] == "failed"
    assert "reset" in runs["tests.fixtures.custom_envs:ResetRaises"]["error"]
    assert "(1 failed)" in (out / "summary.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--algos", "npgg", "--envs", "CartPole-v1"], "Did you mean npg"),
    (["--algos", "npg", "--envs", "CartPol-v1"], "Did you mean CartPole-v1"),
    (["--algos", "npg", "--envs", "CartPole-v1", "--hyperparams", "target_kl=-1"], "target_kl"),
    (["--algos", "npg", "--envs", "CartPole-v1", "--eval-freq", "0"], "--eval-freq"),
    (["--algos", "npg", "ppo", "--envs", "CartPole-v1", "--hyperparams", "target_kll=0.1"], "no algorithm of the grid"),
    (["--algos", "dqn-notargt", "--envs", "CartPole-v1"], "Did you mean dqn-notarget"),
    (["--algos", "npg-ernn", "--envs", "CartPole-v1", "--variants", "no/such.yml"], "--variants no/such.yml"),
])
def test_bad_grids_are_refused_before_ray_starts(tmp_path, capsys, args, message):
    assert train.main(["benchmark", *args, "--out", str(tmp_path / "b")]) == 2
    assert message in capsys.readouterr().err


VARIANTS = """
npg-small:
  algo: npg
  base_config: false          # not configs/npg.yml's CartPole block: constructor defaults, then these
  hyperparams: {n_steps: 256, batch_size: 128, target_kl: 0.02, policy_kwargs: {net_arch: [8]}}
  envs:
    CartPole-v1: {target_kl: 0.03}
notarget:
  algo: dqn                   # over configs/dqn.yml's CartPole block
  hyperparams: {target_network: false}
"""


def test_a_variant_runs_with_its_hyperparameters_and_runs_csv_names_it(tmp_path):
    """Variant over the base config (or over the defaults), env block over the variant, --hyperparams over both."""
    from stable_baselines3 import DQN

    (tmp_path / "variants.yml").write_text(VARIANTS)
    out = tmp_path / "bench"
    assert train.main(["benchmark", "--algos", "npg-small", "notarget", "--envs", "CartPole-v1", "--seeds", "0", "--out", str(out),
                       "--variants", str(tmp_path / "variants.yml"), "--hyperparams", "batch_size=64",
                       "--n-timesteps", "1280", "--eval-freq", "640", "--n-eval-episodes", "2", "--workers", "2"]) == 0
    runs = read_csv(out / "runs.csv")
    assert [(r["algo"], r["status"]) for r in runs] == [("notarget", "ok"), ("npg-small", "ok")]
    assert all(int(r["training_episodes"]) > 0 for r in runs)
    npg = (out / "npg-small" / "CartPole-v1_0" / "config.yml").read_text()
    assert npg.startswith("# npg-small (a variant of npg) on CartPole-v1")
    assert "target_kl: 0.03" in npg and "n_steps: 256" in npg and "batch_size: 64" in npg
    assert "n_critic_updates" not in npg and "cg_damping" not in npg  # base_config: false
    dqn = (out / "notarget" / "CartPole-v1_0" / "config.yml").read_text()
    assert "target_network: false" in dqn and "train_freq: 256" in dqn and "batch_size: 64" in dqn  # zoo block kept
    assert json.loads((out / "notarget" / "CartPole-v1_0" / "result.json").read_text())["algorithm"] == "dqn"
    assert DQN.load(out / "notarget" / "CartPole-v1_0" / "model.zip").target_network is False
    assert NPG.load(out / "npg-small" / "CartPole-v1_0" / "model.zip").target_kl == 0.03
    assert "| CartPole-v1 (475) | notarget |" in (out / "summary.md").read_text()
    assert "default_worker" not in (out / "notarget" / "CartPole-v1_0" / "command.txt").read_text()  # the grid's command line


@pytest.mark.parametrize("text, message", [
    ("v:\n  hyperparams: {}\n", "at least 'algo:'"),
    ("v:\n  algo: npg\n  hyperparam: {}\n", "unknown key"),
    ("v:\n  algo: npg\n  envs: {CartPole-v1: 3}\n", "'envs' env ids"),
    ("v:\n  algo: nppg\n", "not one of"),
    ("npg:\n  algo: ppo\n", "the name of an algorithm"),
    ("v:\n  algo: npg\n  n_timesteps: -5\n", "n_timesteps must be a whole number"),
    ("v:\n  algo: reptile\n  adaptation_updates: 3\n", "adaptation_updates must be a list"),
    ("v:\n  algo: reptile\n  adaptation_updates: [0, -1]\n", "adaptation_updates must be a list"),
    ("v:\n  algo: reptile\n  adaptation_updates: []\n", "adaptation_updates must be a list"),
])
def test_bad_variants_are_refused(tmp_path, text, message):
    (tmp_path / "variants.yml").write_text(text)
    with pytest.raises(train.UsageError, match=message):
        train.grid_algorithm("v" if "npg:" not in text else "npg", str(tmp_path / "variants.yml"))


def test_best_100_episode_average_by_hand():
    returns = [0.0] * 50 + [1.0] * 100 + [0.0] * 30
    assert train.best_window_average(returns) == 1.0
    assert train.best_window_average(list(range(150))) == pytest.approx(sum(range(50, 150)) / 100)
    assert train.best_window_average([5.0] * 99) is None
    assert train.best_window_average([1.0, 3.0, 2.0], window=2) == 2.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_processes_mentioning(text: str) -> None:
    """SIGTERM, then SIGKILL, the processes whose command line holds ``text`` (a cluster's own temp dir): only
    that cluster's processes, not every Ray on the machine as `ray stop` would (its workers die with its raylet)."""
    import signal
    import time

    def matching() -> list[int]:
        pids = []
        for entry in pathlib.Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
        return [pid for pid in pids if pid != os.getpid()]

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in matching():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        while matching() and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.mark.skipif(not pathlib.Path("/proc").is_dir(), reason="tears its cluster down through /proc")
def test_a_two_process_ray_cluster(tmp_path):
    """`ray start --head` in one process, the benchmark joining it with --ray-address from another; torn down after.

    The cluster lives in a temp dir of its own (a short path: Ray's socket paths are limited), so a plain
    ray.init() elsewhere on the machine does not find it, and teardown stops its processes only.
    """
    import tempfile

    ray_cli = shutil.which("ray") or str(pathlib.Path(sys.executable).with_name("ray"))
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="ngrl-ray-", dir="/tmp")
    # the token Ray's head would create lives in its temp dir, where the joining driver does not look: a loopback
    # cluster for one test needs none
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    try:
        started = subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                                  "--disable-usage-stats", f"--temp-dir={temp_dir}"],
                                 capture_output=True, text=True, timeout=120, env=environment)
        assert started.returncode == 0, started.stderr
        out = tmp_path / "bench"
        result = subprocess.run([sys.executable, str(ROOT / "train.py"), "benchmark", "--algos", "npg", "--envs", "CartPole-v1",
                                 "--seeds", "0", "1", "--out", str(out), "--ray-address", f"127.0.0.1:{port}", *GRID[:6]],
                                capture_output=True, text=True, timeout=300, cwd=tmp_path, env=environment)
        assert result.returncode == 0, result.stderr[-2000:]
        assert [r["status"] for r in read_csv(out / "runs.csv")] == ["ok", "ok"]
        assert json.loads((out / "npg" / "CartPole-v1_0" / "result.json").read_text())["timesteps"] >= 1024
    finally:
        _stop_processes_mentioning(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_importing_the_library_does_not_import_ray():
    code = "import sys, agents, ngrl, envs; assert 'ray' not in sys.modules and 'optuna' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120).returncode == 0


def test_aggregate_statistics_by_hand():
    import numpy as np

    values = [0.0, 0.2, 0.4, 0.6, 0.8, 10.0, -5.0, 1.0]  # sorted: -5, 0, .2, .4, .6, .8, 1, 10 -> middle four
    assert train.interquartile_mean(values) == pytest.approx((0.2 + 0.4 + 0.6 + 0.8) / 4)
    assert train.optimality_gap([1.2, 1.0, 0.5, -0.5]) == pytest.approx((0 + 0 + 0.5 + 1.5) / 4)
    rng = np.random.default_rng(0)
    low, high = train._bootstrap_interval([[0.1, 0.2, 0.3], [0.8, 0.9, 1.0]], np.mean, rng, 500)
    assert low < 0.55 < high and 0.1 <= low and high <= 1.0
    assert train._bootstrap_interval([[0.5, 0.5]], np.mean, rng, 50) == (0.5, 0.5)


def test_tune_scores_each_trial_on_several_seeds_and_writes_a_config_block(tmp_path):
    out = tmp_path / "tune"
    assert train.main(["tune", "--algo", "npg", "--env", "CartPole-v1", "--n-trials", "3", "--seeds", "0", "1",
                       "--n-timesteps", "512", "--n-eval-episodes", "2", "--out", str(out), "--workers", "2",
                       "--hyperparams", "n_steps=256", "batch_size=64"]) == 0
    trials = read_csv(out / "trials.csv")
    assert len(trials) == 3 and {t["status"] for t in trials} <= {"complete", "pruned"}
    assert all(t["seeds_done"] == "2" for t in trials if t["status"] == "complete")
    assert all("param:n_steps" not in t for t in trials)  # fixed values are not searched
    spec = train.resolve_run("npg", "CartPole-v1", seed=None, overrides={}, config=str(out / "best.yml"))
    assert spec.params["n_steps"] == 256 and "target_kl" in spec.params and spec.n_timesteps == 512


def test_meta_learners_run_in_the_grid(tmp_path):
    """A meta-learner in the grid is scored by its mean return after one inner update on held-out tasks, and at the end
    by its returns after 0, 1, 3 updates; a row with its own budget of 0 steps (an untrained baseline) is never trained,
    and a row's own adaptation_updates replace --adaptation-updates for it (the per-task expert's long adaptation)."""
    from agents import Reptile

    (tmp_path / "variants.yml").write_text("untrained:\n  algo: reptile\n  n_timesteps: 0\n  adaptation_updates: [5, 1, 0, 5]\n"
                                           "rl2-small:\n  algo: rl2\n  hyperparams: {n_envs: 8, batch_size: 64, cg_max_steps: 5, "
                                           "n_critic_updates: 2}\n")
    out = tmp_path / "bench"
    settings = {"inner_algo": "vpg", "inner_updates": 1, "inner_kwargs": {"step_size": 0.5}, "n_steps": 16, "meta_batch_size": 4,
                "learning_rate": 0.5, "policy_kwargs": {"net_arch": [8]}}
    assert train.main(["benchmark", "--algos", "reptile", "untrained", "rl2-small", "--envs", "ngrl/TargetBandit-v0", "--seeds", "0",
                       "--out", str(out), "--variants", str(tmp_path / "variants.yml"), "--n-timesteps", "640", "--eval-freq", "320",
                       "--n-eval-episodes", "3", "--workers", "1", "--adaptation-updates", "0", "1", "3",
                       "--hyperparams", *(f"{k}={v!r}" for k, v in settings.items())]) == 0
    runs = {r["algo"]: r for r in read_csv(out / "runs.csv")}
    assert runs["reptile"]["status"] == "ok" and int(runs["reptile"]["n_evals"]) == 2 and int(runs["reptile"]["timesteps"]) >= 640
    assert runs["untrained"]["status"] == "ok" and int(runs["untrained"]["timesteps"]) == 0
    assert runs["rl2-small"]["status"] == "ok" and int(runs["rl2-small"]["n_evals"]) == 2  # RL²: episodes of a trial
    block = (out / "reptile" / "ngrl-TargetBandit-v0_0" / "config.yml").read_text()
    assert "meta_batch_size: 4" in block and "n_envs" not in block
    for algo, updates in (("reptile", ["0", "1", "3"]), ("untrained", ["0", "1", "5"]), ("rl2-small", ["0", "1", "3"])):
        result = json.loads((out / algo / "ngrl-TargetBandit-v0_0" / "result.json").read_text())
        assert sorted(result["adaptation"]["returns"]) == updates
        assert all(len(v) == 3 for v in result["adaptation"]["returns"].values()) and len(result["adaptation"]["tasks"]) == 3
    # the untrained row: the parameters of a fresh learner of the same seed, and its evaluation at step 0 is the final
    # adaptation's return after one update (same tasks, same seed)
    untrained = Reptile.load(out / "untrained" / "ngrl-TargetBandit-v0_0" / "model.zip")
    fresh = Reptile("MlpPolicy", "ngrl/TargetBandit-v0", seed=0, **settings)
    assert all(torch.equal(a, b) for a, b in zip(untrained.policy.state_dict().values(), fresh.policy.state_dict().values()))
    result = json.loads((out / "untrained" / "ngrl-TargetBandit-v0_0" / "result.json").read_text())
    assert result["evaluations"][-1]["mean"] == pytest.approx(sum(result["adaptation"]["returns"]["1"]) / 3)
    rows = read_csv(out / "adaptation.csv")
    assert {(r["algo"], r["updates"]) for r in rows} == {(a, k) for a in ("reptile", "rl2-small") for k in ("0", "1", "3")} | {
        ("untrained", k) for k in ("0", "1", "5")}
    summary = (out / "summary.md").read_text()
    assert "| ngrl/TargetBandit-v0 | untrained | 5 |" in summary and "| 0 updates | 1 update | 3 updates | 5 updates |" in summary
    # five updates of the untrained row: what adapting a fresh learner of the same seed five times gives, on the same tasks
    tasks = result["adaptation"]["tasks"]
    again = fresh.evaluate_adaptation(tasks, n_updates=[0, 1, 5], seed=10_000)
    assert result["adaptation"]["returns"]["5"] == pytest.approx(list(again[5]))


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_an_interrupt_keeps_the_finished_runs(tmp_path, signum, code):
    """Ctrl-C, or SIGTERM (`kill`, a batch scheduler; a background driver started with `&` ignores SIGINT), stops the
    grid with its tables written; a rerun runs only what is missing."""
    import time

    out = tmp_path / "bench"
    command = [sys.executable, str(ROOT / "train.py"), "benchmark", "--algos", "npg", "--envs", "CartPole-v1", "--seeds", "0", "1",
               "--out", str(out), "--n-timesteps", "6144", "--eval-freq", "6144", "--n-eval-episodes", "2", "--workers", "1"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while len(list(out.glob("*/*/result.json"))) < 1:
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.2)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr[-2000:]
    assert "rerun the same command" in stderr
    assert [r["status"] for r in read_csv(out / "runs.csv")] == ["ok"]  # the finished run is kept, the other is not recorded
    rerun = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "1 of 2 runs already finished" in rerun.stdout
    assert [r["status"] for r in read_csv(out / "runs.csv")] == ["ok", "ok"]


def test_a_failure_is_recorded_for_a_run_whose_folder_was_never_made(tmp_path):
    """A worker that dies (e.g. its raylet) before the run starts leaves no run folder: the failure is still written."""
    result = tmp_path / "npg" / "CartPole-v1_0" / "result.json"
    train._write_json(result, {"status": "failed", "error": "The task's local raylet died."})
    assert json.loads(result.read_text())["status"] == "failed"
    assert not list(result.parent.glob(".*.tmp"))


def test_runs_are_not_niced_below_other_processes(monkeypatch):
    """A local Ray's workers run at the driver's priority (Ray's default, niceness 15, let every other process
    on the machine slow a benchmark run down against the same run through `train`)."""
    import argparse

    import ray

    monkeypatch.delenv("RAY_worker_niceness", raising=False)
    assert train.start_ray(argparse.Namespace(ray_address=None, workers=1))
    try:
        assert ray.get(ray.remote(num_cpus=1)(lambda: os.nice(0)).remote()) == os.nice(0)
    finally:
        ray.shutdown()


def test_the_final_evaluation_scores_the_saved_policy(tmp_path, monkeypatch):
    """2048 steps = two rollouts of 2 envs × 512 (configs/npg.yml), evaluated every 1024: the evaluation at 2048 fires on
    the last env step, before the update that ends training. The run's last evaluation must score the policy it saved,
    its row in place of the stale one (one row per step count)."""
    scored = []
    evaluate_now = train.PeriodicEvaluation.evaluate_now

    def recording(self, model):
        scored.append({k: v.detach().clone() for k, v in model.policy.state_dict().items()})
        evaluate_now(self, model)

    monkeypatch.setattr(train.PeriodicEvaluation, "evaluate_now", recording)
    run_dir = tmp_path / "npg" / "CartPole-v1_0"
    task = {"algo": "npg", "env": "CartPole-v1", "seed": 0, "overrides": {}, "n_timesteps": 2048, "eval_freq": 1024,
            "n_eval_episodes": 3, "run_dir": str(run_dir)}
    result = train.benchmark_run(task)
    assert [row["timesteps"] for row in result["evaluations"]] == [1024, 2048]
    assert len(scored) == 3  # at 1024, at 2048 before the last update, and the final policy
    saved = NPG.load(run_dir / "model.zip", device="cpu").policy.state_dict()
    assert all(torch.equal(saved[k], v) for k, v in scored[-1].items())
    assert not all(torch.equal(saved[k], v) for k, v in scored[-2].items())  # the stale one scored another policy
