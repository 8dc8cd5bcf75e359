"""Learning-rate schedules for recipes (stepped once per optimizer step).

``WarmupCosineLR`` is what contrastive image-text training usually runs (CLIP, open_clip, BLIP): a
linear warm-up, then a cosine decay. Its length defaults to the run's: with ``total_steps: null`` the
``DistillationModule`` sets it from ``trainer.estimated_stepping_batches`` (``max_steps``, or
``max_epochs`` x batches per epoch), so one recipe decays correctly under any ``--trainer.max_steps``.

    lr_scheduler:
      class_path: distill.schedules.WarmupCosineLR
      init_args: {warmup_steps: 20, min_lr_ratio: 0.0}
"""

from __future__ import annotations

import math
import warnings

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["WarmupCosineLR", "resolve_total_steps"]


class WarmupCosineLR(LRScheduler):
    """``lr(t) = base_lr * f(t)`` with, for warm-up ``W`` and length ``T``:

    * ``f(t) = (t + 1) / (W + 1)`` for ``t < W`` (linear warm-up);
    * ``f(t) = r + (1 - r) * (1 + cos(pi * p)) / 2`` with ``p = min(1, (t - W) / (T - W))`` after it,
      ``r = min_lr_ratio`` (cosine decay from ``base_lr`` to ``r * base_lr`` at step ``T``).

    With ``total_steps=None`` and no trainer to fill it in, the rate stays at ``base_lr`` after warm-up.
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int = 0, total_steps: int | None = None,
                 min_lr_ratio: float = 0.0, last_epoch: int = -1) -> None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if total_steps is not None and total_steps <= warmup_steps:
            raise ValueError(f"total_steps ({total_steps}) must be larger than warmup_steps ({warmup_steps})")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.warmup_steps = int(warmup_steps)
        self.total_steps = None if total_steps is None else int(total_steps)
        self.min_lr_ratio = float(min_lr_ratio)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """``f(step)`` of the class docstring."""
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if self.total_steps is None:
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def get_lr(self) -> list[float]:  # type: ignore[override]
        scale = self.factor(self.last_epoch)
        return [base_lr * scale for base_lr in self.base_lrs]


def resolve_total_steps(scheduler: object, total_steps: int | float) -> None:
    """Give a scheduler with ``total_steps=None`` the run's length (no-op for other schedulers).

    A run not longer than the warm-up (``fast_dev_run``, a smoke test) keeps a warm-up of
    ``total_steps - 1`` steps, with a warning.
    """
    if getattr(scheduler, "total_steps", 0) is not None:
        return
    if not math.isfinite(total_steps) or total_steps < 1:
        raise ValueError(
            f"{type(scheduler).__name__}: the run's length ({total_steps} optimizer steps) is unknown; set "
            "trainer.max_steps, or lr_scheduler.init_args.total_steps"
        )
    total = int(total_steps)
    warmup = getattr(scheduler, "warmup_steps", 0)
    if total <= warmup:
        warnings.warn(f"{type(scheduler).__name__}: the run has {total} optimizer steps, not more than "
                      f"warmup_steps={warmup}; warming up over {total - 1} steps instead", stacklevel=2)
        scheduler.warmup_steps = total - 1  # type: ignore[attr-defined]
        rates = scheduler.get_lr()  # type: ignore[attr-defined]
        for group, rate in zip(scheduler.optimizer.param_groups, rates):  # type: ignore[attr-defined]
            group["lr"] = rate
        scheduler._last_lr = rates  # type: ignore[attr-defined]
    scheduler.total_steps = total  # type: ignore[attr-defined]
