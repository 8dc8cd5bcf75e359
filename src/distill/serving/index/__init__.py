"""Retrieval indexes: distill's own exact dense search and sparse inverted index (numpy / scipy), FAISS and
Qdrant backends (optional extras), and index folders."""

from distill.serving.index.backends import BACKENDS, BackendSettings
from distill.serving.index.dense import DenseIndex, merge_top_k
from distill.serving.index.sparse import SparseIndex, as_csr, prune_top_k_rows

__all__ = ["BACKENDS", "BackendSettings", "DenseIndex", "SparseIndex", "as_csr", "merge_top_k", "prune_top_k_rows"]
