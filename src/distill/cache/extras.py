"""Cached candidates as extra items: each anchor of a random batch brings its cached candidates along.

Dense retrievers train on mined negatives this way (DPR, ANCE, Tevatron, sentence-transformers' mined
triplets): a batch holds ``B`` random pairs, so its in-batch negatives stay random, and every anchor adds
``n`` of its mined candidates as *extra* items that the student encodes too. Here the candidates and their
teacher scores come from the teacher-score cache, so the teacher never runs in training.

For the items ``I`` of a batch, :class:`CandidateExtras` returns ``batch[CACHE_EXTRA_KEY]``:

* ``b`` / ``b_id``: the other-side inputs and ids of ``n`` cached a2b candidates of each item's a id,
  ``[B*n]`` (row ``i*n + j`` is item ``i``'s ``j``-th chosen candidate); the a2b direction's extra columns;
* ``a`` / ``a_id``: the same for ``n`` cached b2a candidates of each item's b id (the b2a direction's extra
  columns).

Which ``n`` of the K (``order``): ``"teacher"`` (default) takes the ``n`` the teacher scores highest, the
teacher-selected hard negatives of DCD; ``"student"`` the first ``n`` in cache order, the building student's
top ``n``. Measured on the shapes grid split (docs/benchmarks.md): the teacher ranks an anchor's binding twin
first among its cached candidates far more often than the student does, so the teacher's top 2 hold the twin
for more anchors than the student's top 2.

A slot whose cached candidate is padding (id -1) loads the anchor's own item and keeps the id -1, so it
never matches a candidate (:func:`~distill.training.candidates.cached.resolve_cached_candidates`) and every
batch has exactly ``B*n`` extras per side (equal shapes across DDP processes). The student encodes
``B*(1+n)`` items per side per step instead of ``B``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from distill.errors import InputError

__all__ = ["CandidateExtras", "ORDERS"]

ORDERS = ("teacher", "student")


class CandidateExtras:
    """Loads ``per_anchor`` cached candidates per direction for each batched item (see the module docstring).

    Args:
        dataset: the wrapped data module's train dataset (items in cache order).
        collate: its collate function (``list[example] -> batch`` with ``a``, ``b``, ``a_id``, ``b_id``).
        tables: the per-item cache tables (:class:`~distill.cache.data.CandidateTables`).
        per_anchor: ``n``, candidates per anchor and direction (at most the cache's K).
        order: ``"teacher"`` (the ``n`` highest teacher scores) or ``"student"`` (the first ``n`` cached).
    """

    def __init__(self, dataset: Dataset[Any], collate: Callable[[list[Any]], Mapping[str, Any]], tables: Any,
                 per_anchor: int, order: str = "teacher") -> None:
        width = int(tables.a2b_ids.shape[1])
        if not 1 <= per_anchor <= width:
            raise InputError(f"data.init_args.candidates_per_anchor must be between 1 and the cache's K = {width}, got "
                             f"{per_anchor}: lower it, or build the cache with cache-teacher --k {per_anchor}")
        if order not in ORDERS:
            raise InputError(f"data.init_args.candidate_order must be one of {list(ORDERS)}, got {order!r}")
        self.dataset = dataset
        self.collate = collate
        self.tables = tables
        self.per_anchor = int(per_anchor)
        self.order = order

    def chosen(self, ids: Tensor, scores: Tensor) -> Tensor:
        """The ``n`` candidate ids kept of each row of ``ids`` ``[B, K]`` (teacher ``scores`` ``[B, K]``), ``[B, n]``;
        padding (-1) last."""
        if self.order == "student":
            return ids[:, :self.per_anchor]
        keyed = scores.float().masked_fill(ids < 0, float("-inf"))
        keep = torch.sort(keyed, dim=1, descending=True, stable=True).indices[:, :self.per_anchor]
        return ids.gather(1, keep)

    @staticmethod
    def _holders(anchors: Tensor, ids: Tensor, holder_of: Callable[[int], int]) -> tuple[list[int], Tensor]:
        """For candidate ids ``[B, n]``: the dataset item to load for each (its holder, else the anchor's own item)
        and ``[B*n]`` whether a holder was found (padding and ids outside the split have none)."""
        holders = [holder_of(candidate) if candidate >= 0 else -1 for candidate in ids.reshape(-1).tolist()]
        anchor_rows = anchors.unsqueeze(1).expand_as(ids).reshape(-1).tolist()
        load = [holder if holder >= 0 else int(anchor) for holder, anchor in zip(holders, anchor_rows)]
        return load, torch.tensor([holder >= 0 for holder in holders], dtype=torch.bool)

    def _side(self, holders: Sequence[int], side: str) -> Any:
        batch = self.collate([self.dataset[item] for item in holders])
        if int(batch[f"{side}_id"].shape[0]) != len(holders):
            raise ValueError("the wrapped collate function dropped extra items (unreadable images?); cached "
                             "candidates need every item")
        return batch[side]

    def __call__(self, items: Tensor) -> dict[str, Any]:
        """``batch[CACHE_EXTRA_KEY]`` for the batched ``items`` (``[B]`` long)."""
        tables = self.tables
        b_ids = self.chosen(tables.a2b_ids[items], tables.a2b_scores[items])  # [B, n] b ids: a2b candidates
        a_ids = self.chosen(tables.b2a_ids[items], tables.b2a_scores[items])  # [B, n] a ids: b2a candidates
        b_holders, resolved_b = self._holders(items, b_ids, lambda b_id: tables.item_of_b.get(b_id, -1))
        a_holders, resolved_a = self._holders(items, a_ids, lambda a_id: (tables.items_of_a.get(a_id) or [-1])[0])
        return {
            "b": self._side(b_holders, "b"), "b_id": torch.where(resolved_b, b_ids.reshape(-1), -1),
            "a": self._side(a_holders, "a"), "a_id": torch.where(resolved_a, a_ids.reshape(-1), -1),
        }
