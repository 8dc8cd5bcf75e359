"""The two evaluators a recipe picks from (``model.init_args.evaluator``): image-text recall and qrels metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from distill.evaluation.buffer import EncodedSplit
from distill.evaluation.evaluator import EvalContext, RetrievalEvaluator
from distill.evaluation.qrels import qrels_metrics
from distill.evaluation.ranking import KeyMask, pairs_mask
from distill.evaluation.recall import DEFAULT_KS, recall_metrics

__all__ = ["QrelsEvaluator", "RecallEvaluator"]


class RecallEvaluator(RetrievalEvaluator):
    """Image-text retrieval with several positives per query: Recall@K both ways and RSUM.

    A caption's image is its one relevant item; an image's captions are all relevant to it (a hit when
    any is in the top K). Batches are pairs (``a``, ``b``, ``a_id``, ``b_id``).

    Args:
        ks: the Recall cut-offs; the other arguments are :class:`RetrievalEvaluator`'s.
    """

    directions = ("a2b", "b2a")

    def __init__(self, ks: Sequence[int] = DEFAULT_KS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not ks or min(ks) < 1:
            raise ValueError(f"RecallEvaluator ks must be >= 1, got {list(ks)}")
        self.ks = tuple(int(k) for k in ks)

    @property
    def main_metric(self) -> str:
        return "rsum"

    def depth(self) -> int:
        return max(self.ks)

    def _owner(self, split: EncodedSplit) -> Tensor:
        if split.b_owner is None:
            raise ValueError("RecallEvaluator needs pair batches (a, b, a_id, b_id); for query and corpus loaders "
                             "with judgments use distill.evaluation.QrelsEvaluator")
        return split.b_owner

    def metrics(self, split: EncodedSplit, lists: Mapping[str, Tensor], ctx: EvalContext) -> dict[str, float]:
        keep = split.b_keep
        return recall_metrics(lists["a2b"], lists["b2a"][keep], self._owner(split)[keep], self.ks)

    def positives(self, split: EncodedSplit, ctx: EvalContext) -> KeyMask:
        owner = self._owner(split)
        return lambda rows, start, stop: owner[start:stop].unsqueeze(0) == rows.unsqueeze(1)


class QrelsEvaluator(RetrievalEvaluator):
    """Query-passage retrieval against graded judgments: MRR@k, nDCG@k, Recall@k (BEIR's conventions, see
    :mod:`distill.evaluation.qrels`).

    Batches are queries (``a``, ``a_id``) and corpus passages (``b``, ``b_id``) from separate loaders; the
    judgments come from the data module's ``relevance(stage)`` (``{query id: {passage id: grade}}``).

    Args:
        mrr_k / ndcg_k / recall_k: cut-offs; the other arguments are :class:`RetrievalEvaluator`'s.
    """

    directions = ("a2b",)

    def __init__(self, mrr_k: int = 10, ndcg_k: int = 10, recall_k: int = 100, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if min(mrr_k, ndcg_k, recall_k) < 1:
            raise ValueError(f"QrelsEvaluator cut-offs must be >= 1, got {mrr_k}, {ndcg_k}, {recall_k}")
        self.mrr_k, self.ndcg_k, self.recall_k = mrr_k, ndcg_k, recall_k

    @property
    def main_metric(self) -> str:
        return f"ndcg@{self.ndcg_k}"

    def depth(self) -> int:
        return max(self.mrr_k, self.ndcg_k, self.recall_k)

    @staticmethod
    def _relevance(ctx: EvalContext) -> Mapping[int, Mapping[int, float]]:
        if ctx.relevance is None:
            raise ValueError("QrelsEvaluator reads the data module's relevance(stage) ({query id: {passage id: "
                             "grade}}), which this data module lacks: use distill.data.BeirTextDataModule")
        return ctx.relevance()

    def metrics(self, split: EncodedSplit, lists: Mapping[str, Tensor], ctx: EvalContext) -> dict[str, float]:
        ranked = lists["a2b"]
        ids = torch.where(ranked >= 0, split.b_ids[ranked.clamp(min=0)], torch.full_like(ranked, -1))
        relevance = self._relevance(ctx)
        if ctx.partial:  # a sanity check or limited batches: score the queries that were encoded
            encoded = set(split.a_ids.tolist())
            relevance = {query: judged for query, judged in relevance.items() if query in encoded}
        return qrels_metrics(ids, split.a_ids, relevance, split.b_ids[split.b_keep],
                             self.mrr_k, self.ndcg_k, self.recall_k)

    def positives(self, split: EncodedSplit, ctx: EvalContext) -> KeyMask:
        relevance = self._relevance(ctx)
        position = {value: row for row, value in enumerate(split.b_ids.tolist())}
        pairs = [(row, position[p]) for row, q in enumerate(split.a_ids.tolist())
                 for p, grade in relevance.get(q, {}).items() if grade > 0 and p in position]
        rows = torch.tensor([r for r, _ in pairs], dtype=torch.long)
        cols = torch.tensor([c for _, c in pairs], dtype=torch.long)
        return pairs_mask(rows, cols)
