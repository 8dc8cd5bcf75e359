"""The real-text study's cross-encoder teacher: its training examples, its training and its use as a re-ranker.

    python benchmarks/real_text_teacher.py --data runs/code-search --out runs/teacher-x --study runs/real-text-t600 \
        --queries 1200 --loss mnrl --negatives-from student --steps 150 --batch-size 8 --lr 1e-4
    # trains one teacher, then re-ranks the study's InfoNCE student's top 20 for its first 200 test queries

Training examples: ``--queries`` training queries of the BEIR folder's train split (seeded sample), each with its
first judged passage as the positive and ``--negatives`` negatives mined from the pool of the sampled queries'
judged passages (the query's own judged passages left out), by bm25s or by the zero-shot student
(all-MiniLM-L6-v2, mean pooling, cosine; the dual encoder the teacher is meant to beat, whose confusions it
re-ranks). The cross-encoder starts from all-MiniLM-L6-v2 with a fresh one-logit head and is trained with
sentence-transformers' ``CrossEncoderTrainer`` and one of its losses:

* ``bce``: BinaryCrossEntropyLoss on (query, passage, 0/1) pairs, pos_weight = negatives per query;
* ``listnet``: ListNetLoss on (query, [positive, negatives...], [1, 0, ...]): the cross-entropy between the
  softmax of the scores and the softmax of the labels over the query's own list (with labels 1 and 0 that target
  is 0.48 / 0.18 / 0.18 / 0.18 for 3 negatives, not one-hot: the loss can only fall from ln 4 = 1.386 to 1.27);
* ``mnrl``: MultipleNegativesRankingLoss on (query, positive, negative_1..n): the positive among the mined
  negatives and one other query's positive or negative from the batch (sigmoid logits x 10).

One step holds ``batch_size`` queries (``listnet`` / ``mnrl``) or ``batch_size`` pairs (``bce``).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from distill.data.beir.files import jsonl_records, read_qrels  # noqa: E402
from distill.io import atomic_write_json  # noqa: E402

LOSSES = ("bce", "listnet", "mnrl")
LOSS_NAMES = {"bce": "BinaryCrossEntropyLoss", "listnet": "ListNetLoss", "mnrl": "MultipleNegativesRankingLoss"}
SOURCES = ("bm25", "student")


def pairs_per_query(loss: str, negatives: int) -> int:
    """Cross-encoder forwards per query and step: the positive and the mined negatives, plus one in-batch
    negative for ``mnrl``; ``bce`` steps over single pairs (1)."""
    return 1 if loss == "bce" else 1 + negatives + (loss == "mnrl")


def read_texts(path: Path) -> dict[str, str]:
    return {str(row["_id"]): row["text"] for _, row in jsonl_records(path)}


def sample_queries(data: Path, count: int, seed: int = 0) -> tuple[dict[str, str], dict[str, str], dict[str, list[str]]]:
    """``count`` training queries of ``data``'s train split (seeded), as (queries, passages, judged): the queries'
    texts, the texts of every passage judged for them (the mining pool) and each query's judged passages."""
    qrels = read_qrels(data / "qrels" / "train.tsv")
    queries = read_texts(data / "queries.jsonl")
    judged = {q: [p for p, g in ps.items() if g > 0] for q, ps in qrels.items() if q in queries}
    chosen = sorted(q for q, ps in judged.items() if ps)
    chosen = sorted(random.Random(seed).sample(chosen, min(count, len(chosen))))
    wanted = {p for q in chosen for p in judged[q]}
    passages = {str(row["_id"]): row["text"] for _, row in jsonl_records(data / "corpus.jsonl") if str(row["_id"]) in wanted}
    kept = [q for q in chosen if judged[q][0] in passages]
    return {q: queries[q] for q in kept}, passages, {q: judged[q] for q in kept}


