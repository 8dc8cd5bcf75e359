"""The items of an index folder, kept on disk and read by row: ``items.jsonl`` and ``items.npy``.

``items.jsonl`` holds one JSON object per index row, in row order, in the layout of a BEIR ``corpus.jsonl``
(``_id``, ``text``) with the item's ``id``, ``a_id`` and ``doc_id`` added; ``_id`` is ``str(id)``.
``items.npy`` holds per row what :class:`~distill.data.beir.text_table.TextTable` keeps of a corpus file (its
line's byte offset, its ``_id``, whether its text is empty), so that opening an index parses no line: the
file is memory-mapped and a search reads the lines of its hits only. About ``9 + <longest id>`` bytes a row
are held (8.8M MS MARCO passages: ~150 MB), against ~0.5 KB a row for the items as Python objects.

:class:`ItemWriter` writes both files chunk by chunk; :func:`write_tie_ordered` writes a split's items in
tie order (:func:`~distill.serving.index.corpus.tie_order`) without holding them all.
"""

from __future__ import annotations

import json
import os
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, overload

import numpy as np

from distill.data.beir.text_table import TextTable, _fixed_width
from distill.io import atomic_writer
from distill.serving.index.corpus import CorpusItem, tie_order

ITEMS_NAME = "items.jsonl"
ROWS_NAME = "items.npy"

__all__ = ["ITEMS_NAME", "ROWS_NAME", "ItemTable", "ItemWriter", "write_tie_ordered"]


def rows_path(path: Path) -> Path:
    """Where the row table of the items file ``path`` is: ``items.jsonl`` -> ``items.npy``."""
    return path.with_suffix(".npy")


