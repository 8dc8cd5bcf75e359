"""Running a frozen teacher over many pairs: each distinct pair once, bounded pairs per forward, own precision.

Every place that scores pairs (the training step, the teacher-score cache, two-stage evaluation and
diagnostics) goes through :class:`TeacherScorer`, so the same two settings hold everywhere:

* ``max_pairs``: at most this many (a, b) pairs reach one ``teacher.score_pairs`` call. A teacher encodes
  the distinct items of the pairs it receives (BLIP: each distinct image through its vision tower once per
  call); teachers that fuse both sides in one stream (ViLT) build one input per pair, so this bound is
  what caps their activation memory;
* ``precision``: ``"32"``, ``"bf16"`` or ``"16"``, independent of the trainer's precision. The teacher's
  weights are cast once (:meth:`TeacherScorer.apply_precision`) and every forward runs under
  ``torch.autocast`` of that dtype (``"32"`` disables an outer autocast). Scores are returned as float32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from distill.errors import RunError
from distill.inputs import Inputs, to_device

TEACHER_PRECISIONS: dict[str, torch.dtype] = {"32": torch.float32, "bf16": torch.bfloat16, "16": torch.float16}

__all__ = ["TEACHER_PRECISIONS", "TeacherScorer", "check_precision", "unique_pairs"]


def check_precision(precision: str | int, setting: str = "teacher_precision") -> str:
    """``precision`` as one of :data:`TEACHER_PRECISIONS`' keys (``32`` / ``bf16`` / ``16``), or a clear error."""
    value = str(precision).removesuffix("-true").removesuffix("-mixed")
    if value in ("32", "fp32", "float32"):
        return "32"
    if value in ("bf16", "bfloat16"):
        return "bf16"
    if value in ("16", "fp16", "float16"):
        return "16"
    raise ValueError(f"{setting} must be one of 32, bf16, 16, got {precision!r}")


