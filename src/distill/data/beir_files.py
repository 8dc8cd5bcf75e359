"""Reading the files of a BEIR folder: ``corpus.jsonl`` / ``queries.jsonl`` texts and ``qrels/<split>.tsv``."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distill.data.common import DataError, DataFileNotFound, read_utf8, utf8_lines

__all__ = ["jsonl_records", "read_qrels", "read_texts"]


def jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in utf8_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path.name}: line {number} is not valid JSON: {error}") from error
        if not isinstance(record, dict):
            raise DataError(f"{path.name}: line {number} is not a JSON object")
        yield number, record


def read_texts(path: Path, use_title: bool = False) -> tuple[list[str], list[str], dict[str, int]]:
    """``corpus.jsonl`` / ``queries.jsonl`` -> (ids, texts, id -> row). Titles are prepended when asked."""
    if not path.is_file():
        raise DataFileNotFound(f"'{path}' not found: data.init_args.data_dir must hold corpus.jsonl, queries.jsonl "
                                "and qrels/<split>.tsv (the BEIR layout)")
    ids: list[str] = []
    texts: list[str] = []
    rows: dict[str, int] = {}
    for number, record in jsonl_records(path):
        if "_id" not in record or "text" not in record:
            raise DataError(f"{path.name}: line {number} needs '_id' and 'text' fields")
        key = str(record["_id"])
        if key in rows:
            raise DataError(f"{path.name}: line {number} repeats _id '{key}'")
        text = str(record["text"] or "").strip()
        title = str(record.get("title") or "").strip()
        if use_title and title:
            text = f"{title} {text}".strip()
        rows[key] = len(ids)
        ids.append(key)
        texts.append(text)
    return ids, texts, rows


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
