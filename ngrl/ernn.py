"""ERNN: recurrent cells whose new state is an equilibrium (Kag, Zhang & Saligrama, ICLR 2020).

The new state hₖ is the root h of

    f(h; hₖ₋₁, xₖ) = φ(U(h + hₖ₋₁) + W xₖ + b) − γ(h + hₖ₋₁) = 0,

found by K explicit Euler (fixed-point) steps from h⁽⁰⁾ = 0:

    h⁽ⁱ⁺¹⁾ = h⁽ⁱ⁾ + ηᵢ [ φ(U(h⁽ⁱ⁾ + hₖ₋₁) + W xₖ + b) − γ(h⁽ⁱ⁾ + hₖ₋₁) ].

Since f depends on h and hₖ₋₁ only through their sum, the implicit-function theorem gives
∂hₖ/∂hₖ₋₁ = −I at the root (provided ∂f/∂h = diag(φ′)U − γI is regular): gradients through time
neither vanish nor explode. How close K steps come depends on η, γ and U. With ηγ = 1 the update
reads zᵢ₊₁ = φ(U zᵢ + W xₖ + b)/γ for z = h + hₖ₋₁, a contraction with factor ≤ max φ′·‖U‖₂/γ, so
the error of ∂hₖ/∂hₖ₋₁ + I shrinks like (‖U‖₂/γ)ᴷ (η = 0.25, γ = 4: ≈ 4⁻ᴷ).

Conditioning of U: it is initialised orthogonal (‖U‖₂ = 1, all singular values 1) and, by default,
used through the parametrisation U = V·min(1, ρ/‖V‖₂) with ρ = ``max_recurrent_norm`` (γ/2 unless
given): training cannot push ‖U‖₂ past ρ < γ/max φ′, which keeps ∂f/∂h = diag(φ′)U − γI regular
(its smallest singular value is ≥ γ − ρ·max φ′) and the fixed-point iteration a contraction.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["ERNNCell", "ERNN", "ACTIVATIONS"]

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid}
# the largest slope of each activation, used to bound the contraction factor of the iteration
_MAX_SLOPE = {"tanh": 1.0, "relu": 1.0, "sigmoid": 0.25}


class ERNNCell(nn.Module):
    """One ERNN step ``cell(x, h_prev) -> h`` on batches (Kag, Zhang & Saligrama 2020, eq. 3–5).

    :param input_size: features of x
    :param hidden_size: units of h
    :param num_iters: K, fixed-point steps per time step (from h⁽⁰⁾ = 0)
    :param eta: η, the step of the iteration (ηγ = 1 makes ∂h/∂h_prev → −I fastest)
    :param gamma: γ, the decay of the equilibrium equation
    :param activation: φ: "tanh", "relu" or "sigmoid"
    :param learn_eta: learn one ηᵢ per iteration (the paper's follow-up), initialised to ``eta`` and
        clamped in use to (0, 0.95·2/(γ + ρ·max φ′)], where each step still contracts (unclamped,
        a drifting η made the state diverge to NaN in a CartPoleNoVel run). η ≠ 1/γ gives up the exact −I.
    :param max_recurrent_norm: ρ, bound on ‖U‖₂ enforced by the parametrisation U = V·min(1, ρ/‖V‖₂);
        default γ/(2·max φ′); ``math.inf`` turns the bound off
    :param bias: learn b
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        num_iters: int = 5,
        eta: float = 0.25,
        gamma: float = 4.0,
        activation: str = "tanh",
        learn_eta: bool = False,
        max_recurrent_norm: float | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"input_size and hidden_size must be positive, got {input_size} and {hidden_size}")
        if num_iters < 1:
            raise ValueError(f"num_iters must be at least 1, got {num_iters}")
        if eta <= 0 or gamma <= 0:
            raise ValueError(f"eta and gamma must be positive, got eta={eta}, gamma={gamma}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        if max_recurrent_norm is None:
            max_recurrent_norm = gamma / (2.0 * _MAX_SLOPE[activation])
        if max_recurrent_norm <= 0:
            raise ValueError(f"max_recurrent_norm must be positive (math.inf for no bound), got {max_recurrent_norm}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_iters = num_iters
        self.gamma = float(gamma)
        self.activation = activation
        self.max_recurrent_norm = float(max_recurrent_norm)
        self._phi = ACTIVATIONS[activation]
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))  # W
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))  # V, with U = V·min(1, ρ/‖V‖₂)
        self.bias = nn.Parameter(torch.empty(hidden_size)) if bias else None
        self.learn_eta = bool(learn_eta)
        if learn_eta:
            self.eta = nn.Parameter(torch.full((num_iters,), float(eta)))
        else:
            self.register_buffer("eta", torch.full((num_iters,), float(eta)), persistent=False)
        self._eta_values = [float(eta)] * num_iters  # fixed steps as Python numbers: no tensor ops for η
        # ηγ = 1 with a fixed η: the iteration is z ← η φ(U z + d), run as y ← φ((ηU) y + d) on y = z/η
        self._rescaled = not learn_eta and float(eta) * float(gamma) == 1.0
        # with no bound on U (ρ = ∞) only the decay term can be kept stable: η < 2/γ
        slope_bound = 0.0 if math.isinf(self.max_recurrent_norm) else self.max_recurrent_norm * _MAX_SLOPE[activation]
        self._eta_max = 0.95 * 2.0 / (gamma + slope_bound)
        self._cache_key: tuple | None = None
        self._cached_weight: Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U orthogonal (well conditioned), W and b uniform(±1/√hidden) as torch's RNN cells."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        nn.init.orthogonal_(self.weight_hh)
        nn.init.uniform_(self.weight_ih, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def recurrent_weight(self) -> Tensor:
        """U = V·min(1, ρ/‖V‖₂): the recurrent matrix actually used (‖U‖₂ ≤ ρ).

        Without autograd (rollouts, evaluation) U is cached until V changes in place (its version
        counter moves), so single-step calls do not pay for an SVD each. With autograd on it is computed afresh
        (V may be a substituted or ``torch.func``-transformed tensor then, with no storage to key a cache on).
        """
        weight = self.weight_hh
        if math.isinf(self.max_recurrent_norm):
            return weight
        if torch.is_grad_enabled():
            return weight * torch.clamp(self.max_recurrent_norm / torch.linalg.matrix_norm(weight, ord=2), max=1.0)
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
        if self._cache_key != key:
            with torch.no_grad():
                self._cached_weight = weight * torch.clamp(
                    self.max_recurrent_norm / torch.linalg.matrix_norm(weight, ord=2), max=1.0
                )
            self._cache_key = key
        return self._cached_weight

    def input_projection(self, x: Tensor) -> Tensor:
        """W x + b (can be computed for a whole sequence at once)."""
        return nn.functional.linear(x, self.weight_ih, self.bias)

    def residual(self, h: Tensor, h_prev: Tensor, x: Tensor) -> Tensor:
        """f(h; h_prev, x) = φ(U(h + h_prev) + W x + b) − γ(h + h_prev): zero at the equilibrium."""
        z = h + h_prev
        return self._phi(z @ self.recurrent_weight().T + self.input_projection(x)) - self.gamma * z

    def scaled_weight_t(self, recurrent_weight: Tensor) -> Tensor | None:
        """(ηU)ᵀ for the rescaled iteration of :meth:`step` (None where it does not apply), once per sequence."""
        return recurrent_weight.T * self._eta_values[0] if self._rescaled else None

    def step(self, drive: Tensor, h_prev: Tensor, recurrent_weight: Tensor, scaled_weight_t: Tensor | None = None) -> Tensor:
        """K Euler steps h⁽ⁱ⁺¹⁾ = h⁽ⁱ⁾ + ηᵢ f(h⁽ⁱ⁾) from h⁽⁰⁾ = 0, given drive = W x + b and U.

        Iterated on z = h + h_prev (h_prev is fixed within the step): z⁽⁰⁾ = h_prev,
        z⁽ⁱ⁺¹⁾ = (1 − ηᵢγ) z⁽ⁱ⁾ + ηᵢ φ(U z⁽ⁱ⁾ + W x + b), and h = z⁽ᴷ⁾ − h_prev. With ηγ = 1 and a fixed η
        the iterates after the first are z⁽ⁱ⁾ = η y⁽ⁱ⁾, y⁽ⁱ⁺¹⁾ = φ((ηU) y⁽ⁱ⁾ + W x + b): two operations per
        iteration instead of three (``scaled_weight_t`` = (ηU)ᵀ, from :meth:`scaled_weight_t`).
        """
        weight_t = recurrent_weight.T
        if self._rescaled:
            if scaled_weight_t is None:
                scaled_weight_t = self.scaled_weight_t(recurrent_weight)
            y = self._phi(torch.addmm(drive, h_prev, weight_t))  # y⁽¹⁾ = z⁽¹⁾/η
            for _ in range(self.num_iters - 1):
                y = self._phi(torch.addmm(drive, y, scaled_weight_t))
            return torch.add(-h_prev, y, alpha=self._eta_values[0])
        z = h_prev
        if self.learn_eta:
            # learned steps are kept below 2/(γ + ρ·max φ′), where |1 − ηγ| + η·ρ·max φ′ < 1: each step contracts
            etas = self.eta.clamp(1e-4, self._eta_max)
            for i in range(self.num_iters):
                eta = etas[i]
                z = (1.0 - eta * self.gamma) * z + eta * self._phi(torch.addmm(drive, z, weight_t))
        else:
            for eta in self._eta_values:
                decay = 1.0 - eta * self.gamma
                phi = self._phi(torch.addmm(drive, z, weight_t))
                z = phi * eta if decay == 0.0 else torch.add(phi * eta, z, alpha=decay)
        return z - h_prev

    def forward(self, x: Tensor, h_prev: Tensor | None = None) -> Tensor:
        """hₖ ≈ the root of f(·; h_prev, x), for x of shape (batch, input_size)."""
        if x.shape[-1] != self.input_size:
            raise ValueError(f"expected inputs with {self.input_size} features, got shape {tuple(x.shape)}")
        if h_prev is None:
            h_prev = x.new_zeros(*x.shape[:-1], self.hidden_size)
        return self.step(self.input_projection(x), h_prev, self.recurrent_weight())

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, num_iters={self.num_iters}, gamma={self.gamma}, "
            f"activation={self.activation!r}, max_recurrent_norm={self.max_recurrent_norm}"
        )