class ItemWriter:
    """Appends items to an items file and, on :meth:`close`, writes its row table.

    Holds per item written its line offset (8 bytes), its ``_id`` bytes, their end (8 bytes) and its empty flag;
    the items themselves go to the file as they come.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._handle = open(self.path, "wb")
        self._offsets, self._ends, self._blob, self._empty = array("q"), array("q"), bytearray(), bytearray()
        self.ids = array("q")
        self._size = 0

    def write(self, items: Iterable[CorpusItem]) -> None:
        lines = []
        for item in items:
            key = str(item.id).encode("utf-8")
            line = (json.dumps({"_id": str(item.id), "id": item.id, "a_id": item.a_id, "doc_id": item.doc_id,
                                "text": item.text}, ensure_ascii=False) + "\n").encode("utf-8")
            self._offsets.append(self._size)
            self._blob += key
            self._ends.append(len(self._blob))
            self._empty.append(not item.text.strip())
            self.ids.append(int(item.id))
            self._size += len(line)
            lines.append(line)
        self._handle.write(b"".join(lines))

    def __len__(self) -> int:
        return len(self._offsets)

    def close(self) -> None:
        """Flush the items file to disk and write ``items.npy`` (a structured ``[N]`` array: offset, id, empty)."""
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        ids = _fixed_width(self._blob, self._ends)
        rows = np.empty(len(ids), dtype=[("offset", "<i8"), ("id", ids.dtype.str), ("empty", "?")])
        rows["offset"] = np.frombuffer(self._offsets, dtype=np.int64)
        rows["id"] = ids
        rows["empty"] = np.frombuffer(self._empty, dtype=np.bool_)
        del ids
        self._blob, self._ends = bytearray(), array("q")
        with atomic_writer(rows_path(self.path)) as handle:
            np.save(handle, rows, allow_pickle=False)

    def __enter__(self) -> "ItemWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._handle.closed:
            self._handle.close()


class ItemTable:
    """The items of an items file by row, read from its memory map when asked (``table[row]``, ``table[a:b]``).

    ``by_id(id)`` finds an item by its ``id``. A malformed file or row table is a ``ValueError`` naming it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            rows = np.load(rows_path(self.path), mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ValueError(f"'{rows_path(self.path)}' is not a readable item row table ({error})") from None
        if rows.ndim != 1 or rows.dtype.names != ("offset", "id", "empty"):
            raise ValueError(f"'{rows_path(self.path)}' is not an item row table (fields offset, id, empty)")
        size = self.path.stat().st_size
        offsets = rows["offset"]
        if len(offsets) and not (0 <= int(offsets[0]) and int(offsets[-1]) < size):
            raise ValueError(f"'{rows_path(self.path)}' points outside '{self.path}' ({size} bytes)")
        self.table = TextTable(self.path, False, offsets, rows["id"], rows["empty"], size)

    def __len__(self) -> int:
        return len(self.table)

    @overload
    def __getitem__(self, row: int) -> CorpusItem: ...

    @overload
    def __getitem__(self, row: slice) -> list[CorpusItem]: ...

    def __getitem__(self, row: int | slice) -> CorpusItem | list[CorpusItem]:
        if isinstance(row, slice):
            return [self[index] for index in range(*row.indices(len(self)))]
        return self._item(self.table.record(row), row)

    def items(self, rows: Iterable[int]) -> list[CorpusItem]:
        """The items of ``rows``, in order."""
        return [self[int(row)] for row in rows]

    def by_id(self, item_id: int) -> CorpusItem | None:
        """The item whose ``id`` is ``item_id`` (``None`` when none is)."""
        row = self.table.row_of(str(int(item_id)))
        return None if row is None else self[row]

    def chunks(self, size: int, order: np.ndarray | None = None) -> Iterator[list[CorpusItem]]:
        """The items ``size`` at a time, in row order or in ``order`` (a permutation of the rows).

        Read with positioned file reads, not through the memory map: a pass over every row leaves the file's pages
        in the page cache, not in the process (a build's resident set stays what it holds)."""
        with open(self.path, "rb") as handle:
            for start in range(0, len(self), size):
                stop = min(start + size, len(self))
                rows = np.arange(start, stop) if order is None else np.asarray(order[start:stop], dtype=np.int64)
                yield [self._item(json.loads(line), int(row)) for row, line in zip(rows.tolist(),
                                                                                    self._lines(handle, rows))]

    def _lines(self, handle: Any, rows: np.ndarray) -> list[bytes]:
        """The lines of ``rows`` read from ``handle``: one read for consecutive rows, one per row otherwise."""
        offsets, size = self.table._offsets, self.table._size
        after = rows + 1
        starts = np.asarray(offsets[rows], dtype=np.int64)
        stops = np.where(after < len(self), np.asarray(offsets[np.minimum(after, len(self) - 1)]), size)
        if len(rows) > 1 and bool((np.diff(rows) == 1).all()):
            data = os.pread(handle.fileno(), int(stops[-1] - starts[0]), int(starts[0]))
            return [data[a:b] for a, b in zip((starts - starts[0]).tolist(), (stops - starts[0]).tolist())]
        return [os.pread(handle.fileno(), int(b - a), int(a)) for a, b in zip(starts.tolist(), stops.tolist())]

    def _item(self, record: Any, row: int) -> CorpusItem:
        try:
            doc_id = record["doc_id"]
            return CorpusItem(int(record["id"]), int(record["a_id"]), str(record["text"]),
                              None if doc_id is None else str(doc_id))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"'{self.path}': row {row} is not an {{_id, id, a_id, doc_id, text}} object") from None


def write_tie_ordered(chunks: Iterable[list[CorpusItem]], datamodule: Any, path: Path,
                      chunk_size: int) -> ItemTable:
    """Write the items of ``chunks`` (the split's data order) to ``path`` in tie order; returns the table.

    Two passes: the items go to a hidden file next to ``path`` as they come, then to ``path`` in tie order,
    ``chunk_size`` at a time, read back by row; the hidden file is removed.
    """
    unordered = path.with_name(f".unordered-{path.name}")
    with ItemWriter(unordered) as writer:
        for chunk in chunks:
            writer.write(chunk)
        writer.close()
    order = tie_order(datamodule, np.frombuffer(writer.ids, dtype=np.int64))
    del writer
    source = ItemTable(unordered)
    with ItemWriter(path) as out:
        for chunk in source.chunks(chunk_size, order):
            out.write(chunk)
        out.close()
    del source
    unordered.unlink()
    rows_path(unordered).unlink()
    return ItemTable(path)
