"""Linearisations of a network's outputs in its parameters: J v and Jᵀ u without forming J.

A :class:`Linearization` is taken at one point (parameters θ, a batch of n inputs) and exposes

- ``outputs``: the (n, k) outputs f(θ) at that point, detached;
- ``jvp(tangents)``: J v, the (n, k) change of the outputs along a parameter direction v;
- ``vjp(cotangent)``: Jᵀ u = Σᵢ Jᵢᵀ uᵢ for an (n, k) cotangent u;
- ``per_sample_vjp(cotangent)``: the n terms Jᵢᵀ uᵢ separately (leading dimension n);
- ``squared_vjp_sum(cotangent)``: Σᵢ (Jᵢᵀ uᵢ)² elementwise, for diagonal curvature;
- :func:`gram_matrix` ``(linearization, cotangents)``: the inner products ⟨Jᵢᵀu_{c,i}, Jⱼᵀu_{d,j}⟩ of
  per-sample products, for solves in the space of the batch.

Two implementations: :class:`FunctionalLinearization` works for any network through ``torch.func``;
:class:`MLPChainLinearization` handles chains of ``nn.Linear`` and elementwise activations (the
actor of SB3's ``MlpPolicy``, a DQN's Q-network) with hand-written tangent and adjoint passes that
reuse the stored activations: four matrix products per layer and no re-run of the forward pass.
:func:`linearize` picks the fast one when it applies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp, vjp, vmap

__all__ = [
    "Linearization",
    "FunctionalLinearization",
    "MLPChainLinearization",
    "BroadcastLinearization",
    "ConcatLinearization",
    "linearize",
    "gram_matrix",
    "as_chain",
    "module_function",
]


class Linearization(Protocol):
    params: tuple[Tensor, ...]
    outputs: Tensor

    def jvp(self, tangents: Sequence[Tensor]) -> Tensor: ...

    def vjp(self, cotangent: Tensor) -> tuple[Tensor, ...]: ...

    def per_sample_vjp(self, cotangent: Tensor) -> tuple[Tensor, ...]: ...

    def squared_vjp_sum(self, cotangent: Tensor) -> tuple[Tensor, ...]: ...


def module_function(module: nn.Module, params: Sequence[Tensor]) -> Callable[[Sequence[Tensor], Any], Tensor]:
    """Turn ``module`` into f(param_values, inputs), substituting ``params`` (found by identity)."""
    by_id = {id(p): name for name, p in module.named_parameters()}
    missing = [i for i, p in enumerate(params) if id(p) not in by_id]
    if missing:
        raise ValueError(f"parameters at positions {missing} do not belong to {type(module).__name__}")
    names = [by_id[id(p)] for p in params]

    def fn(values: Sequence[Tensor], inputs: Any) -> Tensor:
        # tie_weights=False: with the default, a submodule reachable under two names (SB3's
        # features_extractor is also pi_features_extractor) keeps the substituted tensors afterwards.
        return functional_call(module, dict(zip(names, values)), (inputs,), tie_weights=False)

    return fn


class FunctionalLinearization:
    """Linearisation of any f(params, inputs) -> (n, k) through ``torch.func.jvp``/``vjp``.

    The reverse-mode closure is built once and reused by every ``vjp``; ``jvp`` uses forward mode.
    Per-sample products use ``vmap`` over the batch (``chunk_size`` bounds the memory).
    """

    def __init__(
        self,
        fn: Callable[[Sequence[Tensor], Any], Tensor],
        params: Sequence[Tensor],
        inputs: Any,
        *,
        chunk_size: int | None = 256,
    ) -> None:
        self.params = tuple(p.detach() for p in params)
        self._fn = fn
        self._inputs = inputs
        self._chunk_size = chunk_size
        outputs, self._vjp_fn = vjp(lambda *ps: self._reshape(fn(ps, inputs)), *self.params)
        self.outputs = outputs.detach()

    @staticmethod
    def _reshape(out: Tensor) -> Tensor:
        return out.reshape(out.shape[0], -1)

    def jvp(self, tangents: Sequence[Tensor]) -> Tensor:
        _, tangent_out = jvp(lambda *ps: self._reshape(self._fn(ps, self._inputs)), self.params, tuple(tangents))
        return tangent_out

    def vjp(self, cotangent: Tensor) -> tuple[Tensor, ...]:
        return self._vjp_fn(cotangent)

    def _per_sample(self, inputs: Any, cotangent: Tensor) -> tuple[Tensor, ...]:
        def one(sample: Any, u: Tensor) -> tuple[Tensor, ...]:
            batched = _map_inputs(lambda t: t.unsqueeze(0), sample)
            _, pullback = vjp(lambda *ps: self._reshape(self._fn(ps, batched)), *self.params)
            return pullback(u.unsqueeze(0))

        return vmap(one, chunk_size=self._chunk_size)(inputs, cotangent)

    def per_sample_vjp(self, cotangent: Tensor) -> tuple[Tensor, ...]:
        return self._per_sample(self._inputs, cotangent)

    def squared_vjp_sum(self, cotangent: Tensor) -> tuple[Tensor, ...]:
        n = cotangent.shape[0]
        step = self._chunk_size or n
        total = [torch.zeros_like(p) for p in self.params]
        for start in range(0, n, step):
            part = _map_inputs(lambda t: t[start : start + step], self._inputs)
            for acc, g in zip(total, self._per_sample(part, cotangent[start : start + step])):
                acc.add_(g.square().sum(0))
        return tuple(total)


def _map_inputs(fn: Callable[[Tensor], Tensor], inputs: Any) -> Any:
    """Apply ``fn`` to every tensor of a batch given as a tensor, a dict, a tuple or a list of them."""
    if isinstance(inputs, Tensor):
        return fn(inputs)
    if isinstance(inputs, dict):
        return {key: _map_inputs(fn, value) for key, value in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_map_inputs(fn, value) for value in inputs)
    raise TypeError(f"inputs must be tensors, or dicts/tuples/lists of tensors, got {type(inputs).__name__}")


# --- fast path: chains of Linear layers and elementwise activations -------------------------

_ACTIVATIONS = (nn.Tanh, nn.ReLU, nn.Sigmoid, nn.Identity, nn.LeakyReLU, nn.ELU, nn.Flatten)


def as_chain(module: nn.Module | Sequence[nn.Module]) -> list[nn.Module] | None:
    """Flatten nested ``nn.Sequential`` containers into a list of layers, or None if any layer is unsupported."""
    modules = [module] if isinstance(module, nn.Module) else list(module)
    chain: list[nn.Module] = []
    for m in modules:
        if isinstance(m, nn.Sequential):
            sub = as_chain(list(m))
            if sub is None:
                return None
            chain.extend(sub)
        elif isinstance(m, nn.Linear) or isinstance(m, _ACTIVATIONS):
            chain.append(m)
        else:
            return None
    return chain


def _activation_derivative(m: nn.Module, pre: Tensor, post: Tensor) -> Tensor | None:
    """φ'(pre) for an elementwise activation, or None for the identity."""
    if isinstance(m, (nn.Identity, nn.Flatten)):
        return None
    if isinstance(m, nn.Tanh):
        return 1.0 - post.square()
    if isinstance(m, nn.Sigmoid):
        return post * (1.0 - post)
    if isinstance(m, nn.ReLU):
        return (pre > 0).to(pre.dtype)
    if isinstance(m, nn.LeakyReLU):
        return torch.where(pre > 0, torch.ones_like(pre), torch.full_like(pre, m.negative_slope))
    if isinstance(m, nn.ELU):
        return torch.where(pre > 0, torch.ones_like(pre), post + m.alpha)
    raise TypeError(f"unsupported activation {type(m).__name__}")


