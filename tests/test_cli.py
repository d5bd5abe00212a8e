"""The command line: run as a user would (subprocesses for whole runs and signals; ``train.main`` in-process
for the table of bad inputs, which must each end with one paragraph and exit code 2, never a traceback)."""

import os
import pathlib
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch
import yaml

import train
from agents import NPG, Reptile

ROOT = pathlib.Path(__file__).resolve().parents[1]
FAST = ["--hyperparams", "n_steps=32", "batch_size=32", "n_critic_updates=1", "n_envs=1", "policy_kwargs=dict(net_arch=[8])"]


def run(*args: str, cwd: pathlib.Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def checkpoint_from(stdout: str) -> pathlib.Path:
    line = next(line for line in stdout.splitlines() if "Saved model to " in line)
    return pathlib.Path(line.split("Saved model to ", 1)[1].strip())


def test_train_then_eval(tmp_path):
    result = run("train", "--algo", "npg", "--env", "CartPole-v1", "--seed", "0", "--n-timesteps", "64", "--quiet",
                 "--log-folder", str(tmp_path), "--n-eval-episodes", "2", "--tensorboard-log", str(tmp_path / "tb"), *FAST)
    assert result.returncode == 0, result.stderr
    model = checkpoint_from(result.stdout)
    assert model.is_file() and model.parent == tmp_path / "npg" / "CartPole-v1_0_1"
    config = yaml.safe_load((model.parent / "config.yml").read_text())["CartPole-v1"]
    assert config["seed"] == 0 and config["n_steps"] == 32 and config["n_envs"] == 1
    assert config["target_kl"] == 0.01  # from configs/npg.yml's CartPole-v1 block
    assert "train.py" in (model.parent / "command.txt").read_text()
    assert "Evaluation of npg on CartPole-v1 over 2 episodes:" in result.stdout
    assert list((tmp_path / "tb").glob("NPG_*"))

    evaluation = run("eval", "--algo", "npg", "--env", "CartPole-v1", "--model", str(model), "--n-episodes", "2")
    assert evaluation.returncode == 0, evaluation.stderr
    assert "over 2 episodes:" in evaluation.stdout and "±" in evaluation.stdout

    second = run("train", "--algo", "npg", "--env", "CartPole-v1", "--n-timesteps", "32", "--log-folder", str(tmp_path),
                 "--n-eval-episodes", "0", "--quiet", *FAST)
    assert checkpoint_from(second.stdout).parent.name == "CartPole-v1_0_2"


def test_normalized_env_and_custom_env_class(tmp_path):
    result = run("train", "--algo", "npg", "--env", "tests.fixtures.custom_envs:GoLeft", "--env-kwargs", "length=5", "--quiet",
                 "--n-timesteps", "64", "--log-folder", str(tmp_path), "--n-eval-episodes", "2", *FAST, "normalize=true")
    assert result.returncode == 0, result.stderr
    model = checkpoint_from(result.stdout)
    stats = model.with_name(f"{model.stem}_vecnormalize.npz")
    assert stats.is_file() and not list(model.parent.glob("*.pkl"))
    evaluation = run("eval", "--algo", "npg", "--env", "tests.fixtures.custom_envs:make_go_left", "--env-kwargs", "length=5",
                     "--model", str(model), "--n-episodes", "1")
    assert evaluation.returncode == 0, evaluation.stderr
    # without its statistics, a normalised model is refused unless the user says --no-norm
    stats.unlink()
    refused = run("eval", "--algo", "npg", "--env", "tests.fixtures.custom_envs:GoLeft", "--model", str(model), "--n-episodes", "1")
    assert refused.returncode == 2 and "--no-norm" in refused.stderr and "Traceback" not in refused.stderr
    raw = run("eval", "--algo", "npg", "--env", "tests.fixtures.custom_envs:GoLeft", "--model", str(model), "--n-episodes", "1", "--no-norm")
    assert raw.returncode == 0, raw.stderr


def test_gym_packages_register_ids(tmp_path):
    result = run("train", "--algo", "npg", "--gym-packages", "tests.fixtures.registering_package", "--env", "GoLeftRegistered-v0",
                 "--n-timesteps", "32", "--log-folder", str(tmp_path), "--n-eval-episodes", "1", "--quiet", *FAST)
    assert result.returncode == 0, result.stderr


def test_help_lists_the_registered_algorithms():
    from agents import ALGOS, META_ALGOS

    assert tuple(ALGOS) == train.ALGO_NAMES and tuple(META_ALGOS) == train.META_ALGO_NAMES


def _file_as_folder(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("")
    return str(path / "logs")


def _read_only_folder(tmp_path):
    path = tmp_path / "read_only"
    path.mkdir()
    path.chmod(stat.S_IRUSR | stat.S_IXUSR)
    return str(path)


def _yaml(tmp_path, text):
    path = tmp_path / "config.yml"
    path.write_text(text)
    return str(path)


TRAIN = ["train", "--algo", "npg", "--env", "CartPole-v1", "--n-timesteps", "64", "--n-eval-episodes", "0", "--quiet"]
BAD_INPUTS = {
    # name: (arguments (a callable of tmp_path gives them), words the message must contain)
    "unknown env": (["train", "--algo", "npg", "--env", "CartPol-v1"], "Did you mean CartPole-v1"),
    "unknown algo": (["train", "--algo", "ngp", "--env", "CartPole-v1"], "Did you mean npg"),
    "meta algo in train": (["train", "--algo", "imaml", "--env", "CartPole-v1"], "meta-train"),
    "unsupported action space": (TRAIN + ["--env", "tests.fixtures.custom_envs:TupleActions"], "cannot train on"),
    "unknown hyperparameter": (TRAIN + ["--hyperparams", "not_a_param=3"], "unknown hyperparameter"),
    "hyperparameter typo": (TRAIN + ["--hyperparams", "target_kll=0.1"], "did you mean target_kl"),
    "not key=value": (TRAIN + ["--hyperparams", "oops"], "key=value"),
    "unknown policy": (TRAIN + ["--policy", "NoSuchPolicy"], "unknown policy"),
    "unimportable env module": (["train", "--algo", "npg", "--env", "no_such_module:Env"], "could not import"),
    "unimportable gym package": (["train", "--algo", "npg", "--gym-packages", "no_such_package", "--env", "CartPole-v1"],
                                 "could not import --gym-packages"),
    "n_steps not a number": (TRAIN + ["--hyperparams", "n_steps=abc"], "n_steps must be a positive integer"),
    "n_envs zero": (TRAIN + ["--hyperparams", "n_envs=0"], "n_envs must be a positive integer"),
    "unclosed policy_kwargs": (TRAIN + ["--hyperparams", "policy_kwargs=dict(net_arch=[64,"], "policy_kwargs="),
    "policy_kwargs not a dict": (TRAIN + ["--hyperparams", "policy_kwargs=5"], "policy_kwargs must be a dict"),
    "bad schedule": (TRAIN + ["--hyperparams", "learning_rate=lin_abc"], "lin_<start>"),
    "target_kl nan": (TRAIN + ["--hyperparams", "target_kl=nan"], "target_kl must be a positive finite number"),
    "target_kl inf": (TRAIN + ["--hyperparams", "target_kl=inf"], "target_kl must be a positive finite number"),
    "target_kl negative": (TRAIN + ["--hyperparams", "target_kl=-1"], "target_kl must be a positive finite number"),
    "batch_size zero": (TRAIN + ["--hyperparams", "batch_size=0"], "batch_size must be a positive integer"),
    "gamma above one": (TRAIN + ["--hyperparams", "gamma=1.5"], "gamma must lie in (0, 1]"),
    "bad estimator": (TRAIN + ["--hyperparams", "fisher_estimator=magic"], "fisher_estimator"),
    "bad activation": (TRAIN + ["--hyperparams", "policy_kwargs=dict(activation_fn=nn.Nope)"], "unknown activation_fn"),
    "yaml syntax error": (lambda t: TRAIN + ["--config", _yaml(t, "CartPole-v1: {n_steps: [1,\n")], "not valid YAML"),
    "yaml top level list": (lambda t: TRAIN + ["--config", _yaml(t, "- 1\n- 2\n")], "must map env ids"),
    "yaml block not a dict": (lambda t: TRAIN + ["--config", _yaml(t, "CartPole-v1: 3\n")], "must map hyper-parameters"),
    "missing config": (TRAIN + ["--config", "no/such/config.yml"], "does not exist"),
    "file as log folder": (lambda t: TRAIN + ["--log-folder", _file_as_folder(t)], "cannot write runs"),
    "bad device": (TRAIN + ["--device", "tpu9"], "--device must be"),
    "cuda without cuda": (TRAIN + ["--device", "cuda"], "no CUDA device"),
    "zero timesteps": (TRAIN + ["--n-timesteps", "0"], "--n-timesteps must be a positive"),
    "zero threads": (TRAIN + ["--num-threads", "0"], "--num-threads"),
    "env reset raises": (TRAIN + ["--env", "tests.fixtures.custom_envs:ResetRaises"], "raised RuntimeError during reset"),
    "old gym step": (TRAIN + ["--env", "tests.fixtures.custom_envs:OldGymStep"], "step returned 4 values"),
    "empty observation space": (TRAIN + ["--env", "tests.fixtures.custom_envs:EmptyObservations"], "observation space"),
    "bad env kwargs": (TRAIN + ["--env", "tests.fixtures.custom_envs:GoLeft", "--env-kwargs", "width=3"], "env kwargs"),
    "eval zero episodes": (lambda t: ["eval", "--algo", "npg", "--env", "CartPole-v1", "--model", _npg_checkpoint(t), "--n-episodes", "0"],
                           "--n-episodes must be at least 1"),
    "eval missing checkpoint": (["eval", "--algo", "npg", "--env", "CartPole-v1", "--model", "missing.zip"], "no checkpoint"),
    "eval on another env": (lambda t: ["eval", "--algo", "npg", "--env", "Acrobot-v1", "--model", _npg_checkpoint(t)],
                            "does not fit this environment"),
    "eval with another algo": (lambda t: ["eval", "--algo", "ngdqn", "--env", "CartPole-v1", "--model", _npg_checkpoint(t)],
                               "--algo npg"),
    "meta unknown hyperparameter": (["meta-train", "--algo", "fomaml", "--env", "ngrl/Navigation2D-v0", "--hyperparams", "inner_updatez=2"],
                                    "did you mean inner_updates"),
    "meta not a family": (["meta-train", "--algo", "fomaml", "--env", "CartPole-v1", "--n-timesteps", "10"], "not a task family"),
    "meta bad value": (["meta-train", "--algo", "imaml", "--env", "ngrl/Navigation2D-v0", "--hyperparams", "lam=0"], "lam must be"),
    "meta zero timesteps": (["meta-train", "--algo", "reptile", "--env", "ngrl/Navigation2D-v0", "--n-timesteps", "0"], "--n-timesteps"),
    "meta single-task algo": (["meta-train", "--algo", "npg", "--env", "ngrl/Navigation2D-v0"], "train --algo npg"),
    "adapt missing": (["adapt", "--model", "missing.zip"], "no checkpoint"),
    "adapt zero tasks": (lambda t: ["adapt", "--model", _reptile_checkpoint(t), "--n-tasks", "0"], "--n-tasks"),
    "adapt output is a folder": (lambda t: ["adapt", "--model", _reptile_checkpoint(t), "--output", str(t)], "is a folder"),
    "adapt an npg checkpoint": (lambda t: ["adapt", "--model", _npg_checkpoint(t)], "not by a meta-learner"),
    "adapt a corrupt file": (lambda t: ["adapt", "--model", _garbage(t)], "not a readable ngrl checkpoint"),
    "meta class not a family": (["meta-train", "--algo", "reptile", "--env", "tests.fixtures.custom_envs:GoLeft", "--n-timesteps", "10"],
                                "GoLeft is not a task family: it has no sample_tasks, set_task, get_task"),
    "meta family without get_task": (["meta-train", "--algo", "reptile", "--env", "tests.fixtures.custom_families:FamilyWithoutGetTask"],
                                     "it has no get_task (a family needs"),
    "meta unimportable family module": (["meta-train", "--algo", "reptile", "--env", "no_such_module:Family"], "could not import"),
    "meta unimportable gym package": (["meta-train", "--algo", "reptile", "--gym-packages", "no_such_package", "--env", "ngrl/LineGoal-v0"],
                                      "could not import --gym-packages"),
    "meta bad family kwargs": (["meta-train", "--algo", "reptile", "--env", "tests.fixtures.custom_families:PointToTarget",
                                "--env-kwargs", "width=3"], "env kwargs"),
    "adapt a family given in code without --env": (lambda t: ["adapt", "--model", _code_family_checkpoint(t)], "name it again with --env"),
    "adapt on an env that is not a family": (lambda t: ["adapt", "--model", _reptile_checkpoint(t), "--env", "CartPole-v1"],
                                             "not a task family"),
    "adapt on a family of other spaces": (lambda t: ["adapt", "--model", _reptile_checkpoint(t), "--env", "ngrl/LineGoal-v0"],
                                          "does not fit --env ngrl/LineGoal-v0"),
    "adapt unimportable gym package": (lambda t: ["adapt", "--model", _reptile_checkpoint(t), "--gym-packages", "no_such_package"],
                                       "could not import --gym-packages"),
}


def _garbage(tmp_path) -> str:
    path = tmp_path / "garbage.zip"
    path.write_bytes(b"not a zip")
    return str(path)


def _npg_checkpoint(tmp_path) -> str:
    path = tmp_path / "npg.zip"
    NPG("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, policy_kwargs=dict(net_arch=[8])).save(path)
    return str(path)


def _code_family_checkpoint(tmp_path) -> str:
    from tests.fixtures.custom_families import PointToTarget

    path = tmp_path / "family.zip"
    Reptile("MlpPolicy", PointToTarget, meta_batch_size=2, n_steps=16, policy_kwargs=dict(net_arch=[8])).save(path)
    return str(path)


def _reptile_checkpoint(tmp_path) -> str:
    path = tmp_path / "reptile.zip"
    Reptile("MlpPolicy", "ngrl/Navigation2D-v0", meta_batch_size=2, n_steps=20, policy_kwargs=dict(net_arch=[8])).save(path)
    return str(path)


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_gives_one_paragraph_and_exit_code_2(tmp_path, capsys, name):
    args, message = BAD_INPUTS[name]
    args = list(args(tmp_path) if callable(args) else args)
    if args[0] in ("train", "meta-train") and "--log-folder" not in args:
        args += ["--log-folder", str(tmp_path / "logs")]
    before = set(tmp_path.rglob("*.zip"))
    assert train.main(args) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert set(tmp_path.rglob("*.zip")) == before  # nothing trained, nothing saved


def test_read_only_log_folder(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root can write to read-only folders")
    folder = _read_only_folder(tmp_path)
    assert train.main(TRAIN + ["--log-folder", folder]) == 2
    assert "cannot write runs" in capsys.readouterr().err


def test_bad_input_in_a_subprocess_has_no_traceback(tmp_path):
    result = run(*TRAIN, "--hyperparams", "n_steps=abc", "--log-folder", str(tmp_path))
    assert result.returncode == 2 and "n_steps must be a positive integer" in result.stderr and "Traceback" not in result.stderr


def test_corrupt_checkpoint(tmp_path):
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(b"garbage")
    result = run("eval", "--algo", "npg", "--env", "CartPole-v1", "--model", str(corrupt))
    assert result.returncode == 2 and "not a readable ngrl checkpoint" in result.stderr and "Traceback" not in result.stderr


def test_value_parser_never_evaluates_code():
    assert train.parse_value("3e-4") == 3e-4
    assert train.parse_value("[64, 64]") == [64, 64]
    assert train.parse_value("dict(net_arch=[8], activation_fn=nn.ReLU)") == {"net_arch": [8], "activation_fn": "ReLU"}
    assert train.parse_value("true") is True and train.parse_value("-2") == -2
    assert train.parse_value("__import__('os').system('echo hi')") == "__import__('os').system('echo hi')"
    assert train.parse_value("lin_1e-3") == "lin_1e-3"
    schedule = train.schedule("learning_rate", "lin_1e-3")
    assert schedule(1.0) == pytest.approx(1e-3) and schedule(0.5) == pytest.approx(5e-4)


def test_config_round_trip_reproduces_the_run(tmp_path):
    """The saved config.yml holds what the run used; --config with it (and nothing else) gives identical parameters."""
    first = run("train", "--algo", "npg", "--env", "CartPole-v1", "--seed", "3", "--n-timesteps", "64", "--quiet",
                "--log-folder", str(tmp_path / "a"), "--n-eval-episodes", "0", *FAST,
                "learning_rate=lin_1e-3", "policy_kwargs=dict(net_arch=[8], activation_fn=nn.ReLU)")
    assert first.returncode == 0, first.stderr
    model_a = checkpoint_from(first.stdout)
    config = model_a.parent / "config.yml"
    block = yaml.safe_load(config.read_text())["CartPole-v1"]
    assert block["learning_rate"] == "lin_1e-3" and block["policy_kwargs"]["activation_fn"] == "ReLU"
    assert block["seed"] == 3 and block["n_envs"] == 1 and block["n_timesteps"] == 64
    second = run("train", "--algo", "npg", "--env", "CartPole-v1", "--config", str(config), "--quiet",
                 "--log-folder", str(tmp_path / "b"), "--n-eval-episodes", "0")
    assert second.returncode == 0, second.stderr
    model_b = checkpoint_from(second.stdout)
    assert model_b.parent.name == "CartPole-v1_3_1"
    a, b = NPG.load(model_a), NPG.load(model_b)
    assert a.policy_kwargs["activation_fn"] is torch.nn.ReLU
    for p, q in zip(a.policy.parameters(), b.policy.parameters()):
        assert torch.equal(p, q)


def _start(tmp_path, *extra):
    args = ["train", "--algo", "npg", "--env", "tests.fixtures.custom_envs:GoLeft", "--env-kwargs", "length=5", "--seed", "0",
            "--log-folder", str(tmp_path), "--n-eval-episodes", "0", "--quiet", *extra, *FAST, "normalize=true"]
    process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    return process


def _wait_for_training(tmp_path, process, timeout=120):
    deadline = time.time() + timeout
    while not list(tmp_path.rglob("config.yml")):
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline
        time.sleep(0.1)
    time.sleep(2.0)  # into learn()


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_saves_a_checkpoint_that_resumes(tmp_path, signum, code):
    process = _start(tmp_path, "--n-timesteps", "10000000")
    _wait_for_training(tmp_path, process)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr
    model_path = checkpoint_from(stdout)
    assert "Resume with:" in stdout and "--trained-agent" in stdout
    model = NPG.load(model_path)
    assert 0 < model.num_timesteps < 10_000_000  # the rollout under way is abandoned, its steps counted
    assert model_path.with_name(f"{model_path.stem}_vecnormalize.npz").is_file()


def test_resume_matches_an_uninterrupted_run(tmp_path):
    """Train 64 steps, continue to 128: the step counter, the optimizer state and the normalisation count carry over."""
    from agents.checkpoint import load_normalization
    from stable_baselines3.common.vec_env import DummyVecEnv
    from tests.fixtures.custom_envs import GoLeft

    first = run("train", "--algo", "npg", "--env", "tests.fixtures.custom_envs:GoLeft", "--env-kwargs", "length=5", "--quiet",
                "--n-timesteps", "64", "--log-folder", str(tmp_path / "a"), "--n-eval-episodes", "0", *FAST, "normalize=true")
    assert first.returncode == 0, first.stderr
    half = checkpoint_from(first.stdout)
    resumed = run("train", "--algo", "npg", "--env", "tests.fixtures.custom_envs:GoLeft", "--env-kwargs", "length=5", "--quiet",
                  "--n-timesteps", "128", "--log-folder", str(tmp_path / "b"), "--n-eval-episodes", "0", "--trained-agent", str(half),
                  *FAST, "normalize=true")
    assert resumed.returncode == 0, resumed.stderr
    whole = run("train", "--algo", "npg", "--env", "tests.fixtures.custom_envs:GoLeft", "--env-kwargs", "length=5", "--quiet",
                "--n-timesteps", "128", "--log-folder", str(tmp_path / "c"), "--n-eval-episodes", "0", *FAST, "normalize=true")
    assert whole.returncode == 0, whole.stderr
    resumed_path, whole_path = checkpoint_from(resumed.stdout), checkpoint_from(whole.stdout)
    a, b = NPG.load(resumed_path), NPG.load(whole_path)
    assert a.num_timesteps == b.num_timesteps == 128 and a._n_updates == b._n_updates == 4

    def stats(path):
        return load_normalization(path.with_name(f"{path.stem}_vecnormalize.npz"), DummyVecEnv([lambda: GoLeft(5)]))

    sa, sb, s_half = stats(resumed_path), stats(whole_path), stats(half)
    # the statistics carried on: every observation of both halves, plus the one reset that resuming adds
    assert s_half.obs_rms.count == pytest.approx(65.0001) and sa.obs_rms.count == pytest.approx(sb.obs_rms.count + 1)
    def adam_steps(model):
        return sorted(float(state["step"]) for state in model.policy.optimizer.state_dict()["state"].values())

    assert adam_steps(a) == adam_steps(b) and adam_steps(a)[0] > 0  # Adam's moments continued, not restarted


def test_save_freq_keeps_the_last_checkpoints(tmp_path):
    result = run("train", "--algo", "npg", "--env", "CartPole-v1", "--n-timesteps", "192", "--save-freq", "32", "--quiet",
                 "--log-folder", str(tmp_path), "--n-eval-episodes", "0", *FAST)
    assert result.returncode == 0, result.stderr
    saved = sorted(p.name for p in (checkpoint_from(result.stdout).parent / "checkpoints").glob("*.zip"))
    assert saved == ["rl_model_128_steps.zip", "rl_model_160_steps.zip", "rl_model_192_steps.zip"]
    assert NPG.load(checkpoint_from(result.stdout).parent / "checkpoints" / "rl_model_160_steps.zip").num_timesteps == 160


def test_meta_train_then_adapt(tmp_path):
    result = run("meta-train", "--algo", "reptile", "--env", "ngrl/Navigation2D-v0", "--n-timesteps", "40", "--quiet",
                 "--log-folder", str(tmp_path), "--hyperparams", "meta_batch_size=2", "n_steps=20",
                 "policy_kwargs=dict(net_arch=[8])", "inner_kwargs=dict(n_critic_updates=1)")
    assert result.returncode == 0, result.stderr
    model = checkpoint_from(result.stdout)
    out = tmp_path / "adapt.json"
    adapted = run("adapt", "--model", str(model), "--n-tasks", "2", "--n-updates", "0", "1", "--output", str(out))
    assert adapted.returncode == 0, adapted.stderr
    assert "| 1 |" in adapted.stdout and out.is_file()


def test_rl2_meta_trains_resumes_and_adapts_within_a_trial(tmp_path):
    """RL² through meta-train (its n_envs trials), --trained-agent, and adapt (its "updates": episodes of a trial), also on
    the family named again with --env / --env-kwargs (the trial env's spaces are the ones checked)."""
    from agents import RL2

    bandit = ["--env", "ngrl/TargetBandit-v0", "--env-kwargs", "n_arms=2", "target_low=-1.0", "target_high=1.0"]
    settings = ["episodes_per_trial=2", "n_envs=4", "n_steps=8", "batch_size=32", "cg_max_steps=3", "n_critic_updates=1",
                "policy_kwargs=dict(hidden_size=8, net_arch=[8])"]
    result = run("meta-train", "--algo", "rl2", *bandit, "--n-timesteps", "64", "--quiet", "--log-folder", str(tmp_path),
                 "--n-eval-tasks", "2", "--hyperparams", *settings)
    assert result.returncode == 0, result.stderr
    assert "episodes of a trial" in result.stdout and "| 1 |" in result.stdout
    model = checkpoint_from(result.stdout)
    assert RL2.load(model).n_envs == 4 and RL2.load(model).num_timesteps == 64
    resumed = run("meta-train", "--algo", "rl2", *bandit, "--n-timesteps", "96", "--quiet", "--log-folder", str(tmp_path),
                  "--trained-agent", str(model), "--hyperparams", *settings)
    assert resumed.returncode == 0, resumed.stderr
    assert RL2.load(checkpoint_from(resumed.stdout)).num_timesteps == 96
    adapted = run("adapt", "--model", str(model), "--n-tasks", "2", "--n-updates", "0", "1", "3", *bandit)
    assert adapted.returncode == 0, adapted.stderr
    assert "| 3 |" in adapted.stdout
    other = run("adapt", "--model", str(model), "--n-tasks", "2", "--env", "ngrl/LineGoal-v0")
    assert other.returncode == 2 and "does not fit --env ngrl/LineGoal-v0" in other.stderr, other.stderr
    refused = run("meta-train", "--algo", "rl2", *bandit, "--n-timesteps", "64", "--hyperparams", "normalize=True")
    assert refused.returncode == 2 and "normalize does not apply" in refused.stderr, refused.stderr


def test_meta_train_and_adapt_a_family_given_as_module_class(tmp_path):
    """A user's own family (not registered) by module:Class, as train takes envs; adapt needs it named again."""
    family = "tests.fixtures.custom_families:PointToTarget"
    result = run("meta-train", "--algo", "fomaml", "--env", family, "--n-timesteps", "40", "--quiet", "--log-folder", str(tmp_path),
                 "--n-eval-tasks", "2", "--hyperparams", "meta_batch_size=2", "n_steps=16", "policy_kwargs=dict(net_arch=[8])",
                 "inner_kwargs=dict(n_critic_updates=1)")
    assert result.returncode == 0, result.stderr
    assert f"held-out tasks of {family}" in result.stdout and "| 1 |" in result.stdout
    model = checkpoint_from(result.stdout)
    assert model.name == "tests.fixtures.custom_families-PointToTarget.zip"
    refused = run("adapt", "--model", str(model))
    assert refused.returncode == 2 and f"--env {family}" in refused.stderr, refused.stderr
    out = tmp_path / "adapt.json"
    adapted = run("adapt", "--model", str(model), "--env", "tests.fixtures.custom_families:make_point_to_target",
                  "--env-kwargs", "horizon=4", "--n-tasks", "2", "--n-updates", "0", "1", "--output", str(out))
    assert adapted.returncode == 0, adapted.stderr
    assert "| 1 |" in adapted.stdout and len(yaml.safe_load(out.read_text())["tasks"]) == 2


def test_meta_train_a_family_a_gym_package_registers(tmp_path, capsys):
    args = ["meta-train", "--algo", "reptile", "--gym-packages", "tests.fixtures.registering_families", "--env",
            "PointToTargetRegistered-v0", "--n-timesteps", "24", "--quiet", "--log-folder", str(tmp_path), "--hyperparams",
            "meta_batch_size=2", "n_steps=12", "policy_kwargs=dict(net_arch=[8])"]
    assert train.main(args) == 0
    model = checkpoint_from(capsys.readouterr().out)
    assert Reptile.load(model).env_id == "PointToTargetRegistered-v0"
    assert train.main(["adapt", "--model", str(model), "--n-tasks", "2", "--n-updates", "1",
                       "--gym-packages", "tests.fixtures.registering_families"]) == 0
    assert "| 1 |" in capsys.readouterr().out


def test_budget_overshoot_is_reported(tmp_path):
    result = run("train", "--algo", "npg", "--env", "CartPole-v1", "--n-timesteps", "40", "--quiet",
                 "--log-folder", str(tmp_path), "--n-eval-episodes", "0", *FAST)
    assert result.returncode == 0, result.stderr
    assert "Ran 64 environment steps for a budget of 40" in result.stdout


def test_ngdqn_replay_buffer_is_saved_and_restored(tmp_path):
    args = ["train", "--algo", "ngdqn", "--env", "CartPole-v1", "--quiet", "--n-eval-episodes", "0", "--save-replay-buffer",
            "--hyperparams", "learning_starts=50", "buffer_size=1000", "policy_kwargs=dict(net_arch=[8])"]
    first = run(*args, "--n-timesteps", "200", "--log-folder", str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr
    model = checkpoint_from(first.stdout)
    assert model.with_name(f"{model.stem}_replay_buffer.npz").is_file()
    resumed = run(*args, "--n-timesteps", "300", "--log-folder", str(tmp_path / "b"), "--trained-agent", str(model))
    assert resumed.returncode == 0, resumed.stderr
    assert "Loaded the replay buffer" in resumed.stdout
    from agents import NGDQN

    restored = NGDQN.load(checkpoint_from(resumed.stdout))
    restored.load_replay_buffer(checkpoint_from(resumed.stdout).with_name("CartPole-v1_replay_buffer.npz"))
    assert restored.num_timesteps == 300 and restored.replay_buffer.pos == 300


def test_meta_train_interrupt_saves_and_resumes(tmp_path):
    args = ["meta-train", "--algo", "fomaml", "--env", "ngrl/Navigation2D-v0", "--quiet", "--log-folder", str(tmp_path),
            "--hyperparams", "meta_batch_size=2", "n_steps=20", "policy_kwargs=dict(net_arch=[8])", "inner_kwargs=dict(n_critic_updates=1)"]
    process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args, "--n-timesteps", "100000000"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_training(tmp_path, process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    model_path = checkpoint_from(stdout)
    from agents import FOMAML

    steps = FOMAML.load(model_path).num_timesteps
    assert steps > 0
    resumed = run(*args, "--n-timesteps", str(steps + 40), "--trained-agent", str(model_path))
    assert resumed.returncode == 0, resumed.stderr
    assert FOMAML.load(checkpoint_from(resumed.stdout)).num_timesteps >= steps + 40
