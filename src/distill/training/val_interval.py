"""A validation interval in batches longer than the data's epoch becomes the epoch.

Recipes written for large data validate every N training batches (``trainer.val_check_interval: 2000`` in the
MS MARCO recipe). Lightning refuses such an interval on data with fewer batches per epoch, after the models
have loaded; here it becomes "at the end of each epoch", with one line saying so.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["fit_validation_interval", "train_batches"]

logger = logging.getLogger("distill.training")


def train_batches(trainer: Any) -> int | None:
    """Training batches per epoch, as ``limit_train_batches`` cuts them; ``None`` when the loader has no length."""
    make = getattr(trainer.datamodule, "train_dataloader", None)
    if not callable(make):
        return None
    try:
        batches = len(make())
    except (TypeError, NotImplementedError):
        return None
    limit = trainer.limit_train_batches
    if isinstance(limit, int):
        return min(batches, limit)
    return int(batches * limit) if limit is not None else batches


def fit_validation_interval(trainer: Any) -> None:
    """Set ``trainer.val_check_interval`` to the epoch's batches when it is a batch count larger than them."""
    interval = trainer.val_check_interval
    if isinstance(interval, bool) or not isinstance(interval, int) or trainer.fast_dev_run or \
            trainer.check_val_every_n_epoch is None:
        return
    batches = train_batches(trainer)
    if batches is None or batches < 1 or interval <= batches:
        return
    trainer.val_check_interval = 1.0
    if trainer.is_global_zero:
        logger.info("trainer.val_check_interval %d is longer than an epoch of this data (%d training batches): "
                    "validating at the end of each epoch instead", interval, batches)
