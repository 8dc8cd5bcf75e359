"""Weights checked for NaN and infinity where they are read: a file whose hash matches can hold the weights of a
run that diverged."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["non_finite_tensor"]


def non_finite_tensor(tensors: Mapping[str, Any], prefix: str = "") -> str | None:
    """The name of the first floating-point tensor in ``tensors`` (nested dicts searched) holding NaN or an
    infinity, or ``None``. One ``isfinite`` pass per tensor, nothing else kept."""
    for name, value in tensors.items():
        if isinstance(value, Mapping):
            found = non_finite_tensor(value, f"{prefix}{name}.")
            if found is not None:
                return found
        elif isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() \
                and not bool(torch.isfinite(value).all()):
            return f"{prefix}{name}"
    return None
