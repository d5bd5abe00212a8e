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

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = [
    "FAMILY_METHODS",
    "EnvCopies",
    "ParameterTaskFamily",
    "Task",
    "TaskFamily",
    "TaskResampling",
    "check_task",
    "family_name",
    "family_target",
    "held_out_tasks",
    "make_family_env",
    "missing_family_methods",
    "not_a_family_message",
    "task_family_methods",
]

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

    Tasks draw each attribute of ``ranges`` uniformly (or log-uniformly) from its range and each attribute
    of ``choices`` uniformly from its finite set of values (a sign, a flag); ``set_task`` writes them to
    ``env.unwrapped`` (or calls ``apply(env.unwrapped, task)`` when other quantities derive from them).
    A task's keys are the attributes of ``ranges`` followed by those of ``choices``.

    :param env: the env whose dynamics or rewards the attributes control
    :param ranges: attribute name -> (low, high)
    :param apply: ``f(unwrapped_env, task)`` that installs a task; default: ``setattr`` per attribute
    :param log_uniform: draw the ``ranges`` log-uniformly (for positive ranges spanning orders of magnitude)
    :param choices: attribute name -> the values it takes, each with the same probability
    """

    def __init__(
        self,
        env: gym.Env,
        ranges: Mapping[str, tuple[float, float]],
        apply: Callable[[gym.Env, Task], None] | None = None,
        log_uniform: bool = False,
        choices: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        super().__init__(env)
        choices = dict(choices or {})
        if not ranges and not choices:
            raise ValueError("ranges is empty: name at least one attribute and its (low, high) range (or its values in choices)")
        base = env.unwrapped
        for name in (*ranges, *choices):
            if not hasattr(base, name):
                raise ValueError(
                    f"{type(base).__name__} has no attribute {name!r} to vary; its numeric attributes are "
                    f"{sorted(k for k, v in vars(base).items() if isinstance(v, (int, float)) and not isinstance(v, bool))}"
                )
        both = sorted(set(ranges) & set(choices))
        if both:
            raise ValueError(f"{both} are in both ranges and choices: give each attribute a range or a set of values")
        self.ranges: dict[str, tuple[float, float]] = {}
        for name, bounds in ranges.items():
            low, high = (float(b) for b in bounds)
            if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                raise ValueError(f"range of {name!r} must be finite with low <= high, got {bounds}")
            if log_uniform and low <= 0:
                raise ValueError(f"log_uniform needs positive ranges, {name!r} has {bounds}")
            self.ranges[name] = (low, high)
        self.choices: dict[str, tuple[float, ...]] = {}
        for name, values in choices.items():
            values = tuple(float(v) for v in values)
            if not values or not all(math.isfinite(v) for v in values):
                raise ValueError(f"choices of {name!r} must be a non-empty list of finite numbers, got {values}")
            self.choices[name] = values
        self.names = (*self.ranges, *self.choices)
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
        picks = [np.asarray(values)[self.np_random.integers(len(values), size=n)] for values in self.choices.values()]
        columns = [*draws.T, *picks]
        return [dict(zip(self.names, (float(column[i]) for column in columns))) for i in range(n)]

    def set_task(self, task: Mapping[str, float]) -> None:
        task = check_task(task, self.names)
        if self._apply is not None:
            self._apply(self.env.unwrapped, task)
        else:
            for name, value in task.items():
                setattr(self.env.unwrapped, name, value)

    def get_task(self) -> Task:
        return {name: float(getattr(self.env.unwrapped, name)) for name in self.names}


FAMILY_METHODS = ("sample_tasks", "set_task", "get_task")


def missing_family_methods(env: gym.Env) -> list[str]:
    """The methods of a task family (``FAMILY_METHODS``) that neither ``env`` nor a wrapper inside it has."""
    return [name for name in FAMILY_METHODS if not env.has_wrapper_attr(name)]


def not_a_family_message(what: str, missing: Sequence[str]) -> str:
    """The one-paragraph explanation of why ``what`` is not a task family: the methods it lacks and how to add them."""
    return (
        f"{what} is not a task family: it has no {', '.join(missing)} (a family needs sample_tasks(n), set_task(task) and "
        "get_task()). Use a registered family such as ngrl/Navigation2D-v0, write those methods (envs.TaskFamily lists "
        "them), or wrap your env: envs.ParameterTaskFamily(env, {'attribute': (low, high)})"
    )


def task_family_methods(env: gym.Env) -> tuple[Callable[[int], list[Task]], Callable[[Task], None], Callable[[], Task]]:
    """(sample_tasks, set_task, get_task) of ``env`` or of a wrapper inside it; a clear TypeError otherwise."""
    missing = missing_family_methods(env)
    if missing:
        raise TypeError(not_a_family_message(str(env), missing))
    return tuple(env.get_wrapper_attr(name) for name in FAMILY_METHODS)  # type: ignore[return-value]


class EnvCopies:
    """A factory of deep copies of one env, for a family passed as an instance.

    The env is deep-copied once when the factory is made (later changes to it are not seen) and every
    call returns a fresh deep copy of that template: the env passed in is never reset, stepped or
    given a task. Each copy is seeded by whoever resets it (SB3's VecEnvs seed every sub-env).
    """

    def __init__(self, env: gym.Env) -> None:
        self.template = copy.deepcopy(env)

    def __call__(self) -> gym.Env:
        return copy.deepcopy(self.template)


FamilyLike = str | gym.Env | Callable[..., gym.Env]


def family_name(family: Any) -> str:
    """How error messages name a family given as an id, an instance, a class or a factory."""
    if isinstance(family, str):
        return repr(family)
    if isinstance(family, EnvCopies):
        family = family.template
    if isinstance(family, gym.Env):
        return f"the env {type(family.unwrapped).__name__}"
    return f"{getattr(family, '__qualname__', type(family).__name__)}"


def family_target(family: FamilyLike, env_kwargs: Mapping[str, Any] | None = None) -> str | Callable[..., gym.Env]:
    """What ``gym.make``/SB3's ``make_vec_env`` take to make envs of ``family``, called with ``env_kwargs``.

    An env id stays an id; a class or factory (any callable returning an env) stays itself; an env
    instance becomes :class:`EnvCopies` of it (``env_kwargs`` must then be empty: a copy is as it is).

    :raises ValueError: when ``family`` is none of these
    """
    if isinstance(family, str) or (callable(family) and not isinstance(family, gym.Env)):
        return family
    if isinstance(family, gym.Env):
        if env_kwargs:
            raise ValueError(
                f"env_kwargs {dict(env_kwargs)} cannot apply to an env instance (it is copied as it is): pass the env's class "
                "or a factory to have them applied, or build the instance with them"
            )
        return EnvCopies(family)
    raise ValueError(
        f"a task family is given as an env id, a gymnasium.Env instance, an env class or zero-argument factory, or a VecEnv; "
        f"got {type(family).__name__}"
    )


def make_family_env(family: FamilyLike, env_kwargs: Mapping[str, Any] | None = None) -> gym.Env:
    """One fresh env of ``family`` (an id, an instance — deep-copied —, a class or a factory), checked to be a task family.

    :raises ValueError: when ``family`` is not one of those forms, does not make a ``gymnasium.Env``, or makes an
        env without ``sample_tasks``/``set_task``/``get_task`` (the message names the missing ones)
    """
    target = family_target(family, env_kwargs)
    kwargs = dict(env_kwargs or {})
    env = gym.make(target, **kwargs) if isinstance(target, str) else target(**kwargs)
    if not isinstance(env, gym.Env):
        raise ValueError(f"{family_name(family)} made a {type(env).__name__}, not a gymnasium.Env")
    missing = missing_family_methods(env)
    if missing:
        env.close()
        raise ValueError(not_a_family_message(family_name(family), missing))
    return env


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


def held_out_tasks(family: FamilyLike, n: int, seed: int, env_kwargs: Mapping[str, Any] | None = None) -> list[Task]:
    """``n`` tasks of ``family`` drawn from a fresh env seeded with ``seed`` (use a seed training never used).

    :param family: an env id, an env instance (a copy is drawn from; the instance is left alone), a class or a factory
    """
    env = make_family_env(family, env_kwargs)
    try:
        env.reset(seed=seed)
        return env.get_wrapper_attr("sample_tasks")(n)
    finally:
        env.close()
