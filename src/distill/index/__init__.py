"""Retrieval indexes: exact dense search and a sparse inverted index (numpy / scipy only)."""

from distill.index.dense import DenseIndex, merge_top_k
from distill.index.sparse import SparseIndex, as_csr, prune_top_k_rows

__all__ = ["DenseIndex", "SparseIndex", "as_csr", "merge_top_k", "prune_top_k_rows"]
