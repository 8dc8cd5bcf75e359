"""Hard-negative selection over a batch's student score matrix.

For each anchor (a row of ``similarity``) the candidates are its own positive (the diagonal:
item i of a batch is the pair (a_i, b_i)) followed by the K highest-scoring *negatives*; items
that are positives of the anchor (e.g. other captions of the same image) are never negatives.
"""

from __future__ import annotations

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
