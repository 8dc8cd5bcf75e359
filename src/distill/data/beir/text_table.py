"""The texts of a BEIR ``corpus.jsonl`` / ``queries.jsonl`` by row, read from a memory map of the file on demand.

A :class:`TextTable` keeps no Python string per row: each row's line offset, its id in one fixed-width bytes
array, the id order for look-ups and an empty-text flag, about ``17 + <longest id>`` bytes a row
(24 for MS MARCO's 8.8M passages, ~200 MB, against ~4.6 GiB for lists of strings).
"""

from __future__ import annotations

import json
import mmap
from array import array
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from distill.data.common import DataError, DataFileNotFound, _not_utf8

__all__ = ["TextTable", "json_line", "record_text"]


def json_line(path: Path, number: int, raw: bytes) -> dict[str, Any] | None:
    """Line ``number`` of a JSONL file as a JSON object, ``None`` when blank; a :class:`DataError` naming the
    file and line when it is not UTF-8, not JSON or not an object."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _not_utf8(path, error, number) from None
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{path.name}: line {number} is not valid JSON: {error}") from error
    if not isinstance(record, dict):
        raise DataError(f"{path.name}: line {number} is not a JSON object")
    return record


def record_text(record: dict[str, Any], use_title: bool) -> str:
    """A record's stripped ``text``, after its ``title`` when ``use_title`` and it has one."""
    text = str(record["text"] or "").strip()
    title = str(record.get("title") or "").strip()
    if use_title and title:
        text = f"{title} {text}".strip()
    return text


def _fixed_width(blob: bytearray, ends: array) -> np.ndarray:
    """The ids packed end to end in ``blob`` (row ``i`` ends at ``ends[i]``) as one ``S<longest>`` array."""
    stops = np.frombuffer(ends, dtype=np.int64)
    starts = np.concatenate(([0], stops[:-1])).astype(np.int64)
    lengths = stops - starts
    width = max(int(lengths.max(initial=0)), 1)
    table = np.zeros((len(stops), width), dtype=np.uint8)
    data = np.frombuffer(blob, dtype=np.uint8)
    for column in range(width):
        rows = np.flatnonzero(lengths > column)
        table[rows, column] = data[starts[rows] + column]
    return table.view(f"S{width}").reshape(len(stops))


