"""Hard-negative selection over a step's student score matrix.

For each anchor (a row of ``similarity``) the candidates are its own positive (the diagonal: item i of a
batch is the pair (a_i, b_i)) followed by the K highest-scoring *negatives*; items that are positives of
the anchor (e.g. other captions of the same image, or the same passage listed for two queries) are never
negatives, and an item that fills several columns (an image with two captions in the batch) fills one slot.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Candidates", "clamp_k", "mine_hard_negatives", "pair_positives", "repeated_columns"]


@dataclass
class Candidates:
    """Candidate columns per anchor. Column 0 is the anchor's own positive.

    index: ``[N, 1+K]`` long, column ids into the other side of the step.
    valid: ``[N, 1+K]`` bool, False where fewer than K negatives existed (padding slots).
    """

    index: Tensor
    valid: Tensor

    @property
    def num_negatives(self) -> int:
        return self.index.shape[1] - 1


def clamp_k(k: int, columns: int) -> int:
    """The K a step can mine: at most ``columns - 1`` (every column but the anchor's positive), at least 1."""
    return max(1, min(k, columns - 1))


def pair_positives(anchor_ids: Tensor, anchor_pair_ids: Tensor, column_pair_ids: Tensor, column_ids: Tensor) -> Tensor:
    """``[N, M]`` bool: True where column j is a positive of anchor i.

    Anchor i is the pair ``(anchor_ids[i], anchor_pair_ids[i])`` (its own item, then its partner on the
    other side); column j is the item ``column_ids[j]`` of the pair ``(column_pair_ids[j], column_ids[j])``.
    They are positives when the column's pair shares the anchor's item or the anchor's partner *is* the
    column: image-text, captions of one image share the image; query-passage, rows of one query share it,
    and a passage that is the positive of two queries is a positive of both.
    """
    return (anchor_ids.unsqueeze(1) == column_pair_ids.unsqueeze(0)) | \
        (anchor_pair_ids.unsqueeze(1) == column_ids.unsqueeze(0))


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
        positive_mask: ``[N, M]`` bool, True for every column that is never a negative of the anchor.
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
