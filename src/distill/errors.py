"""Exceptions whose message is one line that names the file, field or key at fault and what to do.

``python -m distill`` prints these as ``distill: error: <message>`` without a traceback:

* :class:`RecipeError` (exit status 2): the recipe could be parsed but does not describe a runnable
  setup (missing weights, bad argument values, a student and teacher that read different token ids);
* :class:`TrainingError` (exit status 1): training stopped on purpose because continuing would
  waste the run (non-finite loss or gradients).
"""

from __future__ import annotations

__all__ = ["RecipeError", "TrainingError"]


class RecipeError(RuntimeError):
    """A recipe could be parsed but not built or run (missing weights, bad argument values...)."""


class TrainingError(RuntimeError):
    """Training was stopped by a guard; the message says where (epoch, step, batch) and what to do."""
