"""A rollout buffer that also keeps the recurrent state entering every step, minibatched by sequences."""

from __future__ import annotations

from collections.abc import Generator
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from stable_baselines3.common.buffers import RolloutBuffer

from agents.recurrent.policies import RecurrentState

__all__ = ["RecurrentRolloutBuffer", "RecurrentSequences"]


class RecurrentSequences(NamedTuple):
    """n_seq sequences of T steps, flat and sequence-major ((n_seq · T, ...) per field).

    ``states`` holds the state entering each sequence's first step, tensors of shape (n_seq, ...);
    ``episode_starts`` says where the state is reset inside the sequences.
    """

    observations: Tensor
    actions: Tensor
    old_values: Tensor
    old_log_prob: Tensor
    advantages: Tensor
    returns: Tensor
    episode_starts: Tensor
    states: RecurrentState
    sequence_length: int


class RecurrentRolloutBuffer(RolloutBuffer):
    """SB3's rollout buffer plus, for every step, the recurrent state that entered it.

    The state is whatever tuple of tensors the cell carries (ERNN and GRU one, LSTM two), stored on
    the policy's device as given to :meth:`add`; nothing assumes a shape. :meth:`get_sequences`
    cuts each environment's n_steps into windows of ``sequence_length`` steps, each with the stored
    state at its first step, so no padding is needed.
    """

    def reset(self) -> None:
        super().reset()
        self.states: RecurrentState | None = None

    def add(self, *args, state: RecurrentState, **kwargs) -> None:  # type: ignore[override]
        """As :meth:`RolloutBuffer.add`, plus ``state``: the state entering this step (before any reset)."""
        if self.states is None:
            self.states = RecurrentState(
                *(
                    tuple(torch.zeros(self.buffer_size, *s.shape, device=s.device, dtype=s.dtype) for s in part)
                    for part in state
                )
            )
        for stored_part, part in zip(self.states, state):
            if len(stored_part) != len(part):
                raise ValueError("the recurrent state changed structure within a rollout")
            for stored, s in zip(stored_part, part):
                stored[self.pos] = s
        super().add(*args, **kwargs)

    def get_sequences(
        self, sequence_length: int | None = None, batch_size: int | None = None, *, drop_remainder: bool = False
    ) -> Generator[RecurrentSequences, None, None]:
        """Minibatches of sequences: each environment's n_steps cut into windows of ``sequence_length`` steps, each
        with the state stored at its first step.

        When the length does not divide n_steps, each environment's last r = n_steps mod ``sequence_length``
        steps form one shorter window more; those n_envs windows come after the others, in minibatches of
        their own (a minibatch holds windows of one length), so every step is used once per pass.

        :param sequence_length: steps per window, at most n_steps (default: n_steps, one sequence per environment)
        :param batch_size: transitions per minibatch (rounded to whole windows, at least one); None yields the
            windows of each length in one batch, in environment order
        :param drop_remainder: leave the shorter windows out (for estimates that need not see every step,
            such as the Fisher)
        """
        if not self.full:
            raise RuntimeError("the rollout buffer is not full yet: collect n_steps steps before sampling")
        steps = self.buffer_size
        length = steps if sequence_length is None else int(sequence_length)
        if not 1 <= length <= steps:
            raise ValueError(f"sequence_length={sequence_length} must be between 1 and n_steps={steps} (or None for whole rollouts)")
        chunks, remainder = divmod(steps, length)
        yield from self._window_batches(0, chunks, length, batch_size)
        if remainder and not drop_remainder:
            yield from self._window_batches(chunks * length, 1, remainder, batch_size)

    def _window_batches(
        self, first: int, chunks: int, length: int, batch_size: int | None
    ) -> Generator[RecurrentSequences, None, None]:
        """Minibatches of the windows of ``length`` steps starting at steps first + c·length (c < ``chunks``) of every env."""
        assert self.states is not None
        n_seq = self.n_envs * chunks
        span = slice(first, first + chunks * length)

        def to_sequences(array: np.ndarray) -> Tensor:
            # (steps, n_envs, ...) -> (n_envs, chunks, length, ...) -> (n_seq, length, ...)
            a = np.swapaxes(array[span], 0, 1).reshape(self.n_envs, chunks, length, *array.shape[2:])
            return self.to_torch(a.reshape(n_seq, length, *array.shape[2:]))

        fields = {
            "observations": to_sequences(self.observations),
            "actions": to_sequences(self.actions),
            "old_values": to_sequences(self.values),
            "old_log_prob": to_sequences(self.log_probs),
            "advantages": to_sequences(self.advantages),
            "returns": to_sequences(self.returns),
            "episode_starts": to_sequences(self.episode_starts),
        }
        # the state entering step first + c·length of env e: stored[first + c·length, e] -> window e·chunks + c
        starts = torch.arange(first, first + chunks * length, length, device=self.states.pi[0].device)
        states = RecurrentState(
            *(tuple(s[starts].transpose(0, 1).reshape(n_seq, *s.shape[2:]) for s in part) for part in self.states)
        )
        if batch_size is None:
            order = np.arange(n_seq)
            per_batch = n_seq
        else:
            order = np.random.permutation(n_seq)
            per_batch = max(1, batch_size // length)
        for start in range(0, n_seq, per_batch):
            index = order[start : start + per_batch]
            index_t = torch.as_tensor(index, device=self.device)
            flat = {key: value[index_t].reshape(len(index) * length, *value.shape[2:]) for key, value in fields.items()}
            batch_states = RecurrentState(*(tuple(s[index_t.to(s.device)] for s in part) for part in states))
            yield RecurrentSequences(**flat, states=batch_states, sequence_length=length)
