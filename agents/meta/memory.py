"""Measure the memory autograd graphs hold: the peak bytes of tensors saved for backward."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["SavedTensorMeter"]


class _Saved:
    """A tensor kept by an autograd graph; tells the meter when the graph lets go of it."""

    __slots__ = ("tensor", "key", "meter")

    def __init__(self, tensor: Tensor, meter: "SavedTensorMeter") -> None:
        self.tensor, self.meter = tensor, meter
        self.key = meter._acquire(tensor)

    def __del__(self) -> None:
        self.meter._release(self.key)


class SavedTensorMeter:
    """Context manager: live and peak bytes of the distinct storages autograd saves for backward.

    Every tensor a graph saves passes through ``torch.autograd.graph.saved_tensors_hooks``; it is
    counted (once per storage) while some graph holds it. Works on any device; on CUDA
    ``torch.cuda.max_memory_allocated`` gives the allocator's view as well::

        with SavedTensorMeter() as meter:
            loss = model(x).sum(); loss.backward()
        meter.peak_bytes
    """

    def __init__(self) -> None:
        self.live_bytes = 0
        self.peak_bytes = 0
        self.saved_tensors = 0
        self._storages: dict[tuple[Any, int], list[int]] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _acquire(self, tensor: Tensor) -> tuple[Any, int]:
        storage = tensor.untyped_storage()
        key = (tensor.device, storage.data_ptr())
        entry = self._storages.get(key)
        if entry is None:
            self._storages[key] = [1, storage.nbytes()]
            self.live_bytes += storage.nbytes()
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        else:
            entry[0] += 1
        self.saved_tensors += 1
        return key

    def _release(self, key: tuple[Any, int]) -> None:
        entry = self._storages.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            del self._storages[key]
            self.live_bytes -= entry[1]

    def _pack(self, tensor: Tensor) -> _Saved:
        return _Saved(tensor, self)

    @staticmethod
    def _unpack(saved: _Saved) -> Tensor:
        return saved.tensor

    def __enter__(self) -> "SavedTensorMeter":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)
