"""NPG: smoke runs on every action space, the update's invariants, save/load, determinism, errors."""

import os
import pathlib
import zipfile

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import (
    FakeImageEnv,
    IdentityEnv,
    IdentityEnvBox,
    IdentityEnvMultiBinary,
    IdentityEnvMultiDiscrete,
    SimpleMultiObsEnv,
)
from stable_baselines3.common.logger import configure

from agents import NPG, CheckpointError
from ngrl import NotPositiveDefiniteError
from ngrl.fisher import actor_parameters
from ngrl.params import get_flat_params

SMALL = dict(n_steps=64, batch_size=32, n_critic_updates=2, policy_kwargs=dict(net_arch=[16]))

ENVS = {
    "discrete": lambda: IdentityEnv(4, ep_length=16),
    "box": lambda: IdentityEnvBox(ep_length=16),
    "multidiscrete": lambda: IdentityEnvMultiDiscrete(3, ep_length=16),
    "multibinary": lambda: IdentityEnvMultiBinary(3, ep_length=16),
}


@pytest.mark.parametrize("space", list(ENVS))
@pytest.mark.parametrize("options", [{}, {"natural_direction": "cfa"}, {"line_search": True, "preconditioner": "diagonal"}])
def test_smoke_every_action_space(space, options):
    model = NPG("MlpPolicy", make_vec_env(ENVS[space], n_envs=2, seed=0), seed=0, **SMALL, **options)
    model.learn(256)
    assert model.num_timesteps == 256


@pytest.mark.parametrize("estimator", ["score", "empirical", "diagonal", "kfac"])
def test_other_fisher_estimators(estimator):
    NPG("MlpPolicy", "CartPole-v1", seed=0, fisher_estimator=estimator, **SMALL).learn(128)


def test_cnn_and_multi_input_policies():
    NPG("CnnPolicy", FakeImageEnv(screen_height=36, screen_width=36, n_channels=1), seed=0, n_steps=32, batch_size=32,
        n_critic_updates=1).learn(64)
    NPG("MultiInputPolicy", SimpleMultiObsEnv(random_start=False), seed=0, n_steps=32, batch_size=32,
        n_critic_updates=1, policy_kwargs=dict(net_arch=[16])).learn(64)


class RecordingLogger:
    """Capture the values NPG records through SB3's logger."""

    def __init__(self, model):
        self.values = {}
        model.set_logger(configure(None, []))
        original = model.logger.record

        def record(key, value, exclude=None):
            self.values.setdefault(key, []).append(value)
            original(key, value, exclude)

        model.logger.record = record


def test_update_respects_trust_region_and_logs():
    model = NPG("MlpPolicy", "CartPole-v1", seed=1, target_kl=0.005, line_search=True, **SMALL)
    recorder = RecordingLogger(model)
    model.learn(192)
    for key in ["train/kl", "train/cg_iterations", "train/cg_residual", "train/step_size", "train/explained_variance",
                "train/value_loss", "train/line_search_steps"]:
        assert key in recorder.values, key
    # with the line search the exact KL of every accepted step is within the trust region
    assert all(0.0 <= kl <= 0.005 + 1e-9 for kl in recorder.values["train/kl"])
    assert all(it >= 1 for it in recorder.values["train/cg_iterations"])


def test_plain_npg_step_stays_in_the_trust_region():
    """Without the line search, α = sqrt(2δ / wᵀ(F+λI)w) bounds the quadratic KL model by δ (λ ≥ 0)."""
    model = NPG("MlpPolicy", "CartPole-v1", seed=2, target_kl=1e-4, cg_max_steps=50, **SMALL)
    recorder = RecordingLogger(model)
    model.learn(256)
    kls = recorder.values["train/kl"]
    assert len(kls) == 4 and all(0.2e-4 < kl <= 1.05e-4 for kl in kls), kls
    assert recorder.values["train/line_search_steps"] == [0, 0, 0, 0]


def test_critic_updates_do_not_move_the_actor():
    model = NPG("MlpPolicy", "CartPole-v1", seed=0, **SMALL)
    model.learn(64)  # fills the buffer
    actor = actor_parameters(model.policy)
    model.target_kl = 1e-12  # a vanishing policy step: only the critic could move the actor now
    before = get_flat_params(actor)
    model.train()
    assert torch.allclose(get_flat_params(actor), before, atol=1e-5)


