"""Candidates mined by the current student: over the batch, or over the batch plus earlier batches."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
from torch import Tensor

from distill.inputs import Inputs, concat_inputs
from distill import distributed
from distill.training.embeddings import Embeddings, cat_embeddings, direction_scores
from distill.training.candidates.base import CandidateSource, DirectionCandidates, Extra, StepView, other_side
from distill.training.mining import clamp_k, mine_hard_negatives, pair_positives, repeated_columns

__all__ = ["InBatchNegatives", "MemoryQueue"]


class InBatchNegatives(CandidateSource):
    """Per anchor, the K (``num_hard_negatives``) columns of the batch the student scores highest.

    Positives of the anchor (same a id or same b id) are never negatives, and an item held by several
    columns (an image with two captions in the batch) fills one slot. The live teacher scores the
    ``B x (1+K)`` chosen pairs per direction, never ``B x B``.
    """

    def select(self, step: StepView, direction: str) -> DirectionCandidates:
        anchors, columns, scores = other_side(step, direction)
        mask = pair_positives(anchors.ids, anchors.pair_ids, columns.pair_ids, columns.ids)
        mask = mask | repeated_columns(columns.ids).unsqueeze(0)
        candidates = mine_hard_negatives(scores, mask, clamp_k(step.k, step.size))
        return DirectionCandidates.unscored(candidates.index, candidates.valid)


@dataclass
class QueuedItems:
    """Items of earlier batches on one side: ``embeddings [Q, D]`` (detached; or token embeddings), their own
    ``ids [Q]`` and the other side's ``pair_ids [Q]``, and the teacher's view of them (``None`` without a live
    teacher)."""

    embeddings: Embeddings
    ids: Tensor
    pair_ids: Tensor
    inputs: Inputs | None


class MemoryQueue(CandidateSource):
    """Mines over the batch plus about ``size`` items per side kept from earlier batches (MoCo-style memory).

    Whole batches are kept: after a step the queue holds the newest batches totalling at most ``size``
    items (at least the newest batch). Queued embeddings are detached and were computed by an earlier
    student (they go stale slowly at small learning rates); the teacher scores queued items from their
    stored inputs, so teacher scores are exact. The queue is not checkpointed: a resumed run refills it
    within ``size / batch`` steps. Single process only (the queue holds this process's items).

    Args:
        size: items per side to keep (>= 1).
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"MemoryQueue size must be >= 1, got {size}")
        self.size = size
        self._batches: deque[tuple[QueuedItems, QueuedItems]] = deque()

    def describe(self) -> str:
        return f"MemoryQueue(size={self.size})"

    def __len__(self) -> int:
        return sum(int(a.ids.numel()) for a, _ in self._batches)

    def setup(self, module: object, stage: str) -> None:
        if distributed.is_distributed():
            raise ValueError("MemoryQueue keeps one process's items and does not run under DDP: use "
                             "InBatchNegatives (the global batch) or CachedCandidates")

    def queued(self, side: str) -> QueuedItems | None:
        """Everything queued on side ``a`` or ``b``, oldest first (``None`` when empty)."""
        if not self._batches:
            return None
        parts = [pair[0] if side == "a" else pair[1] for pair in self._batches]
        inputs = [p.inputs for p in parts]
        return QueuedItems(cat_embeddings([p.embeddings for p in parts]), torch.cat([p.ids for p in parts]),
                           torch.cat([p.pair_ids for p in parts]),
                           concat_inputs(inputs) if all(i is not None for i in inputs) else None)  # type: ignore[misc]

    def select(self, step: StepView, direction: str) -> DirectionCandidates:
        anchors, columns, scores = other_side(step, direction)
        queued = self.queued("b" if direction == "a2b" else "a")
        if queued is None:
            mask = pair_positives(anchors.ids, anchors.pair_ids, columns.pair_ids, columns.ids)
            mask = mask | repeated_columns(columns.ids).unsqueeze(0)
            candidates = mine_hard_negatives(scores, mask, clamp_k(step.k, step.size))
            return DirectionCandidates.unscored(candidates.index, candidates.valid,
                                                stats={"queue_negatives_share": 0.0})
        all_ids = torch.cat([columns.ids, queued.ids])
        all_pair_ids = torch.cat([columns.pair_ids, queued.pair_ids])
        extended = torch.cat([scores, direction_scores(step.score, anchors.embeddings, queued.embeddings, direction)],
                             dim=1)
        mask = pair_positives(anchors.ids, anchors.pair_ids, all_pair_ids, all_ids)
        mask = mask | repeated_columns(all_ids).unsqueeze(0)
        candidates = mine_hard_negatives(extended, mask, clamp_k(step.k, extended.shape[1]))
        from_queue = ((candidates.index[:, 1:] >= step.size) & candidates.valid[:, 1:]).float().mean()
        extra = Extra(queued.embeddings, queued.ids, queued.inputs)
        return DirectionCandidates.unscored(candidates.index, candidates.valid, extra,
                                            {"queue_negatives_share": float(from_queue)})

    @torch.no_grad()
    def after_step(self, step: StepView) -> None:
        def items(side: str) -> QueuedItems:
            view = step.a if side == "a" else step.b
            inputs = {k: v.detach() for k, v in view.teacher_inputs.items()} if step.live_teacher else None
            return QueuedItems(view.embeddings.detach(), view.ids.detach(), view.pair_ids.detach(), inputs)

        self._batches.append((items("a"), items("b")))
        while len(self._batches) > 1 and len(self) > self.size:
            self._batches.popleft()