def bm25_ranking(queries: dict[str, str], passages: dict[str, str], depth: int) -> dict[str, list[str]]:
    """Each query's top ``depth`` passage ids by bm25s (English stopwords)."""
    import bm25s

    ids = list(passages)
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(list(passages.values()), stopwords="en", show_progress=False), show_progress=False)
    docs, _ = retriever.retrieve(bm25s.tokenize(list(queries.values()), stopwords="en", show_progress=False),
                                 k=min(depth, len(ids)), show_progress=False)
    return {q: [ids[int(d)] for d in docs[i]] for i, q in enumerate(queries)}


def mean_pooled(student: str, texts: list[str], max_length: int, weights: dict[str, Any] | None = None) -> Any:
    """(n, d) unit rows: ``student``'s mean-pooled last hidden states at ``max_length`` tokens (the toolkit's
    text student), with ``weights`` (a checkpoint's ``tower_a.encoder.*`` tensors, prefix removed) loaded first."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(student)
    model = AutoModel.from_pretrained(student).eval()
    if weights is not None:
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected or [k for k in missing if not k.startswith("pooler.")]:
            raise SystemExit(f"[teacher] checkpoint weights do not fit {student}: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")
    rows = []
    with torch.inference_mode():
        for i in range(0, len(texts), 64):
            batch = tokenizer(texts[i:i + 64], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            mask = batch["attention_mask"].unsqueeze(-1).float()
            hidden = model(**batch).last_hidden_state
            rows.append(F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(rows)


def top_ids(queries: Any, passages: Any, ids: list[str], depth: int) -> list[list[str]]:
    """Each query row's ``depth`` best passage ids by the dot product of unit rows (cosine)."""
    top = (queries @ passages.T).topk(min(depth, len(ids)), dim=1).indices
    return [[ids[int(j)] for j in row] for row in top]


def student_ranking(queries: dict[str, str], passages: dict[str, str], depth: int, student: str,
                    max_length: int) -> dict[str, list[str]]:
    """Each query's top ``depth`` passage ids by the zero-shot student (queries at 32 tokens, passages at
    ``max_length``)."""
    ranked = top_ids(mean_pooled(student, list(queries.values()), 32),
                     mean_pooled(student, list(passages.values()), max_length), list(passages), depth)
    return dict(zip(queries, ranked))


def study_candidates(study: Path, student: str, max_length: int, depth: int = 100) -> dict[str, dict[str, list[str]]]:
    """The zero-shot and the InfoNCE (seed 0) students' top ``depth`` for a real_text.py study's test view
    (``<study>/data/test``, ``<study>/runs/infonce-seed0``), ranked as ``distill test`` ranks them (ties aside)."""
    from distill.students.weights import read_student_checkpoint
    from real_text import newest_checkpoint

    test = study / "data" / "test"
    queries, passages = read_texts(test / "queries.jsonl"), read_texts(test / "corpus.jsonl")
    prefix = "tower_a.encoder."
    trained, _ = read_student_checkpoint(newest_checkpoint(study / "runs" / "infonce-seed0"), "checkpoint")
    runs = {}
    for name, weights in (("zero-shot", None), ("infonce", {k[len(prefix):]: v for k, v in trained.items()
                                                             if k.startswith(prefix)})):
        ranked = top_ids(mean_pooled(student, list(queries.values()), 32, weights),
                         mean_pooled(student, list(passages.values()), max_length, weights), list(passages), depth)
        runs[name] = dict(zip(queries, ranked))
    return runs


def examples(queries: dict[str, str], passages: dict[str, str], judged: dict[str, list[str]], negatives: int,
             source: str, student: str, max_length: int) -> list[tuple[str, str, list[str]]]:
    """(query, positive, mined negatives) per query, the query's judged passages never among its negatives."""
    depth = negatives + 8
    ranking = bm25_ranking(queries, passages, depth) if source == "bm25" else \
        student_ranking(queries, passages, depth, student, max_length)
    rows = []
    for q, text in queries.items():
        own = set(judged[q])
        mined = [p for p in ranking[q] if p not in own][:negatives]
        if len(mined) == negatives:
            rows.append((text, passages[judged[q][0]], [passages[p] for p in mined]))
    return rows


