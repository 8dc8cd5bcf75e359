"""``--vector-dtype``: ``auto`` stores float32 under the budget and float16 above it; both precisions search as
exhaustive numpy does over the same vectors, on the numpy and FAISS backends; the choice is recorded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from distill.errors import InputError
from distill.serving.index import BackendSettings, DenseIndex
from distill.serving.index.backends import FLOAT32_BUDGET, stored_dtype
from distill.serving.index.folder import INDEX_META
from tests.helpers import TINY_DATA, load_benchmark


def unit_vectors(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_auto_stores_float32_under_the_budget_and_float16_above_it() -> None:
    # 100 x 8 float32 vectors take 3,200 bytes.
    assert stored_dtype("auto", 100, 8, budget=3200) == "float32"
    assert stored_dtype("auto", 100, 8, budget=3199) == "float16"
    assert stored_dtype("auto", 101, 8, budget=3200) == "float16"
    assert stored_dtype("float32", 100, 8, budget=1) == "float32" and stored_dtype("float16", 1, 8) == "float16"
    assert FLOAT32_BUDGET == 2 << 30
    assert stored_dtype("auto", 1_000_000, 384) == "float32"  # 1.43 GiB
    assert stored_dtype("auto", 8_841_823, 384) == "float16"  # MS MARCO: 12.6 GiB as float32
    with pytest.raises(InputError, match="--vector-dtype 'int8' is not one of"):
        stored_dtype("int8", 1, 1)


def exhaustive(corpus: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of ``queries @ corpus.T`` in float64, score descending then row."""
    scores = queries.astype(np.float64) @ corpus.astype(np.float64).T
    rows = np.lexsort((np.broadcast_to(np.arange(len(corpus)), scores.shape), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, rows, axis=1), rows


def check_against_exhaustive(scores: np.ndarray, rows: np.ndarray, stored: np.ndarray, queries: np.ndarray,
                             tolerance: float) -> None:
    """``(scores, rows)`` are the exhaustive top-k over the ``stored`` values: every score within ``tolerance`` of
    the float64 one, and the rows equal wherever neighbouring scores are further apart than twice the tolerance
    (a nearer pair may swap under float32 summation)."""
    k = scores.shape[1]
    want_scores, want_rows = exhaustive(stored, queries, k + 1)  # the (k+1)-th: a near tie there may swap in
    np.testing.assert_allclose(scores, want_scores[:, :k], atol=tolerance, rtol=0)
    gaps = np.abs(np.diff(want_scores, axis=1)) > 2 * tolerance
    clear = gaps[:, :k] & np.concatenate([np.ones((len(gaps), 1), bool), gaps[:, :k - 1]], axis=1)
    want_rows = want_rows[:, :k]
    assert clear.mean() > 0.5  # most ranks are checked, not only the well-separated few
    np.testing.assert_array_equal(rows[clear], want_rows[clear])


@pytest.mark.parametrize("backend", ["numpy", "faiss"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_both_precisions_return_the_exhaustive_top_k(tmp_path: Path, backend: str, dtype: str) -> None:
    rng = np.random.default_rng(0)
    corpus, queries = unit_vectors(rng, 2000, 32), unit_vectors(rng, 20, 32)
    stored = corpus.astype(dtype).astype(np.float32)  # the values the index holds
    if backend == "faiss":
        pytest.importorskip("faiss")
        from distill.serving.index.faiss_backend import FaissIndex

        # Built from the stored values, as `distill index` builds from the vector file it wrote in that precision
        # (FAISS's own float16 rounding of a float32 input may differ from numpy's in the last bit).
        built = FaissIndex.build(stored, BackendSettings(backend="faiss", vector_dtype=dtype))
        assert built.vector_dtype == dtype and built.nbytes == 2000 * 32 * np.dtype(dtype).itemsize
        built.save(tmp_path)
        assert json.loads((tmp_path / "faiss.json").read_text())["vector_dtype"] == dtype
        index = FaissIndex.load(tmp_path, BackendSettings(backend="faiss"))
    else:
        DenseIndex(corpus.astype(dtype)).save(tmp_path)
        index = DenseIndex.load(tmp_path)
        assert index.embeddings.dtype == dtype
        assert isinstance(index.embeddings, np.memmap) == (dtype == "float16")  # float32 under the budget: in memory
        assert isinstance(DenseIndex.load(tmp_path, budget=1000).embeddings, np.memmap)
    scores, rows = index.search(queries, k=10)
    # Both backends score the stored values in float32: |q| = |x| = 1 and 32 terms, so float32 summation is off by
    # at most 32 * 2**-24 * sum |q_i x_i| <= 2e-6 of the exact score of the stored values; 1e-5 leaves room.
    check_against_exhaustive(scores, rows, stored, queries, 1e-5)
    # Against the float32 vectors the encoder gave: float16 rounds each coordinate within 2**-11 (relative), so
    # q . x moves by at most 2**-11 * sum |q_i x_i| <= 2**-11 * |q| |x| = 2**-11 (Cauchy-Schwarz), plus the above.
    check_against_exhaustive(scores, rows, corpus, queries, (2.0 ** -11 if dtype == "float16" else 0) + 1e-5)


@pytest.fixture
def student(dense_export: Path) -> Path:
    return dense_export


@pytest.fixture
def data_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump({"class_path": "distill.data.ShapesDataModule", "init_args": TINY_DATA}))
    return path


@pytest.mark.parametrize("backend", ["numpy", "faiss"])
def test_the_option_round_trips_into_the_manifest(tmp_path: Path, student: Path, data_yaml: Path,
                                                  backend: str) -> None:
    if backend == "faiss":
        pytest.importorskip("faiss")
    from distill.cli.index import main as index_main
    from distill.serving.index.folder import open_index

    for option in ("auto", "float16", "float32"):
        out = tmp_path / f"index-{option}"
        index_main(["--student", str(student), "--data", str(data_yaml), "--out", str(out), "--no-progress",
                    "--backend", backend, *([] if option == "auto" else ["--vector-dtype", option])])
        meta, index, _ = open_index(out)
        want = "float32" if option == "auto" else option  # 24 captions x 16 floats: far under the budget
        assert meta["vector_dtype"] == want
        if backend == "faiss":
            assert json.loads((out / "faiss.json").read_text())["vector_dtype"] == want
            assert index.vector_dtype == want
        else:
            assert np.load(out / "dense.npy", mmap_mode="r").dtype == want


def test_a_bad_value_is_one_line_naming_the_option(tmp_path: Path, student: Path, data_yaml: Path) -> None:
    from distill.cli.index import main as index_main

    with pytest.raises(InputError) as caught:
        index_main(["--student", str(student), "--data", str(data_yaml), "--out", str(tmp_path / "index"),
                    "--vector-dtype", "int8"])
    assert "--vector-dtype" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(InputError, match="--vector-dtype float16 applies to --backend faiss and numpy"):
        BackendSettings(backend="qdrant", vector_dtype="float16").resolve("dense")
    with pytest.raises(InputError, match="--vector-dtype applies to dense and late-interaction students"):
        BackendSettings(backend="numpy", vector_dtype="float32").resolve("sparse")
    assert not (tmp_path / "index").exists()


def test_the_benchmark_part_writes_its_table_into_its_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_benchmark("retrieval", monkeypatch)
    out = tmp_path / "deployment.md"
    out.write_text("# Deployment\n\nbefore\n\n<!-- vector-dtype:start -->\nstale\n<!-- vector-dtype:end -->\n\nafter\n")
    module.main(["--quick", "--part", "dtypes", "--out", str(out)])
    text = out.read_text()
    assert text.startswith("# Deployment\n\nbefore\n\n") and text.endswith("\n\nafter\n") and "stale" not in text
    assert "`python benchmarks/retrieval.py --quick --part dtypes`" in text
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith(("| numpy |", "| faiss |"))]
    assert {(row[0], row[1]) for row in rows} >= {("| numpy", "float32"), ("| numpy", "float16")}
    assert all(row[-1] == "1.000 |" for row in rows if row[0] == "| numpy" and row[1] == "float32")
    float16 = {row[0]: int(row[2].replace(",", "")) for row in rows if row[1] == "float16"}
    float32 = {row[0]: int(row[2].replace(",", "")) for row in rows if row[1] == "float32"}
    assert float16["| numpy"] * 2 == float32["| numpy"] == 2000 * 64 * 4
