"""Exact dot-product search over float32 (or float16) embeddings, scored in float32 in chunks of the corpus.

An index folder keeps the embeddings in ``dense.npy``, in the precision ``distill index --vector-dtype`` chose
(:func:`~distill.serving.index.backends.stored_dtype`), as :mod:`~distill.serving.index.vectors` wrote them while
encoding. :meth:`DenseIndex.load` reads float32 embeddings of at most ``FLOAT32_BUDGET`` bytes into memory (a
query is then one BLAS product per chunk, nothing converted) and memory-maps the others: float16 ones, which
search converts to float32 a chunk at a time for every query (several times slower, half the memory), and
float32 ones over the budget, read through the page cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from distill.io import atomic_write_json, atomic_writer, read_json
from distill.serving.index.backends import FLOAT32_BUDGET
from distill.serving.index.checks import check_finite

ARRAYS_NAME = "dense.npy"
META_NAME = "dense.json"
FORMAT_VERSION = 2  # 1: float32 embeddings in dense.npz
DTYPES = (np.float16, np.float32)


def merge_top_k(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` of each row of ``scores [Q, M]`` (with their ``rows [Q, M]``), sorted.

    Order: score descending, then row ascending (deterministic ties). Rows with fewer than ``k``
    candidates are padded with score ``-inf`` and row ``-1``.
    """
    num_queries, width = scores.shape
    if width > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(scores, part, axis=1).min(axis=1)
        for query in np.flatnonzero((scores >= kth[:, None]).sum(axis=1) > k):  # ties straddle the cut
            candidates = np.flatnonzero(scores[query] >= kth[query])
            order = np.lexsort((rows[query, candidates], -scores[query, candidates]))
            part[query] = candidates[order[:k]]
        scores = np.take_along_axis(scores, part, axis=1)
        rows = np.take_along_axis(rows, part, axis=1)
    order = np.lexsort((rows, -scores), axis=1)
    scores = np.take_along_axis(scores, order, axis=1)
    rows = np.take_along_axis(rows, order, axis=1)
    if scores.shape[1] < k:
        pad = k - scores.shape[1]
        scores = np.concatenate([scores, np.full((num_queries, pad), -np.inf, scores.dtype)], axis=1)
        rows = np.concatenate([rows, np.full((num_queries, pad), -1, rows.dtype)], axis=1)
    return scores, rows


class DenseIndex:
    """Exhaustive inner-product search: ``score(q, d) = q . d`` over ``embeddings [N, D]`` float16 or float32.

    ``search`` multiplies the float32 queries with ``chunk_size`` corpus rows at a time (float16 rows are
    converted to float32 per chunk, so a score is the float32 dot product of the stored values) and keeps a
    running top-k, so memory stays ``O(Q * chunk_size + chunk_size * D)``. Scores equal a full ``Q @ E.T`` up to
    float rounding. The embeddings are kept as given (an array or a memory map), never copied whole.
    """

    def __init__(self, embeddings: np.ndarray) -> None:
        if not isinstance(embeddings, np.ndarray):
            embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2:
            raise ValueError(f"dense index embeddings must be [N, D], got shape {embeddings.shape}")
        if embeddings.dtype not in DTYPES or not embeddings.flags.c_contiguous:
            embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.embeddings = embeddings

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes of the stored vectors."""
        return int(self.embeddings.nbytes)

    def search(self, queries: np.ndarray, k: int = 10, chunk_size: int = 65536) -> tuple[np.ndarray, np.ndarray]:
        """``queries [Q, D]`` -> ``(scores [Q, k] float32, rows [Q, k] int64)``; see :func:`merge_top_k`."""
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be [Q, {self.dim}], got shape {queries.shape}")
        if k < 1 or chunk_size < 1:
            raise ValueError(f"k and chunk_size must be >= 1, got k={k}, chunk_size={chunk_size}")
        best_scores = np.empty((len(queries), 0), np.float32)
        best_rows = np.empty((len(queries), 0), np.int64)
        for start in range(0, len(self), chunk_size):
            block = self._scores(queries, start, start + chunk_size)
            rows = np.broadcast_to(np.arange(start, start + block.shape[1], dtype=np.int64), block.shape)
            if block.shape[1] > k:  # the chunk's own top k first: merging then touches 2k columns, not the chunk
                block, rows = merge_top_k(block, rows, k)
            best_scores, best_rows = merge_top_k(np.concatenate([best_scores, block], axis=1),
                                                 np.concatenate([best_rows, rows], axis=1), k)
            best_scores, best_rows = best_scores[:, :k], best_rows[:, :k]
        return merge_top_k(best_scores, best_rows, k)

    def _scores(self, queries: np.ndarray, start: int, stop: int) -> np.ndarray:
        """``queries @ embeddings[start:stop].T`` in float32; one query is a matrix-vector product over contiguous
        rows."""
        block = np.asarray(self.embeddings[start:stop], dtype=np.float32)
        if len(queries) == 1:
            return (block @ queries[0])[None]
        return queries @ block.T

    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write ``dense.npy`` (the embeddings in their dtype) and ``dense.json`` into ``folder``, each atomically."""
        with atomic_writer(Path(folder) / ARRAYS_NAME) as handle:
            np.save(handle, self.embeddings, allow_pickle=False)
        self.save_meta(folder)

    def save_meta(self, folder: str | os.PathLike[str]) -> None:
        """Write ``dense.json`` for a ``dense.npy`` already in ``folder`` (one streamed there while encoding)."""
        atomic_write_json(Path(folder) / META_NAME, {"format_version": FORMAT_VERSION, "kind": "dense",
                                                     "count": len(self), "dim": self.dim,
                                                     "dtype": str(self.embeddings.dtype)})

    @classmethod
    def load(cls, folder: str | os.PathLike[str], budget: int = FLOAT32_BUDGET) -> "DenseIndex":
        """Open ``dense.npy`` (checked against ``dense.json`` and for NaN / infinite rows, in chunks): float32
        embeddings of at most ``budget`` bytes read into memory, any others memory-mapped."""
        meta = read_json(Path(folder) / META_NAME)
        if meta.get("format_version") != FORMAT_VERSION or meta.get("kind") != "dense":
            raise ValueError(f"'{Path(folder) / META_NAME}' is not a version-{FORMAT_VERSION} dense index")
        embeddings = np.load(Path(folder) / ARRAYS_NAME, mmap_mode="r", allow_pickle=False)
        if embeddings.dtype not in DTYPES:
            raise ValueError(f"'{Path(folder) / ARRAYS_NAME}' holds {embeddings.dtype}; expected float16 or float32")
        index = cls(embeddings)
        if (meta.get("count"), meta.get("dim"), meta.get("dtype")) != (len(index), index.dim, str(embeddings.dtype)):
            raise ValueError(f"'{Path(folder) / META_NAME}' says {meta.get('count')} x {meta.get('dim')} "
                             f"{meta.get('dtype')} vectors, '{Path(folder) / ARRAYS_NAME}' holds {len(index)} x "
                             f"{index.dim} {embeddings.dtype}")
        if embeddings.dtype == np.float32 and embeddings.nbytes <= budget:
            index.embeddings = np.array(embeddings)  # in memory: no page faults on a cold or evicted page
        check_finite(Path(folder) / ARRAYS_NAME, index.embeddings)
        return index