def unique_pairs(a_index: Tensor, b_index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The distinct ``(a, b)`` pairs among ``P`` requested ones: ``(a [U], b [U], inverse [P])``."""
    if a_index.numel() == 0:
        empty = a_index.new_zeros(0)
        return empty, empty, empty
    width = int(b_index.max()) + 1
    keys, inverse = torch.unique(a_index * width + b_index, return_inverse=True)
    return keys // width, keys % width, inverse


class TeacherScorer:
    """Scores pairs with ``teacher`` in chunks of at most ``max_pairs`` under its own precision.

    Args:
        teacher: a frozen :class:`~distill.teachers.Teacher` (``score_pairs``; ``embed_a`` / ``embed_b``
            when it has embeddings).
        max_pairs: pairs per teacher forward (``None``: all requested pairs in one call).
        precision: ``32``, ``bf16`` or ``16``.
    """

    def __init__(self, teacher: nn.Module, max_pairs: int | None = None, precision: str = "32") -> None:
        if max_pairs is not None and max_pairs < 1:
            raise ValueError(f"teacher_max_pairs must be >= 1 or null, got {max_pairs}")
        self.teacher = teacher
        self.max_pairs = max_pairs
        self.precision = check_precision(precision)
        self.calls: list[int] = []  # pairs per score_pairs call, since the last reset (tests and logs read it)

    @property
    def dtype(self) -> torch.dtype:
        return TEACHER_PRECISIONS[self.precision]

    def apply_precision(self) -> None:
        """Cast the teacher's floating-point weights to the scorer's dtype (idempotent)."""
        parameter = next(self.teacher.parameters(), None)
        if parameter is not None and parameter.dtype != self.dtype:
            self.teacher.to(self.dtype)

    @property
    def device(self) -> torch.device:
        """Where the teacher's weights are (the CPU for a teacher without parameters)."""
        parameter = next(self.teacher.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    @contextmanager
    def autocast(self) -> Iterator[None]:
        """The teacher's precision for the forwards run inside the block."""
        device_type = self.device.type
        if self.precision == "32":
            with torch.autocast(device_type=device_type, enabled=False):
                yield
        else:
            with torch.autocast(device_type=device_type, dtype=self.dtype):
                yield

    def chunks(self, total: int) -> Iterator[slice]:
        size = self.max_pairs or max(total, 1)
        for start in range(0, total, size):
            yield slice(start, min(start + size, total))

    @torch.no_grad()
    def score_pairs(self, a: Inputs, b: Inputs, a_index: Tensor, b_index: Tensor) -> Tensor:
        """Scores ``[P]`` float32 of the pairs ``(a[a_index[p]], b[b_index[p]])``, ``max_pairs`` per forward."""
        parts = []
        with self.autocast():
            for part in self.chunks(int(a_index.numel())):
                self.calls.append(part.stop - part.start)
                parts.append(self._finite(self.teacher.score_pairs(a, b, a_index[part], b_index[part]).float()))
        return torch.cat(parts) if parts else torch.zeros(0, device=a_index.device)

    @torch.no_grad()
    def score_unique(self, a: Inputs, b: Inputs, a_index: Tensor, b_index: Tensor) -> tuple[Tensor, int]:
        """Like :meth:`score_pairs`, scoring each distinct pair once: ``(scores [P], distinct pairs)``."""
        a_unique, b_unique, inverse = unique_pairs(a_index, b_index)
        scores = self.score_pairs(a, b, a_unique, b_unique)
        return scores[inverse], int(a_unique.numel())

    @torch.no_grad()
    def score_loaded(self, load_a: Callable[[Tensor], Inputs], load_b: Callable[[Tensor], Inputs],
                     a_items: Tensor, b_items: Tensor) -> Tensor:
        """Scores ``[P]`` (on the CPU) of pairs of items fetched on demand.

        The pairs are grouped by their a item (then b item) before they are cut into chunks of ``max_pairs``,
        so a chunk holds as few distinct a items (images, the costly side) as the requests allow: a
        caption->image re-rank whose lists share images encodes each image about once per chunk it spans,
        not once per caption. Per chunk only its distinct items are loaded (``load_a(ids) -> Inputs`` of
        those items, in order) and moved to the teacher's device.
        """
        device = self.device
        order = torch.argsort(b_items, stable=True)
        order = order[torch.argsort(a_items[order], stable=True)]
        a_sorted, b_sorted = a_items[order], b_items[order]
        scores = torch.zeros(int(a_items.numel()))
        for part in self.chunks(int(a_items.numel())):
            a_ids, a_local = torch.unique(a_sorted[part], return_inverse=True)
            b_ids, b_local = torch.unique(b_sorted[part], return_inverse=True)
            a_inputs, b_inputs = to_device(load_a(a_ids), device), to_device(load_b(b_ids), device)
            with self.autocast():
                self.calls.append(part.stop - part.start)
                scores[order[part]] = self._finite(self.teacher.score_pairs(
                    a_inputs, b_inputs, a_local.to(device), b_local.to(device)).float()).cpu()
        return scores

    def _finite(self, scores: Tensor) -> Tensor:
        """``scores``, or a one-line error naming ``teacher_precision`` when reduced precision broke them."""
        if self.precision != "32" and not bool(torch.isfinite(scores).all()):
            bad = int((~torch.isfinite(scores)).sum())
            raise RunError(f"{bad} of {scores.numel()} teacher scores are NaN or infinite in teacher_precision "
                           f"{self.precision} (the teacher's activations leave that format's range): set "
                           "model.init_args.teacher_precision to bf16 (float32's range) or 32")
        return scores

    @torch.no_grad()
    def embed(self, side: str, inputs: Inputs) -> Tensor:
        """The teacher's embeddings ``[N, E]`` float32 of one side's inputs (``side`` is ``a`` or ``b``)."""
        with self.autocast():
            return getattr(self.teacher, f"embed_{side}")(inputs).float()