def test_save_load_identical_predictions(tmp_path):
    model = NPG("MlpPolicy", "Pendulum-v1", seed=0, **SMALL)
    model.learn(128)
    obs = np.stack([model.observation_space.sample() for _ in range(10)])
    before, _ = model.predict(obs, deterministic=True)
    path = tmp_path / "npg_pendulum"
    model.save(path)
    assert (tmp_path / "npg_pendulum.zip").is_file()
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file may be left behind"
    loaded = NPG.load(path, device="cpu")
    after, _ = loaded.predict(obs, deterministic=True)
    np.testing.assert_array_equal(before, after)
    assert loaded.target_kl == model.target_kl and loaded.fisher_estimator == model.fisher_estimator
    loaded.set_env(make_vec_env("Pendulum-v1", n_envs=1, seed=1))
    loaded.learn(64)  # a loaded model keeps training


def test_same_seed_same_actions():
    def run(seed):
        model = NPG("MlpPolicy", "CartPole-v1", seed=seed, **SMALL)
        model.learn(128)
        obs = np.linspace(-0.5, 0.5, 40, dtype=np.float32).reshape(10, 4)
        return model.predict(obs, deterministic=False)[0], get_flat_params(model.policy.parameters())

    a1, p1 = run(3)
    a2, p2 = run(3)
    np.testing.assert_array_equal(a1, a2)
    assert torch.equal(p1, p2)
    _, p3 = run(4)
    assert not torch.equal(p1, p3)


def test_atomic_save_keeps_the_old_checkpoint_on_failure(tmp_path, monkeypatch):
    model = NPG("MlpPolicy", "CartPole-v1", seed=0, **SMALL)
    path = tmp_path / "model.zip"
    model.save(path)
    original = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    import stable_baselines3.common.base_class as base_class

    monkeypatch.setattr(base_class, "save_to_zip_file", broken)
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    assert path.read_bytes() == original
    assert sorted(os.listdir(tmp_path)) == ["model.zip"]


def test_bad_checkpoints_get_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        NPG.load(tmp_path / "missing.zip")
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(b"not a zip at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        NPG.load(corrupt)
    model = NPG("MlpPolicy", "CartPole-v1", seed=0, **SMALL)
    good = tmp_path / "good.zip"
    model.save(good)
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(CheckpointError):
        NPG.load(truncated)
    with pytest.raises(CheckpointError, match="does not fit"):
        NPG.load(good, env=make_vec_env("Pendulum-v1"))
    # a checkpoint written by another algorithm
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(foreign, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "data":
                data = data.replace(b'"_ngrl_algorithm": "NPG"', b'"_ngrl_algorithm": "NGDQN"')
            dst.writestr(item, data)
    with pytest.raises(CheckpointError, match="NGDQN"):
        NPG.load(foreign)


def test_bad_arguments_and_nan_advantages():
    with pytest.raises(ValueError, match="fisher_estimator"):
        NPG("MlpPolicy", "CartPole-v1", fisher_estimator="magic")
    with pytest.raises(ValueError, match="natural_direction"):
        NPG("MlpPolicy", "CartPole-v1", natural_direction="adam")
    with pytest.raises(AssertionError, match="action space"):
        NPG("MlpPolicy", _tuple_action_env())
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="step_size must be a positive"):
            NPG("MlpPolicy", "CartPole-v1", step_size=bad)
    with pytest.raises(ValueError, match="line_search.*step_size=None"):
        NPG("MlpPolicy", "CartPole-v1", step_size=1.0, line_search=True)
    model = NPG("MlpPolicy", "CartPole-v1", seed=0, **SMALL)
    model.learn(64)
    model.rollout_buffer.advantages[3] = np.nan
    with pytest.raises(ValueError, match="NaN or inf in the advantages"):
        model.train()


def _tuple_action_env():
    class TupleActions(gym.Env):
        observation_space = gym.spaces.Box(-1, 1, (2,), dtype=np.float32)
        action_space = gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Discrete(2)))

        def reset(self, *, seed=None, options=None):
            return np.zeros(2, dtype=np.float32), {}

        def step(self, action):
            return np.zeros(2, dtype=np.float32), 0.0, True, False, {}

    return TupleActions()


