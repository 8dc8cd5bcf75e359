"""Two-stage retrieval: each query's first-stage top-``depth`` re-ordered by a second-stage scorer.

The first stage (student dot products, or the teacher's own ITC embeddings) ranks the whole split; the
second stage (the cross-encoder) scores only the top ``depth`` of each list, ``N * depth`` pairs instead of
``N * M``. The re-ordered top stays above the rest of the list, which keeps its first-stage order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from distill import distributed

__all__ = ["rerank"]

PairScorer = Callable[[Tensor, Tensor], Tensor]
"""``(row positions [P], column positions [P]) -> second-stage scores [P]``."""


@torch.no_grad()
def rerank(ranked: Tensor, depth: int, score_pairs: PairScorer, pairs_per_call: int = 1 << 20) -> tuple[Tensor, int]:
    """Re-order the first ``depth`` entries of every row of ``ranked [N, k]`` (column positions, ``-1``
    padding) by ``score_pairs``, descending; ties keep the first-stage order.

    ``score_pairs`` receives blocks of rows with up to ``pairs_per_call`` pairs (a few MB of indices), large
    enough for the scorer to group pairs that share an item (see :meth:`TeacherScorer.score_loaded`). Under
    DDP each process scores every ``W``-th block and the lists are gathered, so the second stage's cost is
    split across processes. Returns the new lists and the pairs scored (all processes together).
    """
    depth = min(depth, ranked.shape[1])
    out = ranked.clone()
    if depth == 0 or ranked.shape[0] == 0:
        return out, 0
    rows_per_call = max(1, min(pairs_per_call // depth, -(-ranked.shape[0] // distributed.world_size())))
    blocks = list(range(0, ranked.shape[0], rows_per_call))
    mine = blocks[distributed.rank()::distributed.world_size()]
    done_rows, done_lists, pairs = [], [], 0
    for start in mine:
        top = ranked[start:start + rows_per_call, :depth]
        valid = top >= 0
        rows = torch.arange(start, start + top.shape[0]).unsqueeze(1).expand_as(top)
        scores = torch.full(top.shape, float("-inf"))
        if bool(valid.any()):
            scores[valid] = score_pairs(rows[valid], top[valid]).float().cpu()
        pairs += int(valid.sum())
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices
        done_rows.append(rows[:, 0])
        done_lists.append(top.gather(1, order))
    if distributed.is_distributed():
        width = ranked.new_zeros((0, depth))
        row_ids = distributed.gather_tensor(torch.cat(done_rows) if done_rows else ranked.new_zeros(0))
        lists = distributed.gather_tensor(torch.cat(done_lists) if done_lists else width)
        pairs = int(distributed.gather_tensor(torch.tensor([pairs])).sum())
    else:
        row_ids, lists = torch.cat(done_rows), torch.cat(done_lists)
    out[row_ids, :depth] = lists
    return out, pairs