class MLPChainLinearization:
    """Exact linearisation of ``layers`` (Linear and elementwise activations) at ``inputs``.

    Forward tangent through zₗ = Wₗaₗ₋₁ + bₗ, aₗ = φ(zₗ): ż = Ẇa + Wȧ + ḃ, ȧ = φ'(z)ż (inputs are
    constant, so the first layer has no Wȧ term). Adjoint: δ ← φ'(z)δ, ∇W = δᵀa, ∇b = Σδ, δ ← δW.
    Per-sample gradients of W are δᵢaᵢᵀ, so Σᵢ(δᵢaᵢᵀ)² = (δ²)ᵀ(a²) needs no per-sample tensors.
    """

    def __init__(self, layers: Sequence[nn.Module], inputs: Tensor) -> None:
        chain = as_chain(layers)
        if chain is None:
            raise TypeError("MLPChainLinearization takes only nn.Linear layers and elementwise activations")
        linears = [m for m in chain if isinstance(m, nn.Linear)]
        if not linears:
            raise TypeError("the chain has no nn.Linear layer")
        self.params = tuple(p.detach() for m in linears for p in ((m.weight, m.bias) if m.bias is not None else (m.weight,)))
        # ops: ("linear", weight, has_bias, layer_input) or ("act", derivative | None)
        self._ops: list[tuple[Any, ...]] = []
        with torch.no_grad():
            a = inputs.reshape(inputs.shape[0], -1) if inputs.ndim > 2 else inputs
            a = a.to(linears[0].weight.dtype)
            for m in chain:
                if isinstance(m, nn.Linear):
                    self._ops.append(("linear", m.weight.detach(), m.bias is not None, a))
                    a = nn.functional.linear(a, m.weight, m.bias)
                else:
                    post = m(a)
                    self._ops.append(("act", _activation_derivative(m, a, post)))
                    a = post
        self.outputs = a.reshape(a.shape[0], -1)
        self._first_linear = next(i for i, op in enumerate(self._ops) if op[0] == "linear")
        # multiply-adds per pair of rows of :meth:`gram`: δᵢ·δⱼ and aᵢ·aⱼ for every layer
        self.gram_width = sum(m.in_features + m.out_features for m in linears)

    def jvp(self, tangents: Sequence[Tensor]) -> Tensor:
        it = iter(tangents)
        t: Tensor | None = None
        for op in self._ops:
            if op[0] == "linear":
                _, weight, has_bias, a_in = op
                d_weight = next(it)
                out = a_in @ d_weight.T
                if has_bias:
                    out = out + next(it)
                t = out if t is None else torch.addmm(out, t, weight.T)
            elif op[1] is not None and t is not None:
                t = t * op[1]
        assert t is not None
        return t

    def layers_backward(self, cotangent: Tensor) -> Iterator[tuple[Tensor, bool, Tensor, Tensor]]:
        """Walk the chain backwards: for each Linear layer, last first, (weight, has_bias, layer input a, δ).

        δ (n, out) is the cotangent of the layer's pre-activation output z, per sample.
        """
        delta = cotangent
        for index in range(len(self._ops) - 1, -1, -1):
            op = self._ops[index]
            if op[0] == "act":
                if op[1] is not None:
                    delta = delta * op[1]
                continue
            _, weight, has_bias, a_in = op
            yield weight, has_bias, a_in, delta
            if index != self._first_linear:
                delta = delta @ weight

    def _collect(self, cotangent: Tensor, bias_term, weight_term) -> tuple[Tensor, ...]:
        grads: list[Tensor] = []
        for _, has_bias, a_in, delta in self.layers_backward(cotangent):
            if has_bias:
                grads.append(bias_term(delta))
            grads.append(weight_term(delta, a_in))
        return tuple(reversed(grads))

    def vjp(self, cotangent: Tensor) -> tuple[Tensor, ...]:
        return self._collect(cotangent, lambda d: d.sum(0), lambda d, a: d.T @ a)

    def squared_vjp_sum(self, cotangent: Tensor) -> tuple[Tensor, ...]:
        return self._collect(cotangent, lambda d: d.square().sum(0), lambda d, a: d.square().T @ a.square())

    def per_sample_vjp(self, cotangent: Tensor) -> tuple[Tensor, ...]:
        return self._collect(cotangent, lambda d: d, lambda d, a: d.unsqueeze(2) * a.unsqueeze(1))

    def gram(self, cotangents: Tensor) -> Tensor:
        """K of :func:`gram_matrix` without per-sample gradients: a layer's weight contributes
        ⟨δᵢaᵢᵀ, δⱼaⱼᵀ⟩ = (δᵢ·δⱼ)(aᵢ·aⱼ) and its bias δᵢ·δⱼ, so K = Σₗ (ΔₗΔₗᵀ) ∘ (AₗAₗᵀ + 1)."""
        c = cotangents.shape[0]
        total: Tensor | None = None
        for _, has_bias, a_in, delta in self.layers_backward(cotangents):  # δ: (c, n, out), broadcast over c
            deltas = delta.reshape(-1, delta.shape[-1])
            inputs = a_in @ a_in.T
            if has_bias:
                inputs = inputs + 1.0
            term = (deltas @ deltas.T) * (inputs if c == 1 else inputs.repeat(c, c))
            total = term if total is None else total + term
        assert total is not None
        return total


