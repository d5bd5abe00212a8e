"""Families of tasks for meta-RL: ``sample_tasks(n)``, ``set_task(task)``, ``get_task()``.

A task is plain data, a ``dict[str, float]`` (goal coordinates, a pole length, a target velocity), so
it pickles across processes and prints in logs. Tasks are drawn from the env's own RNG
(``self.np_random``): ``env.reset(seed=s)`` followed by ``sample_tasks(n)`` gives the same tasks every
time. A task persists across ``reset`` until the next ``set_task``.

Any env with settable attributes becomes a family through :class:`ParameterTaskFamily`::

    import gymnasium as gym
    from envs import ParameterTaskFamily

    # MountainCar with its engine power varied between tasks
    family = ParameterTaskFamily(gym.make("MountainCarContinuous-v0"), {"power": (0.001, 0.003)})
    family.reset(seed=0)
    tasks = family.sample_tasks(10)      # [{'power': 0.0021...}, ...]
    family.set_task(tasks[0])            # sets env.unwrapped.power
    # attributes that others are derived from need an ``apply`` function, see envs/dynamics.py
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["Task", "TaskFamily", "ParameterTaskFamily", "TaskResampling", "check_task", "held_out_tasks", "task_family_methods"]

Task = dict[str, float]


def check_task(task: Mapping[str, Any], names: tuple[str, ...] | list[str]) -> Task:
    """Return ``task`` as a dict of floats with exactly the keys ``names``, or raise a ValueError saying what is wrong."""
    if not isinstance(task, Mapping):
        raise ValueError(f"a task must be a dict of floats with keys {list(names)}, got {type(task).__name__}")
    missing = [k for k in names if k not in task]
    unknown = [k for k in task if k not in names]
    if missing or unknown:
        raise ValueError(
            f"task {dict(task)} does not fit this family: missing {missing}, unknown {unknown}; expected keys {list(names)} "
            "(take tasks from this env's sample_tasks, or build them with these keys)"
        )
    out = {}
    for k in names:
        try:
            value = float(task[k])
        except (TypeError, ValueError) as error:
            raise ValueError(f"task entry {k!r} must be a number, got {task[k]!r}") from error
        if not math.isfinite(value):
            raise ValueError(f"task entry {k!r} must be finite, got {value}")
        out[k] = value
    return out


class TaskFamily:
    """Mixin for a ``gym.Env`` that is a family of tasks (a distribution p(T) and a current task)."""

    def sample_tasks(self, n: int) -> list[Task]:
        """n tasks drawn i.i.d. from the family's distribution with the env's RNG."""
        raise NotImplementedError

    def set_task(self, task: Mapping[str, float]) -> None:
        """Make ``task`` the current task (it applies from the next step and persists across resets)."""
        raise NotImplementedError

    def get_task(self) -> Task:
        """The current task."""
        raise NotImplementedError


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"sample_tasks needs a non-negative integer count, got {n!r}")
    return int(n)


class ParameterTaskFamily(gym.Wrapper, TaskFamily):
    """Turn an env with settable numeric attributes into a task family.

    Tasks draw each attribute uniformly (or log-uniformly) from its range; ``set_task`` writes them
    to ``env.unwrapped`` (or calls ``apply(env.unwrapped, task)`` when other quantities derive from them).

    :param env: the env whose dynamics or rewards the attributes control
    :param ranges: attribute name -> (low, high)
    :param apply: ``f(unwrapped_env, task)`` that installs a task; default: ``setattr`` per attribute
    :param log_uniform: draw log-uniformly (for positive ranges spanning orders of magnitude)
    """

    def __init__(
        self,
        env: gym.Env,
        ranges: Mapping[str, tuple[float, float]],
        apply: Callable[[gym.Env, Task], None] | None = None,
        log_uniform: bool = False,
    ) -> None:
        super().__init__(env)
        if not ranges:
            raise ValueError("ranges is empty: name at least one attribute and its (low, high) range")
        base = env.unwrapped
        self.ranges: dict[str, tuple[float, float]] = {}
        for name, bounds in ranges.items():
            if not hasattr(base, name):
                raise ValueError(
                    f"{type(base).__name__} has no attribute {name!r} to vary; its numeric attributes are "
                    f"{sorted(k for k, v in vars(base).items() if isinstance(v, (int, float)) and not isinstance(v, bool))}"
                )
            low, high = (float(b) for b in bounds)
            if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                raise ValueError(f"range of {name!r} must be finite with low <= high, got {bounds}")
            if log_uniform and low <= 0:
                raise ValueError(f"log_uniform needs positive ranges, {name!r} has {bounds}")
            self.ranges[name] = (low, high)
        self.names = tuple(self.ranges)
        self.log_uniform = log_uniform
        self._apply = apply

    def sample_tasks(self, n: int) -> list[Task]:
        n = _check_n(n)
        low = np.array([r[0] for r in self.ranges.values()])
        high = np.array([r[1] for r in self.ranges.values()])
        if self.log_uniform:
            draws = np.exp(self.np_random.uniform(np.log(low), np.log(high), size=(n, len(low))))
        else:
            draws = self.np_random.uniform(low, high, size=(n, len(low)))
        return [dict(zip(self.names, map(float, row))) for row in draws]

    def set_task(self, task: Mapping[str, float]) -> None:
        task = check_task(task, self.names)
        if self._apply is not None:
            self._apply(self.env.unwrapped, task)
        else:
            for name, value in task.items():
                setattr(self.env.unwrapped, name, value)

    def get_task(self) -> Task:
        return {name: float(getattr(self.env.unwrapped, name)) for name in self.names}


def task_family_methods(env: gym.Env) -> tuple[Callable[[int], list[Task]], Callable[[Task], None], Callable[[], Task]]:
    """(sample_tasks, set_task, get_task) of ``env`` or of a wrapper inside it; a clear TypeError otherwise."""
    try:
        return tuple(env.get_wrapper_attr(name) for name in ("sample_tasks", "set_task", "get_task"))  # type: ignore[return-value]
    except AttributeError as error:
        raise TypeError(
            f"{env} is not a task family (no sample_tasks/set_task/get_task). Use a registered family such as "
            "ngrl/Navigation2D-v0, or wrap your env: envs.ParameterTaskFamily(env, {'attribute': (low, high)})"
        ) from error


class TaskResampling(gym.Wrapper):
    """Draw a fresh task from the family at every reset: multi-task (joint) training on p(T)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._sample_tasks, self._set_task, _ = task_family_methods(env)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:  # seed the RNG the task is drawn from before drawing it
            self.env.reset(seed=seed)
        self._set_task(self._sample_tasks(1)[0])
        return self.env.reset(options=options)


def held_out_tasks(env_id: str, n: int, seed: int, env_kwargs: Mapping[str, Any] | None = None) -> list[Task]:
    """``n`` tasks of the family ``env_id`` drawn from a fresh env seeded with ``seed`` (use a seed training never used)."""
    env = gym.make(env_id, **dict(env_kwargs or {}))
    try:
        env.reset(seed=seed)
        try:
            sample = env.get_wrapper_attr("sample_tasks")
        except AttributeError as error:
            raise ValueError(f"{env_id} is not a task family (no sample_tasks): use e.g. ngrl/Navigation2D-v0") from error
        return sample(n)
    finally:
        env.close()
