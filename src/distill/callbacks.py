"""Training-time guards, as Lightning callbacks (``trainer.callbacks`` in ``configs/demo/trainer.yaml``).

* :class:`CompatibilityCheck`: before any step, the data's token ids must fit the student's and the
  teacher's vocabularies (a student and teacher with different tokenizers); warns once when
  ``num_hard_negatives`` exceeds the candidates a batch has.
* :class:`NonFiniteGuard`: a NaN or inf loss (or gradient) either stops training with the step, the
  batch's ids and the last good checkpoint (``mode="stop"``), or makes that optimizer step a no-op
  and counts it (``mode="skip"``).
* :class:`SparseCollapseGuard`: a sparse student whose vectors on one side have had no non-zero weight
  for a few steps (every score tied, no gradient left) stops with what to do instead of training on.
* :class:`InterruptCheckpoint`: SIGTERM / SIGINT during ``fit`` save ``last.ckpt`` at the end of the
  current batch, then exit with status 128 + signal; ``fit --ckpt_path last`` resumes.
* :class:`RandomStateCheckpoint`: every checkpoint carries the random generators' states, so a resumed
  run draws the same dropout masks as an uninterrupted one.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from distill.checkpoint import latest_checkpoint
from distill.errors import RecipeError, TrainingError
from distill.losses.guards import NonFiniteError

__all__ = [
    "CompatibilityCheck",
    "IncompatibleModelsError",
    "InterruptCheckpoint",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "RandomStateCheckpoint",
    "SparseCollapseError",
    "SparseCollapseGuard",
    "TrainingInterrupted",
    "embedding_vocab_size",
]

logger = logging.getLogger("distill.callbacks")

_TOKEN_EMBEDDINGS = ("word_embeddings", "token_embedding", "token_embed", "embed_tokens")


class IncompatibleModelsError(RecipeError):
    """The data, the student and the teacher of a recipe cannot work together (e.g. different tokenizers)."""


class NonFiniteLossError(TrainingError):
    """Training produced a NaN or inf loss or gradient under ``NonFiniteGuard(mode="stop")``."""


class SparseCollapseError(TrainingError):
    """A sparse student's vectors on one side stayed all zero under ``SparseCollapseGuard``."""


class TrainingInterrupted(SystemExit):
    """Raised after the interrupt checkpoint is written; the exit status is 128 + the signal number."""


# ---------------------------------------------------------------------------------------------- helpers
def embedding_vocab_size(module: nn.Module | None) -> tuple[int, str] | None:
    """``(token ids the module can embed, where that number comes from)``, or ``None`` for no text model.

    Reads a ``vocab_size`` attribute, then ``config.vocab_size`` / ``config.text_config.vocab_size``,
    then the smallest token-embedding table (``word_embeddings``, ``token_embedding``...).
    """
    if module is None:
        return None
    size = getattr(module, "vocab_size", None)
    if isinstance(size, int) and not isinstance(size, bool):
        return size, f"{type(module).__name__}.vocab_size"
    config = getattr(module, "config", None)
    for source in (config, getattr(config, "text_config", None)):
        size = getattr(source, "vocab_size", None)
        if isinstance(size, int) and not isinstance(size, bool):
            return size, f"{type(module).__name__}.config.vocab_size"
    tables = [(m.num_embeddings, name) for name, m in module.named_modules()
              if isinstance(m, nn.Embedding) and name.split(".")[-1] in _TOKEN_EMBEDDINGS]
    if tables:
        size, name = min(tables)
        return size, f"{type(module).__name__}.{name}"
    return None


def _tokenizer_size(tokenizer: Any) -> int | None:
    try:
        return int(len(tokenizer))
    except TypeError:
        return None


def _data_vocab(datamodule: Any) -> tuple[tuple[int, str] | None, tuple[int, str] | None]:
    """``(student view, teacher view)`` token-id counts of the data module's tokenizers."""
    if datamodule is None:
        return None, None
    inner = getattr(datamodule, "data", None)  # wrappers such as the teacher-score cache hold the real data module
    if isinstance(inner, L.LightningDataModule) and not hasattr(datamodule, "vocab_size"):
        datamodule = inner
    name = type(datamodule).__name__
    student: tuple[int, str] | None = None
    size = getattr(datamodule, "vocab_size", None)
    if isinstance(size, int) and not isinstance(size, bool):
        student = size, f"{name}.vocab_size"
    else:
        for attribute in ("student_tokenizer", "tokenizer"):
            size = _tokenizer_size(getattr(datamodule, attribute, None)) if hasattr(datamodule, attribute) else None
            if size is not None:
                student = size, f"{name}.{attribute}"
                break
    teacher_tokenizer = getattr(datamodule, "teacher_tokenizer", None)
    teacher_size = _tokenizer_size(teacher_tokenizer) if teacher_tokenizer is not None else None
    teacher = (teacher_size, f"{name}.teacher_tokenizer") if teacher_size is not None else student
    return student, teacher


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


