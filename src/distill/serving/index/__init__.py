"""Retrieval indexes: exact dense search and a sparse inverted index (numpy / scipy only), and index folders."""

from distill.serving.index.dense import DenseIndex, merge_top_k
from distill.serving.index.sparse import SparseIndex, as_csr, prune_top_k_rows

__all__ = ["DenseIndex", "SparseIndex", "as_csr", "merge_top_k", "prune_top_k_rows"]
