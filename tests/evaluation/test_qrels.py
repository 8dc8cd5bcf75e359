"""Qrels metrics equal pytrec_eval (trec_eval) on random runs with graded judgments and ties; every judged
query counts, including those with no relevant or no retrievable passage."""

from __future__ import annotations

import pytest
import pytrec_eval
import torch

from distill.evaluation import qrels_metrics, top_k
from tests.helpers import write_tied_beir


def _docno(passage: int) -> str:
    return f"d{passage:05d}"  # zero-padded: string order is id order, so trec_eval breaks ties as top_k does


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mrr_ndcg_recall_equal_pytrec_eval(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    num_queries, num_passages = 30, 200
    queries = torch.randint(-2, 3, (num_queries, 6), generator=generator).float()
    corpus = torch.randint(-2, 3, (num_passages, 6), generator=generator).float()  # small integers: ties
    passage_ids = torch.arange(num_passages)
    relevance: dict[int, dict[int, float]] = {}
    for query in range(num_queries):
        judged = torch.randperm(num_passages, generator=generator)[: int(torch.randint(1, 8, (1,), generator=generator))]
        relevance[query] = {int(p): float(torch.randint(0, 4, (1,), generator=generator)) for p in judged}
    relevance[0] = {p: 0.0 for p in relevance[0]}           # judged, nothing relevant: counts as 0
    relevance[1] = {10_000: 2.0, 10_001: 1.0}                 # relevant passages absent from the corpus
    ranking = top_k(queries, corpus, 100, passage_ids, query_chunk=7, key_chunk=33)
    ours = qrels_metrics(ranking.index, torch.arange(num_queries), relevance, passage_ids)

    qrels = {f"q{q}": {_docno(p): int(g) for p, g in judged.items()} for q, judged in relevance.items()}
    scores = queries @ corpus.T
    run = {f"q{q}": {_docno(p): float(scores[q, p]) for p in range(num_passages)} for q in range(num_queries)}
    full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    top10 = {q: dict(sorted(docs.items(), key=lambda kv: (-kv[1], [-ord(c) for c in kv[0]]))[:10])
             for q, docs in run.items()}
    mrr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    assert ours["queries"] == num_queries == len(full)
    assert ours["ndcg@10"] == pytest.approx(100 * sum(v["ndcg_cut_10"] for v in full.values()) / num_queries, abs=1e-6)
    assert ours["recall@100"] == pytest.approx(100 * sum(v["recall_100"] for v in full.values()) / num_queries, abs=1e-6)
    assert ours["mrr@10"] == pytest.approx(100 * sum(v["recip_rank"] for v in mrr.values()) / num_queries, abs=1e-6)
    assert ours["zero_relevant_queries"] >= 1 and ours["unretrievable_queries"] == 1


def test_a_query_without_relevant_passages_scores_zero_and_is_counted() -> None:
    ranked = torch.tensor([[5, 6, 7], [7, 6, 5]])
    relevance = {0: {5: 1.0}, 1: {5: 0.0, 6: 0.0}}
    metrics = qrels_metrics(ranked, torch.tensor([0, 1]), relevance, torch.tensor([5, 6, 7]), 3, 3, 3)
    assert metrics["mrr@3"] == pytest.approx(50.0)  # query 0: 1.0, query 1: 0 (not skipped)
    assert metrics["queries"] == 2 and metrics["zero_relevant_queries"] == 1


def test_a_judged_query_that_was_not_encoded_is_an_error() -> None:
    with pytest.raises(ValueError, match="judged queries .* were not encoded"):
        qrels_metrics(torch.tensor([[1]]), torch.tensor([0]), {0: {1: 1.0}, 9: {1: 1.0}})


def _bag_of_words(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Token counts folded into 6 dimensions: integer embeddings, so scores are exact and identical texts tie."""
    counts = torch.nn.functional.one_hot(inputs["input_ids"] % 6, 6) * inputs["attention_mask"].unsqueeze(-1)
    return counts.sum(1).float()


def test_qrels_evaluator_equals_pytrec_eval_with_ties_duplicates_and_numeric_ids(tmp_path, tiny_models) -> None:
    from distill.data import BeirTextDataModule
    from distill.evaluation import EvalContext, QrelsEvaluator

    module = BeirTextDataModule(data_dir=str(write_tied_beir(tmp_path / "beir")), val_split=None, num_negatives=0,
                                student_tokenizer=str(tiny_models.bert), eval_batch_size=7)
    module.setup("test")
    evaluator = QrelsEvaluator(two_stage_k=0, diagnostics=False, query_chunk=4, key_chunk=9)
    embeddings: dict[str, dict[str, torch.Tensor]] = {"a": {}, "b": {}}

    def evaluate(tie_keys) -> dict[str, float]:
        for loader in module.test_dataloader():
            for batch in loader:
                evaluator.update("student", batch, _bag_of_words, _bag_of_words)
                side, table = ("a", module.queries) if "a" in batch else ("b", module.corpus)
                for row, vector in zip(batch[f"{side}_id"].tolist(), _bag_of_words(batch[side])):
                    embeddings[side][table.id_of(row)] = vector
        return evaluator.compute(EvalContext("test", relevance=lambda: module.relevance("test"),
                                             b_tie_keys=tie_keys))["student"]

    ours = evaluate(module.tie_keys)
    qrels = {}
    for line in (tmp_path / "beir" / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        query, passage, grade = line.split("\t")
        qrels.setdefault(query, {})[passage] = int(grade)
    run = {q: {p: float(a @ b) for p, b in embeddings["b"].items()} for q, a in embeddings["a"].items()}
    full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    top10 = {q: dict(sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:10])  # trec_eval's order
             for q, docs in run.items()}
    mrr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    count = len(qrels)
    assert ours["queries"] == count == len(full)
    assert ours["ndcg@10"] == pytest.approx(100 * sum(v["ndcg_cut_10"] for v in full.values()) / count, abs=1e-9)
    assert ours["recall@100"] == pytest.approx(100 * sum(v["recall_100"] for v in full.values()) / count, abs=1e-9)
    assert ours["mrr@10"] == pytest.approx(100 * sum(v["recip_rank"] for v in mrr.values()) / count, abs=1e-9)
    by_row = evaluate(None)  # ties broken by file row: the set is one where that order matters
    assert abs(by_row["mrr@10"] - ours["mrr@10"]) > 1e-6 or abs(by_row["ndcg@10"] - ours["ndcg@10"]) > 1e-6
