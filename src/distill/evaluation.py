"""Retrieval metrics with several positives per query, and two-stage re-ranking.

Conventions: ``a`` items (e.g. images) are the rows of a score matrix, ``b`` items (captions)
the columns; ``b_to_a[j]`` is the index of the a item that b item j belongs to (each caption
belongs to one image; an image has one or more captions).

* a->b Recall@K: fraction of a items with *any* of their b items in the top K.
* b->a Recall@K: fraction of b items whose a item is in the top K.
* RSUM: the sum of all six Recall@{1,5,10} values, in percent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

DEFAULT_KS = (1, 5, 10)


def first_hit_rank(scores: Tensor, relevant: Callable[[Tensor, Tensor], Tensor], max_k: int,
                   chunk_size: int = 4096) -> Tensor:
    """Rank (0-based) of the first relevant column in each row's top ``max_k``; ``max_k`` if none.

    ``relevant(row_ids[R], col_index[R, k]) -> bool[R, k]`` says which retrieved columns are gold.
    Works in row chunks so memory stays ``O(chunk_size * max_k)`` beyond the score matrix.
    """
    k = min(max_k, scores.shape[1])
    ranks = []
    for start in range(0, scores.shape[0], chunk_size):
        block = scores[start:start + chunk_size]
        top = block.topk(k, dim=1).indices
        rows = torch.arange(start, start + block.shape[0], device=scores.device)
        hits = relevant(rows, top)
        position = torch.where(hits.any(1), hits.float().argmax(1), torch.full_like(rows, max_k))
        ranks.append(position)
    return torch.cat(ranks)


def retrieval_metrics(
    scores_a2b: Tensor,
    b_to_a: Tensor,
    scores_b2a: Tensor | None = None,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, float]:
    """Recall@K both ways and RSUM, in percent.

    Args:
        scores_a2b: ``[Na, Nb]`` scores used to rank b items for each a item.
        b_to_a: ``[Nb]`` long, the a item of each b item.
        scores_b2a: ``[Nb, Na]`` scores to rank a items for each b item; defaults to ``scores_a2b.T``
            (they differ after two-stage re-ranking, which is not symmetric).
        ks: cut-offs.
    """
    num_a, num_b = scores_a2b.shape
    if b_to_a.shape != (num_b,):
        raise ValueError(f"b_to_a must have shape ({num_b},), got {tuple(b_to_a.shape)}")
    if num_b and (int(b_to_a.min()) < 0 or int(b_to_a.max()) >= num_a):
        raise ValueError(f"b_to_a holds ids outside [0, {num_a})")
    owners = torch.bincount(b_to_a, minlength=num_a)
    if bool((owners == 0).any()):
        missing = int((owners == 0).sum())
        raise ValueError(f"{missing} a item(s) have no positive b item: every query needs a gold answer")
    if scores_b2a is None:
        scores_b2a = scores_a2b.T
    b_to_a = b_to_a.to(scores_a2b.device)
    max_k = max(ks)
    a2b_rank = first_hit_rank(scores_a2b, lambda rows, top: b_to_a[top] == rows.unsqueeze(1), max_k)
    b2a_rank = first_hit_rank(scores_b2a, lambda rows, top: top == b_to_a[rows].unsqueeze(1), max_k)
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"a2b_R@{k}"] = 100.0 * float((a2b_rank < k).float().mean())
    for k in ks:
        metrics[f"b2a_R@{k}"] = 100.0 * float((b2a_rank < k).float().mean())
    metrics["rsum"] = sum(metrics[f"{d}_R@{k}"] for d in ("a2b", "b2a") for k in ks)
    return metrics


@torch.no_grad()
def rerank_top_k(first_stage: Tensor, k: int, score_pairs: Callable[[Tensor, Tensor], Tensor],
                 chunk_rows: int = 64) -> tuple[Tensor, int]:
    """Re-rank each row's top-``k`` columns with a second-stage scorer.

    Args:
        first_stage: ``[N, M]`` first-stage scores (e.g. student dot products).
        k: how many columns per row the second stage scores.
        score_pairs: ``(row_index[P], col_index[P]) -> Tensor[P]`` second-stage scores.

    Returns:
        (``[N, M]`` scores whose top-``k`` per row are ordered by the second stage and stay above
        every other column, number of pairs the second stage scored = ``N * min(k, M)``).
    """
    num_rows, num_cols = first_stage.shape
    k = min(k, num_cols)
    top = first_stage.topk(k, dim=1).indices
    reranked = torch.empty_like(top, dtype=torch.float32)
    for start in range(0, num_rows, chunk_rows):
        block = top[start:start + chunk_rows]
        rows = torch.arange(start, start + block.shape[0], device=top.device).repeat_interleave(k)
        reranked[start:start + block.shape[0]] = score_pairs(rows, block.reshape(-1)).float().view(-1, k)
    # Shift second-stage scores above all first-stage scores, keeping each stage's order.
    out = first_stage.float() - first_stage.float().max() - 1.0
    offset = reranked.min() if reranked.numel() else 0.0
    out.scatter_(1, top, reranked - offset + 1.0)
    return out, num_rows * k


def ranking_scores(
    first_stage: Tensor,
    k: int,
    score_pairs: Callable[[Tensor, Tensor], Tensor],
) -> tuple[Tensor, Tensor, int]:
    """Two-stage scores both ways: each side's top-``k`` by ``first_stage`` re-scored by ``score_pairs``.

    Args:
        first_stage: ``[Na, Nb]`` first-stage scores.
        score_pairs: ``(a_index[P], b_index[P]) -> Tensor[P]`` second-stage scores of (a, b) pairs.

    Returns: (``scores_a2b [Na, Nb]``, ``scores_b2a [Nb, Na]``, pairs scored by the second stage).
    """
    a2b, pairs_a2b = rerank_top_k(first_stage, k, score_pairs)
    b2a, pairs_b2a = rerank_top_k(first_stage.T, k, lambda rows, cols: score_pairs(cols, rows))
    return a2b, b2a, pairs_a2b + pairs_b2a
