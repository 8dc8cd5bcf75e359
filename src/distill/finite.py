"""Weights checked for NaN and infinity where they are read: a file whose hash matches can hold the weights of a
run that diverged."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["non_finite_tensor", "refuse_non_finite"]


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


def refuse_non_finite(tensors: Mapping[str, Any], option: str, source: str | os.PathLike[str], fix: str) -> None:
    """One line naming ``option``, ``source`` and the tensor when ``tensors`` hold NaN or an infinity."""
    from distill.errors import InputError

    name = non_finite_tensor(tensors)
    if name is not None:
        raise InputError(f"{option} '{source}': tensor '{name}' holds NaN or infinite values (the weights of a run "
                         f"that diverged, or an edited file): {fix}")
