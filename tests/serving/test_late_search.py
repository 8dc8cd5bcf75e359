"""PLAID-style search of a late-interaction student: FAISS token candidates, then exact re-scoring."""

from __future__ import annotations

import pytest
import torch

from distill.evaluation.late import TokenRows, late_top_k
from distill.serving.late_search import LateInteractionIndex
from distill.students import TokenEmbeddings
from distill.students.late_interaction import late_scores


def table(n: int, length: int, dim: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.nn.functional.normalize(torch.randn(n, length, dim, generator=generator), dim=-1)
    valid = torch.randint(1, length + 1, (n,), generator=generator)
    rows = TokenRows()
    rows.append(TokenEmbeddings(tokens, torch.arange(length).unsqueeze(0) < valid.unsqueeze(1)))
    return rows.finish()


@pytest.mark.parametrize(("factory", "nprobe"), [("Flat", 1), ("IVF4,Flat", 4)])
def test_enough_token_candidates_give_the_exhaustive_ranking(factory: str, nprobe: int) -> None:
    queries, documents = table(6, 5, 8, seed=0), table(40, 6, 8, seed=1)
    index = LateInteractionIndex(documents, late_scores, factory=factory, nprobe=nprobe)
    found = index.search(queries, 5, tokens_per_query_token=int(documents.flat.shape[0]))
    exhaustive = late_top_k(queries, documents, 5, late_scores)
    assert torch.equal(found.index, exhaustive.index)
    assert torch.allclose(found.scores, exhaustive.scores, rtol=0, atol=1e-6)


def test_recall_of_the_exhaustive_top_k_grows_with_the_token_candidates() -> None:
    queries, documents = table(8, 5, 8, seed=2), table(60, 6, 8, seed=3)
    index = LateInteractionIndex(documents, late_scores)
    truth = late_top_k(queries, documents, 5, late_scores).index
    recalls = []
    for per_token in (1, 2, 4, 8, 400):
        found = index.search(queries, 5, tokens_per_query_token=per_token)
        hits = [len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found.index, truth)]
        recalls.append(sum(hits) / truth.numel())
        exact = late_scores(queries.block(0, len(queries)), documents.block(0, len(documents)))
        valid = found.index >= 0
        assert torch.allclose(found.scores[valid], exact.gather(1, found.index.clamp(min=0))[valid], atol=1e-6)
    assert recalls == sorted(recalls) and recalls[-1] == 1.0, recalls
