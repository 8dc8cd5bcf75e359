"""SparseCollapseGuard: stop a sparse student whose vectors on one side stay all zero."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from distill.errors import TrainingError
from distill.training.checkpoint import latest_checkpoint

__all__ = ["SparseCollapseError", "SparseCollapseGuard"]


class SparseCollapseError(TrainingError):
    """A sparse student's vectors on one side stayed all zero under ``SparseCollapseGuard``."""


class SparseCollapseGuard(Callback):
    """Stops when a sparse student's vectors on one side are all zero for ``patience`` steps in a row.

    Reads the ``train/a_nnz`` / ``train/b_nnz`` values that :class:`~distill.module.DistillationModule`
    logs for students with ``embedding_stats`` (the mean non-zeros per vector of the batch); does
    nothing for other students. With ``log(1 + relu)`` weights an all-zero side is permanent: every
    score is tied and ``relu`` passes no gradient. A randomly initialised sparse student collapses this
    way under a distillation loss over mined hard negatives (the loss falls fastest by flattening the
    scores), so the error says to start from a trained sparse student instead. Raises
    :class:`SparseCollapseError` (``distill: error: ...``, exit status 1). Reads one value per side
    back from the device per step.
    """

    def __init__(self, patience: int = 5) -> None:
        if patience < 1:
            raise ValueError(f"SparseCollapseGuard patience must be >= 1, got {patience}")
        self.patience = patience
        self._zero_steps = {"a": 0, "b": 0}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        for side in self._zero_steps:
            nnz = trainer.callback_metrics.get(f"train/{side}_nnz")
            if nnz is None:
                continue
            self._zero_steps[side] = self._zero_steps[side] + 1 if float(nnz) == 0.0 else 0
            if self._zero_steps[side] >= self.patience:
                checkpoint = latest_checkpoint(trainer)
                saved = f"; the last checkpoint is '{checkpoint}'" if checkpoint else ""
                raise SparseCollapseError(
                    f"SparseCollapseGuard: the sparse student's side-{side} vectors have had no non-zero weight for "
                    f"{self._zero_steps[side]} steps (global step {trainer.global_step}): every score is tied and no "
                    "gradient reaches them any more. A randomly initialised sparse student collapses like this under "
                    "distillation losses: start from a sparse student trained with InfoNCE "
                    "(model.init_args.student_init=<its checkpoint>, e.g. a run of "
                    "configs/demo/shapes-sparse-infonce.yaml); a trained one that collapses needs a lower learning "
                    f"rate or FLOPS weight{saved}"
                )
