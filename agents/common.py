"""What every ngrl agent shares: atomic checkpoints, checked loading, actor/critic parameter lists."""

from __future__ import annotations

import io
import json
import os
import pathlib
import zipfile
from typing import Any, TypeVar

from torch import nn
from stable_baselines3.common.policies import ActorCriticPolicy

__all__ = ["CheckpointError", "CheckpointMixin", "critic_parameters", "zip_path"]

SelfCheckpoint = TypeVar("SelfCheckpoint", bound="CheckpointMixin")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: missing, corrupt, from another algorithm or another env."""


def zip_path(path: str | os.PathLike) -> pathlib.Path:
    """The file SB3 reads or writes for ``path``: '.zip' is appended when the name has no suffix."""
    path = pathlib.Path(path)
    return path if path.suffix else path.with_name(path.name + ".zip")


def _read_saved_data(path: pathlib.Path) -> dict[str, Any]:
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("data").decode())
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, json.JSONDecodeError, OSError) as error:
        raise CheckpointError(
            f"{path} is not a readable ngrl checkpoint ({type(error).__name__}: {error}). The file is corrupt, "
            "truncated or of another kind: point to the .zip written by `train.py train` (or `model.save`), or re-train."
        ) from error


class CheckpointMixin:
    """Atomic ``save`` and a ``load`` that explains what is wrong with a bad checkpoint.

    Put it first among the bases of an SB3 algorithm: ``class NPG(CheckpointMixin, OnPolicyAlgorithm)``.
    """

    def save(self, path: str | pathlib.Path | io.BufferedIOBase, exclude=None, include=None) -> None:  # type: ignore[override]
        """Save to ``path`` (a '.zip' is added when it has no suffix), atomically: a crash leaves the old file."""
        self._ngrl_algorithm = type(self).__name__
        if not isinstance(path, (str, os.PathLike)):
            super().save(path, exclude=exclude, include=include)  # type: ignore[misc]
            return
        final = zip_path(path)
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = final.with_name(f".{final.name}.{os.getpid()}.tmp.zip")
        try:
            super().save(temporary, exclude=exclude, include=include)  # type: ignore[misc]
            os.replace(temporary, final)
        finally:
            if temporary.exists():
                temporary.unlink()

    @classmethod
    def load(cls: type[SelfCheckpoint], path, env=None, device="auto", custom_objects=None, **kwargs) -> SelfCheckpoint:  # type: ignore[override]
        """Load a checkpoint saved by this algorithm; raise :class:`CheckpointError` with the remedy otherwise."""
        if isinstance(path, (str, os.PathLike)):
            candidates = [pathlib.Path(path), zip_path(path)]
            found = next((p for p in candidates if p.is_file()), None)
            if found is None:
                raise CheckpointError(f"no checkpoint at {path}: check the path (train.py prints it after training)")
            saved_by = _read_saved_data(found).get("_ngrl_algorithm")
            if saved_by != cls.__name__:
                origin = f"by {saved_by}" if saved_by else "by something other than ngrl (no ngrl algorithm recorded)"
                raise CheckpointError(
                    f"{found} was saved {origin}, not by {cls.__name__}: load it with the algorithm that wrote it"
                    + (f" (--algo {saved_by.lower()})" if saved_by else "")
                )
            path = found
        try:
            return super().load(path, env=env, device=device, custom_objects=custom_objects, **kwargs)  # type: ignore[misc]
        except CheckpointError:
            raise
        except ValueError as error:
            if "spaces do not match" in str(error):
                raise CheckpointError(
                    f"the checkpoint does not fit this environment: {error}. Evaluate it on the env it was trained on."
                ) from error
            raise CheckpointError(f"could not load {path}: {error}") from error
        except (KeyError, RuntimeError, EOFError) as error:
            raise CheckpointError(f"{path} is corrupt or incompatible ({type(error).__name__}: {error}); re-train or use another file") from error


def critic_parameters(policy: ActorCriticPolicy) -> list[nn.Parameter]:
    """The value function's own parameters (critic features extractor if not shared, value MLP, value head).

    A policy with modules of its own in the critic's path (a recurrent core) declares them by a
    ``critic_parameters()`` method, which is used instead.
    """
    own = getattr(policy, "critic_parameters", None)
    if callable(own):
        return list(own())
    modules: list[nn.Module] = [policy.mlp_extractor.value_net, policy.value_net]
    if not policy.share_features_extractor:
        modules.insert(0, policy.vf_features_extractor)
    return list({id(p): p for m in modules for p in m.parameters()}.values())


