"""Helpers shared by the file-backed data modules: reading text files, tokenising (with a count of
truncated texts), the bad-item policy, tensor padding."""

from __future__ import annotations

from distill.errors import InputError

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

BadItemPolicy = Literal["error", "skip"]
BAD_ITEM_POLICIES: tuple[str, ...] = ("error", "skip")

logger = logging.getLogger("distill.data")


class DataError(InputError):
    """A data file holds an item that cannot be used (the message names the file, item and field)."""


class DataFileNotFound(DataError, FileNotFoundError):
    """A data file or folder named by the recipe does not exist (the message names the recipe key)."""


def check_counts(owner: str, minimum: int = 1, **values: int | None) -> None:
    """Raise one :class:`DataError` line for the first setting below ``minimum`` (``None`` is allowed), e.g.
    ``ShapesDataModule: data.init_args.batch_size must be >= 1, got -4``."""
    for name, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
            raise DataError(f"{owner}: data.init_args.{name} must be >= {minimum}, got {value!r}")


class BadItems:
    """Applies ``on_bad_item``: raise :class:`DataError`, or count the item per reason and log it."""

    def __init__(self, policy: str, owner: str) -> None:
        if policy not in BAD_ITEM_POLICIES:
            raise ValueError(f"{owner}: on_bad_item must be one of {BAD_ITEM_POLICIES}, got {policy!r}")
        self.policy = policy
        self.owner = owner
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def report(self, reason: str, message: str) -> None:
        """Raise (policy ``error``) or record one skipped item (policy ``skip``)."""
        if self.policy == "error":
            raise DataError(f"{message} (set data.init_args.on_bad_item: skip to drop such items)")
        self.counts[reason] += 1
        self.examples.setdefault(reason, message)
        if self.counts[reason] <= 3:
            logger.warning("%s: skipping an item: %s", self.owner, message)

    def summary(self) -> None:
        """Log one line per reason with the number of skipped items."""
        for reason, count in sorted(self.counts.items()):
            logger.warning("%s: skipped %d item(s) (%s), e.g. %s", self.owner, count, reason, self.examples[reason])


def _not_utf8(path: Path, error: UnicodeDecodeError, line: int | None = None) -> DataError:
    where = f"'{path}' line {line}" if line is not None else f"'{path}'"
    return DataError(
        f"{where} is not UTF-8 text (byte {error.object[error.start]:#04x} at byte offset {error.start}"
        f"{' of the line' if line is not None else ''}): re-encode the file as UTF-8, e.g. "
        f"`iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}`"
    )


def read_utf8(path: Path) -> str:
    """The whole file as text; a :class:`DataError` naming the file and byte when it is not UTF-8."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        start = raw.rfind(b"\n", 0, error.start) + 1
        inner = UnicodeDecodeError(error.encoding, raw[start:], error.start - start, error.end - start, error.reason)
        raise _not_utf8(path, inner, line) from None


def utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` for each line of a UTF-8 file (numbers start at 1)."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise _not_utf8(path, error, number) from None


class TruncationLog:
    """Counts texts cut at ``max_length`` tokens and logs the running count at 1, 10, 100, ... texts.

    Long texts are truncated, not rejected: the log line says how many were cut and which setting
    keeps them whole. With ``num_workers > 0`` each worker process keeps its own count.
    """

    def __init__(self, owner: str, what: str, setting: str) -> None:
        self.owner = owner
        self.what = what
        self.setting = setting
        self.count = 0
        self._next_report = 1

    def add(self, truncated: int, max_length: int) -> None:
        if truncated <= 0:
            return
        self.count += truncated
        if self.count >= self._next_report:
            logger.warning("%s: %d %s tokenised so far were longer than %s=%d tokens and were truncated; "
                           "raise %s to keep them whole", self.owner, self.count, self.what, self.setting, max_length,
                           self.setting)
            while self._next_report <= self.count:
                self._next_report *= 10


def count_truncated(tokenizer: Any, texts: Sequence[str], encoded: Any, max_length: int,
                    special_tokens: bool = True) -> int:
    """How many of ``texts`` did not fit in ``max_length`` tokens when ``encoded`` was made with truncation."""
    encodings = getattr(encoded, "encodings", None)
    if encodings:  # fast tokenizers keep the cut-off tokens of every row
        return sum(1 for encoding in encodings if encoding.overflowing)
    longer = tokenizer(list(texts), add_special_tokens=special_tokens, truncation=True, max_length=max_length + 1)
    return sum(1 for ids in longer["input_ids"] if len(ids) > max_length)


def model_max_length(tokenizer: Any, requested: int) -> int:
    """``requested`` capped by the tokenizer's own ``model_max_length`` (ignored when unset/huge)."""
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000:
        return min(requested, limit)
    return requested


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int, special_tokens: bool = True,
             names: tuple[str, str] = ("input_ids", "attention_mask"),
             truncation_log: TruncationLog | None = None) -> dict[str, Tensor]:
    """Tokenise, truncate to ``max_length``, right-pad: ``{names[0]: ids, names[1]: mask}``, long ``[N, L]``.

    With ``truncation_log``, the texts that were cut are counted there.
    """
    encoded = tokenizer(list(texts), add_special_tokens=special_tokens, truncation=True, max_length=max_length,
                        padding=True, return_tensors="pt")
    if truncation_log is not None:
        truncation_log.add(count_truncated(tokenizer, texts, encoded, max_length, special_tokens), max_length)
    ids = encoded["input_ids"].long()
    mask = encoded["attention_mask"].long()
    if ids.shape[1] == 0:  # every text tokenised to nothing
        ids = ids.new_zeros(ids.shape[0], 1)
        mask = mask.new_zeros(mask.shape[0], 1)
    return {names[0]: ids, names[1]: mask}


def same_tokenizer(first: Any, second: Any) -> bool:
    """True when two tokenizers produce the same ids (same backend definition and max length)."""
    if first is second:
        return True
    try:
        same_backend = first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    except AttributeError:
        return False
    return same_backend and getattr(first, "model_max_length", None) == getattr(second, "model_max_length", None)


def stack_images(tensors: Sequence[Tensor], masks: Sequence[Tensor] | None = None,
                 canvas: int | None = None) -> dict[str, Tensor]:
    """Stack ``[3, H, W]`` images. When sizes differ (or a ``canvas`` size is given), zero-pad them
    bottom/right to the largest size (or ``canvas`` x ``canvas``) and add ``pixel_mask [N, H, W]``."""
    heights = {t.shape[-2] for t in tensors}
    widths = {t.shape[-1] for t in tensors}
    if canvas is None and len(heights) == 1 and len(widths) == 1:
        out = {"pixel_values": torch.stack(list(tensors))}
        if masks is not None:
            out["pixel_mask"] = torch.stack([m.long() for m in masks])
        return out
    height, width = (canvas, canvas) if canvas is not None else (max(heights), max(widths))
    if max(heights) > height or max(widths) > width:
        raise ValueError(f"an image of {max(heights)}x{max(widths)} exceeds the {height}x{width} canvas: "
                         "raise data.init_args.teacher_image_canvas")
    values = torch.stack([F.pad(t, (0, width - t.shape[-1], 0, height - t.shape[-2])) for t in tensors])
    base = masks if masks is not None else [torch.ones(t.shape[-2:], dtype=torch.long) for t in tensors]
    mask = torch.stack([F.pad(m.long(), (0, width - m.shape[-1], 0, height - m.shape[-2])) for m in base])
    return {"pixel_values": values, "pixel_mask": mask}
