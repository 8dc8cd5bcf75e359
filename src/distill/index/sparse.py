"""Inverted index for sparse (vocabulary-sized) vectors: one posting list per vocabulary id.

The document matrix ``W [N, V]`` is stored column-major (CSC): column ``j`` lists the documents
containing term ``j`` (``indices``) with their weights (``data``). Read row-wise, the same three
arrays are the term-major matrix ``P [V, N]``. A query ``q`` with non-zero terms ``T`` scores only
the documents in those lists, ``score(d) = sum_{j in T} q_j * W_dj``, by the sparse product
``q @ P`` (scipy's SMMP kernel: one pass over the query's posting lists into an accumulator),
then the top-k of the touched documents is returned.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from distill.index.dense import merge_top_k
from distill.io import atomic_write_bytes, atomic_write_json, read_json

ARRAYS_NAME = "sparse.npz"
META_NAME = "sparse.json"
FORMAT_VERSION = 1


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


class SparseIndex:
    """Posting lists of ``W [N, V]`` (CSC): ``indptr [V+1]`` int64, ``indices [nnz]`` int32, ``data`` float32.

    ``search`` returns, per query, the ``k`` best documents among those sharing at least one term with
    it, as ``(scores [Q, k] float32, rows [Q, k] int64)`` sorted by score then row; missing places are
    padded with ``-inf`` / ``-1``.
    """

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, num_docs: int) -> None:
        self.indptr = np.ascontiguousarray(indptr, dtype=np.int64)
        self.indices = np.ascontiguousarray(indices, dtype=np.int32)
        self.data = np.ascontiguousarray(data, dtype=np.float32)
        self.num_docs = int(num_docs)
        if self.indptr.ndim != 1 or self.indptr[-1] != len(self.indices) or len(self.indices) != len(self.data):
            raise ValueError("inconsistent posting lists: indptr[-1] must equal len(indices) == len(data)")
        # Term-major view [V, N] over the same arrays (no copy): row j is the posting list of term j.
        self._postings = sp.csr_matrix((self.data, self.indices, self.indptr),
                                       shape=(len(self.indptr) - 1, self.num_docs), copy=False)

    @classmethod
    def from_vectors(cls, documents: object) -> "SparseIndex":
        """Build from ``[N, V]`` document vectors (dense array, tensor or scipy sparse)."""
        postings = as_csr(documents).tocsc()
        postings.sort_indices()
        return cls(postings.indptr, postings.indices, postings.data, postings.shape[0])

    def __len__(self) -> int:
        return self.num_docs

    @property
    def num_terms(self) -> int:
        return int(len(self.indptr) - 1)

    @property
    def nnz(self) -> int:
        return int(len(self.indices))

    @property
    def nbytes(self) -> int:
        """Bytes of the posting lists (offsets, document ids and weights)."""
        return int(self.indptr.nbytes + self.indices.nbytes + self.data.nbytes)

    def search_one(self, terms: np.ndarray, weights: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """One query given by its non-zero ``terms [T]`` and ``weights [T]`` -> ``(scores [k], rows [k])``."""
        terms = np.asarray(terms, dtype=np.int64)
        query = sp.csr_matrix((np.asarray(weights, dtype=np.float32), terms, np.array([0, terms.size])),
                              shape=(1, self.num_terms))
        scores, rows = self.search(query, k)
        return scores[0], rows[0]

    def search(self, queries: object, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """``[Q, V]`` query vectors (dense, tensor or scipy sparse) -> ``(scores [Q, k], rows [Q, k])``.

        Only documents with a non-zero score (sharing a term with the query) are candidates.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        matrix = as_csr(queries, self.num_terms)
        if matrix.nnz and (matrix.indices.min() < 0 or matrix.indices.max() >= self.num_terms):
            raise ValueError(f"query term ids must lie in [0, {self.num_terms})")
        scored = (matrix @ self._postings).tocsr()  # [Q, N]: only touched documents are stored
        results = [
            merge_top_k(scored.data[scored.indptr[i]:scored.indptr[i + 1]][None],
                        scored.indices[scored.indptr[i]:scored.indptr[i + 1]].astype(np.int64)[None], k)
            for i in range(matrix.shape[0])
        ]
        if not results:
            return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
        return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])

    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write ``sparse.npz`` (posting arrays) and ``sparse.json`` into ``folder``, each atomically."""
        buffer = io.BytesIO()
        np.savez(buffer, indptr=self.indptr, indices=self.indices, data=self.data)
        atomic_write_bytes(Path(folder) / ARRAYS_NAME, buffer.getvalue())
        atomic_write_json(Path(folder) / META_NAME, {"format_version": FORMAT_VERSION, "kind": "sparse",
                                                     "count": self.num_docs, "num_terms": self.num_terms,
                                                     "nnz": self.nnz})

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> "SparseIndex":
        meta = read_json(Path(folder) / META_NAME)
        if meta.get("format_version") != FORMAT_VERSION or meta.get("kind") != "sparse":
            raise ValueError(f"'{Path(folder) / META_NAME}' is not a version-{FORMAT_VERSION} sparse index")
        with np.load(Path(folder) / ARRAYS_NAME, allow_pickle=False) as arrays:
            return cls(arrays["indptr"], arrays["indices"], arrays["data"], meta["count"])
