"""Mining a text training file: each training query's positives and the student's hard negatives.

``python -m distill mine`` (:mod:`distill.cli.mine`) builds the ``train_triples.jsonl`` a query-passage
recipe reads, from a BEIR folder alone:

1. the student encodes the corpus and the training queries (``qrels/<split>.tsv``), in batches;
2. each query's top ``depth`` passages by dot product are found over the whole corpus in bounded memory
   (:func:`distill.evaluation.top_k`), its judged positives excluded;
3. ``negatives`` of them are drawn, seeded, from the ranks after the first ``skip_top`` (the very top of a
   student's list holds unjudged positives more often than the rest);
4. optionally the teacher scores every (query, positive) and (query, negative) pair (``teacher_scores`` in
   the rows, for ``ListedNegatives(scores_from_data: true)``), loading only the texts of each chunk;
5. the file is written atomically: ``{"query_id", "positive_ids", "negative_ids", "teacher_scores"?}`` per
   line, ids as in ``queries.jsonl`` / ``corpus.jsonl``.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill.data.beir.datamodule import BeirTextDataModule
from distill.errors import InputError
from distill.evaluation.ranking import pairs_mask, top_k
from distill.inputs import to_device
from distill.io import atomic_write_bytes
from distill.progress import progress
from distill.teachers.scoring import TeacherScorer

__all__ = ["MineSettings", "mine_training_file"]


@dataclass(frozen=True)
class MineSettings:
    """Negatives per query, the ranks they are drawn from (``skip_top <= rank < depth``), the judged split,
    texts per student forward, the seed of the draw."""

    negatives: int = 8
    depth: int = 100
    skip_top: int = 0
    split: str = "train"
    batch_size: int = 256
    seed: int = 0

    def check(self) -> None:
        if self.negatives < 1 or self.batch_size < 1:
            raise InputError(f"--negatives and --batch-size must be >= 1, got {self.negatives}, {self.batch_size}")
        if not 0 <= self.skip_top < self.depth or self.depth - self.skip_top < self.negatives:
            raise InputError(f"--skip-top {self.skip_top} and --depth {self.depth} leave fewer than --negatives "
                             f"{self.negatives} ranks to draw from: raise --depth")


@torch.no_grad()
def _encode(student: nn.Module, collate: Any, rows: Sequence[int], side: str, batch_size: int,
            device: torch.device) -> Tensor:
    """Student embeddings ``[len(rows), D]`` (CPU) of queries (``side="a"``) or passages (``"b"``)."""
    encode = student.encode_a if side == "a" else student.encode_b
    batch_of = collate.queries_batch if side == "a" else collate.corpus_batch
    parts = []
    with progress(len(rows), "encoding passages" if side == "b" else "encoding queries", "texts") as bar:
        for start in range(0, len(rows), batch_size):
            chunk = list(rows[start:start + batch_size])
            parts.append(encode(to_device(batch_of(chunk)[side], device)).float().cpu())
            bar.update(len(chunk))
    return torch.cat(parts) if parts else torch.zeros(0, 0)


def _judged(datamodule: BeirTextDataModule, split: str) -> dict[int, list[int]]:
    """``{query row: [positive passage rows]}`` of ``qrels/<split>.tsv`` (grade > 0, passages in the corpus)."""
    from distill.data.beir.files import read_qrels

    path = datamodule.data_dir / "qrels" / f"{split}.tsv"
    qrels = read_qrels(path)
    judged: dict[int, list[int]] = {}
    for query, row in zip(qrels, datamodule.queries.rows_of(list(qrels))):
        relevant = [p for p, grade in qrels[query].items() if grade > 0]
        positives = [p for p in datamodule.corpus.rows_of(relevant) if p is not None]
        if row is not None and positives:
            judged[row] = positives
    if not judged:
        raise InputError(f"'{path}' has no query with a relevant passage in corpus.jsonl: nothing to mine")
    return judged


def _draw(ranked: Tensor, settings: MineSettings, query: int) -> list[int]:
    """``negatives`` passage rows drawn (seeded by query) from the eligible ranks of one query's list."""
    eligible = [int(p) for p in ranked[settings.skip_top:].tolist() if p >= 0]
    rng = random.Random(settings.seed * 1_000_003 + query)
    return rng.sample(eligible, min(settings.negatives, len(eligible)))


