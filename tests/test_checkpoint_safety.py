"""Checkpoints and statistics files crafted by an attacker: loading them must run no code and say what is wrong."""

import base64
import io
import json
import os
import pathlib
import pickle
import zipfile

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

import train
from agents import NGDQN, NPG, CheckpointError, IMAML, NonFiniteParametersError, register_safe_class
from agents.checkpoint import load_normalization, save_normalization

TINY = dict(n_steps=32, batch_size=32, policy_kwargs=dict(net_arch=[8]))


class Payload:
    """Unpickling this creates ``marker``: proof that code from the file ran."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def hostile_b64(marker: pathlib.Path) -> str:
    return base64.b64encode(pickle.dumps(Payload(marker))).decode()


def rewrite(path: pathlib.Path, edit) -> None:
    """Rewrite the zip at ``path``: ``edit(members)`` changes the dict of member name -> bytes in place."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    edit(members)
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)


def edit_json(members, name, change):
    data = json.loads(members[name])
    change(data)
    members[name] = json.dumps(data).encode()


@pytest.fixture
def checkpoint(tmp_path):
    model = NPG("MlpPolicy", "CartPole-v1", seed=0, **TINY)
    path = tmp_path / "model.zip"
    model.save(path)
    return path, model


def test_pickled_fields_are_never_unpickled(tmp_path, checkpoint):
    path, model = checkpoint
    marker = tmp_path / "pwned"

    def poison(members):
        def change(data):
            data["policy_class"][":serialized:"] = hostile_b64(marker)
            data["observation_space"][":serialized:"] = hostile_b64(marker)
            data["evil"] = {":type:": "x", ":serialized:": hostile_b64(marker)}

        edit_json(members, "data", change)

    rewrite(path, poison)
    loaded = NPG.load(path)
    assert not marker.exists()
    obs = np.zeros((2, 4), dtype=np.float32)
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])


def test_a_pickle_format_checkpoint_is_refused_unless_allowed(tmp_path, checkpoint):
    path, _ = checkpoint
    marker = tmp_path / "pwned"

    def legacy(members):
        del members["ngrl.json"]
        edit_json(members, "data", lambda data: data["policy_class"].update({":serialized:": hostile_b64(marker)}))

    rewrite(path, legacy)
    with pytest.raises(CheckpointError, match="pickle format.*allow_unsafe_pickle=True"):
        NPG.load(path)
    assert not marker.exists()
    assert train.main(["eval", "--algo", "npg", "--env", "CartPole-v1", "--model", str(path)]) == 2
    assert not marker.exists()


def test_a_class_off_the_allow_list_is_refused(tmp_path, checkpoint):
    path, _ = checkpoint

    def name_os_system(members):
        edit_json(members, "ngrl.json", lambda safe: safe["entries"].update({"policy_class": {"__class__": "subprocess.Popen"}}))

    rewrite(path, name_os_system)
    with pytest.raises(CheckpointError, match="allow-list"):
        NPG.load(path)


