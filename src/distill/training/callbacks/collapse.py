"""ContrastiveCollapseGuard: stop a run whose InfoNCE loss sits at ln(B), where every score ties."""

from __future__ import annotations

import math
from collections import deque
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
    """Stops when the InfoNCE loss, averaged over the last ``patience`` steps, is at or above
    ``(1 - tolerance) * ln(B)``, ``B`` the global batch (with several InfoNCE terms: the lowest each step).

    A student whose embeddings have collapsed scores every pair of a batch alike: InfoNCE is ``ln(B)``
    and no gradient separates anything any more. Measured on the shapes grid split: batches grown from
    cached hard candidates (``CachedCandidatesDataModule(batching: grouped)``) contain only near-duplicates,
    nothing in the loss keeps different neighbourhoods apart, and within 40 steps at lr 1e-3 the cosine
    between unrelated images rises from 0.09 to 0.87 while InfoNCE settles at ln(64), noisily (3.9 to 4.2,
    hence a window mean; the temperature does not move) (docs/benchmarks.md). A fresh student leaves
    ``ln(B)`` within a few dozen steps, so the default window (50 steps) does not stop a healthy start.
    Raises :class:`ContrastiveCollapseError` (``distill: error: ...``, exit status 1) naming the step and
    the last checkpoint; does nothing for modules without an InfoNCE term. Reads one value per InfoNCE
    term back from the device per step.

    Args:
        patience: steps in the window.
        tolerance: how far below ``ln(B)`` the window mean may be and still count as collapsed, as a share
            of ``ln(B)`` (0.05 at B = 64: 0.21 nats).
    """

    def __init__(self, patience: int = 50, tolerance: float = 0.05) -> None:
        if patience < 1:
            raise ValueError(f"ContrastiveCollapseGuard patience must be >= 1, got {patience}")
        if not 0.0 < tolerance < 1.0:
            raise ValueError(f"ContrastiveCollapseGuard tolerance must be in (0, 1), got {tolerance}")
        self.patience = patience
        self.tolerance = tolerance
        self._window: deque[float] = deque(maxlen=patience)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._window.clear()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        names = [name for name, loss in getattr(pl_module, "losses", {}).items() if isinstance(loss, InfoNCE)]
        values = [trainer.callback_metrics.get(f"train/loss/{name}") for name in names]
        ids = batch.get("a_id") if isinstance(batch, Mapping) else None
        if not names or any(value is None for value in values) or not isinstance(ids, Tensor) or ids.numel() < 2:
            return
        batch_size = int(ids.numel()) * trainer.world_size
        self._window.append(min(float(value) for value in values))
        mean = sum(self._window) / len(self._window)
        if len(self._window) == self.patience and mean >= uniform_loss(batch_size) * (1.0 - self.tolerance):
            checkpoint = latest_checkpoint(trainer)
            saved = f"; the last checkpoint is '{checkpoint}'" if checkpoint else ""
            temperature = 1.0 / float(pl_module.student.logit_scale.detach()) if hasattr(pl_module, "student") else None
            shown = f", student temperature {temperature:.3g}" if temperature is not None else ""
            raise ContrastiveCollapseError(
                f"ContrastiveCollapseGuard: train/loss/{names[0]} has averaged {mean:.3f} over the last "
                f"{self.patience} steps, at ln({batch_size}) = {uniform_loss(batch_size):.3f} (global step "
                f"{trainer.global_step}{shown}): the student scores every pair of a batch alike, its embeddings "
                "have collapsed. Batches of near-duplicates do this: with a teacher cache use random batches "
                "(data.init_args.batching: random, the default); otherwise lower the learning rate, or start from "
                f"a trained student (model.init_args.student_init){saved}"
            )
