"""Checkpoints that cannot run code when they are loaded, written atomically.

An SB3 checkpoint is a zip: ``data`` (JSON; entries JSON cannot hold — classes, spaces, schedules,
arrays — are cloudpickled into ``":serialized:"`` fields), ``*.pth`` state dicts and a version file.
Unpickling a field runs whatever code it names, so ngrl never unpickles one:

- on :meth:`CheckpointMixin.save`, ngrl adds ``ngrl.json`` to the zip: every field that SB3 pickled,
  written again as plain data — a class by its dotted name, a space by its bounds and dtype, a
  schedule by its parameters, an array by its values;
- on :meth:`CheckpointMixin.load`, the pickled fields are replaced by those plain-data copies (SB3's
  ``custom_objects`` mechanism, so SB3 never reaches cloudpickle); a class name is resolved only
  from an allow-list of ngrl's, SB3's and torch's own classes (:func:`register_safe_class` adds
  your own); tensors are read by ``torch.load(weights_only=True)``.

A checkpoint without ``ngrl.json`` (written by ngrl before this format, or by SB3 itself) can only
be loaded with ``allow_unsafe_pickle=True`` — an explicit statement that its source is trusted.

Normalisation statistics (``VecNormalize``) are saved by :func:`save_normalization` as plain arrays in
an ``.npz`` file and read back with ``numpy.load(allow_pickle=False)``.
"""

from __future__ import annotations

import collections
import functools
import io
import json
import os
import pathlib
import pickle  # only for its UnpicklingError: nothing is unpickled here
import warnings
import zipfile
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common import buffers as sb3_buffers
from stable_baselines3.common import policies as sb3_policies
from stable_baselines3.common import torch_layers
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.type_aliases import TrainFreq, TrainFrequencyUnit
from stable_baselines3.common.utils import ConstantSchedule, FloatSchedule, LinearSchedule
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

__all__ = [
    "CheckpointError",
    "CheckpointMixin",
    "NonFiniteParametersError",
    "checkpoint_data",
    "load_normalization",
    "register_safe_class",
    "save_normalization",
    "zip_path",
]

SelfCheckpoint = TypeVar("SelfCheckpoint", bound="CheckpointMixin")

