"""`distill index` streams: items go to a memory-mapped table, vectors to a float16 file, chunk by chunk; the
result searches as the whole-corpus, in-memory float32 build did, a killed build leaves no half folder, and no
more than a chunk or two of items exist at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import weakref
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.data.beir.text_table import TextTable
from distill.errors import InputError
from distill.serving.index import BackendSettings, DenseIndex, corpus as corpus_module, folder
from distill.serving.index import items as items_module
from distill.serving.index.corpus import CorpusItem, encode_texts, tie_order
from distill.serving.index.folder import INDEX_META, build_index, open_index
from distill.serving.index.items import ItemTable, ItemWriter
from distill.serving.index.searcher import open_searcher
from tests.helpers import REPO_ROOT

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white"]
SHAPES = ["circle", "square", "triangle", "star", "cross"]
PLACES = ["top left", "top right", "bottom left", "bottom right", "centre", ""]


class Captions:
    """A data module stand-in: ``b_texts`` yields ``count`` (id, a_id, text) rows one at a time; ids are shuffled so
    that tie order (descending id) differs from the data's order."""

    def __init__(self, count: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.ids = rng.permutation(10 * count)[:count].tolist()
        self.texts = [f"{i}: a {COLOURS[rng.integers(len(COLOURS))]} {SHAPES[rng.integers(len(SHAPES))]} "
                      f"{PLACES[rng.integers(len(PLACES))]}".strip() + ("\nsmall" if i % 7 == 0 else "")
                      for i in range(count)]

    def b_texts(self, split: str):
        return ((item_id, item_id // 10, text) for item_id, text in zip(self.ids, self.texts))


@pytest.fixture
def student(dense_export: Path) -> Path:
    return dense_export


def text_vectors(student_module, tokenizer, texts, side, max_length, chunk_size=256, progress=False):
    """``encode_texts``'s contract with spread-out vectors (the tiny random student maps every caption to nearly one
    direction, which leaves no ranking to compare): each text's own unit vector, drawn from its CRC-32."""
    for start in range(0, len(texts), chunk_size):
        rows = [np.random.default_rng(zlib.crc32(text.encode())).standard_normal(16) for text in
                texts[start:start + chunk_size]]
        yield torch.from_numpy(np.stack(rows) / np.linalg.norm(rows, axis=1, keepdims=True)).float()


def in_memory_reference(data: Captions) -> tuple[list[CorpusItem], np.ndarray]:
    """What the build did before it streamed: every item in a list in tie order, one float32 ``[N, D]`` array."""
    items = [CorpusItem(i, i // 10, t) for i, t in zip(data.ids, data.texts)]
    items = [items[row] for row in tie_order(data, [item.id for item in items]).tolist()]
    return items, np.concatenate([chunk.numpy() for chunk in text_vectors(None, None, [item.text for item in items],
                                                                          "b", 0, 10_000)])


@pytest.mark.parametrize("backend", ["numpy", "faiss"])
def test_a_streamed_index_searches_as_the_in_memory_build(tmp_path: Path, student: Path, backend: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    if backend == "faiss":
        pytest.importorskip("faiss")
    monkeypatch.setattr(folder, "ITEM_CHUNKS", 37)  # several item chunks, not aligned with the encoding chunks
    monkeypatch.setattr(folder, "encode_texts", text_vectors)
    data = Captions(300)
    build_index(student, data, "test", tmp_path / "index", chunk_size=16, progress=False,
                settings=BackendSettings(backend=backend, vector_dtype="float16"))
    items, vectors = in_memory_reference(data)
    rng = np.random.default_rng(1)
    queries = vectors[rng.choice(len(vectors), 25, replace=False)] + 0.05 * rng.standard_normal((25, vectors.shape[1]))
    queries = queries.astype(np.float32)
    want_scores, want_rows = DenseIndex(vectors).search(queries, k=10)
    with open_searcher(tmp_path / "index") as searcher:
        assert searcher.meta["vector_dtype"] == "float16" and len(searcher.items) == 300
        hits = searcher.search_vectors(queries, k=10)
    # The index stores float16: each coordinate within 2**-11 of the float32 value (relative), so a score
    # q . x moves by at most 2**-11 * sum_i |q_i x_i| <= 2**-11 * |q| |x| (Cauchy-Schwarz), plus float32 rounding.
    tolerance = 2.0 ** -11 * np.linalg.norm(queries, axis=1) * np.linalg.norm(vectors, axis=1).max() + 1e-6
    for query, line in enumerate(hits):
        scores = np.array([hit.score for hit in line])
        assert np.all(np.abs(scores - want_scores[query]) <= tolerance[query])
        apart = np.abs(np.diff(np.concatenate([[np.inf], want_scores[query], [-np.inf]])))
        distinct = (apart[:-1] > 2 * tolerance[query]) & (apart[1:] > 2 * tolerance[query])
        assert distinct.sum() >= 5  # the comparison below checks most ranks, not only near-ties
        got = [hit.item for hit in line]
        assert [got[r] for r in np.flatnonzero(distinct)] == [items[want_rows[query, r]]
                                                            for r in np.flatnonzero(distinct)]
    assert not [path.name for path in (tmp_path / "index").iterdir() if path.name.startswith((".vectors",
                                                                                              ".unordered"))]


def test_items_are_read_back_by_row_and_by_id(tmp_path: Path, student: Path) -> None:
    data = Captions(120, seed=3)
    build_index(student, data, "test", tmp_path / "index", chunk_size=8, progress=False,
                settings=BackendSettings(backend="numpy", vector_dtype="float16"))
    meta, index, items = open_index(tmp_path / "index")
    want, _ = in_memory_reference(data)
    assert isinstance(items, ItemTable) and len(items) == len(index) == meta["count"] == 120
    assert items[0:120] == want  # tie order, texts with their newlines, ids and a_ids as given
    for item in want[::7]:
        assert items.by_id(item.id) == item
    assert items.by_id(10 ** 9) is None
    assert meta["format_version"] == folder.FORMAT_VERSION and {"items.jsonl", "items.npy", "dense.npy"} <= \
        set(meta["files"])
    assert np.load(tmp_path / "index" / "dense.npy", mmap_mode="r").dtype == np.float16


def test_an_index_of_the_earlier_format_is_one_line_that_says_to_rebuild(tmp_path: Path, student: Path) -> None:
    build_index(student, Captions(20), "test", tmp_path / "index", progress=False,
                settings=BackendSettings(backend="numpy"))
    meta = json.loads((tmp_path / "index" / INDEX_META).read_text())
    (tmp_path / "index" / INDEX_META).write_text(json.dumps({**meta, "format_version": 3}))
    with pytest.raises(InputError, match=r"is in format 3 \(texts in items\.json, float32 vectors\).*rebuild it with "
                                         r"`python -m distill index`") as error:
        open_index(tmp_path / "index")
    assert "\n" not in str(error.value)


def test_at_most_two_chunks_of_items_exist_at_once(tmp_path: Path, student: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted, not measured: every CorpusItem made during the build is tracked until it is freed, and every call
    of ``encode_texts`` gets one chunk of texts."""
    live = {"now": 0, "most": 0, "made": 0}

    class Counted(CorpusItem):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            live["now"] += 1
            live["made"] += 1
            live["most"] = max(live["most"], live["now"])
            weakref.finalize(self, lambda: live.__setitem__("now", live["now"] - 1))

    texts_per_call: list[int] = []

    def counted_encode(student_module, tokenizer, texts, *args, **kwargs):
        texts_per_call.append(len(texts))
        return encode_texts(student_module, tokenizer, texts, *args, **kwargs)

    monkeypatch.setattr(corpus_module, "CorpusItem", Counted)
    monkeypatch.setattr(items_module, "CorpusItem", Counted)
    monkeypatch.setattr(folder, "encode_texts", counted_encode)
    monkeypatch.setattr(folder, "ITEM_CHUNKS", 32)
    build_index(student, Captions(400), "test", tmp_path / "index", chunk_size=16, progress=False,
                settings=BackendSettings(backend="numpy"))
    assert live["made"] >= 3 * 400  # read from the data, copied in tie order, read again to encode
    assert live["most"] <= 2 * 32  # the chunk being handled and the next one being made, never the 400 items
    assert max(texts_per_call) == 16 and sum(texts_per_call) == 400


KILLED_BUILD = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from distill.serving.index import BackendSettings, folder
from tests.serving.test_streaming_index import Captions

real, calls = folder.encode_texts, []

def encode_then_die(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:  # items written, two chunks of vectors streamed to the scratch folder
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)

folder.encode_texts = encode_then_die
folder.build_index(sys.argv[1], Captions(200, seed=5), "test", sys.argv[2], chunk_size=16, progress=False,
                   settings=BackendSettings(backend=sys.argv[3]))
"""


@pytest.mark.parametrize("backend", ["numpy", "faiss"])
def test_a_killed_build_leaves_no_half_folder(tmp_path: Path, student: Path, backend: str) -> None:
    if backend == "faiss":
        pytest.importorskip("faiss")
    out = tmp_path / "index"
    build_index(student, Captions(50), "test", out, progress=False, settings=BackendSettings(backend=backend))
    before = json.loads((out / INDEX_META).read_text())["build_id"]
    done = subprocess.run([sys.executable, "-c", KILLED_BUILD.format(repo=str(REPO_ROOT)), str(student), str(out),
                           backend], env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    scratch = [path for path in tmp_path.iterdir() if path.name.startswith(".index.tmp-")]
    assert scratch and (scratch[0] / "items.jsonl").is_file()  # killed mid-build, after items and some vectors
    meta, index, items = open_index(out)  # the earlier folder, whole and verified
    assert meta["build_id"] == before and len(items) == 50
    getattr(index, "close", lambda: None)()
    build_index(student, Captions(200, seed=5), "test", out, progress=False, settings=BackendSettings(backend=backend))
    assert len(open_index(out)[2]) == 200
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".index.")]  # the killed scratch is gone


def test_text_table_reads_whole_records_and_sorts_ids_only_when_looked_up(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    with ItemWriter(path) as writer:
        writer.write([CorpusItem(5, 1, "a red circle", "d5"), CorpusItem(2, 0, "", None)])
        writer.write([CorpusItem(9, 1, "ünïcode\ttext", "d9")])
        writer.close()
    rows = np.load(tmp_path / "items.npy", mmap_mode="r")
    table = TextTable(path, False, rows["offset"], rows["id"], rows["empty"], path.stat().st_size)
    assert table._sorted is None  # opening sorted nothing
    assert table.record(2) == {"_id": "9", "id": 9, "a_id": 1, "doc_id": "d9", "text": "ünïcode\ttext"}
    assert table[0] == "a red circle" and table.is_empty(1) and table._sorted is None
    assert table.rows_of(["9", "2", "7"]) == [2, 1, None] and table._sorted is not None
    read = TextTable.read(path)  # the same file read as a corpus: the same rows
    assert [read.record(row) for row in range(3)] == [table.record(row) for row in range(3)]
