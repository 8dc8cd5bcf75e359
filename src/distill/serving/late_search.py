"""Search for a late-interaction student: FAISS candidate generation over token vectors, then exact re-scoring.

As ColBERTv2 / PLAID serve ColBERT, in two stages:

1. **candidates**: every document token vector is in one FAISS inner-product index (``factory``: ``"Flat"``, exact,
   or e.g. ``"IVF64,Flat"`` with ``nprobe``); each valid query token retrieves its ``tokens_per_query_token``
   nearest document tokens, and the documents owning them are the query's candidates;
2. **exact scores**: the student's own late-interaction score (``score(query, documents) -> [1, C]``, e.g.
   :meth:`~distill.students.LateInteractionEncoder.score`) ranks the candidates; the top ``k`` are returned
   (ties by document position, larger first, as :func:`~distill.evaluation.ranking.top_k` breaks them).

A document missing from the candidates is never ranked, so recall depends on ``tokens_per_query_token`` (and
``nprobe``); with a flat index and ``tokens_per_query_token`` >= every document token the result equals the
exhaustive :func:`~distill.evaluation.late.late_top_k`. Memory: the index holds ``S x D`` float32 (``S`` document
tokens) plus ``S`` owner ids (8 bytes each); a query scores at most ``Tq x tokens_per_query_token`` documents.

This is the in-memory form (a split's :class:`~distill.evaluation.late.TokenTable`); ``distill index`` writes the
same two-stage search to an index folder, streamed and memory-mapped (:mod:`distill.serving.index.late`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from distill.evaluation.late import TokenTable
from distill.evaluation.ranking import Ranking, order_by_score_then_id
from distill.students.late_interaction import TokenEmbeddings

__all__ = ["LateInteractionIndex"]

Score = Callable[[TokenEmbeddings, TokenEmbeddings], Tensor]


class LateInteractionIndex:
    """Documents' token vectors in a FAISS index, searched PLAID-style (module docstring).

    Args:
        documents: the documents' valid token vectors (:class:`~distill.evaluation.late.TokenTable`).
        score: the student's ``score(queries, documents) -> [Nq, Nd]``.
        factory: a FAISS ``index_factory`` string over inner products (``"Flat"``: exact neighbours).
        nprobe: inverted lists searched per query token (IVF factories only).
    """

    def __init__(self, documents: TokenTable, score: Score, factory: str = "Flat", nprobe: int = 8) -> None:
        import faiss

        if len(documents) == 0:
            raise ValueError("a late-interaction index needs at least one document")
        self.documents, self.score = documents, score
        vectors = np.ascontiguousarray(documents.flat.float().numpy())
        self.owners = torch.repeat_interleave(torch.arange(len(documents)), documents.lengths)
        self.index = faiss.index_factory(int(vectors.shape[1]), factory, faiss.METRIC_INNER_PRODUCT)
        if not self.index.is_trained:
            self.index.train(vectors)
        if hasattr(self.index, "nprobe"):
            self.index.nprobe = nprobe
        self.index.add(vectors)

    def candidates(self, query: TokenTable, tokens_per_query_token: int) -> list[Tensor]:
        """Per query, the sorted positions of the documents owning a nearest token of one of its tokens."""
        take = min(tokens_per_query_token, int(self.index.ntotal))
        _, hits = self.index.search(np.ascontiguousarray(query.flat.float().numpy()), take)
        hits = torch.from_numpy(hits).long()
        owners = torch.where(hits >= 0, self.owners[hits.clamp(min=0)], -1)
        out = []
        for start, stop in zip(query.offsets[:-1].tolist(), query.offsets[1:].tolist()):
            found = owners[start:stop].flatten()
            out.append(torch.unique(found[found >= 0]))
        return out

    @torch.no_grad()
    def search(self, queries: TokenTable, k: int, tokens_per_query_token: int = 32) -> Ranking:
        """Each query's top ``k`` documents: ``index [Nq, k]`` positions (``-1`` where fewer candidates) and their
        exact scores (``-inf`` there)."""
        if k < 1 or tokens_per_query_token < 1:
            raise ValueError(f"k and tokens_per_query_token must be >= 1, got {k} and {tokens_per_query_token}")
        index = torch.full((len(queries), k), -1, dtype=torch.long)
        scores = torch.full((len(queries), k), float("-inf"))
        for row, found in enumerate(self.candidates(queries, tokens_per_query_token)):
            if found.numel() == 0:
                continue
            query = queries.block(row, row + 1).float()
            exact = self.score(query, self.documents[found].block(0, int(found.numel())).float()).float()  # [1, C]
            order = order_by_score_then_id(exact, found.unsqueeze(0))[0, :k]
            index[row, :order.numel()] = found[order]
            scores[row, :order.numel()] = exact[0, order]
        return Ranking(index, scores)
