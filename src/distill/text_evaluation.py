"""Text retrieval metrics (MRR@10, nDCG@10, Recall@100) over a query set and a corpus.

Each query's passages are ranked by dot product; the top ``max(k)``, scored by rank, go to
torchmetrics' retrieval metrics together with the query's judged passages that were not
retrieved (ranked below every retrieved one), so each metric is exact for its cut-off, including
judged passages absent from the encoded corpus, which count as never retrieved. Queries without a relevant
passage (grade > 0) are skipped, as in BEIR's evaluation. nDCG uses the grades as linear gains;
MRR and Recall treat grade > 0 as relevant. Values are in percent.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from torchmetrics.retrieval import RetrievalMRR, RetrievalNormalizedDCG, RetrievalRecall


def text_retrieval_metrics(
    query_embeddings: Tensor,
    corpus_embeddings: Tensor,
    query_ids: Tensor,
    corpus_ids: Tensor,
    relevance: Mapping[int, Mapping[int, float]],
    mrr_k: int = 10,
    ndcg_k: int = 10,
    recall_k: int = 100,
    chunk_size: int = 256,
) -> dict[str, float]:
    """MRR@``mrr_k``, nDCG@``ndcg_k`` and Recall@``recall_k`` in percent, plus query counts.

    Args:
        query_embeddings: ``[Nq, D]``; corpus_embeddings: ``[Nc, D]``.
        query_ids: ``[Nq]`` long ids of the queries; corpus_ids: ``[Nc]`` long ids of the passages.
        relevance: ``{query id: {passage id: grade}}``.

    Returns ``{"mrr@10", "ndcg@10", "recall@100", "queries", "skipped_queries"}`` (keys follow the ks).
    """
    if query_embeddings.shape[0] != query_ids.numel() or corpus_embeddings.shape[0] != corpus_ids.numel():
        raise ValueError(
            f"embeddings and ids disagree: queries {tuple(query_embeddings.shape)} vs {query_ids.numel()} ids, "
            f"corpus {tuple(corpus_embeddings.shape)} vs {corpus_ids.numel()} ids"
        )
    if min(mrr_k, ndcg_k, recall_k) < 1:
        raise ValueError(f"cut-offs must be >= 1, got mrr_k={mrr_k}, ndcg_k={ndcg_k}, recall_k={recall_k}")
    max_k = max(mrr_k, ndcg_k, recall_k)
    num_corpus = corpus_ids.numel()
    take = min(max_k, num_corpus)
    corpus_list = corpus_ids.tolist()
    preds: list[Tensor] = []
    grades: list[Tensor] = []
    indexes: list[Tensor] = []
    skipped = 0
    evaluated = 0
    corpus_embeddings = corpus_embeddings.float()
    for start in range(0, query_ids.numel(), chunk_size):
        block = query_embeddings[start:start + chunk_size].float() @ corpus_embeddings.T
        top_index = block.topk(take, dim=1).indices.cpu()
        for row in range(block.shape[0]):
            judged = relevance.get(int(query_ids[start + row]), {})
            if not any(grade > 0 for grade in judged.values()):
                skipped += 1
                continue
            retrieved = [corpus_list[i] for i in top_index[row].tolist()]
            seen = set(retrieved)
            missing = [p for p, grade in judged.items() if grade > 0 and p not in seen]
            # Fillers keep unretrieved judged passages below rank max_k when the corpus is smaller.
            fillers = max_k - take if missing else 0
            length = take + fillers + len(missing)
            # The list is already in rank order; torchmetrics gets positive, strictly decreasing
            # scores (it treats items scored <= 0 as irrelevant).
            scores = torch.arange(length, 0, -1, dtype=torch.float32)
            gains = [max(float(judged.get(p, 0.0)), 0.0) for p in retrieved] + [0.0] * fillers
            gains += [float(judged[p]) for p in missing]
            preds.append(scores)
            grades.append(torch.tensor(gains))
            indexes.append(torch.full((scores.numel(),), evaluated, dtype=torch.long))
            evaluated += 1
    result = {f"mrr@{mrr_k}": 0.0, f"ndcg@{ndcg_k}": 0.0, f"recall@{recall_k}": 0.0}
    if evaluated:
        pred = torch.cat(preds)
        gain = torch.cat(grades)
        index = torch.cat(indexes)
        relevant = gain > 0
        result[f"mrr@{mrr_k}"] = 100.0 * float(RetrievalMRR(top_k=mrr_k)(pred, relevant, indexes=index))
        result[f"ndcg@{ndcg_k}"] = 100.0 * float(RetrievalNormalizedDCG(top_k=ndcg_k)(pred, gain, indexes=index))
        result[f"recall@{recall_k}"] = 100.0 * float(RetrievalRecall(top_k=recall_k)(pred, relevant, indexes=index))
    result["queries"] = float(evaluated)
    result["skipped_queries"] = float(skipped)
    return result
