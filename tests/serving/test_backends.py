"""Index backends: FAISS against the numpy backend, Qdrant embedded end to end, and their one-line errors."""

from __future__ import annotations

import json
import socket
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import yaml

from distill.cli.index import main as index_main
from distill.cli.search import main as search_main
from distill.errors import InputError
from distill.serving import export_student, load_student
from distill.serving.index import BackendSettings, DenseIndex, SparseIndex
from distill.serving.index.folder import INDEX_META, open_index
from tests.helpers import DENSE_SPEC, REPO_ROOT, SPARSE_SPEC, TINY_DATA, build, error_line

faiss = pytest.importorskip("faiss", reason="the FAISS backend needs faiss-cpu (the faiss extra)")


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def recall_at(rows: np.ndarray, reference: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(rows.tolist(), reference.tolist())]))


# ---------------------------------------------------------------------------- FAISS
def test_faiss_exact_equals_numpy_exact_on_the_same_vectors(tmp_path: Path) -> None:
    from distill.serving.index.faiss_backend import FaissIndex

    rng = np.random.default_rng(0)
    # Vectors as an index build hands them over: read back from the float16 file (so FAISS's SQfp16 codes hold the
    # same values). Both score the stored values in float32: the same top-k, scores equal up to float32 summation
    # order (48 terms, sum |q_i x_i| <= 1: a few 1e-7, below the 1e-5 asserted).
    corpus = unit_vectors(rng, 3000, 48).astype(np.float16).astype(np.float32)
    queries = unit_vectors(rng, 40, 48)
    want_scores, want_rows = DenseIndex(corpus.astype(np.float16)).search(queries, k=10)
    exact = FaissIndex.build(corpus, BackendSettings(backend="faiss"))
    scores, rows = exact.search(queries, k=10)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    exact.save(tmp_path)
    loaded = FaissIndex.load(tmp_path, BackendSettings(backend="faiss"))
    np.testing.assert_array_equal(loaded.search(queries, k=10)[1], want_rows)
    small_scores, small_rows = FaissIndex.build(corpus[:3], BackendSettings(backend="faiss")).search(queries[:1], 5)
    assert small_rows[0, 3:].tolist() == [-1, -1] and np.isneginf(small_scores[0, 3:]).all()


def test_faiss_approximate_types_against_exact_search() -> None:
    from distill.serving.index.faiss_backend import FaissIndex

    rng = np.random.default_rng(1)
    corpus = unit_vectors(rng, 4000, 32).astype(np.float16).astype(np.float32)  # as read back from the fp16 file
    queries = unit_vectors(rng, 30, 32)
    _, exact_rows = DenseIndex(corpus).search(queries, k=10)
    every_list = FaissIndex.build(corpus, BackendSettings(backend="faiss", faiss_type="ivf", nlist=16, nprobe=16))
    np.testing.assert_array_equal(every_list.search(queries, 10)[1], exact_rows)  # probing every list is exact
    one_list = FaissIndex.build(corpus, BackendSettings(backend="faiss", faiss_type="ivf", nlist=16, nprobe=1))
    assert recall_at(one_list.search(queries, 10)[1], exact_rows) < 1.0
    hnsw = FaissIndex.build(corpus, BackendSettings(backend="faiss", faiss_type="hnsw", ef_search=256))
    assert recall_at(hnsw.search(queries, 10)[1], exact_rows) >= 0.95
    pq = FaissIndex.build(corpus, BackendSettings(backend="faiss", faiss_type="ivf", nlist=16, nprobe=16, pq=8))
    assert pq.nbytes < every_list.nbytes / 2  # 8 bytes of codes per vector instead of 64 (float16)
    assert recall_at(pq.search(queries, 10)[1], exact_rows) > 0.3
    with pytest.raises(InputError, match="--nlist 64 needs at least 64 vectors"):
        FaissIndex.build(corpus[:10], BackendSettings(backend="faiss", faiss_type="ivf", nlist=64))
    with pytest.raises(InputError, match="--pq 5 must divide the embedding width 32"):
        FaissIndex.build(corpus, BackendSettings(backend="faiss", faiss_type="ivf", pq=5))