# ---------------------------------------------------------------------------------------------- compatibility
class CompatibilityCheck(Callback):
    """Fails fast, with one line naming both sides, when the recipe's parts cannot work together.

    At ``setup`` (every stage, before any batch): the data module's tokenizer (``vocab_size``, or
    ``student_tokenizer`` / ``tokenizer``) must not produce more token ids than the student's text
    model embeds, and the tokenizer the teacher reads (``teacher_tokenizer`` when the data module
    has one, else the student's) must fit the teacher's vocabulary (``vocab_size``, its config, or
    its token-embedding table). A mismatch means the student and the teacher were trained with
    different tokenizers. At the first training batch: warns once when ``num_hard_negatives``
    exceeds the ``batch size - 1`` candidates an anchor has (mining then uses ``batch size - 1``;
    the batch size is the global one, over all processes).

    Args:
        check_vocab: compare vocabularies at setup.
        warn_hard_negatives: warn when K exceeds a batch's candidates.
    """

    def __init__(self, check_vocab: bool = True, warn_hard_negatives: bool = True) -> None:
        self.check_vocab = check_vocab
        self.warn_hard_negatives = warn_hard_negatives
        self._warned_k = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.check_vocab:
            self.check(trainer.datamodule, pl_module)  # type: ignore[attr-defined]

    @staticmethod
    def check(datamodule: Any, pl_module: nn.Module) -> None:
        """Raise :class:`IncompatibleModelsError` when the data's token ids do not fit a model."""
        student_view, teacher_view = _data_vocab(datamodule)
        models = (("student", "model.init_args.student", getattr(pl_module, "student", None), student_view),
                  ("teacher", "model.init_args.teacher", getattr(pl_module, "teacher", None), teacher_view))
        for role, key, model, data in models:
            embeds = embedding_vocab_size(model)
            if data is None or embeds is None or data[0] <= embeds[0]:
                continue
            raise IncompatibleModelsError(
                f"CompatibilityCheck: the data module's tokenizer makes {data[0]} token ids ({data[1]}) but the "
                f"{role} ({key}: {type(model).__name__}) embeds only {embeds[0]} ({embeds[1]}), so the {role} was "
                f"built for another tokenizer. Use the tokenizer the {role} was trained with"
                + (" (data.init_args.teacher_tokenizer / teacher_processor give the teacher its own tokens)"
                   if role == "teacher" else "")
                + f", or a {role} whose vocabulary covers this tokenizer"
            )

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if not self.warn_hard_negatives or self._warned_k:
            return
        k = getattr(pl_module, "num_hard_negatives", None)
        ids = batch.get("a_id") if isinstance(batch, Mapping) else None
        mines = getattr(pl_module, "needs_teacher_scores", True)
        if not isinstance(k, int) or not isinstance(ids, Tensor) or not mines:
            return
        size = int(ids.shape[0]) * max(1, trainer.world_size)  # the module mines over the global batch
        if k > size - 1:
            self._warned_k = True
            rank_zero_warn(
                f"model.init_args.num_hard_negatives={k} but a training batch has {size} pairs, so an anchor has at "
                f"most {size - 1} candidate negatives: mining uses k={max(size - 1, 0)} (padding slots are masked). "
                f"Raise data.init_args.batch_size above {k} or lower num_hard_negatives to {max(size - 1, 1)}",
                category=UserWarning,
            )


# ---------------------------------------------------------------------------------------------- non-finite
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


# ---------------------------------------------------------------------------------------------- sparse collapse
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


# ---------------------------------------------------------------------------------------------- interruption
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


# ---------------------------------------------------------------------------------------------- random state
class RandomStateCheckpoint(Callback):
    """Stores the torch (CPU and CUDA), NumPy and Python random states in every checkpoint.

    When ``fit`` resumes from a checkpoint that has them, they are restored as training starts, so
    dropout and any other random draw continue the stream of the run that wrote the checkpoint.
    Together with the resumable train loader of the data modules, a resumed run ends with the same
    weights as an uninterrupted one (same device, same thread settings).
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        numpy_state = np.random.get_state()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": {"keys": torch.from_numpy(np.asarray(numpy_state[1], dtype=np.int64)),
                      "pos": int(numpy_state[2]), "has_gauss": int(numpy_state[3]),
                      "cached_gaussian": float(numpy_state[4])},
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state, self._pending = self._pending, None
        if not state:
            return
        torch.set_rng_state(state["torch"])
        numpy_state = state["numpy"]
        np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                             numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
