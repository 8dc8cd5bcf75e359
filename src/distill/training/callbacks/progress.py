"""ProgressLog: one concise line per epoch (and every N steps) when the output is not a terminal, and a line at
least every 30 s through a validation or test's batches (``distill.progress.LineProgress``).

In a terminal Lightning's progress bar shows the loss and the step rate. In a log file or CI a bar is
noise, so ``python -m distill`` turns it off there and this callback prints instead, e.g.::

    distill: epoch 1/2 step 281/562 | loss 2.31 (infonce 1.92, kl 0.39) | val rsum 471.2 | 3m05s elapsed, ~3m05s left

The estimate is the measured time per step times the steps left (``trainer.estimated_stepping_batches``).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from distill.progress import LineProgress, format_seconds

__all__ = ["ProgressLog", "format_seconds"]

logger = logging.getLogger("distill.progress")


def _value(metrics: Mapping[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    try:
        value = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class ProgressLog(Callback):
    """Logs a line per epoch (with validation) and every ``every_n_steps`` steps when ``when`` allows.

    Args:
        every_n_steps: also a line every this many optimizer steps (0: per epoch only).
        when: ``"no_terminal"`` (default: only when stderr is not a terminal, where the progress bar
            shows instead), ``"always"`` or ``"never"``.
    """

    def __init__(self, every_n_steps: int = 50, when: str = "no_terminal") -> None:
        if every_n_steps < 0:
            raise ValueError(f"ProgressLog every_n_steps must be >= 0, got {every_n_steps}")
        if when not in ("no_terminal", "always", "never"):
            raise ValueError(f"ProgressLog when must be no_terminal, always or never, got {when!r}")
        self.every_n_steps = every_n_steps
        self.when = when
        self._start = 0.0
        self._start_step = 0
        self._pending: str | None = None  # a step line held back one batch (validation may repeat it)
        self._eval: LineProgress | None = None

    @property
    def active(self) -> bool:
        return self.when == "always" or (self.when == "no_terminal" and not sys.stderr.isatty())

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._start_step = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.active and self.every_n_steps and step and step % self.every_n_steps == 0:
            self._pending = self.line(trainer, with_validation=False)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._flush()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._pending = None  # the validation line says the same, with the metrics
            self._eval_start(trainer.num_val_batches, "validation")

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start(trainer.num_test_batches, "test")

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._eval is not None and not trainer.sanity_checking:
            self._eval.update(1)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._eval is not None:
            self._eval.update(1)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_end()

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_end()

    def _eval_start(self, batches: Any, stage: str) -> None:
        """A line every 30 s over an evaluation's batches (the split's queries and corpus, every loader)."""
        total = sum(batches) if isinstance(batches, (list, tuple)) else batches
        self._eval = LineProgress(total if math.isfinite(total) else 0, f"{stage} batches", "batches") \
            if self.active else None

    def _eval_end(self) -> None:
        """After the batches: say that the metrics (ranking the encoded split) follow, when the stage was long."""
        if self._eval is not None and self._eval.lines:
            logger.info("%s; computing the metrics", self._eval.line())
        self._eval = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.active and not trainer.sanity_checking and trainer.state.fn == "fit":
            logger.info(self.line(trainer, with_validation=True))

    def _flush(self) -> None:
        if self._pending is not None:
            logger.info(self._pending)
            self._pending = None

    def line(self, trainer: L.Trainer, with_validation: bool) -> str:
        """The progress line: epoch, step, loss and its terms, the main validation metric, time."""
        metrics = trainer.callback_metrics
        total = trainer.estimated_stepping_batches
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        parts = [f"epoch {trainer.current_epoch + 1}" + (f"/{epochs}" if epochs else "")
                 + f" step {trainer.global_step}" + (f"/{int(total)}" if math.isfinite(total) else "")]
        loss = _value(metrics, "train/loss")
        if loss is not None:
            terms = [(key.rsplit("/", 1)[-1], _value(metrics, key)) for key in sorted(metrics)
                     if key.startswith("train/loss/")]
            detail = ", ".join(f"{name} {value:.3g}" for name, value in terms if value is not None)
            parts.append(f"loss {loss:.4g}" + (f" ({detail})" if detail else ""))
        if with_validation:
            shown = [(key.split("/", 1)[1], _value(metrics, key)) for key in ("val/rsum", "val/ndcg@10", "val/mrr@10")]
            parts += [f"val {name} {value:.1f}" for name, value in shown if value is not None]
        parts.append(self._timing(trainer, total))
        return " | ".join(parts)

    def _timing(self, trainer: L.Trainer, total: float) -> str:
        elapsed = time.perf_counter() - self._start
        done = trainer.global_step - self._start_step
        text = f"{format_seconds(elapsed)} elapsed"
        if done > 0 and math.isfinite(total) and total > trainer.global_step:
            text += f", ~{format_seconds(elapsed / done * (total - trainer.global_step))} left"
        return text
