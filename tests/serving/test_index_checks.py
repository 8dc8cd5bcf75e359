"""An index folder is checked for what it holds when opened: finite vectors, and a manifest that lists every
file and says what this distill writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from distill.errors import InputError
from distill.serving.index import checks
from distill.serving.index.checks import check_finite, check_manifest
from distill.serving.index.dense import DenseIndex


def test_non_finite_vectors_are_refused_naming_the_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks, "CHUNK_ROWS", 4)  # the bad row sits in the third chunk
    vectors = np.ones((12, 3), np.float32)
    check_finite("x.npz", vectors)
    vectors[9, 1] = np.nan
    with pytest.raises(InputError, match=r"index file 'x\.npz': embeddings row 9 holds NaN or infinite values"):
        check_finite("x.npz", vectors)
    mapped = np.lib.format.open_memmap(tmp_path / "v.npy", mode="w+", dtype=np.float32, shape=(12, 3))
    mapped[2, 0] = -np.inf  # memory-mapped vectors are read chunk by chunk the same way
    with pytest.raises(InputError, match=r"row 2 holds NaN or infinite"):
        check_finite("v.npy", mapped)


def test_a_dense_index_with_nan_vectors_is_refused_on_load(tmp_path: Path) -> None:
    vectors = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    vectors[3, 2] = np.nan
    DenseIndex(vectors).save(tmp_path)
    with pytest.raises(InputError, match=r"dense\.npy': embeddings row 3 holds NaN"):
        DenseIndex.load(tmp_path)


def test_a_dense_index_whose_json_disagrees_with_its_array_is_refused(tmp_path: Path) -> None:
    DenseIndex(np.ones((5, 4), np.float32)).save(tmp_path)
    meta = json.loads((tmp_path / "dense.json").read_text())
    (tmp_path / "dense.json").write_text(json.dumps({**meta, "count": 7}))
    with pytest.raises(ValueError, match=r"dense\.json' says 7 x 4 float32 vectors, '.*dense\.npy' holds 5 x 4 float32"):
        DenseIndex.load(tmp_path)


def test_a_faiss_index_with_nan_vectors_is_refused(tmp_path: Path) -> None:
    faiss = pytest.importorskip("faiss")
    from distill.serving.index.backends import BackendSettings
    from distill.serving.index.faiss_backend import INDEX_NAME, META_NAME, FaissIndex

    vectors = np.ones((6, 4), np.float32)
    vectors[4, 0] = np.inf
    for kind in ("Flat", "HNSW8", "SQfp16", "HNSW8,SQfp16"):  # float32 storage, and the float16 distill builds
        index = faiss.index_factory(4, kind, faiss.METRIC_INNER_PRODUCT)
        index.add(vectors)
        faiss.write_index(index, str(tmp_path / INDEX_NAME))
        (tmp_path / META_NAME).write_text("{}")
        with pytest.raises(InputError, match=rf"{INDEX_NAME}': embeddings row 4 holds NaN or infinite"):
            FaissIndex.load(tmp_path, BackendSettings(backend="faiss"))


def _folder(tmp_path: Path, files: dict[str, object], **meta: object) -> tuple[Path, dict[str, object]]:
    for name in ("items.json", "dense.npz", "dense.json"):
        (tmp_path / name).write_text("x")
    return tmp_path, {"kind": "dense", "side": "b", "count": 3, "files": files, **meta}


ALL = {name: {"bytes": 1, "sha256": "0"} for name in ("items.json", "dense.npz", "dense.json")}


@pytest.mark.parametrize(("files", "meta", "pattern"), [
    ({}, {}, r"index manifest '.*index\.json' does not list \['dense\.json', 'dense\.npz', 'items\.json'\]"),
    ({"items.json": ALL["items.json"]}, {}, r"does not list \['dense\.json', 'dense\.npz'\]"),
    (ALL, {"side": "a"}, r"side is 'a'; `distill index` indexes the b side only"),
    (ALL, {"count": 0}, r"count must be an integer >= 1, got 0"),
    (ALL, {"kind": "colbert"}, r"kind is 'colbert'"),
    ([], {}, r"files must map each file"),
    ({**ALL, "../../etc/passwd": {"bytes": 1, "sha256": "0"}}, {}, r"files lists '\.\./\.\./etc/passwd', outside"),
])
def test_an_edited_manifest_is_refused(tmp_path: Path, files: object, meta: dict[str, object], pattern: str) -> None:
    folder, manifest = _folder(tmp_path, files, **meta)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=pattern):
        check_manifest(folder, manifest, "items.json", "index.json")


def test_a_complete_manifest_passes(tmp_path: Path) -> None:
    folder, manifest = _folder(tmp_path, ALL)
    (folder / ".index.json.lock").write_text("")  # dot files are the writer's, never listed
    check_manifest(folder, manifest, "items.json", "index.json")