def test_indefinite_curvature_is_reported(monkeypatch):
    model = NPG("MlpPolicy", "CartPole-v1", seed=0, **SMALL)
    model.learn(64)
    real = model._actor.fisher  # the actor view's Fisher, the one NPG's train() takes

    def negated(*args, **kwargs):
        op = real(*args, **kwargs)
        op.mv = lambda v: -v
        return op

    monkeypatch.setattr(model._actor, "fisher", negated)
    with pytest.raises(NotPositiveDefiniteError, match="not positive definite"):
        model.train()


def test_callbacks_and_tensorboard(tmp_path):
    class Count(BaseCallback):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def _on_step(self):
            self.calls += 1
            return True

    callback = Count()
    model = NPG("MlpPolicy", "CartPole-v1", seed=0, tensorboard_log=str(tmp_path), **SMALL)
    model.learn(128, callback=callback)
    assert callback.calls == 128
    runs = list(pathlib.Path(tmp_path).glob("NPG_*"))
    assert runs and any(f.name.startswith("events.out.tfevents") for f in runs[0].iterdir())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_learns_on_cuda():
    model = NPG("MlpPolicy", "CartPole-v1", seed=0, device="cuda", **SMALL)
    model.learn(128)
    assert next(model.policy.parameters()).device.type == "cuda"


@pytest.mark.parametrize("saved, expected", [(dict(use_preconditioner=True), "diagonal"), (dict(use_preconditioner=False), None),
                                             (dict(use_preconditioner=False, fisher_estimator="kfac"), "kfac")])
def test_checkpoints_with_use_preconditioner_map_onto_preconditioner(saved, expected):
    # SB3's load builds the model with defaults, updates __dict__ with the saved attributes, then calls _setup_model
    model = NPG("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[4]), device="cpu", preconditioner="diagonal",
                _init_setup_model=False)
    model.__dict__.update(saved)
    model._setup_model()
    assert model.preconditioner == expected and "use_preconditioner" not in model.__dict__


def test_at_trpo_scale_npg_takes_sb3_contrib_trpos_update():
    """sb3-contrib TRPO's KL is the mean over the d action dimensions: its CG solves (F/d + λI)s = g and its step is
    sized for δ in that KL. NPG with δ·d, λ·d and the line search must then take the same update, actor and critic,
    from the same parameters, optimiser state and rollout (the peer as the oracle of the whole update)."""
    import copy

    from stable_baselines3.common.logger import Logger

    trpo_class = pytest.importorskip("sb3_contrib").TRPO
    env = make_vec_env("ngrl/Navigation2D-v0", n_envs=2, seed=3)
    d = env.action_space.shape[0]
    common = dict(learning_rate=1e-3, n_steps=256, batch_size=64, gamma=0.99, gae_lambda=0.95, n_critic_updates=3,
                  cg_max_steps=10, seed=3, device="cpu", policy_kwargs=dict(net_arch=[32, 32]))
    trpo = trpo_class("MlpPolicy", env, cg_damping=0.1, target_kl=0.02, **common)
    npg = NPG("MlpPolicy", env, cg_damping=0.1 * d, target_kl=0.02 * d, line_search=True, **common)
    trpo.learn(1024)  # away from the initial point, with a live optimiser state
    npg.policy.load_state_dict(trpo.policy.state_dict())
    npg.policy.optimizer.load_state_dict(copy.deepcopy(trpo.policy.optimizer.state_dict()))  # load_state_dict shares tensors
    _, callback = trpo._setup_learn(256, callback=None, reset_num_timesteps=False)
    callback.on_training_start(locals(), globals())
    trpo.collect_rollouts(trpo.env, callback, trpo.rollout_buffer, n_rollout_steps=256)
    npg.rollout_buffer = trpo.rollout_buffer
    npg.set_logger(Logger(folder=None, output_formats=[]))
    start = {name: p.detach().clone() for name, p in trpo.policy.named_parameters()}

    def update(model) -> dict[str, torch.Tensor]:
        np.random.seed(0)  # the critic's minibatch order
        model.train()
        return {name: (p.detach() - start[name]).flatten() for name, p in model.policy.named_parameters()}

    expected, got = update(trpo), update(npg)
    for part in ("actor", "critic"):
        names = [name for name in start if ("value" in name) == (part == "critic")]
        want, have = torch.cat([expected[n] for n in names]), torch.cat([got[n] for n in names])
        assert float(want.norm()) > 0, f"TRPO's {part} did not move"
        assert float((have - want).norm()) <= 1e-3 * float(want.norm()), part
