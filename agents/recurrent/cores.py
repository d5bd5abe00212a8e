"""Recurrent bodies of the recurrent policies: one interface for ERNN, LSTM and GRU cells.

A core maps a (batch, time, features) sequence, the state entering its first step and the
episode-start flags to per-step outputs and the state after the last step. Its state is a tuple of
tensors of shape (batch, *shape) — one tensor for ERNN and GRU, two (h, c) for LSTM — so buffers
and policies store and reset whatever the cell carries without knowing which cell it is.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ngrl.ernn import ERNN

__all__ = ["RecurrentCore", "ErnnCore", "LstmCore", "GruCore", "CORES", "make_core"]

State = tuple[Tensor, ...]


class RecurrentCore(nn.Module):
    """Base class. Subclasses set ``output_size`` and ``state_shapes`` and implement ``_step``.

    ``forward`` zeroes every state tensor entering step t where ``episode_starts[:, t]`` is 1.
    """

    output_size: int
    state_shapes: tuple[tuple[int, ...], ...]

    def initial_state(self, batch_size: int, device: torch.device, dtype: torch.dtype = torch.float32) -> State:
        return tuple(torch.zeros(batch_size, *shape, device=device, dtype=dtype) for shape in self.state_shapes)

    def _step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError

    def forward(self, x: Tensor, state: State, episode_starts: Tensor) -> tuple[Tensor, State]:
        keep = (1.0 - episode_starts.to(x.dtype)).unsqueeze(-1)
        outputs = []
        for t in range(x.shape[1]):
            state = tuple(s * keep[:, t] for s in state)
            out, state = self._step(x[:, t], state)
            outputs.append(out)
        return torch.stack(outputs, dim=1), state


class ErnnCore(RecurrentCore):
    """ERNN body (see :mod:`ngrl.ernn`); the state is h.

    ``readout`` picks what the heads see: ``"state"`` the state hₖ itself, ``"state_equilibrium"``
    [hₖ, zₖ] with zₖ = hₖ + hₖ₋₁ the equilibrium point (at an exact root zₖ does not depend on hₖ₋₁;
    the memory lives in hₖ = zₖ − hₖ₋₁, an alternating-sign running sum of past equilibria).
    """

    READOUTS = ("state", "state_equilibrium")

    def __init__(self, input_size: int, hidden_size: int, readout: str = "state_equilibrium", **cell_kwargs) -> None:
        super().__init__()
        if readout not in self.READOUTS:
            raise ValueError(f"unknown ERNN readout {readout!r}; choose one of {', '.join(self.READOUTS)}")
        self.rnn = ERNN(input_size, hidden_size, **cell_kwargs)
        self.readout = readout
        self.output_size = hidden_size * (2 if readout == "state_equilibrium" else 1)
        self.state_shapes = ((hidden_size,),)

    def forward(self, x: Tensor, state: State, episode_starts: Tensor) -> tuple[Tensor, State]:
        (h0,) = state
        keep = (1.0 - episode_starts.to(x.dtype)).unsqueeze(-1)
        states, last = self.rnn(x, h0, episode_starts)
        if self.readout == "state":
            return states, (last,)
        previous = torch.cat([h0.unsqueeze(1), states[:, :-1]], dim=1) * keep  # hₖ₋₁ after the reset
        return torch.cat([states, states + previous], dim=-1), (last,)


class LstmCore(RecurrentCore):
    """LSTM body (``nn.LSTMCell``); the state is (h, c), the output h."""

    def __init__(self, input_size: int, hidden_size: int, **cell_kwargs) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(input_size, hidden_size, **cell_kwargs)
        self.output_size = hidden_size
        self.state_shapes = ((hidden_size,), (hidden_size,))

    def _step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h, c = self.cell(x, state)
        return h, (h, c)


class GruCore(RecurrentCore):
    """GRU body (``nn.GRUCell``); the state is h."""

    def __init__(self, input_size: int, hidden_size: int, **cell_kwargs) -> None:
        super().__init__()
        self.cell = nn.GRUCell(input_size, hidden_size, **cell_kwargs)
        self.output_size = hidden_size
        self.state_shapes = ((hidden_size,),)

    def _step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h = self.cell(x, state[0])
        return h, (h,)


CORES: dict[str, type[RecurrentCore]] = {"ernn": ErnnCore, "lstm": LstmCore, "gru": GruCore}


def make_core(cell: str, input_size: int, hidden_size: int, **cell_kwargs) -> RecurrentCore:
    """The core named ``cell`` ("ernn", "lstm" or "gru")."""
    if cell not in CORES:
        raise ValueError(f"unknown recurrent cell {cell!r}; choose one of {', '.join(CORES)} (policy_kwargs=dict(cell=...))")
    try:
        return CORES[cell](input_size, hidden_size, **cell_kwargs)
    except TypeError as error:
        raise ValueError(f"bad cell_kwargs for cell={cell!r}: {error}") from error
