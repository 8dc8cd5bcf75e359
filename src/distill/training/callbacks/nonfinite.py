"""NonFiniteGuard: stop on, or skip, training steps whose loss or gradients are NaN or inf."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from distill.errors import TrainingError
from distill.losses.guards import NonFiniteError
from distill.training.checkpoint import latest_checkpoint

__all__ = ["NonFiniteGuard", "NonFiniteLossError"]

logger = logging.getLogger("distill.callbacks")


class NonFiniteLossError(TrainingError):
    """Training produced a NaN or inf loss or gradient under ``NonFiniteGuard(mode="stop")``."""


def _batch_ids(batch: Any, limit: int = 16) -> str:
    if not isinstance(batch, Mapping):
        return "batch ids unavailable"
    parts = []
    for key in ("a_id", "b_id"):
        value = batch.get(key)
        if isinstance(value, Tensor):
            ids = value.detach().flatten().tolist()
            shown = ", ".join(str(i) for i in ids[:limit]) + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")
            parts.append(f"{key} [{shown}]")
    return "batch " + ", ".join(parts) if parts else "batch ids unavailable"


class NonFiniteGuard(Callback):
    """Stops on, or skips, training steps whose loss or gradients are NaN or inf.

    The guard wraps the module's ``training_step`` while ``fit`` runs: a non-finite returned loss,
    or a :class:`~distill.losses.NonFiniteError` raised by a loss's input check, marks the step.

    * ``mode="stop"`` raises :class:`NonFiniteLossError` (``distill: error: ...``, exit status 1)
      naming the epoch, the global step, the batch's ``a_id`` / ``b_id`` and the last checkpoint
      written before it (to resume from, e.g. with a lower learning rate).
    * ``mode="skip"`` turns the step into a no-op: the backward pass gets a zero loss, every gradient
      is dropped before the optimizer step (so neither the update nor weight decay nor the optimizer's
      moments change; a learning-rate scheduler still advances), and ``train/nonfinite_skipped`` logs
      the running count. After ``max_consecutive_skips`` skipped steps in a row it stops as in ``stop``.

    With ``check_gradients`` the gradients are also checked before each optimizer step (not under a
    16-bit ``GradScaler``, which already skips steps with inf gradients). Under DDP every process
    skips when any one found a non-finite value. Each check reads one value back from the device
    per step (two with ``check_gradients``).

    Args:
        mode: ``"stop"`` or ``"skip"``.
        check_gradients: also check the gradients' total norm before each optimizer step.
        max_consecutive_skips: in ``skip`` mode, stop after this many skipped steps in a row.
    """

    def __init__(self, mode: Literal["stop", "skip"] = "stop", check_gradients: bool = True,
                 max_consecutive_skips: int = 20) -> None:
        if mode not in ("stop", "skip"):
            raise ValueError(f"NonFiniteGuard mode must be 'stop' or 'skip', got {mode!r}")
        if max_consecutive_skips < 1:
            raise ValueError(f"NonFiniteGuard max_consecutive_skips must be >= 1, got {max_consecutive_skips}")
        self.mode = mode
        self.check_gradients = check_gradients
        self.max_consecutive_skips = max_consecutive_skips
        self.skipped = 0
        self._consecutive = 0
        self._bad: str | None = None
        self._batch: Any = None
        self._batch_idx = -1
        self._wrapped: nn.Module | None = None

    # -------------------------------------------------------------- wrapping training_step
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._unwrap()
        original: Callable[..., Any] = pl_module.training_step

        @functools.wraps(original)
        def guarded_training_step(*args: Any, **kwargs: Any) -> Any:
            try:
                output = original(*args, **kwargs)
            except NonFiniteError as error:
                return self._non_finite(trainer, pl_module, f"a loss input is not finite ({error})", None)
            loss = output.get("loss") if isinstance(output, Mapping) else output
            if isinstance(loss, Tensor) and not bool(torch.isfinite(loss.detach()).all()):
                value = loss.detach().float().flatten()[0].item()
                return self._non_finite(trainer, pl_module, f"the training loss is {value}", output)
            return output

        pl_module.training_step = guarded_training_step  # type: ignore[method-assign]
        self._wrapped = pl_module

    def _unwrap(self) -> None:
        if self._wrapped is not None:
            self._wrapped.__dict__.pop("training_step", None)
            self._wrapped = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._unwrap()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._unwrap()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._unwrap()

    # -------------------------------------------------------------- detection
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._batch, self._batch_idx = batch, batch_idx

    def _where(self, trainer: L.Trainer) -> str:
        return (f"at epoch {trainer.current_epoch}, global step {trainer.global_step} (batch {self._batch_idx} of "
                f"the epoch); {_batch_ids(self._batch)}")

    def _stop(self, trainer: L.Trainer, what: str) -> NonFiniteLossError:
        checkpoint = latest_checkpoint(trainer)
        resume = (f"last good checkpoint: '{checkpoint}' (resume from it with --ckpt_path after lowering the "
                  "learning rate or fixing these items)" if checkpoint else "no checkpoint was written before it")
        return NonFiniteLossError(
            f"NonFiniteGuard: {what} {self._where(trainer)}; {resume}. Set the NonFiniteGuard callback's "
            "mode to skip to drop such steps instead"
        )

    def _non_finite(self, trainer: L.Trainer, pl_module: L.LightningModule, what: str, output: Any) -> Any:
        if self.mode == "stop":
            raise self._stop(trainer, what)
        self._bad = what
        params = [p for p in pl_module.parameters() if p.requires_grad]
        zero = torch.zeros((), device=pl_module.device)
        for param in params:  # a zero loss that reaches every parameter: backward (and DDP) run as usual
            zero = zero + param.reshape(-1)[:1].sum() * 0.0
        if isinstance(output, Mapping):
            return {**output, "loss": zero}
        return zero

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        bad, self._bad = self._bad, None
        if bad is None and self.check_gradients and getattr(trainer.precision_plugin, "scaler", None) is None:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if grads:
                norm = torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False)
                if not math.isfinite(float(norm)):
                    bad = f"the gradients are not finite (total norm {float(norm)})"
                    if self.mode == "stop":
                        raise self._stop(trainer, bad)
        skip = bool(trainer.strategy.reduce_boolean_decision(bad is not None, all=False))
        if not skip:
            self._consecutive = 0
            return
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.grad = None
        self.skipped += 1
        self._consecutive += 1
        message = (f"NonFiniteGuard: skipped the optimizer step: {bad or 'another process found a non-finite value'} "
                   f"{self._where(trainer)} ({self.skipped} skipped so far)")
        if self.skipped <= 3 or self.skipped & (self.skipped - 1) == 0:
            logger.warning(message)
        if self._consecutive >= self.max_consecutive_skips:
            raise NonFiniteLossError(
                f"NonFiniteGuard: {self._consecutive} optimizer steps in a row were skipped for non-finite values "
                f"(latest {self._where(trainer)}); the run is diverging or the data is broken: lower the learning "
                "rate or check these items"
            )

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.mode == "skip":
            pl_module.log("train/nonfinite_skipped", float(self.skipped), on_step=True, on_epoch=False,
                          reduce_fx="max")

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