FORMAT_FILE = "ngrl.json"
FORMAT_VERSION = 2
UNSAFE_HINT = (
    "Unpickling can run arbitrary code, so ngrl refuses it by default. If you trust the file's source, load it "
    "once with allow_unsafe_pickle=True (command line: --allow-unsafe-pickle) and save it again to convert it."
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: missing, corrupt, unsafe, from another algorithm or another env."""


class NonFiniteParametersError(ValueError):
    """Parameters with NaN or inf: refused by ``save`` (the previous file is kept), or produced by an update
    (training stops and the parameters from before that update are put back)."""


def _finite_guard(method: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap an update method: if it leaves a non-finite policy parameter, restore the parameters from before and raise."""

    @functools.wraps(method)
    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        before = {k: v.detach().clone() for k, v in self.policy.state_dict().items()}
        result = method(self, *args, **kwargs)
        broken = [k for k, v in self.policy.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if broken:
            self.policy.load_state_dict(before)
            raise NonFiniteParametersError(
                f"{type(self).__name__}'s update {self.__dict__.get('_n_updates', '?')} made {', '.join(broken[:3])} NaN or inf; "
                "training stopped and the parameters from before that update were kept. Likely causes: NaN or inf in the "
                "env's rewards or observations, rewards too large for the critic (normalize: true wraps the env in "
                "VecNormalize), or too large a step (lower learning_rate or target_kl)."
            )
        return result

    guarded.__ngrl_guarded__ = True  # type: ignore[attr-defined]
    return guarded


def zip_path(path: str | os.PathLike) -> pathlib.Path:
    """The file SB3 reads or writes for ``path``: '.zip' is appended when the name has no suffix."""
    path = pathlib.Path(path)
    return path if path.suffix else path.with_name(path.name + ".zip")


# --- the allow-list of classes a checkpoint may name -------------------------------------------------

_SAFE_CLASSES: dict[str, type] = {}


def _class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_safe_class(*classes: type) -> None:
    """Allow checkpoints to name these classes (e.g. your own policy or features extractor).

    Loading resolves a class name only through this registry — never by importing what the file
    names — so a checkpoint that refers to your class loads only after you registered it.
    """
    for cls in classes:
        if not isinstance(cls, type):
            raise TypeError(f"register_safe_class takes classes, got {cls!r}")
        _SAFE_CLASSES[_class_name(cls)] = cls


def _subclasses_in(module: Any, base: type) -> list[type]:
    return [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, base)]


def _register_defaults() -> None:
    from stable_baselines3.dqn import policies as dqn_policies

    register_safe_class(
        *_subclasses_in(torch.nn.modules.activation, torch.nn.Module),
        *_subclasses_in(torch.optim, torch.optim.Optimizer),
        *_subclasses_in(sb3_policies, torch.nn.Module),
        *_subclasses_in(dqn_policies, torch.nn.Module),
        *_subclasses_in(torch_layers, torch.nn.Module),
        *_subclasses_in(sb3_buffers, sb3_buffers.BaseBuffer),
    )


_register_defaults()


# --- plain-data encoding of what SB3 would pickle ----------------------------------------------------

def _encode_space(space: spaces.Space) -> dict[str, Any]:
    if isinstance(space, spaces.Box):
        return {"Box": {"low": space.low.tolist(), "high": space.high.tolist(), "shape": list(space.shape), "dtype": str(space.dtype)}}
    if isinstance(space, spaces.Discrete):
        return {"Discrete": {"n": int(space.n), "start": int(space.start)}}
    if isinstance(space, spaces.MultiDiscrete):
        return {"MultiDiscrete": {"nvec": space.nvec.tolist(), "start": space.start.tolist(), "dtype": str(space.dtype)}}
    if isinstance(space, spaces.MultiBinary):
        return {"MultiBinary": {"n": space.n if isinstance(space.n, int) else list(space.n)}}
    if isinstance(space, spaces.Dict):
        return {"Dict": {key: _encode_space(sub) for key, sub in space.spaces.items()}}
    if isinstance(space, spaces.Tuple):
        return {"Tuple": [_encode_space(sub) for sub in space.spaces]}
    raise TypeError(f"spaces of type {type(space).__name__} cannot be saved")


def _decode_space(spec: dict[str, Any]) -> spaces.Space:
    ((kind, args),) = spec.items()
    if kind == "Box":
        dtype = np.dtype(args["dtype"])
        return spaces.Box(np.asarray(args["low"], dtype=dtype), np.asarray(args["high"], dtype=dtype), tuple(args["shape"]), dtype)
    if kind == "Discrete":
        return spaces.Discrete(int(args["n"]), start=int(args["start"]))
    if kind == "MultiDiscrete":
        return spaces.MultiDiscrete(np.asarray(args["nvec"]), dtype=np.dtype(args["dtype"]), start=np.asarray(args["start"]))
    if kind == "MultiBinary":
        return spaces.MultiBinary(args["n"])
    if kind == "Dict":
        return spaces.Dict({key: _decode_space(sub) for key, sub in args.items()})
    if kind == "Tuple":
        return spaces.Tuple([_decode_space(sub) for sub in args])
    raise CheckpointError(f"unknown space kind {kind!r} in the checkpoint")


def _encode(value: Any) -> Any:
    """``value`` as JSON data; markers are one-key dicts whose key starts with '__'. Unknown objects: ``__unsupported__``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float, np.integer, np.floating)):
        return value.item() if isinstance(value, np.generic) else value
    if isinstance(value, type):
        return {"__class__": _class_name(value)}
    if isinstance(value, spaces.Space):
        return {"__space__": _encode_space(value)}
    if isinstance(value, TrainFreq):
        return {"__train_freq__": [int(value.frequency), value.unit.value]}
    if isinstance(value, FloatSchedule):
        return _encode(value.value_schedule)
    if isinstance(value, ConstantSchedule):
        return {"__schedule__": {"kind": "constant", "value": float(value.val)}}
    if isinstance(value, LinearSchedule):
        return {"__schedule__": {"kind": "linear", "start": value.start, "end": value.end, "end_fraction": value.end_fraction}}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": {"dtype": str(value.dtype), "shape": list(value.shape), "values": value.ravel().tolist()}}
    if isinstance(value, collections.deque):
        return {"__deque__": {"maxlen": value.maxlen, "items": [_encode(v) for v in value]}}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"__dict__": {k: _encode(v) for k, v in value.items()}}
    return {"__unsupported__": f"{type(value).__module__}.{type(value).__qualname__}"}


def _decode(value: Any, where: str) -> Any:
    if isinstance(value, list):
        return [_decode(v, where) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        raise CheckpointError(f"malformed entry {where} in {FORMAT_FILE}")
    ((marker, body),) = value.items()
    if marker == "__class__":
        if body not in _SAFE_CLASSES:
            raise CheckpointError(
                f"the checkpoint's {where} names the class {body}, which is not on ngrl's allow-list of classes a "
                "checkpoint may refer to. If it is your own class, call agents.register_safe_class(YourClass) before loading."
            )
        return _SAFE_CLASSES[body]
    if marker == "__space__":
        return _decode_space(body)
    if marker == "__train_freq__":
        return TrainFreq(int(body[0]), TrainFrequencyUnit(body[1]))
    if marker == "__schedule__":
        if body["kind"] == "constant":
            return ConstantSchedule(float(body["value"]))
        if body["kind"] == "linear":
            return LinearSchedule(float(body["start"]), float(body["end"]), float(body["end_fraction"]))
        raise CheckpointError(f"unknown schedule {body['kind']!r} in the checkpoint's {where}")
    if marker == "__ndarray__":
        return np.asarray(body["values"], dtype=np.dtype(body["dtype"])).reshape(body["shape"])
    if marker == "__deque__":
        return collections.deque((_decode(v, where) for v in body["items"]), maxlen=body["maxlen"])
    if marker == "__tuple__":
        return tuple(_decode(v, where) for v in body)
    if marker == "__dict__":
        return {k: _decode(v, f"{where}.{k}") for k, v in body.items()}
    if marker == "__unsupported__":
        return _Unsupported(body)
    raise CheckpointError(f"unknown marker {marker!r} in the checkpoint's {where}")


class _Unsupported:
    """An object the safe format could not hold (e.g. a lambda schedule): dropped on load."""

    def __init__(self, type_name: str):
        self.type_name = type_name


def _contains_unsupported(value: Any) -> bool:
    if isinstance(value, _Unsupported):
        return True
    if isinstance(value, dict):
        return any(_contains_unsupported(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_contains_unsupported(v) for v in value)
    return False


# --- reading a checkpoint's zip -----------------------------------------------------------------------

def _read_archive(source: pathlib.Path | io.IOBase) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The ``data`` JSON and the ``ngrl.json`` entries (None when absent) of a checkpoint."""
    name = source if isinstance(source, pathlib.Path) else "the checkpoint file object"
    try:
        with zipfile.ZipFile(source) as archive:
            data = json.loads(archive.read("data").decode())
            names = set(archive.namelist())
            safe = json.loads(archive.read(FORMAT_FILE).decode()) if FORMAT_FILE in names else None
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, json.JSONDecodeError, OSError, EOFError) as error:
        raise CheckpointError(
            f"{name} is not a readable ngrl checkpoint ({type(error).__name__}: {error}). The file is corrupt, "
            "truncated or of another kind: point to the .zip written by `train.py train` (or `model.save`), or re-train."
        ) from error
    finally:
        if not isinstance(source, pathlib.Path):
            source.seek(0)
    if not isinstance(data, dict) or (safe is not None and not isinstance(safe, dict)):
        raise CheckpointError(f"{name} is not an ngrl checkpoint (its data is not a JSON object)")
    return data, safe


