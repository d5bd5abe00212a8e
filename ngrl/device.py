"""Device selection."""

from __future__ import annotations

import torch

__all__ = ["get_device"]


def get_device(device: torch.device | str = "auto") -> torch.device:
    """Resolve ``"auto"`` to CUDA when available (else CPU); check that an explicit CUDA device exists."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for but CUDA is not available here; use 'cpu' or 'auto'")
    return resolved
