"""ContrastiveCollapseGuard: stop a run whose InfoNCE loss sits at ln(B), where every score ties."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from distill.errors import TrainingError
from distill.losses import InfoNCE
from distill.training.checkpoint import latest_checkpoint

__all__ = ["ContrastiveCollapseError", "ContrastiveCollapseGuard", "uniform_loss"]


class ContrastiveCollapseError(TrainingError):
    """InfoNCE stayed at ln(B) under :class:`ContrastiveCollapseGuard`."""


def uniform_loss(batch_size: int) -> float:
    """InfoNCE of a student whose scores all tie over ``batch_size`` columns: ``ln(B)`` nats."""
    return math.log(batch_size)


class ContrastiveCollapseGuard(Callback):
    """Stops when every InfoNCE term of the module is within ``tolerance * ln(B)`` of ``ln(B)`` (or above)
    for ``patience`` steps in a row, ``B`` the global batch.

    A student whose scores no longer separate a batch's positives from its negatives has InfoNCE
    ``ln(B)`` exactly; once its learnable temperature has grown large enough, the gradients that reach
    the towers are scaled by the tiny logit scale and it stays there. Measured on the shapes grid split:
    batches grown from cached hard candidates (``CachedCandidatesDataModule(batching: grouped)``) collapse
    this way (docs/benchmarks.md). A fresh student leaves ``ln(B)`` within a few dozen steps, so the
    default patience (50 steps) does not stop a healthy start. Raises :class:`ContrastiveCollapseError`
    (``distill: error: ...``, exit status 1) naming the step and the last checkpoint; does nothing for
    modules without an InfoNCE term. Reads one value per InfoNCE term back from the device per step.

    Args:
        patience: steps in a row at ``ln(B)`` before stopping.
        tolerance: the band below ``ln(B)``, as a share of it (0.02 at B = 64: 0.083 nats).
    """

    def __init__(self, patience: int = 50, tolerance: float = 0.02) -> None:
        if patience < 1:
            raise ValueError(f"ContrastiveCollapseGuard patience must be >= 1, got {patience}")
        if not 0.0 < tolerance < 1.0:
            raise ValueError(f"ContrastiveCollapseGuard tolerance must be in (0, 1), got {tolerance}")
        self.patience = patience
        self.tolerance = tolerance
        self._flat_steps = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flat_steps = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        names = [name for name, loss in getattr(pl_module, "losses", {}).items() if isinstance(loss, InfoNCE)]
        values = [trainer.callback_metrics.get(f"train/loss/{name}") for name in names]
        ids = batch.get("a_id") if isinstance(batch, Mapping) else None
        if not names or any(value is None for value in values) or not isinstance(ids, Tensor) or ids.numel() < 2:
            return
        batch_size = int(ids.numel()) * trainer.world_size
        flat = uniform_loss(batch_size) * (1.0 - self.tolerance)
        self._flat_steps = self._flat_steps + 1 if all(float(value) >= flat for value in values) else 0
        if self._flat_steps >= self.patience:
            checkpoint = latest_checkpoint(trainer)
            saved = f"; the last checkpoint is '{checkpoint}'" if checkpoint else ""
            temperature = 1.0 / float(pl_module.student.logit_scale.detach()) if hasattr(pl_module, "student") else None
            shown = f", student temperature {temperature:.3g}" if temperature is not None else ""
            raise ContrastiveCollapseError(
                f"ContrastiveCollapseGuard: train/loss/{names[0]} has stayed at ln({batch_size}) = "
                f"{uniform_loss(batch_size):.3f} for {self._flat_steps} steps (global step {trainer.global_step}"
                f"{shown}): the student scores every pair of a batch alike and learns nothing more. With a teacher "
                "cache, use random batches (data.init_args.batching: random, the default) instead of grouped ones; "
                "otherwise lower the learning rate or fix the temperature (student.init_args.learn_temperature: "
                f"false){saved}"
            )
