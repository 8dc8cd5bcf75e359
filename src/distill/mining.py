"""Hard-negative selection over a batch's student score matrix.

For each anchor (a row of ``similarity``) the candidates are its own positive (the diagonal:
item i of a batch is the pair (a_i, b_i)) followed by the K highest-scoring *negatives*; items
that are positives of the anchor (e.g. other captions of the same image) are never negatives.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Candidates:
    """Candidate columns per anchor. Column 0 is the anchor's own positive.

    index: ``[N, 1+K]`` long, column ids into the other side of the batch.
    valid: ``[N, 1+K]`` bool, False where fewer than K negatives existed (padding slots).
    """

    index: Tensor
    valid: Tensor

    @property
    def num_negatives(self) -> int:
        return self.index.shape[1] - 1


def positive_mask_from_ids(a_ids: Tensor, b_owner_ids: Tensor) -> Tensor:
    """``[B], [B] -> [B, B]`` bool: True where a_i and b_j belong to the same item id."""
    return a_ids.unsqueeze(1) == b_owner_ids.unsqueeze(0)


def repeated_columns(ids: Tensor) -> Tensor:
    """``[M] -> [M]`` bool: True for every column whose id already occurred in an earlier column.

    A batch holding several captions of one image holds that image several times; masking the
    repeats keeps one image from filling several of a caption's K negative slots.
    """
    order = torch.arange(ids.numel(), device=ids.device)
    same = ids.unsqueeze(0) == ids.unsqueeze(1)  # [M, M]
    earlier = same & (order.unsqueeze(0) < order.unsqueeze(1))
    return earlier.any(dim=1)


@torch.no_grad()
def mine_hard_negatives(similarity: Tensor, positive_mask: Tensor, k: int) -> Candidates:
    """Per row, the diagonal positive and the top-``k`` negatives by student score.

    Args:
        similarity: ``[N, M]`` student scores (rows are anchors); N <= M, anchor i's positive is column i.
        positive_mask: ``[N, M]`` bool, True for every positive of the anchor (never mined).
        k: number of hard negatives per anchor; rows with fewer negatives get padding slots
           marked invalid (their index points at the positive, so gathers stay in range).
    """
    if k < 1:
        raise ValueError(f"the number of hard negatives k must be >= 1, got {k}")
    if similarity.shape != positive_mask.shape:
        raise ValueError(f"similarity {tuple(similarity.shape)} and positive_mask {tuple(positive_mask.shape)} differ")
    rows, cols = similarity.shape
    if rows > cols:
        raise ValueError(f"need at least as many columns as anchors, got {rows}x{cols}")
    if not bool(positive_mask.diagonal().all()):
        raise ValueError("positive_mask must be True on the diagonal (item i of a batch is the pair (a_i, b_i))")
    take = min(k, cols)
    masked = similarity.detach().float().masked_fill(positive_mask, float("-inf"))
    neg_scores, neg_index = masked.topk(take, dim=1)
    neg_valid = torch.isfinite(neg_scores)
    if take < k:
        pad = k - take
        neg_index = torch.cat([neg_index, neg_index.new_zeros(rows, pad)], dim=1)
        neg_valid = torch.cat([neg_valid, neg_valid.new_zeros(rows, pad)], dim=1)
    diagonal = torch.arange(rows, device=similarity.device).unsqueeze(1)
    neg_index = torch.where(neg_valid, neg_index, diagonal)
    index = torch.cat([diagonal, neg_index], dim=1)
    valid = torch.cat([torch.ones_like(neg_valid[:, :1]), neg_valid], dim=1)
    return Candidates(index=index, valid=valid)


@dataclass
class QueueSide:
    """One side of the queue: embeddings ``[Q, D]``, the teacher's inputs for them, and item ids ``[Q]``."""

    embeddings: Tensor
    inputs: dict[str, Tensor]
    ids: Tensor


class NegativeQueue:
    """A FIFO of about the last ``size`` items per side from earlier batches (MoCo-style memory).

    Whole batches are kept: after a push the queue holds the newest batches totalling at most
    ``size`` items (at least the newest batch).

    Mining over ``[batch | queue]`` gives each anchor more candidates than one batch holds. Queue
    embeddings are detached and were computed by an earlier student (they go stale slowly at small
    learning rates); the teacher scores queue items from their stored inputs, so teacher scores are
    exact. The queue is not checkpointed: a resumed run refills it within ``size / batch`` steps.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"the negative queue size must be >= 1, got {size}")
        self.size = size
        self._batches: deque[tuple[QueueSide, QueueSide]] = deque()

    def __len__(self) -> int:
        return sum(int(a.ids.numel()) for a, _ in self._batches)

    @torch.no_grad()
    def push(self, a: QueueSide, b: QueueSide) -> None:
        def detach(side: QueueSide) -> QueueSide:
            return QueueSide(side.embeddings.detach(), {k: v.detach() for k, v in side.inputs.items()}, side.ids.detach())

        self._batches.append((detach(a), detach(b)))
        while len(self._batches) > 1 and len(self) > self.size:
            self._batches.popleft()

    def sides(self) -> tuple[QueueSide, QueueSide] | None:
        """Everything queued, oldest first, as one ``QueueSide`` per side (``None`` when empty)."""
        if not self._batches:
            return None
        from distill.eval_buffer import concat_inputs

        def merge(parts: list[QueueSide]) -> QueueSide:
            return QueueSide(torch.cat([p.embeddings for p in parts]), concat_inputs([p.inputs for p in parts]),
                             torch.cat([p.ids for p in parts]))

        return merge([a for a, _ in self._batches]), merge([b for _, b in self._batches])