def checkpoint_data(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON ``data`` of a checkpoint (no unpickling); :class:`CheckpointError` when it is not readable."""
    return _read_archive(pathlib.Path(path))[0]


def _safe_objects(data: dict[str, Any], safe: dict[str, Any], name: Any) -> dict[str, Any]:
    """Replacements for every pickled field of ``data``: decoded from ``ngrl.json``; None where it has none."""
    if safe.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{name} has checkpoint format {safe.get('format')!r}; this ngrl reads format {FORMAT_VERSION}")
    entries = safe.get("entries", {})
    replacements: dict[str, Any] = {}
    for key, value in data.items():
        if not (isinstance(value, dict) and ":serialized:" in value):
            continue
        decoded = _decode(entries[key], key) if key in entries else None
        if _contains_unsupported(decoded):
            if key == "learning_rate" and "learning_rate_at_save" in safe:
                warnings.warn(
                    f"{name}: the learning-rate schedule was a custom callable, which the safe format does not store; "
                    f"it continues at its last value {safe['learning_rate_at_save']:.3g} "
                    "(pass custom_objects={'learning_rate': ...} to load to set another)"
                )
                decoded = float(safe["learning_rate_at_save"])
            elif key in ("policy_class", "observation_space", "action_space", "policy_kwargs"):
                raise CheckpointError(f"{name}: its {key} could not be stored safely, so the checkpoint cannot be rebuilt")
            else:
                decoded = None
        replacements[key] = decoded
    return replacements


def _check_finite(module_states: Iterable[tuple[str, dict[str, Any]]]) -> None:
    for owner, state in module_states:
        for key, tensor in state.items():
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise NonFiniteParametersError(
                    f"refusing to save: {owner}'s parameter {key} holds NaN or inf. Training diverged (a too large step, "
                    "NaN rewards or observations); the previous checkpoint, if any, is kept."
                )


def _remove_stale_temporaries(final: pathlib.Path) -> None:
    """Delete temporary files of ``final`` left by saves that were killed (their process is gone)."""
    for stale in final.parent.glob(f".{final.name}.*.tmp*"):
        pid = stale.name[len(final.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
                continue  # that process is alive: perhaps saving right now
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        elif pid.isdigit():
            pass  # our own leftover
        else:
            continue
        try:
            stale.unlink()
        except OSError:
            pass


def atomic_write(final: pathlib.Path, write: Callable[[pathlib.Path], None]) -> None:
    """Write ``final`` through a temporary file in the same folder, renamed into place: a crash leaves the old file."""
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(final)
    temporary = final.with_name(f".{final.name}.{os.getpid()}.tmp{final.suffix}")
    try:
        write(temporary)
        os.replace(temporary, final)
    finally:
        if temporary.exists():
            temporary.unlink()


class CheckpointMixin:
    """Atomic, code-free ``save`` and a ``load`` that never unpickles and explains a bad checkpoint.

    Put it first among the bases of an SB3 algorithm: ``class NPG(CheckpointMixin, OnPolicyAlgorithm)``.
    Each such class and the policies it names (``policy_aliases``) join the allow-list of classes a
    checkpoint may refer to, and each of its ``update_methods`` it defines (``train``, the meta-learners'
    ``_meta_iteration``) is guarded: an update that leaves a NaN or inf in the policy's parameters puts
    back the parameters from before it and raises :class:`NonFiniteParametersError`, so that no
    non-finite model is ever trained on or saved.
    """

    #: the methods that update the parameters: each is checked for non-finite results (see ``_finite_guard``)
    update_methods: tuple[str, ...] = ("train", "_meta_iteration")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register_safe_class(cls, *getattr(cls, "policy_aliases", {}).values())
        for name in cls.update_methods:
            method = vars(cls).get(name)
            if callable(method) and not getattr(method, "__ngrl_guarded__", False):
                setattr(cls, name, _finite_guard(method))

    def save_replay_buffer(self, path: str | os.PathLike) -> None:
        """Write the replay buffer's arrays to ``path`` (.npz; plain arrays, atomically) — not a pickle as in SB3."""
        buffer = getattr(self, "replay_buffer", None)
        if buffer is None:
            raise ValueError(f"{type(self).__name__} has no replay buffer to save")
        arrays: dict[str, np.ndarray] = {"pos": np.asarray(buffer.pos), "full": np.asarray(buffer.full), "format": np.asarray(FORMAT_VERSION)}
        for field in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
            value = getattr(buffer, field, None)
            if isinstance(value, dict):
                arrays.update({f"{field}/{k}": v for k, v in value.items()})
            elif value is not None:
                arrays[field] = value

        def write(target: pathlib.Path) -> None:
            with open(target, "wb") as f:
                np.savez(f, **arrays)

        atomic_write(pathlib.Path(path), write)

    def load_replay_buffer(self, path: str | os.PathLike, truncate_last_traj: bool = True) -> None:
        """Fill the replay buffer from a file written by :meth:`save_replay_buffer` (no unpickling)."""
        buffer = getattr(self, "replay_buffer", None)
        if buffer is None:
            raise ValueError(f"{type(self).__name__} has no replay buffer to load into")
        try:
            with np.load(path, allow_pickle=False) as saved:
                arrays = {key: saved[key] for key in saved.files}
            for field in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
                target = getattr(buffer, field, None)
                if isinstance(target, dict):
                    for k in target:
                        _copy_into(target[k], arrays[f"{field}/{k}"], f"{field}/{k}")
                elif target is not None and field in arrays:
                    _copy_into(target, arrays[field], field)
            buffer.pos, buffer.full = int(arrays["pos"]), bool(arrays["full"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            raise CheckpointError(f"{path} is not a replay buffer this agent can take ({type(error).__name__}: {error})") from error

    def _safe_entries(self, data: dict[str, Any]) -> dict[str, Any]:
        """``ngrl.json``'s content: plain-data copies of the fields SB3 pickled into ``data``."""
        entries = {}
        for key, value in data.items():
            if isinstance(value, dict) and ":serialized:" in value and key in self.__dict__:
                entries[key] = _encode(self.__dict__[key])
        safe: dict[str, Any] = {"format": FORMAT_VERSION, "algorithm": type(self).__name__, "entries": entries}
        if callable(getattr(self, "lr_schedule", None)):
            safe["learning_rate_at_save"] = float(self.lr_schedule(getattr(self, "_current_progress_remaining", 1.0)))
        return safe

    def save(self, path: str | pathlib.Path | io.BufferedIOBase, exclude=None, include=None) -> None:  # type: ignore[override]
        """Save to ``path`` (a '.zip' is added when it has no suffix), atomically: a crash leaves the old file.

        Refuses (:class:`NonFiniteParametersError`) parameters holding NaN or inf, keeping the old file.
        """
        self._ngrl_algorithm = type(self).__name__
        state_names, _ = self._get_torch_save_params()  # type: ignore[attr-defined]
        _check_finite((name, _state_dict_of(self, name)) for name in state_names if "optimizer" not in name)

        def write(target: Any) -> None:
            buffer = io.BytesIO()
            super(CheckpointMixin, self).save(buffer, exclude=exclude, include=include)  # type: ignore[misc]
            buffer.seek(0)
            with zipfile.ZipFile(buffer) as archive:
                data = json.loads(archive.read("data").decode())
            with zipfile.ZipFile(buffer, mode="a") as archive:
                archive.writestr(FORMAT_FILE, json.dumps(self._safe_entries(data)))
            if isinstance(target, pathlib.Path):
                target.write_bytes(buffer.getvalue())
            else:
                target.write(buffer.getvalue())

        if not isinstance(path, (str, os.PathLike)):
            write(path)
            return
        atomic_write(zip_path(path), write)

    @classmethod
    def load(  # type: ignore[override]
        cls: type[SelfCheckpoint],
        path: str | os.PathLike | io.BufferedIOBase,
        env: Any = None,
        device: torch.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        allow_unsafe_pickle: bool = False,
        **kwargs: Any,
    ) -> SelfCheckpoint:
        """Load a checkpoint saved by this algorithm, without unpickling anything.

        :param allow_unsafe_pickle: also load checkpoints in SB3's pickle format (older ngrl, SB3 itself):
            only for files whose source you trust, since unpickling can run arbitrary code
        :raises CheckpointError: missing, corrupt, unsafe, of another algorithm, or not fitting ``env``
        """
        if isinstance(path, (str, os.PathLike)):
            found = next((p for p in (pathlib.Path(path), zip_path(path)) if p.is_file()), None)
            if found is None:
                raise CheckpointError(f"no checkpoint at {path}: check the path (train.py prints it after training)")
            source: pathlib.Path | io.IOBase = found
        elif hasattr(path, "read") and hasattr(path, "seek"):
            source = path  # type: ignore[assignment]
        else:
            raise CheckpointError(f"load takes a path or a binary file object, got {type(path).__name__}")
        name = source if isinstance(source, pathlib.Path) else "the checkpoint file object"
        data, safe = _read_archive(source)
        saved_by = data.get("_ngrl_algorithm")
        if saved_by != cls.__name__:
            origin = f"by {saved_by}" if isinstance(saved_by, str) else "by something other than ngrl (no ngrl algorithm recorded)"
            raise CheckpointError(
                f"{name} was saved {origin}, not by {cls.__name__}: load it with the algorithm that wrote it"
                + (f" (--algo {saved_by.lower()})" if isinstance(saved_by, str) else "")
            )
        if safe is None:
            if not allow_unsafe_pickle:
                raise CheckpointError(f"{name} is in SB3's pickle format (written by an older ngrl or by SB3). {UNSAFE_HINT}")
            replacements: dict[str, Any] = {}
        else:
            replacements = _safe_objects(data, safe, name)
        replacements.update(custom_objects or {})
        try:
            return super().load(source, env=env, device=device, custom_objects=replacements, **kwargs)  # type: ignore[misc]
        except CheckpointError:
            raise
        except pickle.UnpicklingError as error:
            raise CheckpointError(
                f"{name} holds tensor files with objects that are not plain tensors; ngrl reads tensors with "
                f"torch.load(weights_only=True) and refuses anything else ({str(error).splitlines()[-1].strip()[:200]})"
            ) from error
        except ValueError as error:
            if "spaces do not match" in str(error):
                raise CheckpointError(
                    f"the checkpoint does not fit this environment: {error}. Evaluate it on the env it was trained on."
                ) from error
            raise CheckpointError(f"could not load {name}: {error}") from error
        except (KeyError, RuntimeError, EOFError, TypeError, AttributeError, zipfile.BadZipFile) as error:
            raise CheckpointError(
                f"{name} is corrupt or incompatible ({type(error).__name__}: {error}); re-train or use another file"
            ) from error


def _copy_into(target: np.ndarray, source: np.ndarray, name: str) -> None:
    if target.shape != source.shape:
        raise ValueError(f"the saved {name} has shape {source.shape}, this agent's buffer {target.shape} (buffer_size or spaces differ)")
    target[...] = source


def _state_dict_of(model: Any, dotted: str) -> dict[str, Any]:
    obj = model
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj.state_dict()


# --- normalisation statistics as plain arrays ---------------------------------------------------------

_NORMALIZATION_SCALARS = ("clip_obs", "clip_reward", "gamma", "epsilon", "norm_obs", "norm_reward")


def save_normalization(venv: VecNormalize, path: str | os.PathLike) -> pathlib.Path:
    """Write ``venv``'s running statistics and settings to ``path`` (.npz, plain arrays, atomically)."""
    arrays: dict[str, np.ndarray] = {name: np.asarray(getattr(venv, name)) for name in _NORMALIZATION_SCALARS}
    arrays["format"] = np.asarray(FORMAT_VERSION)
    obs_rms = venv.obs_rms if isinstance(venv.obs_rms, dict) else {"": venv.obs_rms}
    arrays["obs_keys"] = np.asarray(sorted(obs_rms), dtype=str)
    for key, rms in obs_rms.items():
        for field in ("mean", "var", "count"):
            arrays[f"obs_rms/{key}/{field}"] = np.asarray(getattr(rms, field))
    for field in ("mean", "var", "count"):
        arrays[f"ret_rms/{field}"] = np.asarray(getattr(venv.ret_rms, field))
    if venv.norm_obs_keys is not None:
        arrays["norm_obs_keys"] = np.asarray(venv.norm_obs_keys, dtype=str)
    final = pathlib.Path(path)

    def write(target: pathlib.Path) -> None:
        with open(target, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(final, write)
    return final


def load_normalization(path: str | os.PathLike, venv: VecEnv, training: bool = False) -> VecNormalize:
    """``venv`` wrapped in a ``VecNormalize`` holding the statistics saved at ``path`` (no unpickling).

    :param training: keep updating the statistics (resuming training) or freeze them (evaluation;
        rewards are then left unnormalised, as returns are reported in the env's own units)
    """
    path = pathlib.Path(path)
    try:
        with np.load(path, allow_pickle=False) as saved:
            arrays = {key: saved[key] for key in saved.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise CheckpointError(
            f"{path} is not readable normalisation statistics ({type(error).__name__}: {error}); re-train, or pass --no-norm "
            "to evaluate without normalisation"
        ) from error
    try:
        if int(arrays["format"]) != FORMAT_VERSION:
            raise CheckpointError(f"{path} has statistics format {int(arrays['format'])}; this ngrl reads {FORMAT_VERSION}")
        keys = [str(k) for k in arrays["obs_keys"]]
        norm_obs_keys = [str(k) for k in arrays["norm_obs_keys"]] if "norm_obs_keys" in arrays else None
        normalized = VecNormalize(
            venv,
            training=training,
            norm_obs=bool(arrays["norm_obs"]),
            norm_reward=bool(arrays["norm_reward"]) and training,
            clip_obs=float(arrays["clip_obs"]),
            clip_reward=float(arrays["clip_reward"]),
            gamma=float(arrays["gamma"]),
            epsilon=float(arrays["epsilon"]),
            norm_obs_keys=norm_obs_keys,
        )

        def rms(prefix: str, like: RunningMeanStd) -> RunningMeanStd:
            stats = RunningMeanStd(shape=like.mean.shape)
            stats.mean = arrays[f"{prefix}/mean"].astype(np.float64)
            stats.var = arrays[f"{prefix}/var"].astype(np.float64)
            stats.count = float(arrays[f"{prefix}/count"])
            if stats.mean.shape != like.mean.shape:
                raise CheckpointError(
                    f"{path} holds statistics of shape {stats.mean.shape} for observations of shape {like.mean.shape}: "
                    "they belong to another environment"
                )
            return stats

        if normalized.norm_obs:
            if isinstance(normalized.obs_rms, dict):
                if sorted(normalized.obs_rms) != keys:
                    raise CheckpointError(f"{path} normalises observation keys {keys}, this env has {sorted(normalized.obs_rms)}")
                normalized.obs_rms = {key: rms(f"obs_rms/{key}", normalized.obs_rms[key]) for key in keys}
            else:
                normalized.obs_rms = rms("obs_rms/", normalized.obs_rms)
        normalized.ret_rms = rms("ret_rms", normalized.ret_rms)
    except KeyError as error:
        raise CheckpointError(f"{path} lacks the statistics entry {error}: it is not a file written by ngrl") from error
    return normalized
