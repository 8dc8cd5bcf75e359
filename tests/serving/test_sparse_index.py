"""The compressed (uint8 impacts, block-local uint16 ids) sparse index, its files, and top-k pruning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import yaml

from distill.serving.index import SparseIndex, prune_top_k_rows
from distill.serving.index.sparse import BLOCK_SIZE


def top_k_by_rule(full_scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force over a score vector: non-zero scores, by (score descending, row ascending), first k."""
    rows = np.flatnonzero(full_scores)
    order = np.lexsort((rows, -full_scores[rows]))[:k]
    return full_scores[rows[order]], rows[order]


def random_sparse(rng: np.random.Generator, n: int, vocab: int, density: float) -> sp.csr_matrix:
    matrix = sp.random(n, vocab, density=density, format="csr", dtype=np.float32, random_state=rng)
    matrix.data = rng.uniform(0.05, 3.0, matrix.nnz).astype(np.float32)
    return matrix


def assert_valid_top_k(scores: np.ndarray, rows: np.ndarray, full_scores: np.ndarray, k: int) -> None:
    """A correct top-k even where quantised scores tie: the k best values, each the score of its row."""
    want_scores, _ = top_k_by_rule(full_scores, k)
    found = rows >= 0
    assert found.sum() == len(want_scores) and found[:len(want_scores)].all()
    assert len(set(rows[found].tolist())) == found.sum()
    np.testing.assert_allclose(scores[found], want_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(full_scores[rows[found]], scores[found], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- quantisation
def hand_docs() -> np.ndarray:
    docs = np.zeros((3, 5), np.float32)
    docs[0, 0], docs[0, 2] = 2.55, 1.0
    docs[1, 1], docs[1, 3], docs[1, 4] = 0.004, 0.5, 0.026
    docs[2, 0], docs[2, 4] = 0.77, 2.0
    return docs


def test_uint8_impacts_by_hand() -> None:
    index = SparseIndex.from_vectors(hand_docs(), weights="uint8")
    scale = float(np.float32(2.55)) / 255  # max weight / 255
    assert index.weights == "uint8" and index.scale == pytest.approx(scale, rel=1e-12)
    # term-major postings; 0.004 / scale = 0.4 rounds to impact 0 and is not stored; 0.026 / scale = 2.6 -> 3
    assert index.offsets.tolist() == [0, 2, 2, 3, 4, 6]
    assert index.doc_ids.tolist() == [0, 2, 0, 1, 1, 2]
    assert index.impacts.tolist() == [255, 77, 100, 50, 3, 200]
    assert index.nbytes == 6 * 4 + 6 * 2 + 6 * 1 + 8  # offsets uint32, ids uint16, impacts uint8, scale float64

    dequantised = index.to_csr().toarray()
    np.testing.assert_allclose(dequantised[1], [0, 0, 0, 50 * scale, 3 * scale], rtol=1e-6)
    assert np.abs(dequantised - hand_docs()).max() <= scale / 2

    query = np.zeros((1, 5), np.float32)
    query[0, 0], query[0, 3], query[0, 4] = 1.0, 1.0, 2.0
    scores, rows = index.search(query, k=4)
    assert rows.tolist() == [[2, 0, 1, -1]]
    want = [(77 + 2 * 200) * scale, 255 * scale, (50 + 2 * 3) * scale]  # 4.77, 2.55, 0.56
    np.testing.assert_allclose(scores[0, :3], want, rtol=1e-6)
    assert np.isneginf(scores[0, 3])
    exact, _ = SparseIndex.from_vectors(hand_docs()).search(query, k=3)  # 4.77, 2.55, 0.552
    assert np.abs(exact[0] - scores[0, :3]).max() <= scale / 2 * 3.0 + 1e-6  # bound: scale/2 * sum |q_j|

    dropped_only = np.zeros((1, 5), np.float32)
    dropped_only[0, 1] = 1.0  # only the dropped posting has this term
    assert index.search(dropped_only, k=2)[1].tolist() == [[-1, -1]]


def test_quantisation_error_is_at_most_half_a_step() -> None:
    rng = np.random.default_rng(0)
    docs = random_sparse(rng, 300, 120, 0.05)
    docs.data[:20] = rng.uniform(0, 0.004, 20).astype(np.float32)  # some weights below scale / 2
    index = SparseIndex.from_vectors(docs, weights="uint8")
    assert index.scale == pytest.approx(float(docs.data.max()) / 255)
    error = np.abs((index.to_csr() - docs).toarray())
    assert error.max() <= index.scale / 2 * (1 + 1e-6)
    assert index.nnz < docs.nnz  # the sub-half-step weights were dropped


def test_uint8_needs_non_negative_weights_and_a_known_format() -> None:
    docs = np.array([[1.0, -0.5]], np.float32)
    with pytest.raises(ValueError, match="non-negative weights, found -0.5"):
        SparseIndex.from_vectors(docs, weights="uint8")
    with pytest.raises(ValueError, match="weights must be one of"):
        SparseIndex.from_vectors(np.eye(2, dtype=np.float32), weights="int4")


# ---------------------------------------------------------------------------- search against brute force
def test_compressed_search_matches_brute_force_on_the_dequantised_vectors() -> None:
    rng = np.random.default_rng(1)
    docs = random_sparse(rng, 500, 300, 0.04)
    queries = random_sparse(rng, 30, 300, 0.03)
    index = SparseIndex.from_vectors(docs, weights="uint8")
    full = (queries @ index.to_csr().T).toarray()
    scores, rows = index.search(queries, k=10)
    for i in range(len(full)):
        assert_valid_top_k(scores[i], rows[i], full[i], 10)
        lo, hi = queries.indptr[i], queries.indptr[i + 1]
        one = index.search_one(queries.indices[lo:hi], queries.data[lo:hi], 10)
        np.testing.assert_array_equal(one[1], rows[i])
        np.testing.assert_array_equal(one[0], scores[i])
    exact = (queries @ docs.T).toarray()  # the float32 scores of the rows it returned are within the bound
    bound = index.scale / 2 * np.asarray(abs(queries).sum(axis=1)).ravel()
    found = rows >= 0
    gap = np.abs(np.take_along_axis(exact, np.maximum(rows, 0), axis=1) - scores)
    assert (gap[found] <= np.repeat(bound, found.sum(axis=1)) + 1e-5).all()


def planted_corpus() -> tuple[sp.csr_matrix, list[int], np.ndarray]:
    """Three blocks (the last partial); 12 planted documents in every block and on block edges score far
    above a random background, with distinct scores, so the top-12 has no ties in either format."""
    rng = np.random.default_rng(2)
    n, vocab = 2 * BLOCK_SIZE + 1000, 50
    planted = [3, 20, 65535, 65536, 65537, 70000, 100000, 131071, 131072, 131500, 132071, 40000]
    background = np.setdiff1d(np.arange(n), planted)
    rows = np.repeat(background, 2)
    cols = rng.integers(0, vocab, rows.size)
    vals = rng.uniform(0.05, 0.5, rows.size)
    p_rows = np.repeat(planted, 2)
    p_cols = np.tile([0, 1], len(planted))
    p_vals = np.column_stack([1.0 + 0.15 * np.arange(len(planted)), np.full(len(planted), 0.5)]).ravel()
    docs = sp.csr_matrix((np.concatenate([vals, p_vals, [3.0]]),
                          (np.concatenate([rows, p_rows, [50000]]), np.concatenate([cols, p_cols, [40]]))),
                         shape=(n, vocab), dtype=np.float32)  # 3.0 sets the scale on a term no query uses
    query = np.zeros(vocab, np.float32)
    query[[0, 1, 2]] = 1.0, 0.7, 0.45
    order = np.argsort(-(1.0 + 0.15 * np.arange(len(planted))))
    return docs, [planted[i] for i in order], query


@pytest.mark.parametrize("weights", ["float32", "uint8"])
def test_search_across_blocks_finds_the_planted_documents(weights: str) -> None:
    docs, planted_by_score, query = planted_corpus()
    index = SparseIndex.from_vectors(docs, weights=weights)
    assert index.num_blocks == 3
    vectors = index.to_csr()
    full = vectors @ query  # brute force over the stored (dequantised) vectors
    for k in (1, 8, 12):
        scores, rows = index.search_one(np.array([0, 1, 2]), query[[0, 1, 2]], k)
        want_scores, want_rows = top_k_by_rule(full, k)
        assert rows.tolist() == want_rows.tolist() == planted_by_score[:k]
        np.testing.assert_allclose(scores, want_scores, rtol=1e-6)
    if weights == "float32":
        np.testing.assert_allclose(full, docs @ query, rtol=1e-6)


@pytest.mark.parametrize("weights", ["float32", "uint8"])
def test_equal_scores_go_to_the_lower_row_across_blocks(weights: str) -> None:
    n = 2 * BLOCK_SIZE + 500
    tied = [7, 8, BLOCK_SIZE + 4, 2 * BLOCK_SIZE + 100]  # identical postings: bit-identical scores
    rows = np.array([*tied, 1, 30, BLOCK_SIZE + 2, 2 * BLOCK_SIZE + 99])
    vals = np.array([2.0] * 4 + [1.0, 0.5, 1.5, 1.9], np.float32)
    docs = sp.csr_matrix((vals, (rows, np.full(rows.size, 5))), shape=(n, 8))
    index = SparseIndex.from_vectors(docs, weights=weights)
    for k, want in ((1, tied[:1]), (2, tied[:2]), (4, tied), (6, [*tied, 2 * BLOCK_SIZE + 99, BLOCK_SIZE + 2])):
        scores, found = index.search_one(np.array([5]), np.array([1.0]), k)
        assert found.tolist() == want
        assert len(set(scores[:4].tolist())) == 1


def test_repeated_query_terms_are_summed() -> None:
    index = SparseIndex.from_vectors(hand_docs(), weights="uint8")
    once = index.search_one(np.array([0, 4]), np.array([1.0, 2.0]), 3)
    split = index.search_one(np.array([4, 0, 4]), np.array([1.5, 1.0, 0.5]), 3)
    np.testing.assert_array_equal(once[1], split[1])
    np.testing.assert_allclose(once[0], split[0], rtol=1e-6)
    with pytest.raises(ValueError, match=r"must lie in \[0, 5\)"):
        index.search_one(np.array([5]), np.array([1.0]), 3)


# ---------------------------------------------------------------------------- bytes and files
@pytest.mark.parametrize("weights", ["float32", "uint8"])
def test_nbytes_is_every_stored_array(tmp_path: Path, weights: str) -> None:
    docs, _, _ = planted_corpus()
    index = SparseIndex.from_vectors(docs, weights=weights)
    index.save(tmp_path)
    with np.load(tmp_path / "sparse.npz") as stored:
        assert sorted(stored.files) == sorted(index.arrays)
        assert index.nbytes == sum(stored[name].nbytes for name in stored.files)
    vocab, blocks = docs.shape[1], 3
    if weights == "uint8":
        assert index.nbytes == 4 * (vocab * blocks + 1) + 3 * index.nnz + 8
    else:
        assert index.nbytes == 8 * (vocab + 1) + 8 * index.nnz
    assert json.loads((tmp_path / "sparse.json").read_text())["bytes"] == index.nbytes


def test_compressed_index_saves_and_loads(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    docs, queries = random_sparse(rng, 200, 60, 0.1), random_sparse(rng, 6, 60, 0.1)
    index = SparseIndex.from_vectors(docs, weights="uint8")
    index.save(tmp_path / "a")
    loaded = SparseIndex.load(tmp_path / "a")
    assert loaded.weights == "uint8" and loaded.scale == index.scale and len(loaded) == 200
    for name, array in index.arrays.items():
        assert loaded.arrays[name].dtype == array.dtype
        np.testing.assert_array_equal(loaded.arrays[name], array)
    for a, b in zip(loaded.search(queries, 7), index.search(queries, 7)):
        np.testing.assert_array_equal(a, b)
    assert not list((tmp_path / "a").glob(".*.tmp"))


def test_load_rejects_mismatched_and_damaged_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    docs = random_sparse(rng, 100, 40, 0.1)
    SparseIndex.from_vectors(docs, weights="uint8").save(tmp_path / "a")
    other = docs.copy()
    other.data[0] *= 0.5  # same shapes, other content
    SparseIndex.from_vectors(other, weights="uint8").save(tmp_path / "b")
    shutil.copy(tmp_path / "b" / "sparse.json", tmp_path / "a" / "sparse.json")
    with pytest.raises(ValueError, match=r"a[/\\]sparse.npz' does not match .*sparse.json'"):
        SparseIndex.load(tmp_path / "a")

    (tmp_path / "b" / "sparse.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=r"b[/\\]sparse.npz' is not a readable"):
        SparseIndex.load(tmp_path / "b")
    (tmp_path / "b" / "sparse.npz").unlink()
    with pytest.raises(FileNotFoundError, match="sparse.npz' does not exist"):
        SparseIndex.load(tmp_path / "b")

    SparseIndex.from_vectors(docs).save(tmp_path / "c")  # float32 arrays under a uint8 description
    meta = json.loads((tmp_path / "c" / "sparse.json").read_text())
    (tmp_path / "c" / "sparse.json").write_text(json.dumps({**meta, "weights": "uint8"}))
    with pytest.raises(ValueError, match=r"c[/\\]sparse.npz' holds arrays \['data', 'indices', 'indptr'\]"):
        SparseIndex.load(tmp_path / "c")


def test_version_1_float32_files_still_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    docs = random_sparse(rng, 50, 30, 0.2)
    index = SparseIndex.from_vectors(docs)
    np.savez(tmp_path / "sparse.npz", indptr=index.indptr, indices=index.indices, data=index.data)
    (tmp_path / "sparse.json").write_text(json.dumps({"format_version": 1, "kind": "sparse", "count": 50,
                                                      "num_terms": 30, "nnz": index.nnz}))
    loaded = SparseIndex.load(tmp_path)
    assert loaded.weights == "float32" and loaded.nbytes == index.nbytes
    queries = random_sparse(rng, 3, 30, 0.2)
    for a, b in zip(loaded.search(queries, 5), index.search(queries, 5)):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------- top-k pruning
def test_pruning_keeps_the_k_largest_weights_of_each_row() -> None:
    docs = np.array([[0.5, 3.0, 0.0, 1.0, 1.0, 2.0],
                     [0.0, 0.2, 0.0, 0.0, 0.9, 0.0]], np.float32)
    pruned = prune_top_k_rows(docs, 3).toarray()
    np.testing.assert_array_equal(pruned[0], [0, 3.0, 0, 1.0, 0, 2.0])  # tie at 1.0: the lower term id stays
    np.testing.assert_array_equal(pruned[1], docs[1])  # two non-zeros: unchanged

    rng = np.random.default_rng(6)
    matrix = random_sparse(rng, 80, 50, 0.3)
    pruned = prune_top_k_rows(matrix, 4)
    for i in range(80):
        row = matrix.getrow(i)
        keep = sorted(zip(-row.data, row.indices))[:4]
        want = {int(j): -float(v) for v, j in keep}
        got = pruned.getrow(i)
        assert dict(zip(got.indices.tolist(), got.data.tolist())) == want
    index = SparseIndex.from_vectors(matrix, weights="uint8", top_k=4)
    assert (np.diff(index.to_csr().indptr) <= 4).all()
    reference = SparseIndex.from_vectors(pruned, weights="uint8")
    for name, array in reference.arrays.items():
        np.testing.assert_array_equal(index.arrays[name], array)
    with pytest.raises(ValueError, match="k >= 1"):
        prune_top_k_rows(matrix, 0)


# ---------------------------------------------------------------------------- distill index
def test_index_command_writes_a_pruned_uint8_index(tmp_path: Path, tiny_datamodule, capsys) -> None:
    from distill.cli.index import main as index_main
    from distill.cli.search import main as search_main
    from distill.errors import InputError
    from distill.serving import export_student
    from tests.helpers import DENSE_SPEC, SPARSE_SPEC, TINY_DATA, build

    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({"class_path": "distill.data.ShapesDataModule", "init_args": TINY_DATA}))
    export_student(build(SPARSE_SPEC), tmp_path / "student", student_spec=SPARSE_SPEC, datamodule=tiny_datamodule,
                   onnx=False)
    index_main(["--student", str(tmp_path / "student"), "--data", str(data_yaml), "--out", str(tmp_path / "index"),
                "--no-progress", "--weights", "uint8", "--top-k", "8"])
    assert "indexed 24 items (sparse" in capsys.readouterr().out
    meta = json.loads((tmp_path / "index" / "index.json").read_text())
    assert meta["weights"] == "uint8" and meta["top_k"] == 8
    index = SparseIndex.load(tmp_path / "index")
    assert index.weights == "uint8" and meta["bytes"] == index.nbytes
    assert (np.diff(index.to_csr().indptr) <= 8).all()
    search_main(["--index", str(tmp_path / "index"), "--query", "a red circle", "-k", "3"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["rank", "id", "a_id", "score", "text"] and len(lines) <= 4

    export_student(build(DENSE_SPEC), tmp_path / "dense", student_spec=DENSE_SPEC, datamodule=tiny_datamodule,
                   onnx=False)
    with pytest.raises(InputError, match="apply to sparse students"):
        index_main(["--student", str(tmp_path / "dense"), "--data", str(data_yaml), "--out",
                    str(tmp_path / "dense-index"), "--weights", "uint8"])


def test_top_k_selection_orders_ties_by_row_whatever_the_input_order() -> None:
    from distill.serving.index.sparse import _top_k

    scores = np.array([1.0, 5.0, 2.0, 5.0, 2.0, 2.0, 0.5], np.float32)
    rows = np.array([9, 4, 8, 2, 3, 6, 1])
    best_scores, best_rows = _top_k(scores, rows, 4)
    assert best_rows.tolist() == [2, 4, 3, 6] and best_scores.tolist() == [5.0, 5.0, 2.0, 2.0]
    assert _top_k(scores[:2], rows[:2], 4)[1].tolist() == [4, 9]
