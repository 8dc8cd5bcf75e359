"""Training items, evaluation rows and batches of BEIR text data (queries = a side, passages = b side)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from distill.data.common import TruncationLog, tokenize
from distill.data.beir.text_table import TextTable

__all__ = ["BeirItemStore", "RowDataset", "TextCollator", "TrainItem", "TripleDataset"]


@dataclass(frozen=True)
class TrainItem:
    """A training query with one positive passage and its listed negatives (corpus rows)."""

    query: int
    positive: int
    negatives: tuple[int, ...]
    scores: tuple[float, ...] | None  # teacher scores of (positive, *negatives) when the row has them


class TripleDataset(Dataset):
    """Training items; each epoch draws ``num_negatives`` of an item's negatives (with replacement if short),
    from ``(seed, item, epoch)`` alone: the resumable loader tells the dataset the epoch (``set_epoch``)."""

    def __init__(self, items: list[TrainItem], num_negatives: int, seed: int) -> None:
        self.items = items
        self.num_negatives = num_negatives
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        visit = self.epoch
        out: dict[str, Any] = {"query": item.query, "positive": item.positive,
                               "a_id": item.query, "b_id": item.positive}  # the pair's ids (teacher cache)
        if self.num_negatives:
            rng = random.Random(self.seed * 1_000_003 + index * 7919 + visit)
            pool = list(range(len(item.negatives)))
            picks = (rng.sample(pool, self.num_negatives) if len(pool) >= self.num_negatives
                     else [rng.choice(pool) for _ in range(self.num_negatives)])
            out["negatives"] = [item.negatives[p] for p in picks]
            if item.scores is not None:
                out["scores"] = [item.scores[0]] + [item.scores[1 + p] for p in picks]
        elif item.scores is not None:
            out["scores"] = [item.scores[0]]
        return out


class RowDataset(Dataset):
    """Rows of the query or corpus table, for evaluation loaders."""

    def __init__(self, rows: Sequence[int]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> int:
        return self.rows[index]


class TextCollator:
    """Tokenises queries / passages for the student and, when given, each text alone for the teacher."""

    def __init__(self, queries: TextTable, corpus: TextTable, student_tokenizer: Any, query_max_length: int,
                 passage_max_length: int, teacher_tokenizer: Any | None, teacher_max_length: int,
                 truncation: dict[str, TruncationLog] | None = None) -> None:
        self.queries = queries
        self.corpus = corpus
        self.student_tokenizer = student_tokenizer
        self.query_max_length = query_max_length
        self.passage_max_length = passage_max_length
        self.teacher_tokenizer = teacher_tokenizer
        self.teacher_max_length = teacher_max_length
        self.truncation = truncation or {}

    def _student(self, texts: list[str], side: str) -> dict[str, torch.Tensor]:
        """Student tokens of queries (``side="query"``) or passages (``"passage"``)."""
        max_length = self.query_max_length if side == "query" else self.passage_max_length
        return tokenize(self.student_tokenizer, texts, max_length, truncation_log=self.truncation.get(side))

    def _teacher(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return tokenize(self.teacher_tokenizer, texts, self.teacher_max_length, special_tokens=False,
                        names=("text_ids", "text_mask"), truncation_log=self.truncation.get("teacher"))

    def train(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        queries = self.queries.texts(item["query"] for item in items)
        passages = self.corpus.texts(item["positive"] for item in items)
        batch: dict[str, Any] = {
            "a": self._student(queries, "query"),
            "b": self._student(passages, "passage"),
            "a_id": torch.tensor([item["query"] for item in items], dtype=torch.long),
            "b_id": torch.tensor([item["positive"] for item in items], dtype=torch.long),
        }
        negatives = [n for item in items for n in item.get("negatives", [])]
        negative_texts = self.corpus.texts(negatives)
        if negatives:
            batch["b_neg"] = self._student(negative_texts, "passage")
            batch["b_neg_id"] = torch.tensor(negatives, dtype=torch.long).view(len(items), -1)
        if self.teacher_tokenizer is not None:
            batch["teacher_a"] = self._teacher(queries)
            batch["teacher_b"] = self._teacher(passages)
            if negatives:
                batch["teacher_b_neg"] = self._teacher(negative_texts)
        if all("scores" in item for item in items):
            batch["teacher_scores"] = torch.tensor([item["scores"] for item in items], dtype=torch.float32)
        return batch

    def teacher_view(self, texts: list[str], side: str) -> dict[str, torch.Tensor]:
        """Texts tokenised for the teacher (alone, no special tokens), or for the student without a teacher tokenizer."""
        return self._teacher(texts) if self.teacher_tokenizer is not None else self._student(texts, side)

    def queries_batch(self, rows: list[int]) -> dict[str, Any]:
        return {"a": self._student(self.queries.texts(rows), "query"),
                "a_id": torch.tensor(rows, dtype=torch.long)}

    def corpus_batch(self, rows: list[int]) -> dict[str, Any]:
        return {"b": self._student(self.corpus.texts(rows), "passage"),
                "b_id": torch.tensor(rows, dtype=torch.long)}


class BeirItemStore:
    """An :class:`~distill.data.items.ItemStore` over a BEIR folder's queries (a) and passages (b), by row."""

    def __init__(self, collator: TextCollator) -> None:
        self.collator = collator

    def load_a(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.collator.teacher_view(self.collator.queries.texts(ids.tolist()), "query")

    def load_b(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.collator.teacher_view(self.collator.corpus.texts(ids.tolist()), "passage")
