"""Exact dot-product search over float32 embeddings, scored in chunks of the corpus."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from distill.io import atomic_write_bytes, atomic_write_json, read_json
from distill.serving.index.checks import check_finite

ARRAYS_NAME = "dense.npz"
META_NAME = "dense.json"
FORMAT_VERSION = 1


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
    """Exhaustive inner-product search: ``score(q, d) = q . d`` over ``embeddings [N, D]`` float32.

    ``search`` multiplies the queries with ``chunk_size`` corpus rows at a time and keeps a running
    top-k, so memory stays ``O(Q * chunk_size)``. Scores equal a full ``Q @ E.T`` up to float rounding.
    """

    def __init__(self, embeddings: np.ndarray) -> None:
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2:
            raise ValueError(f"dense index embeddings must be [N, D], got shape {embeddings.shape}")
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)

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
        """``queries @ embeddings[start:stop].T``; one query is a matrix-vector product over contiguous rows."""
        if len(queries) == 1:
            return (self.embeddings[start:stop] @ queries[0])[None]
        return queries @ self.embeddings[start:stop].T

    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write ``dense.npz`` and ``dense.json`` into ``folder``, each atomically."""
        buffer = io.BytesIO()
        np.savez(buffer, embeddings=self.embeddings)
        atomic_write_bytes(Path(folder) / ARRAYS_NAME, buffer.getvalue())
        atomic_write_json(Path(folder) / META_NAME, {"format_version": FORMAT_VERSION, "kind": "dense",
                                                     "count": len(self), "dim": self.dim})

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> "DenseIndex":
        meta = read_json(Path(folder) / META_NAME)
        if meta.get("format_version") != FORMAT_VERSION or meta.get("kind") != "dense":
            raise ValueError(f"'{Path(folder) / META_NAME}' is not a version-{FORMAT_VERSION} dense index")
        with np.load(Path(folder) / ARRAYS_NAME, allow_pickle=False) as arrays:
            index = cls(arrays["embeddings"])
        if (meta.get("count"), meta.get("dim")) != (len(index), index.dim):
            raise ValueError(f"'{Path(folder) / META_NAME}' says {meta.get('count')} x {meta.get('dim')} vectors, "
                             f"'{Path(folder) / ARRAYS_NAME}' holds {len(index)} x {index.dim}")
        check_finite(Path(folder) / ARRAYS_NAME, index.embeddings)
        return index
