"""Validation of the agents' constructor arguments: by name, type and range, with one message each.

Every agent's ``__init__`` calls :func:`check_arguments` on its own arguments, so the Python API raises
a ``ValueError`` naming the argument; the command line calls the same function on a config's
hyper-parameters before it builds any environment.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from gymnasium import spaces

from ngrl.fisher import ESTIMATORS, AdaptiveConfig
from ngrl.spectral import relative_damping

__all__ = ["check_arguments", "check_spaces", "rules_for"]

Rule = Callable[[str, Any], None]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def positive_int(name: str, value: Any) -> None:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def non_negative_int(name: str, value: Any) -> None:
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def positive_float(name: str, value: Any) -> None:
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def non_negative_float(name: str, value: Any) -> None:
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def discount(name: str, value: Any) -> None:
    if not _is_number(value) or not 0 < value <= 1:
        raise ValueError(f"{name} must lie in (0, 1], got {value!r}")


def unit_interval(name: str, value: Any) -> None:
    if not _is_number(value) or not 0 <= value <= 1:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")


def open_unit_interval(name: str, value: Any) -> None:
    if not _is_number(value) or not 0 < value < 1:
        raise ValueError(f"{name} must lie in (0, 1), got {value!r}")


def boolean(name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def rate_or_schedule(name: str, value: Any) -> None:
    """A positive finite number, or a schedule (a callable of the remaining progress)."""
    if callable(value):
        return
    positive_float(name, value)


def mapping(name: str, value: Any) -> None:
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a dict of keyword arguments (e.g. dict(net_arch=[64, 64])), got {value!r}")


def device(name: str, value: Any) -> None:
    import torch

    if isinstance(value, torch.device):
        return
    if not isinstance(value, str):
        raise ValueError(f"{name} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}")
    if value == "auto":
        return
    try:
        torch.device(value)
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"{name} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}") from error


def folder(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a folder name, got {value!r}")


def optional(rule: Rule) -> Rule:
    def check(name: str, value: Any) -> None:
        if value is not None:
            rule(name, value)

    return check


def one_of(*choices: Any) -> Rule:
    def check(name: str, value: Any) -> None:
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")

    return check


def either(*rules: Rule) -> Rule:
    """Passes when any rule passes; the first rule's message otherwise."""

    def check(name: str, value: Any) -> None:
        errors = []
        for rule in rules:
            try:
                rule(name, value)
                return
            except ValueError as error:
                errors.append(error)
        raise errors[0]

    return check


def _train_freq(name: str, value: Any) -> None:
    if _is_int(value):
        positive_int(name, value)
        return
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and _is_int(value[0]) and value[0] >= 1 and value[1] in ("step", "episode")):
        raise ValueError(f"{name} must be a positive integer or [n, 'step' | 'episode'], got {value!r}")


def _damping(name: str, value: Any) -> None:
    """A number λ >= 0, or "rel_<c>" with c > 0 (λ = c·λ_max of the curvature, see ngrl.spectral.relative_damping)."""
    if isinstance(value, str):
        relative_damping(value, name)  # raises a ValueError naming the argument for a malformed string
        return
    non_negative_float(name, value)


def _adaptive_kwargs(name: str, value: Any) -> None:
    """None, or a dict of ``ngrl.fisher.AdaptiveConfig``'s fields (structure, epsilon, schedule, ...), each in its range."""
    if value is None:
        return
    mapping(name, value)
    try:
        AdaptiveConfig(**value)
    except TypeError as error:  # a key that is not a field
        fields = ", ".join(f.name for f in dataclasses.fields(AdaptiveConfig))
        raise ValueError(f"{name} takes the fields of ngrl.fisher.AdaptiveConfig ({fields}), got {sorted(value)}") from error
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from error


def _target_update_interval(name: str, value: Any) -> None:
    if value is None:  # SB3's DQN has no such value; earlier ngrl used it for "no target network"
        raise ValueError(f"{name}=None is not accepted: pass target_network=False to run without a target network")
    positive_int(name, value)


# Rules by argument name, for every algorithm (the one place where the choices of a string argument are listed); an algorithm's own table is looked up by class name
# along its MRO (so that this module needs no import of the agents).
COMMON: dict[str, Rule] = {
    "learning_rate": rate_or_schedule,
    "gamma": discount,
    "gae_lambda": unit_interval,
    "n_steps": positive_int,
    "batch_size": positive_int,
    "seed": optional(non_negative_int),
    "verbose": non_negative_int,
    "device": device,
    "policy_kwargs": optional(mapping),
    "stats_window_size": positive_int,
    "tensorboard_log": optional(folder),
}

