"""Sparse ``[N, V]`` vectors as the inverted index reads them: float32 CSR, top-k pruning, uint8 impacts."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["as_csr", "prune_top_k_rows", "quantize_impacts"]


def as_csr(vectors: object, num_terms: int | None = None) -> sp.csr_matrix:
    """Dense ``[N, V]`` arrays/tensors or any scipy sparse matrix -> float32 CSR with explicit zeros dropped."""
    if hasattr(vectors, "detach"):
        vectors = vectors.detach().cpu().numpy()  # torch tensor
    matrix = sp.csr_matrix(vectors, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"sparse vectors must be [N, V], got shape {matrix.shape}")
    if num_terms is not None and matrix.shape[1] != num_terms:
        raise ValueError(f"sparse vectors have {matrix.shape[1]} terms, the index has {num_terms}")
    matrix.eliminate_zeros()
    matrix.sum_duplicates()
    return matrix


def prune_top_k_rows(vectors: object, k: int) -> sp.csr_matrix:
    """Keep the ``k`` largest weights of each row of ``[N, V]`` sparse vectors (CSR), drop the rest.

    Among equal weights at the k-th place the lower term ids are kept. Rows with at most ``k``
    non-zeros are unchanged. This is the index-time counterpart of the sparse student's
    ``top_k_b`` (``distill export --top-k-b``), for vectors that were encoded without it.
    """
    if k < 1:
        raise ValueError(f"top-k pruning needs k >= 1, got {k}")
    matrix = as_csr(vectors)
    matrix.sort_indices()
    counts = np.diff(matrix.indptr)
    long_rows = np.flatnonzero(counts > k)
    if long_rows.size == 0:
        return matrix
    keep = np.ones(matrix.nnz, dtype=bool)
    width = int(counts.max())
    columns = np.arange(width)
    step = max(1, (1 << 22) // width)  # rows per chunk: ~4M padded entries at a time
    for start in range(0, long_rows.size, step):
        rows = long_rows[start:start + step]
        positions = matrix.indptr[rows][:, None] + columns  # [r, width] positions into data
        valid = columns < counts[rows][:, None]
        values = np.where(valid, matrix.data[np.minimum(positions, matrix.nnz - 1)], -np.inf)
        order = np.argsort(-values, axis=1, kind="stable")[:, k:]  # stable: ties keep the lower term id
        dropped = np.take_along_axis(positions, order, axis=1)[np.take_along_axis(valid, order, axis=1)]
        keep[dropped] = False
    indptr = np.zeros(matrix.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.minimum(counts, k), out=indptr[1:])
    return sp.csr_matrix((matrix.data[keep], matrix.indices[keep], indptr), shape=matrix.shape)


def quantize_impacts(values: np.ndarray, scale: float, chunk: int = 1 << 24) -> np.ndarray:
    """``round(values / scale)`` clipped to [0, 255] as uint8 (computed in float64, ``chunk`` at a time)."""
    out = np.empty(len(values), dtype=np.uint8)
    for start in range(0, len(values), chunk):
        part = np.rint(values[start:start + chunk].astype(np.float64) / scale)
        out[start:start + chunk] = np.clip(part, 0, 255)
    return out
