"""Task families passed the way SB3 takes envs: an env id, an env instance, an env class or factory, or a VecEnv.

The meta-learners run a meta-batch on a VecEnv with one sub-env per task, and adapt or evaluate on
VecEnvs of their own; these helpers make such VecEnvs from any of the forms and check that their
sub-envs are task families (``sample_tasks``/``set_task``/``get_task``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gymnasium import Env
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from envs.task_family import FAMILY_METHODS, EnvCopies, FamilyLike, Task, family_name, family_target, not_a_family_message

__all__ = ["family_vec_env", "missing_vec_family_methods", "sample_model_tasks", "sub_env_copies"]


def sample_model_tasks(model: Any, n: int) -> list[Task]:
    """``n`` tasks drawn with the RNG of the first sub-env of ``model.env`` (a meta-learner's or RL²'s).

    SB3 seeds a VecEnv at its next reset, so a model that has not reset its env since it was seeded (built, not yet
    trained) resets it first: its seed then fixes the draw, as it fixes everything else (training resets the env anyway).
    """
    if model._last_obs is None:
        model._last_obs = model.env.reset()
    return model.env.env_method("sample_tasks", n, indices=[0])[0]


def missing_vec_family_methods(venv: VecEnv) -> list[str]:
    """The task-family methods that the sub-envs of ``venv`` (or wrappers inside them) lack."""
    return [name for name in FAMILY_METHODS if not venv.has_attr(name)]


def family_vec_env(
    family: FamilyLike,
    n_envs: int,
    seed: int | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    vec_env_cls: type[VecEnv] = DummyVecEnv,
) -> VecEnv:
    """``n_envs`` sub-envs of ``family`` made by SB3's ``make_vec_env``, checked to be task families.

    :param family: an env id (``gym.make``), an env instance (one deep copy per sub-env, see
        :class:`envs.task_family.EnvCopies`: the instance itself is never used), or an env class or
        factory (called once per sub-env with ``env_kwargs``)
    :param seed: seed of the sub-envs (sub-env i gets ``seed + i``; None: drawn from numpy's global RNG)
    :raises ValueError: for an object that is none of those forms, env_kwargs given with an instance, or
        sub-envs without ``sample_tasks``/``set_task``/``get_task`` (the message names the missing methods)
    """
    target = family_target(family, env_kwargs)
    venv = make_vec_env(target, n_envs=n_envs, seed=seed, env_kwargs=dict(env_kwargs or {}), vec_env_cls=vec_env_cls)
    missing = missing_vec_family_methods(venv)
    if missing:
        venv.close()
        raise ValueError(not_a_family_message(family_name(family), missing))
    return venv


def sub_env_copies(venv: VecEnv) -> EnvCopies | None:
    """A factory of copies of the first sub-env of ``venv`` (without SB3's ``Monitor``), or None when ``venv`` is not a
    ``DummyVecEnv`` (a ``SubprocVecEnv``'s sub-envs live in other processes; a VecEnv wrapper transforms what they return,
    which copies of a sub-env would not)."""
    if type(venv) is not DummyVecEnv:
        return None
    env: Env = venv.envs[0]
    while isinstance(env, Monitor):  # make_vec_env adds its own; a monitor's open log file cannot be copied
        env = env.env
    return EnvCopies(env)
