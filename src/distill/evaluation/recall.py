"""Recall@K with several positives per query, both ways, and RSUM (image-text retrieval).

Conventions: ``a`` items (images) are queries of the a->b direction and answers of b->a; ``b`` items
(captions) the other way round; ``b_owner[j]`` is the a item that b item j belongs to (each caption
belongs to one image; an image has one or more captions).

* a->b Recall@K: fraction of a items with *any* of their b items in the top K;
* b->a Recall@K: fraction of b items whose a item is in the top K;
* RSUM: the sum of all six Recall@{1,5,10} values, in percent.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

DEFAULT_KS = (1, 5, 10)

__all__ = ["DEFAULT_KS", "first_hit", "recall_metrics", "retrieval_metrics"]


def first_hit(hits: Tensor) -> Tensor:
    """``bool [N, k]`` (whether each ranked item is relevant) -> 0-based rank of the first hit (a huge number
    when there is none, so that no cut-off counts it, whatever the list length)."""
    none = torch.full((hits.shape[0],), torch.iinfo(torch.long).max, dtype=torch.long)
    return torch.where(hits.any(1), hits.float().argmax(1), none)


def check_owners(b_owner: Tensor, num_a: int) -> None:
    """Every b item belongs to an existing a item, and every a item has at least one b item."""
    if b_owner.numel() and (int(b_owner.min()) < 0 or int(b_owner.max()) >= num_a):
        raise ValueError(f"b_owner holds ids outside [0, {num_a})")
    missing = int((torch.bincount(b_owner, minlength=num_a) == 0).sum())
    if missing:
        raise ValueError(f"{missing} a item(s) have no positive b item: every query needs a gold answer")


def recall_metrics(a2b: Tensor, b2a: Tensor, b_owner: Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Recall@K both ways and RSUM, in percent, from ranked lists.

    Args:
        a2b: ``[Na, k]`` each a item's ranked b positions (``-1`` padding); ``k >= max(ks)`` or all of Nb.
        b2a: ``[Nb, k]`` each b item's ranked a positions.
        b_owner: ``[Nb]`` long, the a item of each b item.
    """
    num_a = a2b.shape[0]
    check_owners(b_owner, num_a)
    rows_a = torch.arange(num_a).unsqueeze(1)
    a2b_hits = (a2b >= 0) & (b_owner[a2b.clamp(min=0)] == rows_a)
    b2a_hits = (b2a >= 0) & (b2a == b_owner.unsqueeze(1))
    a2b_rank, b2a_rank = first_hit(a2b_hits), first_hit(b2a_hits)
    metrics: dict[str, float] = {}
    for name, rank in (("a2b", a2b_rank), ("b2a", b2a_rank)):
        for k in ks:
            metrics[f"{name}_R@{k}"] = 100.0 * float((rank < k).float().mean()) if rank.numel() else 0.0
    metrics["rsum"] = sum(metrics[f"{d}_R@{k}"] for d in ("a2b", "b2a") for k in ks)
    return metrics


def retrieval_metrics(scores_a2b: Tensor, b_owner: Tensor, scores_b2a: Tensor | None = None,
                      ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """:func:`recall_metrics` of full score matrices (small splits, tests and benchmarks).

    ``scores_a2b [Na, Nb]`` ranks b items per a item; ``scores_b2a [Nb, Na]`` (default ``scores_a2b.T``)
    ranks a items per b item. Ties are broken by the lower position, as ``torch.sort(stable=True)`` does.
    """
    num_a, num_b = scores_a2b.shape
    if b_owner.shape != (num_b,):
        raise ValueError(f"b_owner must have shape ({num_b},), got {tuple(b_owner.shape)}")
    scores_b2a = scores_a2b.T if scores_b2a is None else scores_b2a
    depth = max(ks)
    a2b = torch.sort(scores_a2b.float(), dim=1, descending=True, stable=True).indices[:, :depth]
    b2a = torch.sort(scores_b2a.float(), dim=1, descending=True, stable=True).indices[:, :depth]
    return recall_metrics(a2b.cpu(), b2a.cpu(), b_owner.cpu(), ks)
