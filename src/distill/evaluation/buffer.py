"""What evaluation keeps of a split: embeddings and ids, batch by batch, never the raw inputs.

An evaluation batch holds pairs (``a`` and ``b`` with ``a_id`` / ``b_id``: image-caption splits) or one
side (``a`` + ``a_id``: queries; ``b`` + ``b_id``: a passage corpus). :class:`SplitBuffer` stores each
distinct a item's and b item's embedding once (first occurrence; an image is encoded once even when
several of its captions are in the split) and, for pairs, which a item each b item belongs to. Per item
that is ``D`` numbers in ``float32`` or ``float16`` plus an 8-byte id (a late-interaction student: its valid
token vectors, ``tokens x D`` numbers, see :mod:`distill.evaluation.late`). ``embeddings_dir`` streams the
embeddings to memory-mapped files instead of host memory, for corpora of millions of passages.

Under DDP every process buffers its own shard; :meth:`SplitBuffer.finalize` gathers ids and embeddings
from all processes (in-memory embeddings) or opens every process's files (``embeddings_dir``, which must
then be a folder all processes share) and drops the duplicates a distributed sampler pads with.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from distill import distributed
from distill.errors import InputError
from distill.evaluation.late import TokenRows, TokenTable
from distill.students.late_interaction import TokenEmbeddings

__all__ = ["EMBEDDING_DTYPES", "EmbeddingRows", "EncodedSplit", "SplitBuffer"]

EMBEDDING_DTYPES = {"float32": torch.float32, "float16": torch.float16}


class EmbeddingRows:
    """Rows ``[n, D]`` appended batch by batch, in memory or in a memory-mapped file (``folder``)."""

    def __init__(self, dtype: torch.dtype = torch.float32, folder: str | Path | None = None, name: str = "rows") -> None:
        self.dtype = dtype
        self.parts: list[Tensor] = []
        self.rows = 0
        self.width: int | None = None
        self.path: Path | None = None
        if folder is not None:
            Path(folder).mkdir(parents=True, exist_ok=True)
            self.path = Path(folder) / f"{name}-rank{distributed.rank()}-{uuid.uuid4().hex[:8]}.f{dtype.itemsize * 8}"
        self._handle = None

    def append(self, rows: Tensor) -> None:
        values = rows.detach().to("cpu", self.dtype).contiguous()
        if self.width is None:
            self.width = int(values.shape[1])
        self.rows += int(values.shape[0])
        if self.path is None:
            self.parts.append(values)
            return
        if self._handle is None:
            self._handle = open(self.path, "wb")
        self._handle.write(values.numpy().tobytes())

    def finish(self) -> Tensor:
        """All rows ``[N, D]``: one tensor in memory, or a read-only view of the memory-mapped file."""
        if self.path is None:
            return torch.cat(self.parts) if self.parts else torch.zeros(0, self.width or 0, dtype=self.dtype)
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        return open_rows(self.path, self.rows, self.width or 0, self.dtype)

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def open_rows(path: Path, rows: int, width: int, dtype: torch.dtype) -> Tensor:
    """A read-only ``[rows, width]`` tensor over a raw little-endian file (no copy into memory)."""
    if rows == 0:
        return torch.zeros(0, width, dtype=dtype)
    numpy_dtype = np.float16 if dtype == torch.float16 else np.float32
    # Copy-on-write: torch wants a writable array; the file is never written back.
    return torch.from_numpy(np.memmap(path, dtype=numpy_dtype, mode="c", shape=(rows, width)))


@dataclass
class EncodedSplit:
    """A split's distinct items: ``a_ids [Na]``, ``a [Na, D]`` (or shards), ``b_ids [Nb]``, ``b [Nb, D]`` (or
    shards, e.g. one memory-mapped file per process), ``b_owner [Nb]`` (the position in ``a_ids`` of each b
    item's a item, for pair splits; ``None`` for query/corpus splits) and ``b_keep [Nb]`` (False for the
    duplicates a distributed sampler added)."""

    a_ids: Tensor
    a: Tensor
    b_ids: Tensor
    b: list[Tensor]
    b_owner: Tensor | None
    b_keep: Tensor

    @property
    def num_b(self) -> int:
        return int(self.b_ids.numel())


def first_occurrence(ids: Tensor) -> Tensor:
    """``[N] -> bool [N]``: True at the first position of every distinct id."""
    if ids.numel() == 0:
        return torch.zeros(0, dtype=torch.bool)
    order = torch.sort(ids, stable=True).indices
    sorted_ids = ids[order]
    first = torch.ones_like(sorted_ids, dtype=torch.bool)
    first[1:] = sorted_ids[1:] != sorted_ids[:-1]
    keep = torch.zeros_like(first)
    keep[order] = first
    return keep


@dataclass
class SplitBuffer:
    """Collects one split's embeddings (see the module docstring).

    ``dtype`` is ``float32`` or ``float16``; ``folder`` (optional) receives the b side's memory-mapped rows.
    """

    dtype: torch.dtype = torch.float32
    folder: str | None = None
    a_ids: list[Tensor] = field(default_factory=list)
    b_ids: list[Tensor] = field(default_factory=list)
    pairs: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    _seen_a: set[int] = field(default_factory=set)
    _a_rows: EmbeddingRows | TokenRows | None = None
    _b_rows: EmbeddingRows | TokenRows | None = None

    def __post_init__(self) -> None:
        self._a_rows = EmbeddingRows(self.dtype)
        self._b_rows = EmbeddingRows(self.dtype, self.folder, "b")

    def __len__(self) -> int:
        return sum(int(t.numel()) for t in self.a_ids) + sum(int(t.numel()) for t in self.b_ids)

    def new_a(self, a_ids: Tensor) -> Tensor:
        """Positions of the batch's a items not buffered yet (first occurrence in the batch)."""
        ids = a_ids.detach().cpu().tolist()
        rows = []
        for row, value in enumerate(ids):
            if value not in self._seen_a:
                self._seen_a.add(value)
                rows.append(row)
        return torch.tensor(rows, dtype=torch.long)

    def add_a(self, ids: Tensor, embeddings: Tensor | TokenEmbeddings) -> None:
        self._a_rows = _rows_for(self._a_rows, embeddings, self.dtype, None)
        self.a_ids.append(ids.detach().cpu().long())
        self._a_rows.append(embeddings)

    def add_b(self, ids: Tensor, embeddings: Tensor | TokenEmbeddings) -> None:
        self._b_rows = _rows_for(self._b_rows, embeddings, self.dtype, self.folder)
        self.b_ids.append(ids.detach().cpu().long())
        self._b_rows.append(embeddings)

    def add_pairs(self, a_ids: Tensor, b_ids: Tensor) -> None:
        self.pairs.append((a_ids.detach().cpu().long(), b_ids.detach().cpu().long()))

    def finalize(self) -> EncodedSplit:
        """The split over all processes, each a item once; b items in arrival order (rank by rank)."""
        assert self._a_rows is not None and self._b_rows is not None
        width = self._a_rows.width or self._b_rows.width or 0
        a_ids = distributed.gather_tensor(_cat(self.a_ids))
        a = _gather_rows(self._a_rows.finish(), width)
        keep_a = first_occurrence(a_ids)
        a_ids, a = a_ids[keep_a], a[keep_a]
        b_ids = distributed.gather_tensor(_cat(self.b_ids))
        b = self._gather_b(width)
        owner = None
        if self.pairs:
            pair_a = distributed.gather_tensor(torch.cat([p[0] for p in self.pairs]))
            pair_b = distributed.gather_tensor(torch.cat([p[1] for p in self.pairs]))
            owner = _owners(a_ids, b_ids, pair_a, pair_b)
        return EncodedSplit(a_ids, a, b_ids, b, owner, first_occurrence(b_ids))

    def _gather_b(self, width: int) -> list[Tensor]:
        assert self._b_rows is not None
        rows = self._b_rows.finish()
        if self._b_rows.path is None:
            return [_gather_rows(rows, width)]
        counts = distributed.gather_tensor(torch.tensor([self._b_rows.rows]))
        paths = distributed.gather_strings(str(self._b_rows.path))
        return [open_rows(Path(p), int(n), width, self.dtype) for p, n in zip(paths, counts.tolist())]

    def remove_files(self) -> None:
        """Delete this process's memory-mapped file (after the metrics are computed)."""
        if self._b_rows is not None:
            self._b_rows.remove()


