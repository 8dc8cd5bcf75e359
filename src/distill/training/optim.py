"""What ``configure_optimizers`` returns, and the run length schedulers resolve at train start."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from distill.training.schedules import resolve_total_steps

__all__ = ["default_optimizer", "optimizer_config", "resolve_run_length"]


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    """AdamW, learning rate 1e-3, weight decay 0.01 (a recipe's ``optimizer`` replaces it)."""
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)


def optimizer_config(optimizer_factory: OptimizerCallable, scheduler_factory: LRSchedulerCallable | None,
                     params: Any) -> Any:
    """The optimizer over ``params``, and its scheduler stepped per batch."""
    optimizer = optimizer_factory(params)
    if scheduler_factory is None:
        return optimizer
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler_factory(optimizer), "interval": "step"}}


def resolve_run_length(trainer: L.Trainer) -> None:
    """At train start, give schedulers built with ``total_steps=None`` the run's optimizer steps.

    Called from ``on_train_start``, after the data is set up and a resumed run's scheduler state is
    restored (which already holds its length), so it reads nothing and draws no random numbers.
    """
    for config in trainer.lr_scheduler_configs:
        resolve_total_steps(config.scheduler, trainer.estimated_stepping_batches)
