"""Text retrieval metrics against graded judgments (qrels): MRR@k, nDCG@k and Recall@k, as BEIR reports them.

Conventions (those of ``pytrec_eval`` / trec_eval, which BEIR calls):

* every query with judgments counts. A query whose judged passages are all grade 0, or whose relevant
  passages are all absent from the corpus, scores 0 on every metric rather than being skipped; the counts
  are reported (``zero_relevant_queries``, ``unretrievable_queries``);
* a passage is relevant when its grade is > 0; nDCG uses the grades as linear gains with a
  ``log2(rank + 1)`` discount, and the ideal ranking over every judged grade (retrieved or not);
* MRR@k is the reciprocal rank of the first relevant passage within the top k (0 if none), i.e.
  trec_eval's ``recip_rank`` over the run cut to k; Recall@k divides by every relevant judged passage;
* ranks come from :func:`distill.evaluation.ranking.top_k`, which breaks score ties by passage id
  (descending), as trec_eval does.

Values are in percent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch import Tensor

Relevance = Mapping[int, Mapping[int, float]]

__all__ = ["Relevance", "qrels_metrics", "query_metrics"]


def query_metrics(ranked: list[int], judged: Mapping[int, float], mrr_k: int, ndcg_k: int,
                  recall_k: int) -> tuple[float, float, float]:
    """``(MRR@mrr_k, nDCG@ndcg_k, Recall@recall_k)`` of one query as fractions; ``ranked`` are passage ids."""
    relevant = {passage for passage, grade in judged.items() if grade > 0}
    if not relevant:
        return 0.0, 0.0, 0.0
    mrr = 0.0
    for rank, passage in enumerate(ranked[:mrr_k]):
        if passage in relevant:
            mrr = 1.0 / (rank + 1)
            break
    dcg = sum(max(float(judged.get(p, 0.0)), 0.0) / math.log2(rank + 2) for rank, p in enumerate(ranked[:ndcg_k]))
    ideal_gains = sorted((float(g) for g in judged.values() if g > 0), reverse=True)[:ndcg_k]
    ideal = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(ideal_gains))
    recall = len(relevant.intersection(ranked[:recall_k])) / len(relevant)
    return mrr, dcg / ideal if ideal > 0 else 0.0, recall


def qrels_metrics(ranked_ids: Tensor, query_ids: Tensor, relevance: Relevance, corpus_ids: Tensor | None = None,
                  mrr_k: int = 10, ndcg_k: int = 10, recall_k: int = 100) -> dict[str, float]:
    """Mean MRR / nDCG / Recall over the judged queries, in percent, plus query counts.

    Args:
        ranked_ids: ``[Nq, k]`` passage ids per query, best first (``-1`` padding), ``k >= max`` cut-off.
        query_ids: ``[Nq]`` the queries' ids; every query of ``relevance`` must be among them.
        relevance: ``{query id: {passage id: grade}}``.
        corpus_ids: ``[Nc]`` the encoded corpus' ids, to count queries none of whose relevant passages
            can be retrieved (optional).

    Returns ``{"mrr@10", "ndcg@10", "recall@100", "queries", "zero_relevant_queries",
    "unretrievable_queries"}`` (keys follow the cut-offs).
    """
    if min(mrr_k, ndcg_k, recall_k) < 1:
        raise ValueError(f"cut-offs must be >= 1, got mrr_k={mrr_k}, ndcg_k={ndcg_k}, recall_k={recall_k}")
    if ranked_ids.shape[0] != query_ids.numel():
        raise ValueError(f"{ranked_ids.shape[0]} ranked lists for {query_ids.numel()} query ids")
    row_of = {int(q): row for row, q in enumerate(query_ids.tolist())}
    missing = [q for q in relevance if q not in row_of]
    if missing:
        raise ValueError(f"{len(missing)} judged queries (e.g. id {missing[0]}) were not encoded: the query loader "
                         "must hold every query of the qrels")
    corpus = set(corpus_ids.tolist()) if corpus_ids is not None else None
    totals = [0.0, 0.0, 0.0]
    zero_relevant = unretrievable = 0
    for query, judged in relevance.items():
        relevant = [p for p, grade in judged.items() if grade > 0]
        zero_relevant += not relevant
        unretrievable += bool(relevant) and corpus is not None and not any(p in corpus for p in relevant)
        ranked = [p for p in ranked_ids[row_of[query]].tolist() if p >= 0]
        for position, value in enumerate(query_metrics(ranked, judged, mrr_k, ndcg_k, recall_k)):
            totals[position] += value
    count = len(relevance)
    mean = [100.0 * total / count if count else 0.0 for total in totals]
    return {f"mrr@{mrr_k}": mean[0], f"ndcg@{ndcg_k}": mean[1], f"recall@{recall_k}": mean[2],
            "queries": float(count), "zero_relevant_queries": float(zero_relevant),
            "unretrievable_queries": float(unretrievable)}

