"""The command line, run as a user would: in a subprocess from the repository root."""

import pathlib
import subprocess
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
FAST = ["--hyperparams", "n_steps=32", "batch_size=32", "n_critic_updates=1", "n_envs=1", "policy_kwargs=dict(net_arch=[8])"]


def run(*args: str, cwd: pathlib.Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def checkpoint_from(stdout: str) -> pathlib.Path:
    line = next(line for line in stdout.splitlines() if line.startswith("Saved model to "))
    return pathlib.Path(line.removeprefix("Saved model to ").strip())


def test_train_then_eval(tmp_path):
    result = run("train", "--algo", "npg", "--env", "CartPole-v1", "--seed", "0", "--n-timesteps", "64",
                 "--log-folder", str(tmp_path), "--n-eval-episodes", "2", "--tensorboard-log", str(tmp_path / "tb"), *FAST)
    assert result.returncode == 0, result.stderr
    model = checkpoint_from(result.stdout)
    assert model.is_file() and model.parent == tmp_path / "npg" / "CartPole-v1_1"
    config = yaml.safe_load((model.parent / "config.yml").read_text())
    assert config["algo"] == "npg" and config["seed"] == 0 and config["hyperparams"]["n_steps"] == 32
    assert config["hyperparams"]["target_kl"] == 0.01  # from configs/npg.yml's CartPole-v1 block
    assert "train.py" in (model.parent / "command.txt").read_text()
    assert "Evaluation of npg on CartPole-v1 over 2 episodes:" in result.stdout
    assert list((tmp_path / "tb").glob("NPG_*"))

    evaluation = run("eval", "--algo", "npg", "--env", "CartPole-v1", "--model", str(model), "--n-episodes", "2")
    assert evaluation.returncode == 0, evaluation.stderr
    assert "over 2 episodes:" in evaluation.stdout and "±" in evaluation.stdout

    second = run("train", "--algo", "npg", "--env", "CartPole-v1", "--n-timesteps", "32", "--log-folder", str(tmp_path),
                 "--n-eval-episodes", "0", *FAST)
    assert checkpoint_from(second.stdout).parent.name == "CartPole-v1_2"


def test_normalized_env_and_custom_env_class(tmp_path):
    result = run("train", "--algo", "npg", "--env", "tests.fixtures.custom_envs:GoLeft", "--env-kwargs", "length=5",
                 "--n-timesteps", "64", "--log-folder", str(tmp_path), "--n-eval-episodes", "2", *FAST, "normalize=true")
    assert result.returncode == 0, result.stderr
    model = checkpoint_from(result.stdout)
    assert (model.parent / "vecnormalize.pkl").is_file()
    evaluation = run("eval", "--algo", "npg", "--env", "tests.fixtures.custom_envs:make_go_left", "--env-kwargs", "length=5",
                     "--model", str(model), "--n-episodes", "1")
    assert evaluation.returncode == 0, evaluation.stderr


def test_gym_packages_register_ids(tmp_path):
    result = run("train", "--algo", "npg", "--gym-packages", "tests.fixtures.registering_package", "--env", "GoLeftRegistered-v0",
                 "--n-timesteps", "32", "--log-folder", str(tmp_path), "--n-eval-episodes", "1", *FAST)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--algo", "npg", "--env", "CartPol-v1"], "Did you mean CartPole-v1"),
        (["train", "--algo", "ngp", "--env", "CartPole-v1"], "Did you mean npg"),
        (["train", "--algo", "npg", "--env", "tests.fixtures.custom_envs:TupleActions", "--n-timesteps", "8"], "cannot train on"),
        (["train", "--algo", "npg", "--env", "CartPole-v1", "--hyperparams", "not_a_param=3"], "unknown hyperparameter"),
        (["train", "--algo", "npg", "--env", "CartPole-v1", "--hyperparams", "oops"], "key=value"),
        (["train", "--algo", "npg", "--env", "CartPole-v1", "--policy", "NoSuchPolicy"], "unknown policy"),
        (["train", "--algo", "npg", "--env", "no_such_module:Env"], "could not import"),
        (["train", "--algo", "npg", "--gym-packages", "no_such_package", "--env", "CartPole-v1"], "could not import --gym-packages"),
        (["eval", "--algo", "npg", "--env", "CartPole-v1", "--model", "missing.zip"], "no checkpoint"),
    ],
)
def test_bad_input_gives_one_paragraph_and_exit_code_2(tmp_path, args, message):
    result = run(*args, "--log-folder", str(tmp_path)) if args[0] == "train" else run(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("*.zip"))


def test_corrupt_and_mismatched_checkpoints(tmp_path):
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(b"garbage")
    result = run("eval", "--algo", "npg", "--env", "CartPole-v1", "--model", str(corrupt))
    assert result.returncode == 2 and "not a readable ngrl checkpoint" in result.stderr and "Traceback" not in result.stderr
    trained = run("train", "--algo", "npg", "--env", "CartPole-v1", "--n-timesteps", "32", "--log-folder", str(tmp_path),
                  "--n-eval-episodes", "0", *FAST)
    model = checkpoint_from(trained.stdout)
    mismatch = run("eval", "--algo", "npg", "--env", "Acrobot-v1", "--model", str(model))
    assert mismatch.returncode == 2 and "does not fit this environment" in mismatch.stderr


def test_value_parser_never_evaluates_code():
    sys.path.insert(0, str(ROOT))
    import train

    assert train.parse_value("3e-4") == 3e-4
    assert train.parse_value("[64, 64]") == [64, 64]
    assert train.parse_value("dict(net_arch=[8], activation_fn=nn.ReLU)") == {"net_arch": [8], "activation_fn": "ReLU"}
    assert train.parse_value("true") is True and train.parse_value("-2") == -2
    assert train.parse_value("__import__('os').system('echo hi')") == "__import__('os').system('echo hi')"
    assert train.parse_value("lin_1e-3") == "lin_1e-3"
    schedule = train._schedule("lin_1e-3")
    assert schedule(1.0) == pytest.approx(1e-3) and schedule(0.5) == pytest.approx(5e-4)