def test_user_classes_load_once_registered(tmp_path):
    class Scaled(torch.nn.Tanh):
        pass

    model = NPG("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, policy_kwargs=dict(net_arch=[8], activation_fn=Scaled))
    model.save(tmp_path / "m.zip")
    with pytest.raises(CheckpointError, match="register_safe_class"):
        NPG.load(tmp_path / "m.zip")
    register_safe_class(Scaled)
    assert NPG.load(tmp_path / "m.zip").policy_kwargs["activation_fn"] is Scaled


def test_tensors_holding_pickled_objects_are_refused(tmp_path, checkpoint):
    path, _ = checkpoint
    marker = tmp_path / "pwned"

    def poison_weights(members):
        buffer = io.BytesIO()
        torch.save({"x": Payload(marker)}, buffer)
        members["pytorch_variables.pth"] = buffer.getvalue()

    rewrite(path, poison_weights)
    with pytest.raises(CheckpointError):
        NPG.load(path)
    assert not marker.exists()


def test_file_objects_get_the_same_checks(tmp_path):
    ppo = PPO("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, policy_kwargs=dict(net_arch=[8]))
    ppo.save(tmp_path / "ppo.zip")
    with open(tmp_path / "ppo.zip", "rb") as f, pytest.raises(CheckpointError, match="not by NPG"):
        NPG.load(f)
    model = NPG("MlpPolicy", "CartPole-v1", **TINY)
    buffer = io.BytesIO()
    model.save(buffer)
    buffer.seek(0)
    assert NPG.load(buffer).n_steps == 32


@pytest.mark.parametrize("make", [
    lambda: NGDQN("MlpPolicy", "CartPole-v1", learning_starts=10, policy_kwargs=dict(net_arch=[8], activation_fn=torch.nn.ReLU)),
    lambda: NPG("MlpErnnPolicy", "CartPole-v1", n_steps=32, policy_kwargs=dict(cell="ernn", hidden_size=4, net_arch=[4])),
    lambda: IMAML("MlpPolicy", "ngrl/Navigation2D-v0", meta_batch_size=2, n_steps=20, policy_kwargs=dict(net_arch=[8])),
    lambda: NPG("MlpPolicy", "Pendulum-v1", learning_rate=train.schedule("learning_rate", "lin_1e-3"), n_steps=32, batch_size=32),
])
def test_every_agent_round_trips_through_the_safe_format(tmp_path, make):
    model = make()
    model.learn(64)
    model.save(tmp_path / "m.zip")
    with zipfile.ZipFile(tmp_path / "m.zip") as archive:
        safe = json.loads(archive.read("ngrl.json"))
        data = json.loads(archive.read("data"))
    pickled = {k for k, v in data.items() if isinstance(v, dict) and ":serialized:" in v}
    assert pickled <= set(safe["entries"])  # every pickled field has a plain-data copy
    loaded = type(model).load(tmp_path / "m.zip")
    assert loaded.num_timesteps == model.num_timesteps and loaded.observation_space == model.observation_space
    assert type(loaded.policy) is type(model.policy) and loaded.learning_rate == model.learning_rate or callable(model.learning_rate)
    for p, q in zip(model.policy.parameters(), loaded.policy.parameters()):
        assert torch.equal(p, q)


def test_save_refuses_non_finite_parameters_and_keeps_the_old_file(tmp_path, checkpoint):
    path, model = checkpoint
    before = path.read_bytes()
    with torch.no_grad():
        next(model.policy.parameters())[0] = float("nan")
    with pytest.raises(NonFiniteParametersError, match="NaN or inf"):
        model.save(path)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*tmp*"))


def test_stale_temporary_files_are_removed_on_the_next_save(tmp_path, checkpoint):
    path, model = checkpoint
    dead_pid = 2**22 + 12345  # above Linux's pid_max default: no such process
    stale = tmp_path / f".{path.name}.{dead_pid}.tmp.zip"
    stale.write_bytes(b"half a checkpoint")
    model.save(path)
    assert not stale.exists() and path.is_file()


def test_normalization_statistics_round_trip_without_pickle(tmp_path):
    venv = VecNormalize(make_vec_env("CartPole-v1", n_envs=2, seed=0), clip_obs=5.0, gamma=0.9)
    venv.reset()
    for _ in range(20):
        venv.step(np.array([venv.action_space.sample() for _ in range(2)]))
    save_normalization(venv, tmp_path / "stats.npz")
    restored = load_normalization(tmp_path / "stats.npz", make_vec_env("CartPole-v1", n_envs=1), training=False)
    np.testing.assert_array_equal(restored.obs_rms.mean, venv.obs_rms.mean)
    np.testing.assert_array_equal(restored.obs_rms.var, venv.obs_rms.var)
    assert restored.obs_rms.count == venv.obs_rms.count and restored.clip_obs == 5.0 and restored.gamma == 0.9
    assert not restored.training and not restored.norm_reward
    with pytest.raises(CheckpointError, match="another environment"):
        load_normalization(tmp_path / "stats.npz", make_vec_env("Pendulum-v1", n_envs=1))


def test_hostile_statistics_files_run_no_code(tmp_path):
    marker = tmp_path / "pwned"
    objects = tmp_path / "objects.npz"
    np.savez(objects, format=np.asarray(2), obs_keys=np.asarray([Payload(marker)], dtype=object))
    with pytest.raises(CheckpointError, match="not readable"):
        load_normalization(objects, make_vec_env("CartPole-v1", n_envs=1))
    assert not marker.exists()

    model = NPG("MlpPolicy", "CartPole-v1", **TINY)
    model._ngrl_vecnormalize = True
    model.save(tmp_path / "model.zip")
    (tmp_path / "vecnormalize.pkl").write_bytes(pickle.dumps(Payload(marker)))
    assert train.main(["eval", "--algo", "npg", "--env", "CartPole-v1", "--model", str(tmp_path / "model.zip")]) == 2
    assert not marker.exists()


def test_atomic_save_survives_a_failing_write(tmp_path, checkpoint, monkeypatch):
    path, model = checkpoint
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    assert path.read_bytes() == before and not list(tmp_path.glob(".*tmp*"))