RULES: dict[str, dict[str, Rule]] = {
    "NPG": {
        "target_kl": positive_float,
        "step_size": optional(positive_float),
        "fisher_estimator": one_of(*ESTIMATORS, "adaptive"),
        "adaptive_kwargs": _adaptive_kwargs,
        "preconditioner": optional(one_of("none", "diagonal", "kfac")),
        "natural_direction": one_of("cg", "cfa"),
        "cg_max_steps": positive_int,
        "cg_damping": _damping,
        "cg_tol": positive_float,
        "log_spectrum": boolean,
        "line_search": boolean,
        "line_search_shrinking_factor": open_unit_interval,
        "line_search_max_iter": positive_int,
        "n_critic_updates": non_negative_int,
        "normalize_advantage": boolean,
        "sub_sampling_factor": positive_int,
        "sequence_length": optional(positive_int),
        "fisher_sequence_length": optional(positive_int),
        "rollout_buffer_kwargs": optional(mapping),
    },
    "VPG": {
        "step_size": positive_float,
        "n_critic_updates": non_negative_int,
        "normalize_advantage": boolean,
        "sequence_length": optional(positive_int),
    },
    "NGDQN": {
        "buffer_size": positive_int,
        "learning_starts": non_negative_int,
        "tau": unit_interval,
        "train_freq": _train_freq,
        "gradient_steps": either(positive_int, one_of(-1)),
        "target_update_interval": _target_update_interval,
        "target_network": boolean,
        "preconditioner": optional(one_of("none", "diagonal")),
        "curvature": one_of("gauss_newton", "adaptive"),
        "adaptive_kwargs": _adaptive_kwargs,
        "curvature_outputs": one_of("action", "all"),
        "solver": one_of("cg", "exact"),
        "td_loss": one_of("mse", "huber"),
        "exploration_fraction": unit_interval,
        "exploration_initial_eps": unit_interval,
        "exploration_final_eps": unit_interval,
        "max_grad_norm": optional(positive_float),
        "cg_max_steps": positive_int,
        "cg_tol": positive_float,
        "target_kl": optional(positive_float),
        "optimize_memory_usage": boolean,
        "replay_buffer_kwargs": optional(mapping),
    },
    "BaselineDQN": {
        "target_network": boolean,
    },
    "MetaLearner": {
        "inner_updates": non_negative_int,
        "meta_batch_size": positive_int,
        "critic_step_size": unit_interval,
        "inner_advantage_scale": one_of("rollout", "family"),
        "inner_kwargs": optional(mapping),
        "env_kwargs": optional(mapping),
        "vec_env_class": one_of("dummy", "subproc"),
    },
    "RL2": {
        "episodes_per_trial": positive_int,
        "n_envs": positive_int,
        "env_kwargs": optional(mapping),
    },
    "FOMAML": {
        "meta_step": one_of("optimizer", "natural"),
        "meta_target_kl": positive_float,
        "meta_cg_max_steps": positive_int,
        "meta_cg_damping": non_negative_float,
        "meta_optimizer_kwargs": optional(mapping),
    },
    "IMAML": {
        "lam": positive_float,
        "curvature": one_of("fisher", "hessian"),
        "proximal_step": non_negative_float,
        "cg_max_steps": positive_int,
        "cg_tol": positive_float,
    },
}


def rules_for(cls: type) -> dict[str, Rule]:
    """The rules that apply to ``cls``'s arguments: the common ones, then its bases' and its own tables."""
    rules = dict(COMMON)
    for base in reversed(cls.__mro__):
        rules.update(RULES.get(base.__name__, {}))
    return rules


def check_arguments(cls: type, values: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first argument in ``values`` that breaks its rule for ``cls``."""
    rules = rules_for(cls)
    for name, value in values.items():
        rule = rules.get(name)
        if rule is not None:
            rule(name, value)


def check_spaces(observation_space: spaces.Space, action_space: spaces.Space) -> None:
    """Refuse empty observation or action spaces (a Box with a zero-size shape, Discrete(0), an empty Dict)."""
    for what, space in (("observation", observation_space), ("action", action_space)):
        empty = (
            (isinstance(space, spaces.Discrete) and space.n < 1)
            or (isinstance(space, spaces.MultiDiscrete) and (space.nvec.size == 0 or (space.nvec < 1).any()))
            or (isinstance(space, (spaces.Box, spaces.MultiBinary)) and int(np.prod(space.shape)) == 0)
            or (isinstance(space, (spaces.Dict, spaces.Tuple)) and len(space.spaces) == 0)
        )
        if empty:
            raise ValueError(f"the env's {what} space {space} is empty: an agent needs at least one {what} dimension or choice")