class TextTable:
    """Rows of a BEIR jsonl file (line order, blank lines skipped): ids, and texts parsed when read.

    Holds per row: the byte offset of its line (``int64``, 8 bytes), its UTF-8 id (``S<longest id>``), its
    place in id order (``intp``, 8 bytes) and whether its text is empty (1 byte). The file is memory-mapped
    on first read; a pickled table (a DataLoader worker's) maps it again.
    """

    def __init__(self, path: Path, use_title: bool, offsets: np.ndarray, ids: np.ndarray, empty: np.ndarray,
                 size: int) -> None:
        self.path = path
        self.use_title = use_title
        self._offsets = offsets
        self._ids = ids
        self._sorted: np.ndarray | None = None
        self._place: np.ndarray | None = None
        self._empty = empty
        self._size = size
        self._map: mmap.mmap | bytes | None = None

    @classmethod
    def empty(cls, path: Path, use_title: bool = False) -> "TextTable":
        """A table of no rows (a data module before ``setup``)."""
        return cls(path, use_title, np.zeros(0, np.int64), np.zeros(0, "S1"), np.zeros(0, np.bool_), 0)

    @classmethod
    def read(cls, path: Path, use_title: bool = False) -> "TextTable":
        """Scan ``corpus.jsonl`` / ``queries.jsonl`` once, checking every line (see :meth:`_scan`) and that no
        id repeats."""
        if not path.is_file():
            raise DataFileNotFound(f"'{path}' not found: data.init_args.data_dir must hold corpus.jsonl, "
                                   "queries.jsonl and qrels/<split>.tsv (the BEIR layout)")
        offsets, blob, ends, empty, size = cls._scan(path, use_title)
        table = cls(path, use_title, np.frombuffer(offsets, dtype=np.int64).copy(), _fixed_width(blob, ends),
                    np.frombuffer(empty, dtype=np.bool_).copy(), size)
        table._check_unique()
        return table

    @staticmethod
    def _scan(path: Path, use_title: bool) -> tuple[array, bytearray, array, bytearray, int]:
        """One pass over the file: line offsets, ids packed end to end, their ends, empty-text flags, size."""
        offsets, ends, blob, empty = array("q"), array("q"), bytearray(), bytearray()
        offset = 0
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                record = json_line(path, number, raw)
                if record is not None:
                    if "_id" not in record or "text" not in record:
                        raise DataError(f"{path.name}: line {number} needs '_id' and 'text' fields")
                    offsets.append(offset)
                    blob += str(record["_id"]).encode("utf-8")
                    ends.append(len(blob))
                    empty.append(not record_text(record, use_title))
                offset += len(raw)
        return offsets, blob, ends, empty, offset

    @property
    def _order(self) -> np.ndarray:
        """The rows in id order (``intp [n]``), sorted on first use: a table opened for reading rows sorts nothing."""
        if self._sorted is None:
            self._sorted = np.argsort(self._ids, kind="stable").astype(np.intp)
        return self._sorted

    def _check_unique(self) -> None:
        """A :class:`DataError` naming the first line whose id an earlier line holds."""
        ordered = self._ids[self._order]
        repeats = np.flatnonzero(ordered[1:] == ordered[:-1])
        if len(repeats):
            row = int(self._order[repeats + 1].min())
            raise DataError(f"{self.path.name}: line {self._line_number(row)} repeats _id '{self.id_of(row)}'")

    def _line_number(self, row: int) -> int:
        """The 1-based line of ``row`` in the file (blank lines count)."""
        return self._data()[: int(self._offsets[row])].count(b"\n") + 1

    def _data(self) -> mmap.mmap | bytes:
        """The file's bytes, mapped on first use."""
        if self._map is None:
            with self.path.open("rb") as handle:
                size = handle.seek(0, 2)
                if size != self._size:
                    raise DataError(f"'{self.path}' changed since it was read ({self._size} bytes, now {size}): "
                                    "do not edit the data files during a run")
                self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        return self._map

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_map"] = state["_place"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __len__(self) -> int:
        return len(self._offsets)

    def _row(self, row: int) -> int:
        """``row`` as a non-negative index (negative ones count from the end, as for lists)."""
        index = int(row)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"row {row} is outside {self.path.name}'s {len(self)} rows")
        return index

    def __getitem__(self, row: int) -> str:
        """The text of ``row`` (title first when the table was read with ``use_title``)."""
        return record_text(self.record(row), self.use_title)

    def record(self, row: int) -> dict[str, Any]:
        """The JSON object on the line of ``row``, every field of it (``_id``, ``text`` and any other)."""
        data = self._data()
        start = int(self._offsets[self._row(row)])
        stop = data.find(b"\n", start)
        line = data[start:stop if stop >= 0 else len(data)]
        return json.loads(line.decode("utf-8"))

    def texts(self, rows: Iterable[int]) -> list[str]:
        """The texts of ``rows``, in order."""
        return [self[row] for row in rows]

    def is_empty(self, row: int) -> bool:
        """Whether the text of ``row`` is empty (without reading it)."""
        return bool(self._empty[self._row(row)])

    def id_of(self, row: int) -> str:
        """The ``_id`` of ``row``."""
        return self._ids[self._row(row)].decode("utf-8")

    def ids(self, rows: Iterable[int] | None = None) -> list[str]:
        """The ids of ``rows`` (every row when ``None``), in order."""
        picked = self._ids if rows is None else self._ids[[self._row(row) for row in rows]]
        return [key.decode("utf-8") for key in picked.tolist()]

    def places(self, rows: np.ndarray) -> np.ndarray:
        """Each row's place in the byte order of the ids (``strcmp``'s, as trec_eval sorts document numbers):
        ``[n]`` int64. The inverse of the id order is built on first use (8 bytes per row)."""
        if self._place is None:
            self._place = np.empty(len(self._order), dtype=np.int64)
            self._place[self._order] = np.arange(len(self._order), dtype=np.int64)
        return self._place[np.asarray(rows, dtype=np.int64)]

    def row_of(self, key: str) -> int | None:
        """The row of id ``key``, ``None`` when no line has it."""
        return self.rows_of([key])[0]

    def rows_of(self, keys: Iterable[str]) -> list[int | None]:
        """The rows of ids ``keys`` (``None`` for an unknown id), by binary search in the id order."""
        wanted = np.array([str(key).encode("utf-8") for key in keys])
        if not len(wanted) or not len(self):
            return [None] * len(wanted)
        places = np.minimum(np.searchsorted(self._ids, wanted, sorter=self._order), len(self) - 1)
        rows = self._order[places]
        found = self._ids[rows] == wanted
        return [int(row) if hit else None for row, hit in zip(rows.tolist(), found.tolist())]
