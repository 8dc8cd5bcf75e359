"""InterruptCheckpoint: SIGTERM / SIGINT during ``fit`` save ``last.ckpt`` and exit 128 + signal."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

__all__ = ["InterruptCheckpoint", "TrainingInterrupted"]

logger = logging.getLogger("distill.callbacks")


class TrainingInterrupted(SystemExit):
    """Raised after the interrupt checkpoint is written; the exit status is 128 + the signal number."""


class InterruptCheckpoint(Callback):
    """On SIGTERM or SIGINT during ``fit``: finish the current batch, save ``last.ckpt``, exit 128 + signal.

    The handlers are installed when training starts (after Lightning's own SIGTERM handler, which
    would otherwise stop the run without a checkpoint) and the previous ones are restored when
    training ends or fails. The checkpoint goes into the ``ModelCheckpoint`` folder (so that
    ``fit --ckpt_path last`` finds it) or ``<default_root_dir>/checkpoints``, through the trainer's
    checkpoint plugin (atomic with :class:`~distill.checkpoint.AtomicCheckpointIO`). A second Ctrl+C
    (SIGINT) stops at once, without a checkpoint. Under DDP all processes stop at the same batch when
    any one of them received the signal.

    Args:
        signals: signal names to handle.
        filename: the checkpoint's file name.
    """

    def __init__(self, signals: Sequence[str] = ("SIGTERM", "SIGINT"), filename: str = "last.ckpt") -> None:
        names = list(signals)
        for name in names:
            if not isinstance(getattr(signal, name, None), signal.Signals):
                raise ValueError(f"InterruptCheckpoint signals: unknown signal {name!r} (e.g. SIGTERM, SIGINT)")
        if not filename or Path(filename).name != filename or not filename.endswith(".ckpt"):
            raise ValueError(f"InterruptCheckpoint filename must be a plain '<name>.ckpt' file name, got {filename!r}")
        self.signals = [signal.Signals[name] for name in names]
        self.filename = filename
        self.received: signal.Signals | None = None
        self.saved_path: str | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        received = signal.Signals(signum)
        if received == signal.SIGINT and self.received == received:  # Ctrl+C twice: stop now, no checkpoint
            self._restore()
            raise KeyboardInterrupt
        self.received = received
        logger.warning("distill: received %s: finishing the current batch, then saving %s", received.name,
                       self.filename)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.received = None
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self.signals:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handler)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    def checkpoint_path(self, trainer: L.Trainer) -> Path:
        """Where the interrupt checkpoint goes: this run's ``last`` checkpoint when it has one; else a new
        ``last.ckpt`` (``last-v1.ckpt``, ... when another run's is there) in the ModelCheckpoint folder,
        or in ``<default_root_dir>/checkpoints`` without one."""
        callback = trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            folder = Path(callback.dirpath)
            if callback.last_model_path and Path(callback.last_model_path).parent == folder:
                return Path(callback.last_model_path)
        else:
            folder = Path(trainer.default_root_dir) / "checkpoints"
        path, stem, version = folder / self.filename, Path(self.filename).stem, 1
        while path.exists():
            path, version = folder / f"{stem}-v{version}.ckpt", version + 1
        return path

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        requested = self.received is not None or trainer.received_sigterm
        if trainer.world_size > 1:
            requested = bool(trainer.strategy.reduce_boolean_decision(requested, all=False))
        if not requested:
            return
        received = self.received or signal.SIGTERM
        path = self.checkpoint_path(trainer)
        callback = trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint) and path.stem.startswith(callback.CHECKPOINT_NAME_LAST):
            callback.last_model_path = str(path)  # part of the saved state; the next "last" save overwrites it
        trainer.save_checkpoint(path, weights_only=False)
        self.saved_path = str(path)
        self._restore()
        if trainer.is_global_zero:
            logger.warning(
                "distill: stopped by %s at epoch %d, global step %d; saved '%s'. Resume with the same command "
                "plus --ckpt_path last (or --ckpt_path %s)", received.name, trainer.current_epoch,
                trainer.global_step, path, path,
            )
        raise TrainingInterrupted(128 + int(received))
