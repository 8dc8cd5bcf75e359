"""Reading the files of a BEIR folder: JSONL records and ``qrels/<split>.tsv`` (texts: ``text_table``)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distill.data.common import DataError, DataFileNotFound, read_utf8
from distill.data.text_table import json_line

__all__ = ["jsonl_records", "read_qrels"]


def jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, JSON object)`` for each non-blank line of a JSONL file."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            record = json_line(path, number, raw)
            if record is not None:
                yield number, record


def read_qrels(path: Path) -> dict[str, dict[str, float]]:
    """``qrels/<split>.tsv`` (header line, then query-id, corpus-id, score) -> ``{query: {passage: score}}``."""
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.tsv")) if path.parent.is_dir() else []
        raise DataFileNotFound(f"qrels file '{path}' not found (splits with qrels: {available}): set "
                                "data.init_args.val_split / test_split / train_split to one of them")
    qrels: dict[str, dict[str, float]] = {}
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
            qrels.setdefault(row[0], {})[row[1]] = score
    return qrels
