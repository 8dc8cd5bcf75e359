"""Dense and sparse indexes against brute-force scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from distill.serving.index import DenseIndex, SparseIndex, merge_top_k


def brute_force_top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort every row by (score descending, row ascending) and keep k."""
    rows = np.arange(scores.shape[1])
    order = [sorted(rows, key=lambda j: (-scores[i, j], j))[:k] for i in range(scores.shape[0])]
    order = np.array(order)
    return np.take_along_axis(scores, order, axis=1), order


def random_sparse(rng: np.random.Generator, n: int, vocab: int, density: float) -> sp.csr_matrix:
    matrix = sp.random(n, vocab, density=density, format="csr", dtype=np.float32, random_state=rng)
    matrix.data = rng.uniform(0.05, 3.0, matrix.nnz).astype(np.float32)
    return matrix


def test_inverted_index_matches_brute_force_on_random_sparse_vectors() -> None:
    rng = np.random.default_rng(0)
    docs = random_sparse(rng, 400, 500, 0.03)
    queries = random_sparse(rng, 25, 500, 0.02)
    k = 10
    index = SparseIndex.from_vectors(docs)
    scores, rows = index.search(queries, k)
    dense = (queries @ docs.T).toarray()
    assert ((dense > 0).sum(1) >= k).all()  # every query touches at least k documents
    want_scores, want_rows = brute_force_top_k(dense, k)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6)
    for i in range(3):  # single-query path, from term ids and weights
        lo, hi = queries.indptr[i], queries.indptr[i + 1]
        one_scores, one_rows = index.search_one(queries.indices[lo:hi], queries.data[lo:hi], k)
        np.testing.assert_array_equal(one_rows, want_rows[i])
        np.testing.assert_allclose(one_scores, want_scores[i], rtol=1e-5, atol=1e-6)


def test_inverted_index_pads_when_few_documents_share_a_term() -> None:
    docs = np.zeros((5, 8), np.float32)
    docs[1, 2], docs[3, 2], docs[4, 6] = 1.0, 2.0, 5.0
    query = np.zeros((1, 8), np.float32)
    query[0, 2] = 1.5
    scores, rows = SparseIndex.from_vectors(docs).search(query, k=4)
    np.testing.assert_array_equal(rows, [[3, 1, -1, -1]])
    np.testing.assert_allclose(scores, [[3.0, 1.5, -np.inf, -np.inf]])


def test_dense_chunked_search_matches_full_scoring() -> None:
    rng = np.random.default_rng(1)
    corpus = rng.standard_normal((103, 16)).astype(np.float32)
    queries = rng.standard_normal((7, 16)).astype(np.float32)
    scores, rows = DenseIndex(corpus).search(queries, k=9, chunk_size=10)
    want_scores, want_rows = brute_force_top_k(queries @ corpus.T, 9)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    small_scores, small_rows = DenseIndex(corpus[:3]).search(queries[:1], k=5)
    assert small_rows[0, 3:].tolist() == [-1, -1] and np.isneginf(small_scores[0, 3:]).all()


def test_merge_top_k_breaks_ties_by_row() -> None:
    scores, rows = merge_top_k(np.array([[1.0, 2.0, 2.0, 0.5]]), np.array([[7, 9, 3, 1]]), 3)
    assert rows.tolist() == [[3, 9, 7]] and scores.tolist() == [[2.0, 2.0, 1.0]]


def test_indexes_save_and_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    docs = random_sparse(rng, 50, 40, 0.2)
    sparse = SparseIndex.from_vectors(docs)
    sparse.save(tmp_path / "sparse")
    loaded = SparseIndex.load(tmp_path / "sparse")
    assert loaded.nbytes == sparse.nbytes and len(loaded) == 50
    queries = random_sparse(rng, 4, 40, 0.2)
    for a, b in zip(loaded.search(queries, 5), sparse.search(queries, 5)):
        np.testing.assert_array_equal(a, b)
    dense = DenseIndex(rng.standard_normal((20, 8)).astype(np.float32))
    dense.save(tmp_path / "dense")
    np.testing.assert_array_equal(DenseIndex.load(tmp_path / "dense").embeddings, dense.embeddings)
    assert not list((tmp_path / "dense").glob(".*.tmp"))
    (tmp_path / "dense" / "sparse.json").write_text('{"format_version": 1, "kind": "dense"}')
    with pytest.raises(ValueError, match="sparse.json' is not a sparse index"):
        SparseIndex.load(tmp_path / "dense")


def test_sparse_queries_must_match_the_vocabulary() -> None:
    index = SparseIndex.from_vectors(np.eye(4, dtype=np.float32))
    with pytest.raises(ValueError, match="5 terms, the index has 4"):
        index.search(np.ones((1, 5), np.float32))
