"""BaselineDQN: SB3's DQN by default; with target_network=False the TD target reads the online network."""

from __future__ import annotations

import numpy as np
import torch
from stable_baselines3 import DQN
from stable_baselines3.common.logger import Logger

from agents.ngdqn import BaselineDQN

SMALL = dict(policy_kwargs=dict(net_arch=[16]), buffer_size=2_000, batch_size=32, train_freq=4, device="cpu")


def parameters(model) -> list[torch.Tensor]:
    """The online Q-network's parameters."""
    return [p.detach().clone() for p in model.q_net.parameters()]


def test_with_a_target_network_it_is_sb3_dqn_step_for_step():
    ours = BaselineDQN("MlpPolicy", "CartPole-v1", learning_starts=100, target_update_interval=50, seed=3, **SMALL)
    ours.learn(600)  # each model built and trained in turn: both read the global generators that their seed set
    theirs = DQN("MlpPolicy", "CartPole-v1", learning_starts=100, target_update_interval=50, seed=3, **SMALL)
    theirs.learn(600)
    assert all(torch.equal(p, q) for p, q in zip(parameters(ours), parameters(theirs)))


def _filled(target_network: bool) -> BaselineDQN:
    """A model whose buffer holds 300 steps and whose target copy differs from the online network."""
    model = BaselineDQN("MlpPolicy", "CartPole-v1", learning_starts=300, target_network=target_network, seed=0, **SMALL)
    model.learn(300)  # fills the buffer, no gradient step yet
    with torch.no_grad():
        for p in model.q_net_target.parameters():
            p.add_(0.5)  # a stale target: its Q-values differ from the online ones
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


def _gradient_step(model, sync_target_first: bool = False) -> None:
    if sync_target_first:
        model.q_net_target.load_state_dict(model.q_net.state_dict())
    np.random.seed(7)  # the replay buffer samples with numpy's global generator: the same minibatch for every model
    model.train(gradient_steps=1, batch_size=32)


def test_without_a_target_network_y_bootstraps_from_the_online_network_at_every_step():
    """Oracle: DQN whose target copy is synced with the online network before every gradient step."""
    no_target, synced, stale = _filled(False), _filled(True), _filled(True)
    for _ in range(3):
        _gradient_step(no_target)
        _gradient_step(synced, sync_target_first=True)
        _gradient_step(stale)
        assert all(torch.equal(p, q) for p, q in zip(parameters(no_target), parameters(synced)))
    assert not all(torch.equal(p, q) for p, q in zip(parameters(no_target), parameters(stale)))  # the target matters here
    assert no_target.q_net_target is not no_target.q_net  # the separate copy is back in place after train()


def test_the_switch_is_saved(tmp_path):
    model = BaselineDQN("MlpPolicy", "CartPole-v1", target_network=False, **SMALL)
    model.save(tmp_path / "dqn.zip")
    assert BaselineDQN.load(tmp_path / "dqn.zip").target_network is False