# ---------------------------------------------------------------------------- folders and the command line
@pytest.fixture
def data_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump({"class_path": "distill.data.ShapesDataModule", "init_args": TINY_DATA}))
    return path


def index_args(student: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--student", str(student), "--data", str(data), "--out", str(out), "--no-progress", *extra]


def test_faiss_folder_searches_like_the_numpy_folder(tmp_path: Path, dense_export: Path, data_yaml: Path,
                                                     tiny_datamodule, capsys) -> None:
    index_main(index_args(dense_export, data_yaml, tmp_path / "numpy", "--backend", "numpy"))
    index_main(index_args(dense_export, data_yaml, tmp_path / "faiss"))
    assert "(dense, faiss)" in capsys.readouterr().out  # FAISS is the dense default when installed
    meta = json.loads((tmp_path / "faiss" / INDEX_META).read_text())
    assert meta["backend"] == "faiss" and {"faiss.index", "faiss.json", "items.jsonl", "items.npy"} <= set(meta["files"])
    caption = tiny_datamodule.corpus.split("test")[0].captions[0]
    ids, scores = [], []
    for name in ("numpy", "faiss"):
        search_main(["--index", str(tmp_path / name), "--query", caption, "-k", "5"])
        rows = [line.split() for line in capsys.readouterr().out.strip().splitlines()[1:]]
        ids.append([int(row[1]) for row in rows])
        scores.append(np.array([float(row[3]) for row in rows]))
    np.testing.assert_allclose(scores[1], scores[0], atol=2e-4)  # the table prints 4 decimals
    gaps = np.abs(np.diff(np.concatenate([[np.inf], scores[0], [-np.inf]])))
    distinct = (gaps[:-1] > 1e-3) & (gaps[1:] > 1e-3)  # ranks whose score is not (nearly) tied with a neighbour
    assert len(ids[0]) == 5 and np.array_equal(np.array(ids[0])[distinct], np.array(ids[1])[distinct])
    (tmp_path / "faiss" / "faiss.index").write_bytes(b"damaged")
    with pytest.raises(InputError, match="does not match its manifest"):
        open_index(tmp_path / "faiss")


def test_bad_backend_input_is_one_line_and_writes_nothing(tmp_path: Path, dense_export: Path, data_yaml: Path,
                                                          capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "index"
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "faiss", None)  # as if faiss-cpu were not installed
        line = error_line(capsys, ["index", *index_args(dense_export, data_yaml, out, "--backend", "faiss")])
    assert "pip install 'faiss-cpu==1.15.1'" in line
    with monkeypatch.context() as patch:
        patch.setattr("importlib.util.find_spec", lambda name, *args: None if name == "faiss" else find_spec(name))
        index_main(index_args(dense_export, data_yaml, tmp_path / "default"))  # without faiss, the default is numpy
    captured = capsys.readouterr()
    assert "(dense, numpy)" in captured.out and "pip install 'faiss-cpu==1.15.1'" in captured.err
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    line = error_line(capsys, ["index", *index_args(dense_export, data_yaml, out, "--backend", "qdrant", "--url",
                                                    f"http://127.0.0.1:{port}")])
    assert f"--url http://127.0.0.1:{port} does not answer" in line
    line = error_line(capsys, ["index", *index_args(dense_export, data_yaml, out, "--backend", "faiss", "--pq", "4")])
    assert "--pq compresses an approximate index" in line
    assert not out.exists() and not list(tmp_path.glob(".index.tmp-*"))


def test_index_of_another_student_is_refused(tmp_path: Path, dense_export: Path, data_yaml: Path, tiny_datamodule,
                                             capsys) -> None:
    torch.manual_seed(1)
    export_student(build(DENSE_SPEC), tmp_path / "other", student_spec=DENSE_SPEC, datamodule=tiny_datamodule,
                   onnx=False)
    index_main(index_args(dense_export, data_yaml, tmp_path / "index", "--backend", "faiss"))
    capsys.readouterr()
    line = error_line(capsys, ["search", "--index", str(tmp_path / "index"), "--query", "a red circle", "--student",
                               str(tmp_path / "other")])
    assert "was built with another student" in line
    line = error_line(capsys, ["search", "--index", str(tmp_path / "index"), "--query", "a red circle", "--backend",
                               "qdrant"])
    assert "was built with --backend faiss" in line


# ---------------------------------------------------------------------------- Qdrant, embedded
def render_queries(datamodule, spec: dict) -> tuple[torch.Tensor, list[int]]:
    """The test split's images, normalised as `distill search --image` does, and their ids."""
    items = datamodule.corpus.split("test")
    pixels = torch.from_numpy(np.stack([datamodule.corpus.render(item) for item in items])).permute(0, 3, 1, 2)
    mean = torch.as_tensor(spec["pixel_mean"], dtype=torch.float32).reshape(-1, 1, 1)
    std = torch.as_tensor(spec["pixel_std"], dtype=torch.float32).reshape(-1, 1, 1)
    return (pixels.float() / 255.0 - mean) / std, [item.image_id for item in items]


def image_to_text_recall(rows: np.ndarray, items: list, image_ids: list[int]) -> dict[int, float]:
    return {k: float(np.mean([any(items[r].a_id == image for r in row[:k] if r >= 0)
                              for row, image in zip(rows.tolist(), image_ids)])) for k in (1, 5, 10)}


@pytest.mark.slow
@pytest.mark.parametrize("spec", [DENSE_SPEC, SPARSE_SPEC], ids=["dense", "sparse"])
def test_qdrant_embedded_indexes_the_demo_test_split_like_exact_search(tmp_path: Path, spec: dict) -> None:
    pytest.importorskip("qdrant_client", reason="the Qdrant backend needs qdrant-client (the qdrant extra)")
    from distill.cli.recipe import load_datamodule

    data = REPO_ROOT / "configs" / "demo" / "data.yaml"
    datamodule = load_datamodule(data)
    datamodule.setup("test")
    export_student(build(spec), tmp_path / "student", student_spec=spec, datamodule=datamodule, onnx=False)
    index_main(index_args(tmp_path / "student", data, tmp_path / "exact"))
    index_main(index_args(tmp_path / "student", data, tmp_path / "qdrant", "--backend", "qdrant"))
    student = load_student(tmp_path / "student")
    config = json.loads((tmp_path / "student" / "student_config.json").read_text())
    pixels, image_ids = render_queries(datamodule, config["towers"]["a"])
    with torch.no_grad():
        queries = torch.cat([student.encode_a({"pixel_values": chunk}) for chunk in pixels.split(100)]).numpy()
    results = {}
    for name in ("exact", "qdrant"):
        meta, index, items = open_index(tmp_path / name)
        scores, rows = index.search(queries, k=10)
        getattr(index, "close", lambda: None)()
        results[name] = (scores, rows, image_to_text_recall(rows, items, image_ids))
    assert len(items) == 1500 and meta["backend"] == "qdrant" and "qdrant/meta.json" in meta["files"]
    assert results["qdrant"][2] == results["exact"][2]  # Recall@1/5/10, image -> text
    (want_scores, want_rows, _), (scores, rows, _) = results["exact"], results["qdrant"]
    found = want_rows >= 0
    np.testing.assert_array_equal(rows >= 0, found)
    np.testing.assert_allclose(scores[found], want_scores[found], rtol=1e-5, atol=1e-5)
    padded = np.pad(want_scores, ((0, 0), (1, 1)), constant_values=np.nan)
    tied = np.isclose(padded[:, 1:-1], padded[:, :-2], atol=1e-5) | np.isclose(padded[:, 1:-1], padded[:, 2:], atol=1e-5)
    assert ((rows == want_rows) | tied).all()  # rows differ only where exact scores tie (the order of ties)


@pytest.mark.parametrize("spec", [DENSE_SPEC, SPARSE_SPEC], ids=["dense", "sparse"])
def test_qdrant_search_with_teacher_rerank(tmp_path: Path, tiny_datamodule, tiny_teacher_dir: Path,
                                           data_yaml: Path, spec: dict, capsys) -> None:
    pytest.importorskip("qdrant_client", reason="the Qdrant backend needs qdrant-client (the qdrant extra)")
    from PIL import Image

    export_student(build(spec), tmp_path / "student", student_spec=spec, datamodule=tiny_datamodule, onnx=False)
    index_main(index_args(tmp_path / "student", data_yaml, tmp_path / "index", "--backend", "qdrant"))
    assert "indexed 24 items" in capsys.readouterr().out
    item = tiny_datamodule.corpus.split("test")[0]
    Image.fromarray(tiny_datamodule.corpus.render(item)).save(tmp_path / "query.png")
    search_main(["--index", str(tmp_path / "index"), "--backend", "qdrant", "--image", str(tmp_path / "query.png"),
                 "-k", "4", "--rerank-with", str(tiny_teacher_dir)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["rank", "id", "a_id", "score", "teacher", "text"] and len(lines) == 5
    teacher_scores = [float(line.split()[4]) for line in lines[1:]]
    assert teacher_scores == sorted(teacher_scores, reverse=True)
    meta, index, items = open_index(tmp_path / "index")
    payload = index.client.retrieve(index.name, ids=[0, 7], with_payload=True)
    index.close()
    assert [point.payload for point in payload] == [{"id": items[i].id, "a_id": items[i].a_id, "text": items[i].text}
                                                    for i in (0, 7)]


def test_qdrant_sparse_vectors_score_like_the_inverted_index(tmp_path: Path) -> None:
    pytest.importorskip("qdrant_client", reason="the Qdrant backend needs qdrant-client (the qdrant extra)")
    from distill.serving.index.corpus import CorpusItem
    from distill.serving.index.qdrant_backend import QdrantIndex

    rng = np.random.default_rng(3)
    docs = sp.random(300, 200, density=0.05, format="csr", dtype=np.float32, random_state=rng)
    queries = sp.random(12, 200, density=0.08, format="csr", dtype=np.float32, random_state=rng)
    items = [CorpusItem(i, i, f"doc {i}") for i in range(300)]
    index = QdrantIndex.build(docs, items, BackendSettings(backend="qdrant"), tmp_path, "build")
    scores, rows = index.search(queries, k=5)
    index.close()
    want_scores, want_rows = SparseIndex.from_vectors(docs).search(queries, k=5)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5)


class SharedClient:
    """One in-memory Qdrant standing in for a server: every `connect` gets it, and `close` keeps it open."""

    def __init__(self) -> None:
        from qdrant_client import QdrantClient

        self.client = QdrantClient(location=":memory:")

    def __getattr__(self, name: str):
        return getattr(self.client, name)

    def close(self) -> None:
        pass


def test_qdrant_server_path_swaps_an_alias_and_retires_the_old_collection(tmp_path: Path, dense_export: Path,
                                                                         data_yaml: Path, capsys,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("qdrant_client", reason="the Qdrant backend needs qdrant-client (the qdrant extra)")
    import distill.serving.index.qdrant_backend as backend

    server = SharedClient()
    monkeypatch.setattr(backend, "connect", lambda settings, folder=None: server)
    url = ["--backend", "qdrant", "--url", "http://qdrant.example:6333", "--collection", "captions"]
    index_main(index_args(dense_export, data_yaml, tmp_path / "index", *url))
    first = json.loads((tmp_path / "index" / INDEX_META).read_text())
    assert first["collection_name"] == f"captions-{first['build_id']}" and set(first["files"]) == {"items.jsonl", "items.npy"}
    assert [(a.alias_name, a.collection_name) for a in server.get_aliases().aliases] == [("captions",
                                                                                        first["collection_name"])]
    index_main(index_args(dense_export, data_yaml, tmp_path / "index", *url))
    second = json.loads((tmp_path / "index" / INDEX_META).read_text())
    assert f"into the Qdrant collection {second['collection_name']} (alias captions)" in capsys.readouterr().out
    assert [c.name for c in server.get_collections().collections] == [second["collection_name"]]  # the old one retired
    assert server.get_aliases().aliases[0].collection_name == second["collection_name"]
    search_main(["--index", str(tmp_path / "index"), "--query", "a small red circle", "-k", "3"])
    assert len(capsys.readouterr().out.strip().splitlines()) == 4

    def failing_upload(self, vectors, items) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(backend.QdrantIndex, "_upload", failing_upload)
    with pytest.raises(OSError):
        index_main(index_args(dense_export, data_yaml, tmp_path / "index", *url))
    assert [c.name for c in server.get_collections().collections] == [second["collection_name"]]  # nothing left over
    assert json.loads((tmp_path / "index" / INDEX_META).read_text()) == second  # the folder is unchanged
    server.delete(second["collection_name"], points_selector=[0])
    with pytest.raises(InputError, match="holds 23 points, index .* 24: rebuild it"):
        open_index(tmp_path / "index")
    server.create_collection("taken", vectors_config={})
    with pytest.raises(InputError, match="--collection taken is a collection on the server, not an alias"):
        index_main(index_args(dense_export, data_yaml, tmp_path / "other", "--backend", "qdrant", "--url",
                              "http://qdrant.example:6333", "--collection", "taken"))
    assert not (tmp_path / "other").exists() and len(server.get_collections().collections) == 2


# ---------------------------------------------------------------------------- Seismic
def sparse_rows(rng: np.random.Generator, n: int, vocabulary: int, terms: int) -> sp.csr_matrix:
    """``[n, vocabulary]`` CSR rows of ``terms`` distinct terms each, weights in [0, 2)."""
    columns = np.concatenate([rng.choice(vocabulary, terms, replace=False) for _ in range(n)])
    weights = (2 * rng.random(n * terms)).astype(np.float32)
    return sp.csr_matrix((weights, (np.repeat(np.arange(n), terms), columns)), shape=(n, vocabulary))


def test_seismic_finds_the_exact_top_k_and_scores_with_float16_weights(tmp_path: Path) -> None:
    pytest.importorskip("seismic", reason="the Seismic backend needs pyseismic-lsr (the seismic extra)")
    from distill.serving.index.seismic_backend import INDEX_NAME, SeismicIndex

    rng = np.random.default_rng(4)
    docs, queries = sparse_rows(rng, 3000, 2000, 30), sparse_rows(rng, 20, 2000, 10)
    settings = BackendSettings(backend="seismic").resolve("sparse")
    index = SeismicIndex.build(docs, settings)
    scores, rows = index.search(queries, k=10)
    _, exact_rows = SparseIndex.from_vectors(docs).search(queries, k=10)
    assert len(index) == 3000 and recall_at(rows, exact_rows) >= 0.9
    half = docs.copy()
    half.data = half.data.astype(np.float16).astype(np.float32)  # Seismic stores document weights as float16
    found = np.take_along_axis((queries @ half.T).toarray(), rows, axis=1)
    np.testing.assert_allclose(scores, found, atol=1e-4)
    exact = np.take_along_axis((queries @ docs.T).toarray(), rows, axis=1)
    np.testing.assert_allclose(scores, exact, rtol=1e-3)
    single_scores, single_rows = index.search(queries[5].toarray(), k=10)  # one dense query: Seismic's `search`
    np.testing.assert_array_equal(single_rows[0], rows[5])
    index.save(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == [INDEX_NAME, "seismic.json"]
    loaded = SeismicIndex.load(tmp_path, settings)
    assert loaded.nbytes == (tmp_path / INDEX_NAME).stat().st_size and len(loaded) == 3000
    np.testing.assert_array_equal(loaded.search(queries, k=10)[1], rows)
    tiny = SeismicIndex.build(sp.vstack([docs[:2], sp.csr_matrix((1, 2000), dtype=np.float32)]), settings)
    tiny_scores, tiny_rows = tiny.search(docs[:1], k=4)  # an empty row is never returned; the rest is padding
    assert len(tiny) == 3 and tiny_rows[0, 0] == 0 and tiny_rows[0, 2:].tolist() == [-1, -1]
    assert np.isneginf(tiny_scores[0, 2:]).all()
    assert tiny.search(sp.csr_matrix((1, 2000), dtype=np.float32), k=3)[1].tolist() == [[-1, -1, -1]]


@pytest.fixture
def sparse_export(tmp_path: Path, tiny_datamodule) -> Path:
    export_student(build(SPARSE_SPEC), tmp_path / "sparse-student", student_spec=SPARSE_SPEC,
                   datamodule=tiny_datamodule, onnx=False)
    return tmp_path / "sparse-student"


def test_seismic_folder_searches_like_the_numpy_folder(tmp_path: Path, sparse_export: Path, data_yaml: Path,
                                                       tiny_datamodule, capfd, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("seismic", reason="the Seismic backend needs pyseismic-lsr (the seismic extra)")
    out = tmp_path / "seismic"
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "seismic", None)  # as if pyseismic-lsr were not installed
        line = error_line(capfd, ["index", *index_args(sparse_export, data_yaml, out, "--backend", "seismic")])
    assert "pip install 'pyseismic-lsr==0.5.4'" in line
    line = error_line(capfd, ["index", *index_args(sparse_export, data_yaml, out, "--backend", "seismic",
                                                   "--heap-factor", "0")])
    assert "--heap-factor > 0" in line and not out.exists()
    index_main(index_args(sparse_export, data_yaml, tmp_path / "numpy"))
    # the untrained student's items share nearly all of their 64 terms: heap_factor 0.9 skips too many blocks of them
    index_main(index_args(sparse_export, data_yaml, out, "--backend", "seismic", "--query-cut", "20", "--heap-factor",
                          "0.5"))
    printed = capfd.readouterr().out.splitlines()  # file descriptor 1: Seismic's own build lines are silenced
    assert len(printed) == 2 and printed[1].startswith("indexed 24 items (sparse, seismic)")
    meta = json.loads((out / INDEX_META).read_text())
    assert meta["backend"] == "seismic" and meta["backend_settings"] == {"query_cut": 20, "heap_factor": 0.5}
    assert {"seismic.index.seismic", "seismic.json", "items.jsonl", "items.npy"} == set(meta["files"])
    _, exact, _ = open_index(tmp_path / "numpy")
    _, index, items = open_index(out)
    assert index.settings.query_cut == 20 and len(items) == 24
    queries = exact.to_csr()  # the items' own vectors: text queries go through tower b too
    agree = np.mean(index.search(queries, k=1)[1][:, 0] == exact.search(queries, k=1)[1][:, 0])
    assert agree >= 0.75, agree
    caption = tiny_datamodule.corpus.split("test")[0].captions[0]
    tops = []
    for name in ("numpy", "seismic"):
        search_main(["--index", str(tmp_path / name), "--query", caption, "-k", "3"])
        tops.append(capfd.readouterr().out.strip().splitlines()[1].split()[1])
    assert tops[0] == tops[1]
    (out / "seismic.index.seismic").write_bytes(b"damaged")
    with pytest.raises(InputError, match="does not match its manifest"):
        open_index(out)


def test_seismic_on_a_dense_student_is_one_line_and_writes_nothing(tmp_path: Path, dense_export: Path,
                                                                   data_yaml: Path, capsys) -> None:
    out = tmp_path / "index"
    line = error_line(capsys, ["index", *index_args(dense_export, data_yaml, out, "--backend", "seismic")])
    assert "--backend seismic indexes sparse vectors; this student's are dense" in line
    assert not out.exists() and not list(tmp_path.glob(".index.tmp-*"))
