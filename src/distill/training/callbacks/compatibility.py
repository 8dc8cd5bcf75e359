"""CompatibilityCheck: the data's token ids must fit the student's and the teacher's vocabularies."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from distill.errors import RecipeError

__all__ = ["CompatibilityCheck", "IncompatibleModelsError", "embedding_vocab_size"]

_TOKEN_EMBEDDINGS = ("word_embeddings", "token_embedding", "token_embed", "embed_tokens")


class IncompatibleModelsError(RecipeError):
    """The data, the student and the teacher of a recipe cannot work together (e.g. different tokenizers)."""


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
