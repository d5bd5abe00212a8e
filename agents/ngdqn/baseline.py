"""SB3's DQN with NGDQN's ``target_network`` switch: the Adam baseline of NGDQN, with or without a target network."""

from __future__ import annotations

from typing import Any

from stable_baselines3 import DQN

from agents.arguments import check_arguments

__all__ = ["BaselineDQN"]


class BaselineDQN(DQN):
    """
    SB3's ``DQN`` (Mnih et al. 2015) whose TD target can bootstrap from the online network, as NGDQN's
    ``target_network=False`` does (Knight & Lerner 2018 run without a target network):

        y = r + γ (1 − done) maxₐ′ Q̄(s′, a′),   Q̄ = the target network (``target_network=True``, DQN itself)
                                                 or the online network Q_θ (``False``, read at every gradient step)

    With ``target_network=True`` (the default) it is SB3's DQN, step for step. With ``False`` the target
    copy is still kept in step every ``target_update_interval`` steps (unused), as NGDQN keeps it; only
    the TD target changes. ``train.py benchmark`` runs it as the ``dqn`` peer (rl-zoo3's entries,
    ``configs/dqn.yml``) and as the variant ``dqn-notarget`` (``configs/variants.yml``).

    :param target_network: bootstrap y from the target network (True) or from the online network (False)
    :param kwargs: SB3 DQN's arguments
    """

    def __init__(self, *args: Any, target_network: bool = True, **kwargs: Any) -> None:
        check_arguments(type(self), {"target_network": target_network})
        super().__init__(*args, **kwargs)
        self.target_network = target_network

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        if self.target_network:
            super().train(gradient_steps, batch_size)
            return
        # DQN.train reads Q̄ as self.q_net_target: point it at the online network for these gradient steps only,
        # so that the periodic copy in _on_step never copies the network onto itself.
        target_copy = self.q_net_target
        self.q_net_target = self.q_net
        try:
            super().train(gradient_steps, batch_size)
        finally:
            self.q_net_target = target_copy