def identity_pooler(model: Any) -> int:
    """Set every BERT pooler of ``model`` to tanh(x) (dense = identity, bias 0); returns how many it set.

    all-MiniLM-L6-v2 was trained mean-pooled: its pooler (the dense + tanh that BertForSequenceClassification puts
    between [CLS] and the new head) has weights of sd 0.009, which with the head's sd 0.02 scales the gradient
    reaching the encoder by ~1e-4, and a listwise loss stays at chance level (ln 4) for 100+ steps."""
    import torch

    poolers = [m for name, m in model.named_modules() if name.endswith("pooler") and hasattr(m, "dense")]
    with torch.no_grad():
        for pooler in poolers:
            torch.nn.init.eye_(pooler.dense.weight)
            torch.nn.init.zeros_(pooler.dense.bias)
    return len(poolers)


def train(rows: list[tuple[str, str, list[str]]], loss_name: str, steps: int, batch_size: int, learning_rate: float,
          max_length: int, init: str, trainer_dir: Path, pooler: str = "identity") -> Any:
    """Fine-tune a one-logit cross-encoder from ``init`` on ``rows`` (module docstring); returns the model.
    ``pooler="identity"`` resets the pooler first (:func:`identity_pooler`), ``"keep"`` leaves it."""
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder import losses

    torch.manual_seed(0)
    model = CrossEncoder(init, num_labels=1, max_length=max_length, device="cpu")
    if pooler == "identity":
        identity_pooler(model)
    negatives = len(rows[0][2])
    shuffled = list(rows)
    random.Random(0).shuffle(shuffled)
    if loss_name == "bce":
        pairs = [(q, p, 1.0) for q, p, _ in shuffled] + [(q, n, 0.0) for q, _, ns in shuffled for n in ns]
        random.Random(0).shuffle(pairs)
        data = Dataset.from_dict({"query": [q for q, _, _ in pairs], "passage": [p for _, p, _ in pairs],
                                  "label": [y for _, _, y in pairs]})
        loss = losses.BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(float(negatives)))
    elif loss_name == "listnet":
        data = Dataset.from_dict({"query": [q for q, _, _ in shuffled], "docs": [[p, *ns] for _, p, ns in shuffled],
                                  "labels": [[1.0] + [0.0] * len(ns) for _, _, ns in shuffled]})
        loss = losses.ListNetLoss(model)
    elif loss_name == "mnrl":
        columns = {"query": [q for q, _, _ in shuffled], "positive": [p for _, p, _ in shuffled]}
        columns.update({f"negative_{i + 1}": [ns[i] for _, _, ns in shuffled] for i in range(negatives)})
        data = Dataset.from_dict(columns)
        loss = losses.MultipleNegativesRankingLoss(model, num_negatives=1)
    else:
        raise ValueError(f"teacher loss {loss_name!r}: use one of {', '.join(LOSSES)}")
    settings = CrossEncoderTrainingArguments(
        output_dir=str(trainer_dir), max_steps=steps, per_device_train_batch_size=batch_size,
        learning_rate=learning_rate, warmup_steps=0.1, weight_decay=0.01, logging_steps=max(1, steps // 10),
        save_strategy="no", report_to="none", seed=0, use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
    CrossEncoderTrainer(model=model, args=settings, train_dataset=data, loss=loss).train()
    return model


def rerank(model: Any, queries: dict[str, str], passages: dict[str, str], run: dict[str, list[str]],
           depth: int) -> dict[str, list[str]]:
    """Each query's top ``depth`` of ``run`` re-ordered by the cross-encoder's score (ties: trec_eval's order),
    the rest of its list unchanged."""
    from real_text import ordered

    order = [(q, p) for q in queries for p in run.get(q, [])[:depth]]
    scores = model.predict([(queries[q], passages[p]) for q, p in order], batch_size=32, show_progress_bar=False)
    by_query: dict[str, dict[str, float]] = {}
    for (q, p), s in zip(order, scores):
        by_query.setdefault(q, {})[p] = float(s)
    return {q: ordered(by_query.get(q, {})) + run.get(q, [])[depth:] for q in queries}


def main(argv: list[str] | None = None) -> None:
    from distill.students import minilm_path

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    # defaults: real_text.py's teacher (the best measured; docs/benchmarks.md, real-text, "Teachers tried")
    parser.add_argument("--queries", type=int, default=1200, help="distinct training queries (default 1200)")
    parser.add_argument("--loss", choices=LOSSES, default="mnrl")
    parser.add_argument("--negatives-from", choices=SOURCES, default="student")
    parser.add_argument("--negatives", type=int, default=3, help="mined negatives per query (default 3)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8, help="queries per step (pairs for bce); default 8")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--pooler", choices=("identity", "keep"), default="identity",
                        help="identity: reset the pooler to tanh(x) before training (identity_pooler)")
    parser.add_argument("--max-length", type=int, default=64, help="passage tokens (the pair gets 32 more)")
    parser.add_argument("--student", default=None,
                        help="the zero-shot student, its folder (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--init", default=None, help="the cross-encoder's starting weights (default: --student)")
    parser.add_argument("--study", type=Path, required=True,
                        help="a benchmarks/real_text.py --out folder: its test view and its InfoNCE student (seed 0)")
    parser.add_argument("--students", nargs="+", choices=("infonce", "zero-shot"), default=["infonce"],
                        help="whose top --depth the teacher re-ranks")
    parser.add_argument("--eval-queries", type=int, default=200, help="the first N test queries (sorted ids)")
    parser.add_argument("--depth", type=int, default=20)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from real_text import ranked_metrics

    student = args.student or str(minilm_path())
    start = time.perf_counter()
    queries, passages, judged = sample_queries(args.data, args.queries)
    rows = examples(queries, passages, judged, args.negatives, args.negatives_from, student, args.max_length)
    mined_s = time.perf_counter() - start
    model = train(rows, args.loss, args.steps, args.batch_size, args.lr, args.max_length + 32, args.init or student,
                  args.out / "trainer", args.pooler)
    train_s = time.perf_counter() - start - mined_s
    model.save_pretrained(str(args.out / "teacher"))
    test = args.study / "data" / "test"
    test_q = read_texts(test / "queries.jsonl")
    test_q = {q: test_q[q] for q in sorted(test_q)[: args.eval_queries]}
    test_p = read_texts(test / "corpus.jsonl")
    qrels = {q: j for q, j in read_qrels(test / "qrels" / "test.tsv").items() if q in test_q}
    result: dict[str, Any] = {"settings": {k: str(v) for k, v in vars(args).items()}, "rows": len(rows),
                              "mine_seconds": mined_s, "train_seconds": train_s}
    saved = args.study / "student-candidates.json"  # the students' rankings, computed once per study
    if not saved.is_file():
        atomic_write_json(saved, study_candidates(args.study, student, args.max_length))
    candidates = json.loads(saved.read_text(encoding="utf-8"))
    for name in args.students:
        run, t = candidates[name], time.perf_counter()
        before = ranked_metrics({q: run[q] for q in test_q}, qrels)
        after = ranked_metrics(rerank(model, test_q, test_p, run, args.depth), qrels)
        result[name] = {"student": before, "reranked": after, "seconds": time.perf_counter() - t}
        print(f"[teacher] {name}: student MRR@10 {before['mrr@10']:.3f}, re-ranked {after['mrr@10']:.3f} "
              f"(nDCG@10 {before['ndcg@10']:.3f} -> {after['ndcg@10']:.3f})", flush=True)
    print(f"[teacher] {len(rows)} queries, mined in {mined_s:.0f} s, trained in {train_s:.0f} s", flush=True)
    (args.out / "result.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
