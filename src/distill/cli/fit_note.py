"""``fit`` that trains no batch says so: resuming a run that already reached ``max_epochs`` / ``max_steps`` (or
``limit_train_batches: 0``) otherwise exits 0 having done nothing, without a word."""

from __future__ import annotations

from typing import Any

import lightning as L

__all__ = ["BatchCounter", "nothing_trained_note"]


class BatchCounter(L.Callback):
    """Counts the training batches this process runs (a resumed run's earlier batches are not counted)."""

    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self.batches += 1


def nothing_trained_note(trainer: L.Trainer, counter: BatchCounter, ckpt_path: str | None) -> str | None:
    """The line to print when ``fit`` ran no training batch, or ``None``."""
    if counter.batches or trainer.interrupted or trainer.fast_dev_run:
        return None
    resumed = f", resumed from '{ckpt_path}'" if ckpt_path else ""
    return (f"distill: note: fit trained no batch: the run is at epoch {trainer.current_epoch}, step "
            f"{trainer.global_step}{resumed}, with trainer.max_epochs={trainer.max_epochs}, max_steps="
            f"{trainer.max_steps}, limit_train_batches={trainer.limit_train_batches}; raise them to train further")
