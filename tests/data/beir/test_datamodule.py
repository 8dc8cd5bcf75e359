"""BeirTextDataModule and the MRR / nDCG / Recall metrics (checked against a brute-force loop)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from distill.data import BeirTextDataModule
from distill.data.common import DataError
from distill.evaluation import qrels_metrics, top_k


def text_retrieval_metrics(queries, corpus, query_ids, corpus_ids, relevance, mrr_k=10, ndcg_k=10, recall_k=100):
    """The evaluator's path: chunked ranking, then the qrels metrics of the ranked ids."""
    ranking = top_k(queries, corpus, max(mrr_k, ndcg_k, recall_k), corpus_ids, query_chunk=4, key_chunk=5)
    ids = torch.where(ranking.index >= 0, corpus_ids[ranking.index.clamp(min=0)], -1)
    return qrels_metrics(ids, query_ids, relevance, corpus_ids, mrr_k, ndcg_k, recall_k)


def _module(beir_dir: Path, tiny_models, **kwargs) -> BeirTextDataModule:
    args = dict(data_dir=str(beir_dir), student_tokenizer=str(tiny_models.bert), train_file="train_triples.jsonl",
                teacher_tokenizer=str(tiny_models.cross_encoder), batch_size=4, eval_batch_size=4, num_negatives=2)
    args.update(kwargs)
    module = BeirTextDataModule(**args)
    module.setup("fit")
    return module


def test_train_batches(beir_dir: Path, tiny_models) -> None:
    module = _module(beir_dir, tiny_models)
    batch = next(iter(module.train_dataloader()))
    assert batch["a"]["input_ids"].shape[0] == batch["b"]["input_ids"].shape[0] == 4
    assert batch["b_neg"]["input_ids"].shape[0] == 8 and batch["b_neg_id"].shape == (4, 2)
    assert set(batch["teacher_a"]) == {"text_ids", "text_mask"} and batch["teacher_b_neg"]["text_ids"].shape[0] == 8
    assert int(batch["a"]["input_ids"][0, 0]) == 2 and int(batch["teacher_a"]["text_ids"][0, 0]) != 2  # no [CLS]
    assert batch["teacher_scores"].shape == (4, 3) and torch.all(batch["teacher_scores"][:, 0] == 8.0)
    assert not torch.any(batch["b_neg_id"] == batch["b_id"].unsqueeze(1))


def test_eval_loaders_and_relevance(beir_dir: Path, tiny_models) -> None:
    module = _module(beir_dir, tiny_models)
    queries, corpus = module.val_dataloader()
    assert next(iter(queries))["a_id"].tolist() == [2, 3, 5]
    assert sum(len(b["b_id"]) for b in corpus) == 6
    assert module.relevance("val") == {2: {2: 1.0}, 3: {3: 1.0}, 5: {0: 1.0}}
    # Without a train file the qrels' positives are the training pairs.
    plain = _module(beir_dir, tiny_models, train_file=None, teacher_tokenizer=None)
    batch = next(iter(plain.train_dataloader()))
    assert "b_neg" not in batch and "teacher_a" not in batch


