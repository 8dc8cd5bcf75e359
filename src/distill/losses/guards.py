"""Cheap input checks shared by the loss functions.

Every check that needs to read a value back from the device (``check_finite``,
the warnings, the validity-mask checks) is skipped while checks are disabled with
:func:`set_checks_enabled`, so that a tuned training run can avoid the host syncs.
Argument validators (``require_*``) and shape checks never sync and always run.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "NonFiniteError",
    "checks_enabled",
    "set_checks_enabled",
    "check_finite",
    "check_shape",
    "check_same_shape",
    "check_shapes",
    "require_positive",
    "require_non_negative",
    "require_int_at_least",
    "require_choice",
    "warn_if_collapsed",
    "warn_if_scale_mismatch",
]

_CHECKS_ENABLED = True


class NonFiniteError(ValueError):
    """A loss input holds NaN or inf (raised by :func:`check_finite`; see ``distill.callbacks.NonFiniteGuard``)."""


def checks_enabled() -> bool:
    """Whether the value checks (finite inputs, collapse/scale warnings) run."""
    return _CHECKS_ENABLED


def set_checks_enabled(enabled: bool) -> None:
    """Globally enable or disable the value checks (each costs one host sync)."""
    global _CHECKS_ENABLED
    _CHECKS_ENABLED = bool(enabled)


# --------------------------------------------------------------------------- values


def check_finite(name: str, tensor: Tensor) -> None:
    """Raise :class:`NonFiniteError` (a ``ValueError``) naming ``name`` if ``tensor`` holds NaN or +-inf values."""
    if not _CHECKS_ENABLED or not tensor.is_floating_point():
        return
    t = tensor.detach()
    if bool(torch.isfinite(t).all()):  # one host sync in the common case
        return
    n_nan, n_inf = (int(v) for v in torch.stack([torch.isnan(t).sum(), torch.isinf(t).sum()]).tolist())
    if n_nan or n_inf:
        raise NonFiniteError(
            f"{name} contains non-finite values: {n_nan} NaN and {n_inf} inf "
            f"out of {t.numel()} entries (shape {tuple(t.shape)})"
        )


# --------------------------------------------------------------------------- shapes


def _fmt(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"


def check_shape(name: str, tensor: Tensor, expected: Sequence[int | None]) -> None:
    """Raise ``ValueError`` unless ``tensor.shape`` matches ``expected`` (``None`` = any size)."""
    got = tuple(tensor.shape)
    ok = len(got) == len(expected) and all(e is None or e == g for e, g in zip(expected, got))
    if not ok:
        raise ValueError(f"{name} must have shape {_fmt(expected)}, got {_fmt(got)}")


def check_same_shape(**tensors: Tensor) -> None:
    """Raise ``ValueError`` unless all keyword tensors share one shape."""
    items = list(tensors.items())
    if not items:
        return
    ref_name, ref = items[0]
    for name, t in items[1:]:
        if tuple(t.shape) != tuple(ref.shape):
            raise ValueError(
                f"{name} must have the same shape as {ref_name} {_fmt(ref.shape)}, "
                f"got {_fmt(t.shape)}"
            )


def check_shapes(spec: dict[str, tuple[Tensor, Sequence[int | str | None]]]) -> dict[str, int]:
    """Check several tensors against symbolic shapes and return the bound sizes.

    ``spec`` maps a tensor name to ``(tensor, dims)`` where each dim is an ``int`` (exact),
    a ``str`` (a symbol that must take the same size everywhere it appears) or ``None``
    (any size). Example: ``check_shapes({"student": (s, ("N", "K")), "valid": (v, ("N", "K"))})``.
    """
    bound: dict[str, int] = {}
    for name, (tensor, dims) in spec.items():
        got = tuple(tensor.shape)
        ok = len(got) == len(dims)
        if ok:
            for d, g in zip(dims, got):
                if isinstance(d, str):
                    if bound.setdefault(d, g) != g:
                        ok = False
                elif d is not None and d != g:
                    ok = False
        if not ok:
            expected = "[" + ", ".join("*" if d is None else str(d) for d in dims) + "]"
            known = [f"{d}={bound[d]}" for d in dict.fromkeys(dims) if isinstance(d, str) and d in bound]
            where = f" ({', '.join(known)})" if known else ""
            raise ValueError(f"{name} must have shape {expected}{where}, got {_fmt(got)}")
    return bound


# --------------------------------------------------------------------------- arguments


def require_positive(name: str, value: float) -> float:
    """Validate ``value > 0`` (and finite); return it as ``float``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def require_non_negative(name: str, value: float) -> float:
    """Validate ``value >= 0`` (and finite); return it as ``float``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def require_int_at_least(name: str, value: int, minimum: int) -> int:
    """Validate that ``value`` is an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def require_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """Validate that ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


# --------------------------------------------------------------------------- warnings


def warn_if_collapsed(
    teacher_scores: Tensor,
    temperature: float,
    valid: Tensor | None = None,
    max_prob: float = 0.99,
) -> bool:
    """Warn when ``softmax(teacher_scores / temperature)`` is nearly one-hot on most rows.

    The check averages, over rows with at least two valid candidates, the largest
    probability of each row; a mean above ``max_prob`` means the soft targets carry almost
    no information beyond the arg-max (the teacher temperature is too low for the teacher's
    score scale). Returns ``True`` when it warned.
    """
    if not _CHECKS_ENABLED or teacher_scores.numel() == 0:
        return False
    t = teacher_scores.detach().float() / temperature
    mask = torch.ones_like(t, dtype=torch.bool) if valid is None else valid.bool()
    rows = mask.sum(-1) >= 2
    if not bool(rows.any()):
        return False
    probs = torch.softmax(t.masked_fill(~mask, float("-inf")), dim=-1)
    mean_max = float(probs[rows].max(-1).values.mean().item())
    if mean_max > max_prob:
        warnings.warn(
            f"teacher distribution collapsed: softmax(teacher / {temperature:g}) has a mean "
            f"max probability of {mean_max:.4f} over {int(rows.sum())} rows, so the soft "
            f"targets are nearly one-hot; raise the teacher temperature (currently "
            f"{temperature:g}) or check the teacher's score scale",
            UserWarning,
            stacklevel=2,
        )
        return True
    return False


def warn_if_scale_mismatch(
    student_logits: Tensor,
    teacher_scores: Tensor,
    valid: Tensor | None = None,
    max_ratio: float = 100.0,
) -> bool:
    """Warn when the spreads (max - min over valid entries) differ by more than ``max_ratio``.

    Returns ``True`` when it warned. Both ranges are reported in the message.
    """
    if not _CHECKS_ENABLED or student_logits.numel() == 0:
        return False
    s = student_logits.detach().float()
    t = teacher_scores.detach().float()
    if valid is not None:
        s = s[valid.bool()]
        t = t[valid.bool()]
    if s.numel() == 0:
        return False
    s_min, s_max = float(s.min().item()), float(s.max().item())
    t_min, t_max = float(t.min().item()), float(t.max().item())
    s_spread, t_spread = s_max - s_min, t_max - t_min
    tiny = 1e-12
    if s_spread <= tiny and t_spread <= tiny:
        return False
    ratio = max(s_spread, t_spread) / max(min(s_spread, t_spread), tiny)
    if ratio > max_ratio:
        warnings.warn(
            f"student/teacher scale mismatch: student logits span [{s_min:.4g}, {s_max:.4g}] "
            f"(spread {s_spread:.4g}) but teacher scores span [{t_min:.4g}, {t_max:.4g}] "
            f"(spread {t_spread:.4g}), a {ratio:.0f}x difference; adjust the temperatures or "
            f"the student scale so both are on a comparable scale",
            UserWarning,
            stacklevel=2,
        )
        return True
    return False
