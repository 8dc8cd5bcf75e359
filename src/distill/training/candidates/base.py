"""What a candidate source sees of a training step, what it returns, and how several sources combine.

A training step holds B pairs ``(a_i, b_i)`` (the global batch under DDP). Each retrieval direction has
anchors (a items for ``a2b``, b items for ``b2a``) and *columns*, the other side's items: the batch's
own B columns, then any extra columns a source brings (queued items of earlier batches, listed
negatives). A source returns, per direction, each anchor's candidate columns: column 0 is always the
anchor's own positive (batch column i), then its negatives; plus the teacher scores it already knows
(a cache, scores shipped with the data) and NaN where the live teacher must score the pair.
:func:`combine` concatenates several sources' negatives (e.g. listed + in-batch) after one positive.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import torch
from torch import Tensor

from distill.inputs import Inputs, concat_inputs
from distill.training.embeddings import Embeddings, Scorer, cat_embeddings, dot_scores

__all__ = ["CandidateSource", "DirectionCandidates", "Extra", "Side", "StepView", "combine", "other_side"]

DIRECTIONS = ("a2b", "b2a")


@dataclass
class Side:
    """One side of the step: ``embeddings [B, D]`` (the student's, differentiable; token embeddings for a
    late-interaction student), ``ids [B]`` (this side's item ids) and ``pair_ids [B]`` (the other side's id of
    each row's pair). The teacher's view of the B items is read lazily (``load_teacher_inputs``), only when a
    live teacher scores pairs."""

    embeddings: Embeddings
    ids: Tensor
    pair_ids: Tensor
    load_teacher_inputs: Callable[[], Inputs] = field(repr=False, default=dict)

    @cached_property
    def teacher_inputs(self) -> Inputs:
        return self.load_teacher_inputs()


@dataclass
class StepView:
    """What every source reads: both sides, ``similarity = score(a, b)`` ``[B, B]`` (``a @ b.T`` for a pooled
    student), this process's batch, K, whether a live teacher scores pairs, the student's encoders (for extra
    items such as listed negatives or cached candidates) and its ``score(a, b) -> [Na, Nb]`` (for those items)."""

    a: Side
    b: Side
    similarity: Tensor
    batch: Mapping[str, Any]
    k: int
    live_teacher: bool
    encode_b: Callable[[Inputs], Tensor] = field(repr=False, default=lambda inputs: torch.zeros(0))
    encode_a: Callable[[Inputs], Tensor] = field(repr=False, default=lambda inputs: torch.zeros(0))
    score: Scorer = field(repr=False, default=dot_scores)

    @property
    def size(self) -> int:
        return int(self.similarity.shape[0])


def other_side(step: StepView, direction: str) -> tuple[Side, Side, Tensor]:
    """``(anchor side, column side, anchor-by-column batch scores [B, B])`` of a direction."""
    if direction == "a2b":
        return step.a, step.b, step.similarity
    return step.b, step.a, step.similarity.T


@dataclass
class Extra:
    """Columns beyond the batch's own: ``embeddings [E, D]`` (student; or token embeddings), ``ids [E]``, the
    teacher's view of the E items (``None`` when no live teacher scores them)."""

    embeddings: Embeddings
    ids: Tensor
    teacher_inputs: Inputs | None = None


@dataclass
class DirectionCandidates:
    """One direction's candidates: ``index [N, C]`` into ``[batch columns | extra columns]`` (column 0 the
    positive), ``valid [N, C]``, known ``teacher [N, C]`` scores (NaN: the live teacher scores the pair)."""

    index: Tensor
    valid: Tensor
    teacher: Tensor
    extra: Extra | None = None
    stats: dict[str, float] = field(default_factory=dict)

    @classmethod
    def unscored(cls, index: Tensor, valid: Tensor, extra: Extra | None = None,
                 stats: dict[str, float] | None = None) -> "DirectionCandidates":
        """Candidates whose every teacher score is still to be computed."""
        teacher = torch.full(index.shape, float("nan"), device=index.device)
        return cls(index, valid, teacher, extra, dict(stats or {}))


class CandidateSource:
    """Base class of candidate sources (``model.init_args.candidates`` in a recipe).

    Subclasses implement :meth:`select`; ``directions`` lists the directions they supply and
    ``needs_live_teacher`` whether the pairs they pick must be scored by the live teacher.
    """

    directions: ClassVar[tuple[str, ...]] = DIRECTIONS
    needs_live_teacher: ClassVar[bool] = True

    def setup(self, module: Any, stage: str) -> None:
        """Check the source against the module it serves (teacher, K, data) before the first step."""

    def select(self, step: StepView, direction: str) -> DirectionCandidates:
        raise NotImplementedError

    def after_step(self, step: StepView) -> None:
        """Called once per step after every direction was selected (e.g. to queue the batch)."""

    def describe(self) -> str:
        return type(self).__name__


def _merge_extras(parts: Sequence[DirectionCandidates], batch_columns: int) -> tuple[list[Tensor], Extra | None]:
    """Each part's index with its extra columns moved after the earlier parts' extras, and the merged extras."""
    indexes: list[Tensor] = []
    extras: list[Extra] = []
    offset = 0
    for part in parts:
        index = part.index
        if part.extra is not None:
            index = torch.where(index >= batch_columns, index + offset, index)
            extras.append(part.extra)
            offset += int(part.extra.ids.numel())
        indexes.append(index)
    if not extras:
        return indexes, None
    inputs = [extra.teacher_inputs for extra in extras]
    merged_inputs = concat_inputs(inputs) if all(i is not None for i in inputs) else None  # type: ignore[misc]
    extra = Extra(cat_embeddings([e.embeddings for e in extras]), torch.cat([e.ids for e in extras]), merged_inputs)
    return indexes, extra


def _first_known(values: Sequence[Tensor]) -> Tensor:
    """Element-wise first non-NaN of equally shaped tensors (NaN where none is known)."""
    out = values[0].clone()
    for value in values[1:]:
        out = torch.where(torch.isnan(out), value, out)
    return out


def combine(parts: Sequence[DirectionCandidates], batch_columns: int) -> DirectionCandidates:
    """One direction's candidates from several sources: the positive once, then each source's negatives in
    order. A column picked by two sources keeps its first slot; the repeat becomes padding."""
    if len(parts) == 1:
        return parts[0]
    indexes, extra = _merge_extras(parts, batch_columns)
    index = torch.cat([indexes[0][:, :1], *[i[:, 1:] for i in indexes]], dim=1)
    valid = torch.cat([parts[0].valid[:, :1], *[p.valid[:, 1:] for p in parts]], dim=1)
    positive_scores = _first_known([p.teacher[:, :1] for p in parts])
    teacher = torch.cat([positive_scores, *[p.teacher[:, 1:] for p in parts]], dim=1)
    keyed = torch.where(valid, index, -1 - torch.arange(index.shape[1], device=index.device))
    seen_before = (keyed.unsqueeze(2) == keyed.unsqueeze(1)).tril(-1).any(dim=2)
    valid = valid & ~seen_before
    stats = {key: value for part in parts for key, value in part.stats.items()}
    return DirectionCandidates(index, valid, teacher, extra, stats)