def test_missing_qrels(beir_dir: Path, tiny_models) -> None:
    lines = (beir_dir / "train_triples.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    row["positive_ids"] = []
    row["query_id"] = "q5"  # no qrels/train.tsv entry either
    (beir_dir / "train_triples.jsonl").write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")
    with pytest.raises(DataError, match=r"train_triples\.jsonl: line 1: query 'q5' has no positive_ids.*train\.tsv"):
        _module(beir_dir, tiny_models)
    module = _module(beir_dir, tiny_models, on_bad_item="skip")
    assert module.bad_items.counts["missing_qrels"] == 1 and len(module.train_items) == 4
    with pytest.raises(FileNotFoundError, match=r"qrels/nope\.tsv.*splits with qrels: \['dev', 'test', 'train'\]"):
        _module(beir_dir, tiny_models, val_split="nope", on_bad_item="skip")


def test_unknown_ids_and_empty_text(beir_dir: Path, tiny_models) -> None:
    with (beir_dir / "qrels" / "dev.tsv").open("a") as handle:
        handle.write("q1\tp404\t1\n")  # a judged passage missing from the corpus: relevant, never retrieved
    relevance = _module(beir_dir, tiny_models).relevance("val")
    assert relevance[1] == {-1: 1.0}
    (beir_dir / "queries.jsonl").write_text((beir_dir / "queries.jsonl").read_text().replace("who wrote hamlet", ""))
    (beir_dir / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tp1\t1\n")
    with pytest.raises(DataError, match="query 'q1' has an empty text"):
        _module(beir_dir, tiny_models, on_bad_item="error")


def _brute_force(scores: torch.Tensor, relevance: dict[int, dict[int, float]], k_mrr: int, k_ndcg: int,
                 k_recall: int) -> dict[str, float]:
    mrr, ndcg, recall, count = 0.0, 0.0, 0.0, 0
    for q in range(scores.shape[0]):
        judged = relevance.get(q, {})
        relevant = {p for p, g in judged.items() if g > 0}
        if not relevant:
            continue
        count += 1
        order = sorted(range(scores.shape[1]), key=lambda p: -float(scores[q, p]))
        rank = next((i for i, p in enumerate(order) if p in relevant), None)
        mrr += 1.0 / (rank + 1) if rank is not None and rank < k_mrr else 0.0
        dcg = sum(judged.get(p, 0.0) / math.log2(i + 2) for i, p in enumerate(order[:k_ndcg]))
        ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(judged.values(), reverse=True)[:k_ndcg]))
        ndcg += dcg / ideal
        recall += len(relevant & set(order[:k_recall])) / len(relevant)
    return {"mrr": 100 * mrr / count, "ndcg": 100 * ndcg / count, "recall": 100 * recall / count, "count": count}


@pytest.mark.parametrize("num_corpus", [7, 40])
def test_metrics_match_brute_force(num_corpus: int) -> None:
    generator = torch.Generator().manual_seed(num_corpus)
    queries, corpus = torch.randn(9, 8, generator=generator), torch.randn(num_corpus, 8, generator=generator)
    relevance: dict[int, dict[int, float]] = {}
    for q in range(8):  # query 8 has no judgement and is skipped
        picks = torch.randperm(num_corpus, generator=generator)[:3].tolist()
        relevance[q] = {picks[0]: 2.0, picks[1]: 1.0, picks[2]: 0.0}
    metrics = text_retrieval_metrics(queries, corpus, torch.arange(9), torch.arange(num_corpus), relevance,
                                     mrr_k=3, ndcg_k=5, recall_k=4)
    expected = _brute_force(queries @ corpus.T, relevance, 3, 5, 4)
    assert metrics["mrr@3"] == pytest.approx(expected["mrr"], abs=1e-4)
    assert metrics["ndcg@5"] == pytest.approx(expected["ndcg"], abs=1e-4)
    assert metrics["recall@4"] == pytest.approx(expected["recall"], abs=1e-4)
    assert metrics["queries"] == 8  # query 8 has no judgment: not an evaluated query


def test_judged_passages_outside_the_encoded_corpus_count_as_missed() -> None:
    queries, corpus = torch.eye(2, 4), torch.eye(3, 4)
    relevance = {0: {0: 1.0, 99: 1.0}, 1: {1: 1.0}}
    metrics = text_retrieval_metrics(queries, corpus, torch.arange(2), torch.arange(3), relevance)
    assert metrics["mrr@10"] == pytest.approx(100.0)
    assert metrics["recall@100"] == pytest.approx(75.0)


def test_indexing_a_split_reads_no_training_data(beir_dir: Path, tiny_models) -> None:
    """`distill index` lists the passages of the split it indexes: neither the train qrels nor a train file exist."""
    (beir_dir / "qrels" / "train.tsv").unlink()
    (beir_dir / "train_triples.jsonl").unlink()
    module = BeirTextDataModule(data_dir=str(beir_dir), student_tokenizer=str(tiny_models.bert), val_split=None)
    rows = module.b_texts("test")
    assert not isinstance(rows, list)  # read chunk by chunk from the memory map, never all texts at once
    rows = list(rows)
    assert [row for row, _, _ in rows] == list(range(6)) and rows[0][2].endswith("paris is the capital of france")
    with pytest.raises(DataError, match="no training data"):
        module.setup("fit")
