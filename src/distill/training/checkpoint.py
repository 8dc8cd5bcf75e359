"""Checkpoint files that are never half-written, and ``fit --ckpt_path last`` across log versions.

* :class:`AtomicCheckpointIO` (``trainer.plugins``): every checkpoint is written to a temporary file
  in its own folder, flushed to disk, then renamed onto its name, so a kill, a crash or a full disk
  during a save leaves the previous complete checkpoint in place. Checkpoints are read with
  ``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary pickled objects.
* :class:`ResumableModelCheckpoint` (``trainer.callbacks``): Lightning's ``ModelCheckpoint`` that writes
  ``last.ckpt`` at every save and lets ``fit --ckpt_path last`` find the newest ``last*.ckpt`` of earlier
  runs of the same logger name. Each run of a recipe logs into a new ``version_N`` folder, where
  Lightning alone would look for ``last.ckpt`` only in the new, empty one.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Literal

import lightning as L
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from distill.errors import RecipeError
from distill.checkpoint_file import load_checkpoint_file
from distill.io import atomic_writer

__all__ = ["AtomicCheckpointIO", "CheckpointError", "ResumableModelCheckpoint", "latest_checkpoint",
           "check_ckpt_path"]


class CheckpointError(RecipeError):
    """A checkpoint given with ``--ckpt_path`` is missing or holds more than tensors and plain containers."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save checkpoints atomically (temporary file + fsync + rename) and load them with ``weights_only=True``.

    Wire it with ``trainer.plugins: [{class_path: distill.training.checkpoint.AtomicCheckpointIO}]``.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options (got {storage_options!r})")
        with atomic_writer(os.fspath(path)) as handle:
            writer = _RecordingWriter(handle)
            try:
                torch.save(checkpoint, writer)
            except RuntimeError:
                # torch's zip writer reports a failed write (a full disk) as "unexpected pos": raise what it hid.
                if writer.error is not None:
                    raise writer.error from None
                raise

    def load_checkpoint(self, path: _PATH, map_location: Callable[..., Any] | Any = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Read with ``torch.load(weights_only=True)`` whatever is asked; remote paths are refused (one line)."""
        return load_checkpoint_file(os.fspath(path), "--ckpt_path")


class _RecordingWriter:
    """A file object for ``torch.save`` that remembers the ``OSError`` its ``write`` raised."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.handle.flush()


def check_ckpt_path(value: str | None) -> None:
    """Refuse, in one line, a ``--ckpt_path`` that is remote, missing, a folder, damaged, holds code, or is not a
    Lightning checkpoint; the special values ``last`` / ``best`` / ``hpc`` / ``registry`` pass through."""
    if not value or value in ("last", "best", "hpc", "registry") or value.startswith("registry:"):
        return
    checkpoint = load_checkpoint_file(value, "--ckpt_path")
    if "state_dict" not in checkpoint:
        raise CheckpointError(f"--ckpt_path '{value}' is not a Lightning checkpoint (no state_dict): pass a .ckpt "
                              "written by `distill fit`")


class ResumableModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` with ``save_last=True`` whose ``--ckpt_path last`` also searches earlier log versions.

    Without an explicit ``dirpath``, checkpoints live in ``<save_dir>/<name>/version_N/checkpoints``
    and every run gets a new ``version_N``; ``fit --ckpt_path last`` then resumes from the most
    recently written ``last*.ckpt`` among all versions of that ``<save_dir>/<name>``. Give each recipe
    its own logger name (as the demo does) so that runs of different recipes never meet there.
    The arguments are ``ModelCheckpoint``'s (``save_last`` defaults to True).
    """

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        mode: str = "min",
        save_last: bool | Literal["link"] = True,
        save_top_k: int = 1,
        save_weights_only: bool = False,
        every_n_train_steps: int | None = None,
        train_time_interval: timedelta | None = None,
        every_n_epochs: int | None = None,
        save_on_train_epoch_end: bool | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__(dirpath=dirpath, filename=filename, monitor=monitor, mode=mode, save_last=save_last,
                         save_top_k=save_top_k, save_weights_only=save_weights_only,
                         every_n_train_steps=every_n_train_steps, train_time_interval=train_time_interval,
                         every_n_epochs=every_n_epochs, save_on_train_epoch_end=save_on_train_epoch_end,
                         verbose=verbose)

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]) -> None:
        # Before the first validation there is nothing to rank by: only last.ckpt is written, silently.
        if (self.monitor is not None and self.monitor not in monitor_candidates
                and not trainer.fit_loop.epoch_loop.val_loop._has_run):
            return
        super()._save_topk_checkpoint(trainer, monitor_candidates)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning writes a missing last.ckpt here even under fast_dev_run, whose smoke runs must leave no files.
        if not trainer.fast_dev_run:
            super().on_train_end(trainer, pl_module)

    def _find_last_checkpoints(self, trainer: L.Trainer) -> set[str]:
        found = set(super()._find_last_checkpoints(trainer))
        if self.dirpath is not None or not trainer.loggers:
            return found
        logger = trainer.loggers[0]
        save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
        run_root = Path(save_dir) / str(logger.name)
        if not run_root.is_dir():
            return found
        # last.ckpt, and the last-v1.ckpt, last-v2.ckpt... Lightning writes beside one it did not write itself.
        pattern = re.compile(rf"^{re.escape(self.CHECKPOINT_NAME_LAST)}(-v?\d+)?$")
        for version in run_root.iterdir():
            folder = version / "checkpoints"
            if folder.is_dir():
                found |= {os.path.normpath(p) for p in folder.iterdir()
                          if p.suffix == self.FILE_EXTENSION and pattern.match(p.stem)}
        return found


def latest_checkpoint(trainer: L.Trainer) -> str | None:
    """The most recently written checkpoint this trainer's callbacks know of (``None`` when there is none)."""
    candidates: set[str] = set()
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        for name in ("last_model_path", "best_model_path", "saved_path"):
            value = getattr(callback, name, None)
            if isinstance(value, str) and value:
                candidates.add(value)
    existing = [path for path in candidates if os.path.isfile(path)]
    return max(existing, key=os.path.getmtime) if existing else None