class BroadcastLinearization:
    """Outputs that are a parameter vector repeated for every sample (e.g. a state-independent log σ)."""

    def __init__(self, param: Tensor, batch_size: int) -> None:
        self.params = (param.detach(),)
        self.outputs = param.detach().reshape(1, -1).expand(batch_size, -1)

    def jvp(self, tangents: Sequence[Tensor]) -> Tensor:
        return tangents[0].reshape(1, -1).expand_as(self.outputs)

    def vjp(self, cotangent: Tensor) -> tuple[Tensor, ...]:
        return (cotangent.sum(0).view_as(self.params[0]),)

    def per_sample_vjp(self, cotangent: Tensor) -> tuple[Tensor, ...]:
        return (cotangent.reshape(-1, *self.params[0].shape),)

    def squared_vjp_sum(self, cotangent: Tensor) -> tuple[Tensor, ...]:
        return (cotangent.square().sum(0).view_as(self.params[0]),)

    def gram(self, cotangents: Tensor) -> Tensor:
        rows = cotangents.reshape(-1, cotangents.shape[-1])  # Jᵢᵀu = u: the rows themselves
        return rows @ rows.T


class ConcatLinearization:
    """Several linearisations over disjoint parameters, their outputs side by side."""

    def __init__(self, parts: Sequence[Linearization]) -> None:
        self.parts = list(parts)
        self.params = tuple(p for part in self.parts for p in part.params)
        self.outputs = torch.cat([part.outputs for part in self.parts], dim=-1)
        self.widths = [part.outputs.shape[-1] for part in self.parts]
        self._counts = [len(part.params) for part in self.parts]

    def _split_params(self, values: Sequence[Tensor]) -> list[Sequence[Tensor]]:
        out, start = [], 0
        for count in self._counts:
            out.append(values[start : start + count])
            start += count
        return out

    def jvp(self, tangents: Sequence[Tensor]) -> Tensor:
        return torch.cat([part.jvp(t) for part, t in zip(self.parts, self._split_params(tangents))], dim=-1)

    def _map(self, method: str, cotangent: Tensor) -> tuple[Tensor, ...]:
        chunks = torch.split(cotangent, self.widths, dim=-1)
        return tuple(g for part, u in zip(self.parts, chunks) for g in getattr(part, method)(u))

    def vjp(self, cotangent: Tensor) -> tuple[Tensor, ...]:
        return self._map("vjp", cotangent)

    def per_sample_vjp(self, cotangent: Tensor) -> tuple[Tensor, ...]:
        return self._map("per_sample_vjp", cotangent)

    def squared_vjp_sum(self, cotangent: Tensor) -> tuple[Tensor, ...]:
        return self._map("squared_vjp_sum", cotangent)

    def gram(self, cotangents: Tensor) -> Tensor:
        # the parts' parameters are disjoint: their inner products add
        grams = [gram_matrix(part, u) for part, u in zip(self.parts, torch.split(cotangents, self.widths, dim=-1))]
        return torch.stack(grams).sum(0)