def mine_training_file(student: nn.Module, datamodule: BeirTextDataModule, out: str | os.PathLike[str],
                       settings: MineSettings = MineSettings(), teacher: nn.Module | None = None,
                       teacher_max_pairs: int = 1024, device: str | torch.device = "cpu") -> dict[str, int]:
    """Write the training file ``out`` (see the module docstring); returns counts for the report."""
    settings.check()
    if not isinstance(datamodule, BeirTextDataModule):
        raise InputError(f"mining needs a BEIR text data module, not {type(datamodule).__name__}")
    run_device = torch.device(device)
    student.to(run_device).eval()
    judged = _judged(datamodule, settings.split)
    queries = sorted(judged)
    collate = datamodule.collator
    corpus = _encode(student, collate, range(len(datamodule.corpus)), "b", settings.batch_size, run_device)
    query_embeddings = _encode(student, collate, queries, "a", settings.batch_size, run_device)
    rows = torch.tensor([i for i, q in enumerate(queries) for _ in judged[q]], dtype=torch.long)
    cols = torch.tensor([p for q in queries for p in judged[q]], dtype=torch.long)
    ranking = top_k(query_embeddings.to(run_device), corpus, settings.depth, mask=pairs_mask(rows, cols))
    negatives = {q: _draw(ranking.index[i], settings, q) for i, q in enumerate(queries)}
    scores = _teacher_scores(teacher, datamodule, judged, negatives, teacher_max_pairs, run_device) \
        if teacher is not None else None
    lines = []
    passage_id = datamodule.corpus.id_of
    for q in queries:
        row: dict[str, Any] = {"query_id": datamodule.queries.id_of(q),
                               "positive_ids": [passage_id(p) for p in judged[q]],
                               "negative_ids": [passage_id(p) for p in negatives[q]]}
        if scores is not None:
            row["teacher_scores"] = {passage_id(p): scores[(q, p)] for p in judged[q] + negatives[q]}
        lines.append(json.dumps(row, sort_keys=True))
    atomic_write_bytes(Path(out), ("\n".join(lines) + "\n").encode())
    return {"queries": len(queries), "negatives": sum(len(v) for v in negatives.values()),
            "passages": len(datamodule.corpus)}


def _teacher_scores(teacher: nn.Module, datamodule: BeirTextDataModule, judged: dict[int, list[int]],
                    negatives: dict[int, list[int]], max_pairs: int, device: torch.device) -> dict[tuple[int, int], float]:
    """The teacher's score of every mined (query, passage) pair, ``max_pairs`` per forward."""
    teacher.to(device).eval()
    store = datamodule.item_store("train")
    pairs = [(q, p) for q in judged for p in judged[q] + negatives[q]]
    scorer = TeacherScorer(teacher, max_pairs)
    values: list[float] = []
    block = max(1, max_pairs) * 8  # pairs per progress step: a few teacher forwards
    with progress(len(pairs), "teacher pairs", "pairs") as bar:
        for start in range(0, len(pairs), block):
            chunk = pairs[start:start + block]
            values += scorer.score_loaded(lambda ids: to_device(store.load_a(ids), device),
                                          lambda ids: to_device(store.load_b(ids), device),
                                          torch.tensor([q for q, _ in chunk]),
                                          torch.tensor([p for _, p in chunk])).tolist()
            bar.update(len(chunk))
    return {pair: round(float(value), 6) for pair, value in zip(pairs, values)}
