"""Reading the files of a BEIR folder: JSONL records and ``qrels/<split>.tsv``.

The texts of ``corpus.jsonl`` / ``queries.jsonl`` are read by row: :mod:`~distill.data.beir.text_table`.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distill.data.common import DataError, DataFileNotFound, logger, read_utf8
from distill.data.beir.text_table import json_line

__all__ = ["jsonl_records", "read_qrels"]


def jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, JSON object)`` for each non-blank line of a JSONL file."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            record = json_line(path, number, raw)
            if record is not None:
                yield number, record


def read_qrels(path: Path) -> dict[str, dict[str, float]]:
    """``qrels/<split>.tsv`` (header line, then query-id, corpus-id, score) -> ``{query: {passage: score}}``.

    One judgment per (query, passage): a line repeating an earlier one with the same grade is counted once,
    with one warning per file giving the count and the first repeat's line; a line grading the pair
    differently is an error naming both lines (which grade to trust is the file owner's call).
    """
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.tsv")) if path.parent.is_dir() else []
        raise DataFileNotFound(f"qrels file '{path}' not found (splits with qrels: {available}): set "
                                "data.init_args.val_split / test_split / train_split to one of them")
    qrels: dict[str, dict[str, float]] = {}
    first_line: dict[tuple[str, str], int] = {}
    repeats: list[tuple[int, int]] = []
    with io.StringIO(read_utf8(path), newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        for number, row in enumerate(reader, start=1):
            if number == 1 or not row:
                continue
            if len(row) < 3:
                raise DataError(f"{path.name}: line {number} needs query-id, corpus-id and score, got {row}")
            try:
                score = float(row[2])
            except ValueError as error:
                raise DataError(f"{path.name}: line {number} has a non-numeric score {row[2]!r}") from error
            if not math.isfinite(score):
                raise DataError(f"'{path}': line {number} has the score {row[2]!r}: a judgment's grade is a finite "
                                "number")
            judged = qrels.setdefault(row[0], {})
            if row[1] in judged:
                earlier = first_line[(row[0], row[1])]
                if judged[row[1]] != score:
                    raise DataError(f"'{path}': line {number} grades query {row[0]!r}, passage {row[1]!r} {row[2]}, "
                                    f"line {earlier} graded it {judged[row[1]]:g}: keep one judgment per pair")
                repeats.append((number, earlier))
                continue
            judged[row[1]] = score
            first_line[(row[0], row[1])] = number
    if repeats:
        logger.warning("'%s': %d line(s) repeat an earlier judgment with the same grade (first: line %d repeats "
                       "line %d); each pair counts once", path, len(repeats), *repeats[0])
    return qrels