def gram_matrix(linearization: Linearization, cotangents: Tensor) -> Tensor:
    """K with K₍c,i₎,₍d,j₎ = ⟨Jᵢᵀu_{c,i}, Jⱼᵀu_{d,j}⟩: the Gram matrix of per-sample vector–Jacobian products.

    :param cotangents: (c, n, k): c cotangents per sample (a 2-D (n, k) batch is taken as c = 1)
    :returns: (c·n, c·n), rows ordered (c, i) — cotangent-major, as ``cotangents.reshape(c·n, k)``

    Chains of Linear layers get it from one batched backward pass (no per-sample gradient is formed);
    other linearisations stack their per-sample products.
    """
    if cotangents.ndim == 2:
        cotangents = cotangents.unsqueeze(0)
    own = getattr(linearization, "gram", None)
    if own is not None:
        return own(cotangents)
    rows = torch.cat(
        [torch.cat([g.reshape(g.shape[0], -1) for g in linearization.per_sample_vjp(u)], dim=1) for u in cotangents]
    )
    return rows @ rows.T


def linearize(
    fn: nn.Module | Callable[[Sequence[Tensor], Any], Tensor],
    params: Sequence[Tensor],
    inputs: Any,
) -> Linearization:
    """Linearise ``fn`` at ``params`` on ``inputs``.

    ``fn`` is a module (its ``params`` are substituted by identity) or a callable f(param_values,
    inputs). A module that is a chain of Linear layers and elementwise activations, linearised over
    exactly its own parameters, takes the fast :class:`MLPChainLinearization` path.
    """
    if isinstance(fn, nn.Module):
        chain = as_chain(fn)
        if chain is not None and isinstance(inputs, Tensor):
            if _same_params(chain, params):
                return MLPChainLinearization(chain, inputs)
        fn = module_function(fn, params)
    return FunctionalLinearization(fn, params, inputs)


def _same_params(chain: Sequence[nn.Module], params: Sequence[Tensor]) -> bool:
    own = [p for m in chain for p in m.parameters(recurse=False)]
    return len(own) == len(params) and all(a is b for a, b in zip(own, params))