class ERNN(nn.Module):
    """An :class:`ERNNCell` run over (batch, time, features) sequences, with episode-start resets.

    ``forward(x, h0, episode_starts)`` returns the states h₁..h_T of shape (batch, time, hidden) and
    the last state h_T. Where ``episode_starts[:, t]`` is 1 the state entering step t is zeroed
    first, so episodes placed back to back in one sequence are processed as if fed separately.
    Keyword arguments go to :class:`ERNNCell`.
    """

    def __init__(self, input_size: int, hidden_size: int, **cell_kwargs) -> None:
        super().__init__()
        self.cell = ERNNCell(input_size, hidden_size, **cell_kwargs)
        self.input_size = input_size
        self.hidden_size = hidden_size

    def forward(self, x: Tensor, h0: Tensor | None = None, episode_starts: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if x.ndim != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"expected inputs of shape (batch, time, {self.input_size}), got {tuple(x.shape)}")
        batch, steps, _ = x.shape
        h = x.new_zeros(batch, self.hidden_size) if h0 is None else h0
        if h.shape != (batch, self.hidden_size):
            raise ValueError(f"h0 must have shape ({batch}, {self.hidden_size}), got {tuple(h.shape)}")
        if episode_starts is not None and episode_starts.shape != (batch, steps):
            raise ValueError(f"episode_starts must have shape ({batch}, {steps}), got {tuple(episode_starts.shape)}")
        weight = self.cell.recurrent_weight()  # once per sequence
        scaled_weight_t = self.cell.scaled_weight_t(weight)
        drives = self.cell.input_projection(x)  # W xₜ + b for every t at once
        keep = None if episode_starts is None else (1.0 - episode_starts.to(x.dtype)).unsqueeze(-1)
        outputs = []
        for t in range(steps):
            if keep is not None:
                h = h * keep[:, t]
            h = self.cell.step(drives[:, t], h, weight, scaled_weight_t)
            outputs.append(h)
        return torch.stack(outputs, dim=1), h