def _rows_for(rows: Any, embeddings: Any, dtype: torch.dtype, folder: str | None) -> Any:
    """The rows object for this batch's embeddings: token embeddings (a late-interaction student) switch an
    empty :class:`EmbeddingRows` to :class:`~distill.evaluation.late.TokenRows`."""
    if not isinstance(embeddings, TokenEmbeddings) or isinstance(rows, TokenRows):
        return rows
    if folder is not None:
        raise InputError("model.init_args.evaluator.init_args.embeddings_dir streams pooled [N, D] rows only: leave "
                         "it unset for a late-interaction student (its tokens stay in host memory, see "
                         "distill.evaluation.late)")
    if rows.rows:
        raise ValueError("an evaluation split mixes pooled and token embeddings")
    return TokenRows(dtype)


def _gather_rows(rows: Tensor | TokenTable, width: int) -> Tensor | TokenTable:
    """Every process's rows, in rank order (token tables keep their ragged layout)."""
    if isinstance(rows, TokenTable):
        return rows.gather()
    return distributed.gather_tensor(_as_rows(rows, width))


def _cat(parts: list[Tensor]) -> Tensor:
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def _as_rows(rows: Tensor, width: int) -> Tensor:
    """``rows`` as ``[N, width]`` (a process that buffered nothing still joins the gather with ``[0, width]``)."""
    return rows if rows.numel() else torch.zeros(0, width, dtype=rows.dtype)


def _owners(a_ids: Tensor, b_ids: Tensor, pair_a: Tensor, pair_b: Tensor) -> Tensor:
    """Position in ``a_ids`` of the a item of every b item (pairs give ``b id -> a id``)."""
    a_position = {value: row for row, value in enumerate(a_ids.tolist())}
    owner_of_b = dict(zip(pair_b.tolist(), pair_a.tolist()))
    try:
        return torch.tensor([a_position[owner_of_b[b]] for b in b_ids.tolist()], dtype=torch.long)
    except KeyError as error:
        raise ValueError(f"evaluation: item id {error.args[0]} has no pair in the split; every b item of a "
                         "pair split needs its a item") from None

