"""Query latency and index size: exhaustive teacher scoring vs dense exact search vs a sparse inverted index.

    python benchmarks/retrieval.py            # N = 10k, 100k, 1M (a few minutes on 2 CPU cores)
    python benchmarks/retrieval.py --quick    # tiny sizes, a few seconds; for smoke tests
    python benchmarks/retrieval.py --part dtypes   # exact search, float32 vs float16 vectors (docs/deployment.md)

Everything is measured in this one process run, side by side:

* teacher: the demo ShapesCrossEncoder (random init; timing only) scores one query caption against
  every image. Its unimodal image tokens are precomputed (the most favourable case for the teacher):
  only the query's text encoding and one fusion pass per (image, query) pair count. Pairs/s is
  measured on a few hundred pairs and extrapolated linearly to N.
* student query encoding: the demo students' text towers, PyTorch and ONNX Runtime, batch 1.
* dense: exact inner-product search (:class:`distill.serving.index.DenseIndex`) over N synthetic
  L2-normalised float32 vectors at the widths real students have: D=128 (the demo students),
  384 (MiniLM-L6 text students) and 768 (BERT-base-width dense retrievers).
* sparse: :class:`distill.serving.index.SparseIndex` over N synthetic SPLADE-like vectors (V=30522, ~120
  non-zeros per document, ~20 per query, term ids drawn from a Zipf-like law ``p(r) ~ 1/(r + 100)``
  so that frequent terms have long posting lists, weights uniform in [0.1, 3]), in three forms:
  exact float32 postings, uint8 impacts with block-local uint16 document ids, and the same with each
  document pruned to its 64 largest weights.

Latencies are medians over single-query calls (batch 1), single-threaded (torch, ONNX Runtime and
BLAS): batch-1 serving gains little from threads, and on a shared machine idle OpenMP threads stall.
At each N, every dense width and every sparse form is timed in one loop that calls each of them in
turn, so all ratios at that N come from the same background load.
The table goes to stdout and, as markdown with the command line, to ``--out`` (default
``docs/benchmarks.md``, where it replaces its own section).
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")  # before numpy / torch load their thread pools
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # FAISS builds use every core; idle OpenMP threads must not spin

import argparse
import gc
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from distill.io import silenced
from distill.serving.index import DenseIndex, SparseIndex, merge_top_k

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "benchmarks.md"
COLUMNS = ("N", "method", "variant", "search ms/query", "end-to-end ms/query", "index bytes", "bytes/doc",
           "end-to-end speed-up vs teacher", "search speed-up vs dense D=128", "bytes vs dense D=128")
DENSE_METHOD = "dense exact fp32"
SPARSE_METHOD = "sparse inverted index"
UNIFORM_METHOD = "sparse, uniform terms"
PREVIOUS_METHOD = "sparse, previous search path"  # scipy q @ P product + top-k over every touched document


@dataclass(frozen=True)
class SparseVariant:
    name: str
    weights: str
    top_k: int | None = None


SPARSE_VARIANTS = (SparseVariant("float32 exact", "float32"), SparseVariant("uint8 + uint16 ids", "uint8"),
                   SparseVariant("uint8 + uint16 ids, top-64/doc", "uint8", 64))
UNIFORM_VARIANT = SPARSE_VARIANTS[1]


@dataclass
class Settings:
    sizes: tuple[int, ...]
    target_n: int
    queries: int
    teacher_pairs: int
    dims: tuple[int, ...] = (128, 384, 768)
    vocab: int = 30522
    doc_terms: int = 120
    query_terms: int = 20
    zipf_offset: float = 100.0
    seed: int = 0
    backend_sizes: tuple[int, ...] = (100_000, 1_000_000)
    backend_dims: tuple[int, ...] = (128, 384)  # numpy and FAISS exact at each; approximate types and Qdrant at the last
    backend_queries: int = 30
    batch: int = 64
    recall_target: float = 0.95
    # Qdrant's local mode scans every point in Python: measured up to these N (a sparse query takes seconds at 10k)
    qdrant_dense_max: int = 100_000
    qdrant_sparse_sizes: tuple[int, ...] = (5_000,)


FULL = Settings(sizes=(10_000, 100_000, 1_000_000), target_n=5_000, queries=50, teacher_pairs=384)
QUICK = Settings(sizes=(500, 2_000), target_n=1_000, queries=5, teacher_pairs=32, vocab=3_000,
                 backend_sizes=(2_000,), backend_dims=(64, 128), backend_queries=5, qdrant_dense_max=2_000,
                 qdrant_sparse_sizes=(300,))


@dataclass
class Row:
    n: int
    method: str
    variant: str
    search_ms: float
    total_ms: float | None
    nbytes: int | None
    dense_ms: dict[int, float] | None = None  # dense search ms per width, timed in the same loop as this row


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


# ---------------------------------------------------------------------------- teacher
@torch.no_grad()
def teacher_ms_per_pair(settings: Settings, batch: int = 128) -> tuple[float, float]:
    """(ms per fused pair, ms to encode one query caption) of the demo teacher."""
    from distill.teachers import ShapesCrossEncoder

    teacher = ShapesCrossEncoder().freeze()
    size = teacher.config.image_size
    pairs = settings.teacher_pairs
    image_tokens = torch.cat([teacher.encode_image_tokens(torch.randn(min(batch, pairs - s), 3, size, size))
                              for s in range(0, pairs, batch)])
    ids = torch.randint(5, teacher.config.vocab_size, (1, 20))
    mask = torch.ones_like(ids)
    encode_ms = median_ms(lambda: teacher.encode_text_tokens(ids, mask), repeats=10)
    text_tokens = teacher.encode_text_tokens(ids, mask)

    def fuse_all() -> None:
        for start in range(0, pairs, batch):
            images = image_tokens[start:start + batch]
            count = images.shape[0]
            teacher.fuse(images, text_tokens.expand(count, -1, -1), mask.expand(count, -1))

    return median_ms(fuse_all, repeats=3) / pairs, encode_ms


# ---------------------------------------------------------------------------- student query encoders
@torch.no_grad()
def student_encode_ms(preset: str) -> tuple[float, float]:
    """(PyTorch ms, ONNX Runtime ms) to encode one caption with a demo student preset's text tower."""
    import onnxruntime as ort
    import yaml

    from distill.instantiate import instantiate
    from distill.serving.onnx import export_onnx

    student = instantiate(yaml.safe_load((REPO / "students" / preset).read_text())).eval()
    spec = {"modality": "text", "max_length": 32, "vocab_size": 29}
    ids = torch.randint(5, 29, (1, 20))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    torch_ms = median_ms(lambda: student.encode_b(inputs), repeats=20, warmup=3)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tower_b.onnx"
        export_onnx(student, "b", spec, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {key: value.numpy() for key, value in inputs.items()}
        onnx_ms = median_ms(lambda: session.run(None, feed), repeats=50, warmup=5)
    return torch_ms, onnx_ms


# ---------------------------------------------------------------------------- synthetic corpora
def dense_vectors(rng: np.random.Generator, n: int, dim: int, chunk: int = 200_000) -> np.ndarray:
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        out[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def zipf_cdf(vocab: int, offset: float) -> np.ndarray:
    weights = 1.0 / (np.arange(vocab) + offset)
    return np.cumsum(weights / weights.sum())


def sparse_vectors(rng: np.random.Generator, n: int, terms: int, cdf: np.ndarray,
                   chunk: int = 100_000) -> sp.csr_matrix:
    """``[n, V]`` CSR, ``terms`` Zipf-drawn term ids per row (repeats merged), weights U[0.1, 3]."""
    blocks = []
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        ids = np.searchsorted(cdf, rng.random((rows, terms))).astype(np.int32)
        np.minimum(ids, len(cdf) - 1, out=ids)
        data = rng.uniform(0.1, 3.0, (rows, terms)).astype(np.float32)
        indptr = np.arange(0, rows * terms + 1, terms, dtype=np.int64)
        block = sp.csr_matrix((data.ravel(), ids.ravel(), indptr), shape=(rows, len(cdf)))
        block.sum_duplicates()
        blocks.append(block)
    return sp.vstack(blocks, format="csr")


# ---------------------------------------------------------------------------- run
def interleaved_ms(functions: list[Callable[[int], object]], repeats: int) -> list[float]:
    """Median ms of each ``function(i)``, calls alternating between them so both see the same load."""
    for function in functions:
        function(0)
    times: list[list[float]] = [[] for _ in functions]
    for i in range(repeats):
        for function, bucket in zip(functions, times):
            start = time.perf_counter()
            function(i)
            bucket.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(bucket) for bucket in times]


def run(settings: Settings) -> tuple[list[Row], dict[str, float]]:
    rng = np.random.default_rng(settings.seed)
    notes: dict[str, float] = {"load_start": os.getloadavg()[0]}
    pair_ms, teacher_text_ms = teacher_ms_per_pair(settings)
    notes["teacher_pairs_per_s"] = 1e3 / pair_ms
    notes["teacher_text_ms"] = teacher_text_ms
    notes["dense_torch_ms"], notes["dense_onnx_ms"] = student_encode_ms("shapes-dual-encoder.yaml")
    notes["sparse_torch_ms"], notes["sparse_onnx_ms"] = student_encode_ms("shapes-sparse.yaml")
    zipf = zipf_cdf(settings.vocab, settings.zipf_offset)
    uniform = np.arange(1, settings.vocab + 1) / settings.vocab
    rows: list[Row] = []
    for n in sorted({settings.target_n, *settings.sizes}):
        teacher_ms = teacher_text_ms + pair_ms * n
        rows.append(Row(n, "teacher (exhaustive, extrapolated)", "-", teacher_ms, teacher_ms, None))
        rows += measure_size(settings, rng, n, notes, zipf, uniform)  # its indexes are freed on return
        gc.collect()
    notes["load_end"] = os.getloadavg()[0]
    return rows, notes


def measure_size(settings: Settings, rng: np.random.Generator, n: int, notes: dict[str, float],
                 zipf: np.ndarray, uniform: np.ndarray) -> list[Row]:
    """Dense and sparse rows at one corpus size, all timed in one interleaved loop."""
    # sparse corpora first: building them needs transient memory that the dense corpora would crowd
    timed: list[tuple[str, SparseVariant, SparseIndex, sp.csr_matrix]] = []
    docs = sparse_vectors(rng, n, settings.doc_terms, zipf)
    notes[f"nnz_per_doc|{SPARSE_METHOD}|{n}"] = docs.nnz / n
    queries = sparse_vectors(rng, settings.queries, settings.query_terms, zipf)
    for variant in SPARSE_VARIANTS:
        timed.append((SPARSE_METHOD, variant, SparseIndex.from_vectors(docs, variant.weights, variant.top_k), queries))
        gc.collect()
    notes[f"uint8_scale|{n}"] = timed[1][2].scale or 0.0
    del docs
    if n == max(settings.sizes):
        docs = sparse_vectors(rng, n, settings.doc_terms, uniform)
        notes[f"nnz_per_doc|{UNIFORM_METHOD}|{n}"] = docs.nnz / n
        uniform_index = SparseIndex.from_vectors(docs, UNIFORM_VARIANT.weights, UNIFORM_VARIANT.top_k)
        del docs
        timed.append((UNIFORM_METHOD, UNIFORM_VARIANT, uniform_index,
                      sparse_vectors(rng, settings.queries, settings.query_terms, uniform)))
    gc.collect()
    for name, index in (("uint8", timed[1][2]), ("top64", timed[2][2])):
        notes[f"overlap|{name}|{n}"] = top_k_overlap(timed[0][2], index, queries, 10)
    dense = {dim: DenseIndex(dense_vectors(rng, n, dim)) for dim in settings.dims}
    dense_queries = {dim: dense_vectors(rng, settings.queries, dim) for dim in settings.dims}

    def dense_query(dim: int) -> Callable[[int], object]:
        return lambda i: dense[dim].search(dense_queries[dim][i % settings.queries], 10)

    def sparse_query(index: SparseIndex, matrix: sp.csr_matrix) -> Callable[[int], object]:
        def query(i: int) -> object:
            lo, hi = matrix.indptr[i % settings.queries], matrix.indptr[i % settings.queries + 1]
            return index.search_one(matrix.indices[lo:hi], matrix.data[lo:hi], 10)
        return query

    exact = timed[0][2]
    postings = sp.csr_matrix((exact.data, exact.indices, exact.indptr), shape=(exact.num_terms, n), copy=False)

    def previous_query(i: int) -> object:
        """The search this index used before the block-at-a-time path, for comparison in the same run."""
        lo, hi = queries.indptr[i % settings.queries], queries.indptr[i % settings.queries + 1]
        query = sp.csr_matrix((queries.data[lo:hi], queries.indices[lo:hi], [0, hi - lo]), shape=(1, exact.num_terms))
        scored = (query @ postings).tocsr()
        return merge_top_k(scored.data[None], scored.indices.astype(np.int64)[None], 10)

    functions = [dense_query(dim) for dim in settings.dims]
    functions += [sparse_query(index, matrix) for _, _, index, matrix in timed]
    functions.append(previous_query)
    times = interleaved_ms(functions, settings.queries)
    dense_ms = dict(zip(settings.dims, times))
    rows = []
    for dim in settings.dims:
        total = dense_ms[dim] + notes["dense_onnx_ms"] if dim == settings.dims[0] else None
        rows.append(Row(n, DENSE_METHOD, f"D={dim}", dense_ms[dim], total, dense[dim].nbytes, dense_ms))
    for (method, variant, index, _), ms in zip(timed, times[len(settings.dims):]):
        rows.append(Row(n, method, variant.name, ms, ms + notes["sparse_onnx_ms"], index.nbytes, dense_ms))
    rows.append(Row(n, PREVIOUS_METHOD, SPARSE_VARIANTS[0].name, times[-1], times[-1] + notes["sparse_onnx_ms"],
                    exact.nbytes, dense_ms))
    return rows


def top_k_overlap(reference: SparseIndex, index: SparseIndex, queries: sp.csr_matrix, k: int) -> float:
    """Mean share of ``reference``'s top-k rows that ``index`` also returns in its top-k."""
    shares = []
    for i in range(queries.shape[0]):
        lo, hi = queries.indptr[i], queries.indptr[i + 1]
        want = set(reference.search_one(queries.indices[lo:hi], queries.data[lo:hi], k)[1].tolist()) - {-1}
        got = set(index.search_one(queries.indices[lo:hi], queries.data[lo:hi], k)[1].tolist())
        if want:
            shares.append(len(want & got) / len(want))
    return float(np.mean(shares)) if shares else float("nan")


def table(rows: list[Row], settings: Settings) -> list[list[str]]:
    reference = settings.dims[0]
    by_key = {(row.n, row.method, row.variant): row for row in rows}
    cells = []
    for row in rows:
        teacher = by_key[(row.n, "teacher (exhaustive, extrapolated)", "-")]
        dense = by_key[(row.n, DENSE_METHOD, f"D={reference}")]
        is_teacher = row.method.startswith("teacher")
        cells.append([
            f"{row.n:,}", row.method, row.variant, f"{row.search_ms:.3f}",
            "-" if row.total_ms is None else f"{row.total_ms:.3f}",
            "-" if row.nbytes is None else f"{row.nbytes:,}",
            "-" if row.nbytes is None else f"{row.nbytes / row.n:,.0f}",
            "1x" if is_teacher else ("-" if row.total_ms is None else f"{teacher.total_ms / row.total_ms:,.0f}x"),
            "-" if is_teacher else f"{(row.dense_ms or {})[reference] / row.search_ms:.2f}x",
            "-" if row.nbytes is None or dense.nbytes is None else f"{row.nbytes / dense.nbytes:.2f}x",
        ])
    return cells


def target_ratios(row: Row, dense: Row, dim: int) -> tuple[float, float]:
    """``(speed-up, size ratio)`` of a sparse row against the dense row of width ``dim`` timed beside it."""
    return (row.dense_ms or {})[dim] / row.search_ms, dense.nbytes / row.nbytes  # type: ignore[operator]


def target_table(rows: list[Row], settings: Settings) -> list[str]:
    """At the largest N: each sparse form against each dense width, speed-up and size ratio, met or not."""
    big = max(settings.sizes)
    dense = {row.variant: row for row in rows if row.n == big and row.method == DENSE_METHOD}
    header = [f"sparse form (N={big:,})"] + [f"vs dense D={d}: speed-up / size ratio" for d in settings.dims]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if row.n != big or row.method != SPARSE_METHOD:
            continue
        cells = [row.variant]
        for dim in settings.dims:
            speed, size = target_ratios(row, dense[f"D={dim}"], dim)
            cells.append(f"{speed:.1f}x ({'met' if speed >= 10 else 'not met'}) / "
                         f"{size:.2f}x ({'met' if size >= 10 else 'not met'})")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def verdicts(rows: list[Row], settings: Settings) -> list[str]:
    by_key = {(row.n, row.method, row.variant): row for row in rows}
    lines = []
    n = settings.target_n
    teacher = by_key[(n, "teacher (exhaustive, extrapolated)", "-")]
    dense = by_key[(n, DENSE_METHOD, f"D={settings.dims[0]}")]
    search_x = teacher.total_ms / dense.search_ms
    total_x = teacher.total_ms / dense.total_ms  # type: ignore[operator]
    verdict = "met" if total_x >= 1000 else ("met for search alone" if search_x >= 1000 else "not met")
    lines.append(f"- Target: student search >= 1000x faster per query than exhaustive teacher scoring at N={n:,}: "
                 f"{verdict} (dense D={settings.dims[0]}: search alone {search_x:,.0f}x; with ONNX query encoding "
                 f"{total_x:,.0f}x).")
    big = max(settings.sizes)
    sparse = [row for row in rows if row.n == big and row.method == SPARSE_METHOD]
    for dim in settings.dims:
        dense = by_key[(big, DENSE_METHOD, f"D={dim}")]
        parts = []
        for row in sparse:
            speed, size = target_ratios(row, dense, dim)
            if speed >= 10 and size >= 10:
                both = "both met"
            elif speed >= 10 or size >= 10:
                both = "speed met, size not met" if speed >= 10 else "size met, speed not met"
            else:
                both = "neither met"
            parts.append(f"{row.variant}: {both} (speed-up {speed:.1f}x, size ratio {size:.2f}x)")
        lines.append(f"- Target: sparse index >= 10x faster and >= 10x smaller than dense fp32 exact search at "
                     f"N={big:,}, against D={dim} ({dim * 4:,} bytes/vector): " + "; ".join(parts) + ".")
    return lines


def render(rows: list[Row], notes: dict[str, float], settings: Settings, command: str) -> tuple[str, str]:
    cells = table(rows, settings)
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(COLUMNS)]
    text = "\n".join(["  ".join(h.ljust(w) for h, w in zip(COLUMNS, widths))]
                     + ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells])
    big = max(settings.sizes)
    nnz = ", ".join(f"{v:.1f} ({k.split('|')[1]})" for k, v in notes.items()
                    if k.startswith("nnz_per_doc|") and k.endswith(f"|{big}"))
    scale = notes[f"uint8_scale|{big}"]
    blocks = -(-big // 65536)
    widths_text = ", ".join(f"D={d}: {d * 4:,}" for d in settings.dims)
    context = [
        f"- Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared); everything single-threaded; "
        f"Python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}. 1-minute load "
        f"average {notes['load_start']:.1f} at the start and {notes['load_end']:.1f} at the end of the run (other jobs "
        "were running): memory-bound dense search slows down more under such load than cache-resident sparse "
        "search, so the ratios on an idle machine may differ.",
        f"- Teacher (demo ShapesCrossEncoder, random init): {notes['teacher_pairs_per_s']:,.0f} fused pairs/s measured "
        f"on {settings.teacher_pairs} pairs with precomputed image tokens, extrapolated linearly to N; "
        f"+ {notes['teacher_text_ms']:.2f} ms to encode the query caption.",
        f"- Student query encoding, batch 1 (demo presets): dense {notes['dense_torch_ms']:.2f} ms PyTorch / "
        f"{notes['dense_onnx_ms']:.2f} ms ONNX Runtime; sparse {notes['sparse_torch_ms']:.2f} ms / "
        f"{notes['sparse_onnx_ms']:.2f} ms. End-to-end = ONNX encoding + search; it is left out ('-') for the "
        f"D={'/'.join(str(d) for d in settings.dims[1:])} rows, whose encoders (MiniLM, BERT-base) are not timed here.",
        f"- Synthetic sparse documents: V={settings.vocab}, {settings.doc_terms} term draws per document and "
        f"{settings.query_terms} per query, from p(rank) ~ 1/(rank + {settings.zipf_offset:g}) (frequent terms have "
        "long posting lists, as in real SPLADE indexes) or, in the 'uniform terms' row, uniformly (short lists; "
        f"an optimistic bound). Non-zeros per document at N={big:,} after merging repeats: {nnz}. The top-64 form "
        "keeps each document's 64 largest weights (`SparseIndex.from_vectors(..., top_k=64)`).",
        f"- Index bytes are every array the index holds (what `SparseIndex.save` writes; `nbytes`). Dense: N x D x 4 "
        f"(bytes per vector: {widths_text}). Sparse float32: offsets (V+1) x int64 + per posting an int32 document "
        "id and a float32 weight (8 bytes). Sparse uint8: per posting a uint16 document id (offset inside its block "
        f"of 65,536 documents) and a uint8 impact (3 bytes), + a (term, block) offset table of (V x B + 1) x uint32 "
        f"(B = {blocks} blocks at N={big:,}: {(settings.vocab * blocks + 1) * 4:,} bytes) + one float64 scale. "
        "Neither side counts items.json (ids and texts) or the query encoder.",
        f"- uint8 impacts: one global scale = max weight / 255 = {scale:.5f} at N={big:,}, so every stored weight is "
        f"within scale/2 = {scale / 2:.5f} of its float32 value and a score within scale/2 x sum_j q_j. Search over "
        "the uint8 index is exact for the dequantised weights. Share of the float32 index's top-10 that each form "
        f"returns (mean over the {settings.queries} queries): uint8 {notes[f'overlap|uint8|{big}']:.1%}, uint8 "
        f"top-64/doc {notes[f'overlap|top64|{big}']:.1%} (at N={big:,}).",
        "- Sparse search (all forms): one block of 65,536 documents at a time, the query's postings in that block "
        "added into a cache-resident float32 accumulator (`np.add.at`), then only documents above the running k-th "
        "best score merged into the top-k; no N-sized accumulator, no sparse-matrix product, no argpartition over N. "
        f"The '{PREVIOUS_METHOD}' row times, on the float32 index and in the same loop, the search it replaced: "
        "scipy's `q @ P` product over all touched documents, then a top-k of them.",
        f"- Medians of {settings.queries} single-query calls, k=10. At each N all dense widths and sparse forms are "
        "called in turn, query by query, in one loop, so every ratio compares runs under the same background load; "
        "the machine is shared, so absolute times are noisy, while the ratios come from one run.",
    ]
    markdown = [
        "## Retrieval latency and index size", "", f"Command: `{command}`", "",
        "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS),
        *("| " + " | ".join(r) + " |" for r in cells), "", *context, "",
        f"### Targets at N={big:,}, per dense width", "",
        "Speed-up = dense search ms / sparse search ms; size ratio = dense bytes / sparse bytes (above 1: the "
        "sparse index is smaller). Each target asks for >= 10x.", "", *target_table(rows, settings), "",
        *verdicts(rows, settings), "",
    ]
    return text, "\n".join(markdown)


# ---------------------------------------------------------------------------- backends side by side
BACKEND_COLUMNS = ("N", "vectors", "backend", "variant", "single ms/query", "batch ms/query", "build s",
                   "index bytes", "bytes/doc", "recall@10 vs exact", "single vs fastest", "batch vs fastest")
SEISMIC_GRID = tuple((cut, heap) for cut in (5, 10, 20) for heap in (0.9, 0.8, 0.7, 0.6, 0.5))
CLUSTERS = 1024
NOISE = 0.7


@dataclass
class Candidate:
    """One backend configuration at one N: its search and what building it cost."""

    backend: str
    variant: str
    search: Callable[[object, int], tuple[np.ndarray, np.ndarray]]  # (queries, k) -> (scores, rows)
    build_s: float
    nbytes: int
    close: Callable[[], object] = lambda: None


@dataclass
class BackendRow:
    n: int
    vectors: str
    backend: str
    variant: str
    single_ms: float
    batch_ms: float
    build_s: float
    nbytes: int
    recall: float


def have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def timed(build: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    built = build()
    return built, time.perf_counter() - start


@contextmanager
def build_threads() -> Iterator[None]:
    """Index builds may use every core (FAISS's OpenMP); searches are timed on one."""
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    try:
        with silenced(2):  # k-means warns when a small corpus gives few training points per centroid
            yield
    finally:
        faiss.omp_set_num_threads(1)


def recall_at_k(rows: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each query's exact top-k that ``rows`` returns."""
    shares = [len(set(got.tolist()) & (set(want.tolist()) - {-1})) / max(1, len(set(want.tolist()) - {-1}))
              for got, want in zip(rows, exact)]
    return float(np.mean(shares))


def clustered_vectors(rng: np.random.Generator, centers: np.ndarray, n: int, chunk: int = 200_000) -> np.ndarray:
    """``n`` unit vectors, each a random cluster centre plus Gaussian noise of norm ~``NOISE``, normalised."""
    dim = centers.shape[1]
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        count = min(chunk, n - start)
        block = centers[rng.integers(0, len(centers), count)]
        block += rng.standard_normal((count, dim), dtype=np.float32) * np.float32(NOISE / np.sqrt(dim))
        out[start:start + count] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def tune(search: Callable[[object], object], values: Sequence[object], queries: object, exact: np.ndarray,
         target: float) -> tuple[object, float]:
    """The first of ``values`` (cheapest first) whose recall@10 on ``queries`` reaches ``target``, else the best."""
    best = (values[-1], -1.0)
    for value in values:
        recall = recall_at_k(search(value)(queries, 10)[1], exact)  # type: ignore[operator]
        if recall >= target:
            return value, recall
        best = max(best, (value, recall), key=lambda pair: pair[1])
    return best


def qdrant_candidate(vectors: object, folder: Path, kind: str) -> Candidate:
    from distill.serving.index import BackendSettings
    from distill.serving.index.corpus import CorpusItem
    from distill.serving.index.qdrant_backend import QdrantIndex

    items = [CorpusItem(i, i, "") for i in range(vectors.shape[0])]  # type: ignore[attr-defined]
    index, build_s = timed(lambda: QdrantIndex.build(vectors, items, BackendSettings(backend="qdrant"), folder,
                                                     kind))
    return Candidate("qdrant", "embedded (local mode, exact scan)", index.search, build_s, index.nbytes,
                     index.close)  # type: ignore[attr-defined]


def faiss_candidates(corpus: np.ndarray, tune_queries: np.ndarray, tune_exact: np.ndarray, approximate: bool,
                     target: float) -> tuple[list[Candidate], dict[str, str]]:
    """FAISS exact (as distill sets it, and with FAISS's default BLAS threshold) and, when asked, IVF, IVF-PQ, HNSW, each
    tuned on separate queries to the cheapest search setting that reaches ``target`` recall."""
    import faiss

    from distill.serving.index import BackendSettings
    from distill.serving.index.faiss_backend import BLAS_QUERIES, FaissIndex, blas_threshold

    space = faiss.ParameterSpace()
    with build_threads():
        flat, build_s = timed(lambda: FaissIndex.build(corpus, BackendSettings(backend="faiss")))
    default_threshold = int(faiss.cvar.distance_compute_blas_threshold)

    def library_default(queries: object, k: int) -> tuple[np.ndarray, np.ndarray]:
        with blas_threshold(default_threshold):
            return flat.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)  # type: ignore[attr-defined]

    candidates = [Candidate("faiss", f"IndexFlatIP (BLAS from {BLAS_QUERIES} queries)", flat.search,  # type: ignore[attr-defined]
                            build_s, flat.nbytes),  # type: ignore[attr-defined]
                  Candidate("faiss", "IndexFlatIP, FAISS's default BLAS threshold", library_default, build_s,
                            flat.nbytes)]  # type: ignore[attr-defined]
    notes: dict[str, str] = {"blas_threshold": str(default_threshold)}
    if not approximate:
        return candidates, notes
    n, dim = corpus.shape
    nlist = max(1, int(np.sqrt(n)))
    specs = [("ivf", f"IVF{nlist},Flat", dict(faiss_type="ivf", nlist=nlist), "nprobe", [1, 2, 4, 8, 16, 32, 64, 128]),
             ("ivf", f"IVF{nlist},PQ{dim // 8}np", dict(faiss_type="ivf", nlist=nlist, pq=dim // 8), "nprobe",
              [1, 2, 4, 8, 16, 32, 64, 128]),
             ("hnsw", "HNSW32", dict(faiss_type="hnsw"), "efSearch", [16, 32, 64, 128, 256, 512])]
    for _, name, options, parameter, values in specs:
        with build_threads():
            index, build_s = timed(lambda: FaissIndex.build(corpus, BackendSettings(backend="faiss", **options)))

        def with_value(value: object, index: object = index, parameter: str = parameter) -> Callable:
            space.set_index_parameter(index.index, parameter, value)  # type: ignore[attr-defined]
            return index.search  # type: ignore[attr-defined]

        value, recall = tune(with_value, values, tune_queries, tune_exact, target)
        with_value(value)
        candidates.append(Candidate("faiss", f"{name}, {parameter}={value}", index.search, build_s,
                                    index.nbytes))  # type: ignore[attr-defined]
        notes[name] = f"{parameter}={value} (recall {recall:.3f} on the tuning queries)"
    return candidates, notes


def seismic_candidate(docs: sp.csr_matrix, tune_queries: sp.csr_matrix, tune_exact: np.ndarray, folder: Path,
                      target: float) -> tuple[Candidate, str]:
    """Seismic (``pyseismic-lsr``) with its default build, tuned over ``SEISMIC_GRID`` (query_cut, heap_factor)."""
    import seismic

    def build() -> object:
        dataset = seismic.SeismicDataset(dim=docs.shape[1])
        dataset.add_documents_by_id([str(i) for i in range(docs.shape[0])], docs.indices.astype(np.int64),
                                    docs.data.astype(np.float32), docs.indptr.astype(np.int64))
        return seismic.SeismicIndex.build_from_dataset(dataset, num_threads=0)

    with silenced(1):
        index, build_s = timed(build)
        index.save(str(folder / "seismic"))  # type: ignore[attr-defined]
    saved = folder / "seismic.index.seismic"
    nbytes = saved.stat().st_size
    saved.unlink()
    kind = seismic.get_seismic_string()

    def searcher(setting: tuple[int, float]) -> Callable[[sp.csr_matrix, int], tuple[np.ndarray, np.ndarray]]:
        def search(queries: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
            terms = [np.array([str(t) for t in queries.indices[lo:hi]], dtype=kind)
                     for lo, hi in zip(queries.indptr[:-1], queries.indptr[1:])]
            values = [queries.data[lo:hi].astype(np.float32) for lo, hi in zip(queries.indptr[:-1], queries.indptr[1:])]
            if len(terms) == 1:  # batch_search starts a thread pool per call: one query goes through search
                found = [index.search("0", terms[0], values[0], k, setting[0], setting[1])]  # type: ignore[attr-defined]
            else:
                ids = np.array([str(i) for i in range(len(terms))], dtype=kind)
                found = index.batch_search(ids, terms, values, k, setting[0], setting[1],  # type: ignore[attr-defined]
                                           num_threads=1)
            scores = np.full((len(terms), k), -np.inf, np.float32)
            rows = np.full((len(terms), k), -1, np.int64)
            for hits in found:  # one list per query, not necessarily in query order: each hit names its query
                for j, (query, score, doc) in enumerate(hits[:k]):
                    scores[int(query), j], rows[int(query), j] = score, int(doc)
            return scores, rows
        return search

    setting, recall = fastest_setting(searcher, tune_queries, tune_exact, target)
    note = f"query_cut={setting[0]}, heap_factor={setting[1]} (recall {recall:.3f} on the tuning queries)"
    return Candidate("seismic", f"default build, query_cut={setting[0]}, heap_factor={setting[1]}",
                     searcher(setting), build_s, nbytes), note


def fastest_setting(searcher: Callable, queries: sp.csr_matrix, exact: np.ndarray,
                    target: float) -> tuple[tuple[int, float], float]:
    """The grid setting with the lowest time on ``queries`` among those reaching ``target`` (else the best recall)."""
    measured = []
    for setting in SEISMIC_GRID:
        search = searcher(setting)
        (_, rows), seconds = timed(lambda: search(queries, 10))
        measured.append((setting, recall_at_k(rows, exact), seconds))
    reaching = [entry for entry in measured if entry[1] >= target]
    setting, recall, _ = min(reaching, key=lambda entry: entry[2]) if reaching else max(measured, key=lambda e: e[1])
    return setting, recall


def measure_candidates(settings: Settings, candidates: list[Candidate], queries: object, exact: np.ndarray,
                       n: int, vectors: str) -> list[BackendRow]:
    """Single-query and batch latency of every candidate, interleaved, and recall@10 of the batch against exact."""
    count = settings.backend_queries
    singles = [queries[i:i + 1] for i in range(count)]  # type: ignore[index]
    single = interleaved_ms([lambda i, c=c: c.search(singles[i % count], 10) for c in candidates], count)
    found: dict[int, np.ndarray] = {}

    def batch_call(candidate: Candidate, slot: int) -> Callable[[int], object]:
        def call(_: int) -> object:
            found[slot] = candidate.search(queries, 10)[1]
            return found[slot]
        return call

    batch = interleaved_ms([batch_call(c, slot) for slot, c in enumerate(candidates)], 3)
    size = queries.shape[0]  # type: ignore[attr-defined]
    return [BackendRow(n, vectors, c.backend, c.variant, one, many / size, c.build_s, c.nbytes,
                       recall_at_k(found[slot], exact))
            for slot, (c, one, many) in enumerate(zip(candidates, single, batch))]


def dense_backends(settings: Settings, rng: np.random.Generator, n: int, dim: int, approximate: bool,
                   qdrant: bool, folder: Path, notes: dict[str, str]) -> list[BackendRow]:
    """numpy exact, FAISS exact and (when ``approximate``) FAISS IVF / IVF-PQ / HNSW and embedded Qdrant."""
    centers = rng.standard_normal((CLUSTERS, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    corpus = clustered_vectors(rng, centers, n)
    queries, tune_queries = clustered_vectors(rng, centers, settings.batch), clustered_vectors(rng, centers, 64)
    numpy_index, build_s = timed(lambda: DenseIndex(corpus))
    exact = numpy_index.search(queries, 10)[1]  # type: ignore[attr-defined]
    tune_exact = numpy_index.search(tune_queries, 10)[1]  # type: ignore[attr-defined]
    candidates = [Candidate("numpy", "exact (DenseIndex)", numpy_index.search, build_s,  # type: ignore[attr-defined]
                            numpy_index.nbytes)]  # type: ignore[attr-defined]
    if have("faiss"):
        found, faiss_notes = faiss_candidates(corpus, tune_queries, tune_exact, approximate, settings.recall_target)
        candidates += found
        notes.update({f"{key}|{n}|{dim}": value for key, value in faiss_notes.items()})
    if qdrant and have("qdrant_client"):
        candidates.append(qdrant_candidate(corpus, folder / f"dense-{dim}", "dense"))
    try:
        return measure_candidates(settings, candidates, queries, exact, n, f"dense D={dim}")
    finally:
        for candidate in candidates:
            candidate.close()


def sparse_backends(settings: Settings, rng: np.random.Generator, n: int, zipf: np.ndarray, qdrant: bool,
                    folder: Path, notes: dict[str, str]) -> list[BackendRow]:
    """distill's inverted index (float32, uint8), Seismic and embedded Qdrant on the same SPLADE-like vectors."""
    docs = sparse_vectors(rng, n, settings.doc_terms, zipf)
    queries = sparse_vectors(rng, settings.batch, settings.query_terms, zipf)
    tune_queries = sparse_vectors(rng, 64, settings.query_terms, zipf)
    candidates = []
    for variant in SPARSE_VARIANTS[:2]:
        index, build_s = timed(lambda: SparseIndex.from_vectors(docs, variant.weights))
        candidates.append(Candidate("numpy", f"inverted index, {variant.name}", index.search, build_s,
                                    index.nbytes))  # type: ignore[attr-defined]
    exact = candidates[0].search(queries, 10)[1]
    tune_exact = candidates[0].search(tune_queries, 10)[1]
    if have("seismic"):
        candidate, notes[f"seismic|{n}"] = seismic_candidate(docs, tune_queries, tune_exact, folder,
                                                             settings.recall_target)
        candidates.append(candidate)
    if qdrant and have("qdrant_client"):
        candidates.append(qdrant_candidate(docs, folder / "sparse", "sparse"))
    docs = None  # the indexes hold their own copies; free the corpus before timing
    gc.collect()
    try:
        return measure_candidates(settings, candidates, queries, exact, n, "sparse")
    finally:
        for candidate in candidates:
            candidate.close()


def run_backends(settings: Settings) -> tuple[list[BackendRow], dict[str, str]]:
    """Every backend at every N of ``settings.backend_sizes``; one group (vectors kind, width) in memory at a time.

    Embedded Qdrant joins the dense groups up to ``qdrant_dense_max`` and sparse groups of its own sizes
    (``qdrant_sparse_sizes``), beside distill's inverted index and Seismic at the same N.
    """
    rng = np.random.default_rng(settings.seed + 1)
    notes: dict[str, str] = {"load_start": f"{os.getloadavg()[0]:.1f}"}
    zipf = zipf_cdf(settings.vocab, settings.zipf_offset)
    rows: list[BackendRow] = []
    for n in sorted({*settings.backend_sizes, *settings.qdrant_sparse_sizes}):
        if n in settings.backend_sizes:
            for dim in settings.backend_dims:
                last = dim == settings.backend_dims[-1]
                with tempfile.TemporaryDirectory() as folder:
                    rows += dense_backends(settings, rng, n, dim, last, last and n <= settings.qdrant_dense_max,
                                           Path(folder), notes)
                gc.collect()
        with tempfile.TemporaryDirectory() as folder:
            rows += sparse_backends(settings, rng, n, zipf, n in settings.qdrant_sparse_sizes, Path(folder), notes)
        gc.collect()
    notes["load_end"] = f"{os.getloadavg()[0]:.1f}"
    return rows, notes


def backend_cells(rows: list[BackendRow]) -> list[list[str]]:
    fastest: dict[tuple[int, str], tuple[float, float]] = {}
    for row in rows:
        single, batch = fastest.get((row.n, row.vectors), (np.inf, np.inf))
        fastest[(row.n, row.vectors)] = (min(single, row.single_ms), min(batch, row.batch_ms))
    cells = []
    for row in rows:
        single, batch = fastest[(row.n, row.vectors)]
        cells.append([f"{row.n:,}", row.vectors, row.backend, row.variant, f"{row.single_ms:.3f}", f"{row.batch_ms:.3f}",
                       f"{row.build_s:.1f}", f"{row.nbytes:,}", f"{row.nbytes / row.n:,.0f}", f"{row.recall:.3f}",
                       f"{row.single_ms / single:.2f}x", f"{row.batch_ms / batch:.2f}x"])
    return cells


def find(rows: list[BackendRow], n: int, vectors: str, backend: str, variant: str = "") -> BackendRow | None:
    return next((row for row in rows if (row.n, row.vectors, row.backend) == (n, vectors, backend)
                 and row.variant.startswith(variant)), None)


def default_verdict(rows: list[BackendRow], settings: Settings) -> list[str]:
    """The dependency-free numpy backend stays the dense default only within 1.2x of FAISS exact everywhere."""
    lines, worst = [], 0.0
    for n in settings.backend_sizes:
        for dim in settings.backend_dims:
            vectors = f"dense D={dim}"
            mine = find(rows, n, vectors, "numpy")
            flats = [row for row in rows if (row.n, row.vectors, row.backend) == (n, vectors, "faiss")
                     and row.variant.startswith("IndexFlatIP")]
            if mine is None or not flats:
                continue
            single = mine.single_ms / min(row.single_ms for row in flats)
            batch = mine.batch_ms / min(row.batch_ms for row in flats)
            worst = max(worst, single, batch)
            lines.append(f"N={n:,} D={dim}: numpy / FAISS exact = {single:.2f}x single, {batch:.2f}x batch of "
                         f"{settings.batch}")
    if not lines:
        return ["- Default dense backend: FAISS is not installed; nothing to compare."]
    verdict = ("numpy is within 1.2x of FAISS exact: it can stay the default" if worst <= 1.2 else
               "numpy is not within 1.2x of FAISS exact, so FAISS is the default (numpy when faiss-cpu is missing)")
    return [f"- Default dense backend (numpy kept only within 1.2x of FAISS `IndexFlatIP`): {verdict}; "
            + "; ".join(lines) + " (above 1: numpy slower)."]


def sparse_verdict(rows: list[BackendRow], settings: Settings) -> list[str]:
    lines = []
    for n in settings.backend_sizes:
        seismic = find(rows, n, "sparse", "seismic")
        ours = [row for row in rows if (row.n, row.vectors, row.backend) == (n, "sparse", "numpy")]
        if seismic is None or not ours:
            continue
        best = min((row for row in ours if row.recall >= settings.recall_target), key=lambda row: row.single_ms)
        reached = seismic.recall >= settings.recall_target
        faster = "Seismic" if reached and seismic.single_ms < best.single_ms else "distill's inverted index"
        ratio = max(seismic.single_ms, best.single_ms) / min(seismic.single_ms, best.single_ms)
        lines.append(f"N={n:,}: {faster} is faster by {ratio:.2f}x per query (ours: {best.variant}, "
                     f"{best.single_ms:.3f} ms, recall {best.recall:.3f}; Seismic: {seismic.single_ms:.3f} ms, recall "
                     f"{seismic.recall:.3f}{'' if reached else ', below the target'}); bytes ours/Seismic "
                     f"{best.nbytes / seismic.nbytes:.2f}x; build ours {best.build_s:.1f} s, Seismic "
                     f"{seismic.build_s:.1f} s")
    if not lines:
        return ["- Sparse: Seismic (pyseismic-lsr) is not installed; nothing to compare."]
    return [f"- Sparse, distill's inverted index vs Seismic at recall@10 >= {settings.recall_target}: "
            + "; ".join(lines) + "."]


def approximate_verdict(rows: list[BackendRow], settings: Settings) -> list[str]:
    dim = settings.backend_dims[-1]
    lines = []
    for n in settings.backend_sizes:
        exact = find(rows, n, f"dense D={dim}", "numpy")
        parts = [f"{row.variant}: recall {row.recall:.3f}, {exact.single_ms / row.single_ms:.1f}x faster single, "
                 f"{row.nbytes / exact.nbytes:.2f}x the bytes"
                 for row in rows if exact is not None and (row.n, row.vectors, row.backend) == (n, f"dense D={dim}", "faiss")
                 and not row.variant.startswith("IndexFlatIP")]
        if parts:
            lines.append(f"N={n:,}: " + "; ".join(parts))
    return [f"- Approximate FAISS against numpy exact at D={dim}: " + " | ".join(lines) + "."] if lines else []


def render_backends(rows: list[BackendRow], notes: dict[str, str], settings: Settings,
                    command: str) -> tuple[str, str]:
    from distill.serving.index.faiss_backend import BLAS_QUERIES

    cells = backend_cells(rows)
    columns = list(BACKEND_COLUMNS)
    columns[5] = f"batch-{settings.batch} ms/query"
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(columns)]
    text = "\n".join(["  ".join(h.ljust(w) for h, w in zip(columns, widths))]
                     + ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells])
    versions = ", ".join(f"{name} {_version(name)}" for name in ("faiss-cpu", "qdrant-client", "pyseismic-lsr"))
    tuned = "; ".join(f"{key.split('|')[0]} at N={int(key.split('|')[1]):,}: {value}" for key, value in notes.items()
                      if "|" in key and not key.startswith("blas_threshold"))
    context = [
        f"- Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs; 1-minute load average "
        f"{notes['load_start']} at the start, {notes['load_end']} at the end). Searches are single-threaded (BLAS, "
        f"OpenMP, Seismic's `num_threads=1`); builds may use every core (FAISS training and adding, Seismic). "
        f"{versions}; numpy {np.__version__}.",
        f"- Dense vectors: {CLUSTERS} random unit centres, each vector a centre plus Gaussian noise of norm ~{NOISE}, "
        "normalised (embeddings cluster by topic, which approximate indexes rely on; uniform random vectors are their "
        f"worst case). Queries come from the same mixture. numpy and FAISS exact at D={'/'.join(map(str, settings.backend_dims))}; "
        f"approximate types and Qdrant at D={settings.backend_dims[-1]} (MiniLM's width).",
        "- Sparse vectors: the SPLADE-like corpora of the table above (V=30,522, 120 Zipf-drawn terms per document, 20 "
        "per query, independent terms, so posting lists do not cluster by topic the way real SPLADE vectors do; "
        "Seismic's block summaries gain most from such clustering).",
        f"- Latency: medians of {settings.backend_queries} single-query calls (`single`) and of 3 calls on a batch of "
        f"{settings.batch} queries divided by {settings.batch} (`batch`), k=10, every backend of a group called in turn "
        "in one loop. Recall@10 is measured on the batch against exact search on the same vectors (numpy exact; "
        "distill's float32 inverted index for sparse). 'vs fastest' divides by the fastest row of the same N and vectors.",
        f"- Approximate settings were tuned on 64 separate queries to the cheapest setting reaching recall "
        f"{settings.recall_target} (else the best found): {tuned or 'none'}. IVF uses nlist = sqrt(N); IVF-PQ D/8 "
        f"sub-vectors of 8 bits, no polysemous training; HNSW M=32, efConstruction=40. FAISS exact search switches "
        "from its SIMD kernels to BLAS (sgemm) when queries x width reaches `distance_compute_blas_threshold`: "
        f"distill's FAISS backend sets it to {BLAS_QUERIES} queries' worth; the other row keeps faiss-cpu's default, "
        f"{next((v for k, v in notes.items() if k.startswith('blas_threshold')), '?')}.",
        "- Bytes: what each backend holds or writes: numpy N x D x 4 (dense) or its posting arrays (sparse); FAISS's "
        "`write_index` size; Seismic's saved index file; Qdrant's embedded store (SQLite, one pickled point per item, "
        "payload included).",
    ]
    markdown = ["## Index backends side by side", "", f"Command: `{command}`", "",
                "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
                *("| " + " | ".join(r) + " |" for r in cells), "", *context, "", *backend_verdicts(rows, settings), ""]
    return text, "\n".join(markdown)


def backend_verdicts(rows: list[BackendRow], settings: Settings) -> list[str]:
    return [*default_verdict(rows, settings), *sparse_verdict(rows, settings), *approximate_verdict(rows, settings)]


# ---------------------------------------------------------------------------- stored precision
DTYPE_SIZES = {False: (100_000, 384, 20), True: (2_000, 64, 5)}  # quick: (N, D, single queries timed)
DEPLOYMENT_OUT = REPO / "docs" / "deployment.md"


DtypeRow = tuple[str, str, int, float, float, float]  # backend, dtype, bytes, ms 1 query, ms 64 queries, recall@10


def run_dtypes(quick: bool) -> tuple[list[DtypeRow], dict[str, str]]:
    """FAISS flat and numpy exact search over the same N unit-norm vectors stored as float32 and as float16, each
    opened from its saved files as ``distill search`` opens them: ``(backend, dtype, bytes, ms for one query, ms for
    a batch of 64, recall@10 of the batch against numpy over the float32 vectors)``, calls interleaved."""
    from distill.serving.index import BackendSettings

    n, dim, singles = DTYPE_SIZES[quick]
    rng = np.random.default_rng(7)
    corpus = dense_vectors(rng, n, dim)
    queries = dense_vectors(rng, 64 + singles, dim)
    batch, single = queries[:64], queries[64:]
    notes = {"load_start": f"{os.getloadavg()[0]:.1f}"}
    candidates: list[tuple[str, str, object]] = []
    with tempfile.TemporaryDirectory() as work:
        for dtype in ("float32", "float16"):
            stored = corpus.astype(dtype)  # as `distill index` writes its vector file
            folder = Path(work) / f"numpy-{dtype}"
            folder.mkdir()
            DenseIndex(stored).save(folder)
            candidates.append(("numpy", dtype, DenseIndex.load(folder)))
            if have("faiss"):
                from distill.serving.index.faiss_backend import FaissIndex

                folder = Path(work) / f"faiss-{dtype}"
                folder.mkdir()
                with build_threads():
                    FaissIndex.build(stored.astype(np.float32), BackendSettings(backend="faiss",
                                                                                vector_dtype=dtype)).save(folder)
                candidates.append(("faiss", dtype, FaissIndex.load(folder, BackendSettings(backend="faiss"))))
            del stored
        candidates.sort(key=lambda c: (c[0] != "faiss", c[1] != "float32"))
        one = interleaved_ms([lambda i, c=c: c[2].search(single[i % singles:i % singles + 1], 10)
                              for c in candidates], singles)
        many = interleaved_ms([lambda i, c=c: c[2].search(batch, 10) for c in candidates], 3)
        exact = next(c[2] for c in candidates if c[:2] == ("numpy", "float32")).search(batch, 10)[1]
        rows = [(backend, dtype, int(index.nbytes), a, b, recall_at_k(index.search(batch, 10)[1], exact))
                for (backend, dtype, index), a, b in zip(candidates, one, many)]
        del candidates
    notes["load_end"] = f"{os.getloadavg()[0]:.1f}"
    notes["size"] = f"N = {n:,}, D = {dim}"
    return rows, notes


def render_dtypes(rows: list[DtypeRow], notes: dict[str, str], command: str) -> str:
    """The markdown table of :func:`run_dtypes` with its command, machine and load."""
    base = {backend: (one, many) for backend, dtype, _, one, many, _ in rows if dtype == "float32"}
    lines = [f"`{command}` ({notes['size']} unit-norm Gaussian vectors, exact top-10, one thread; "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
             f"{notes['load_start']} -> {notes['load_end']}):", "",
             "| backend | stored | index bytes | 1 query, ms | 64 queries, ms (per query) | time vs float32: 1 query "
             "| 64 queries | recall@10 vs numpy float32 |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for backend, dtype, nbytes, one, many, recall in rows:
        base_one, base_many = base.get(backend, (one, many))
        lines.append(f"| {backend} | {dtype} | {nbytes:,} | {one:.2f} | {many:.1f} ({many / 64:.2f}) | "
                     f"{one / base_one:.2f}x | {many / base_many:.2f}x | {recall:.3f} |")
    return "\n".join(lines) + "\n"


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
    parser.add_argument("--part", choices=("all", "latency", "backends", "dtypes"), default="all",
                        help="latency: teacher vs student and sparse vs dense; backends: every index backend side by "
                             "side (each rewrites its own part of the section); dtypes: exact search over float32 "
                             "and float16 vectors, FAISS and numpy (its own section of docs/deployment.md)")
    parser.add_argument("--out", help=f"markdown file to write (default {DEFAULT_OUT.relative_to(REPO)}; "
                                      f"--part dtypes: {DEPLOYMENT_OUT.relative_to(REPO)})")
    args = parser.parse_args(argv)
    if args.part == "dtypes":
        from distill.cli.report import update_markdown_section

        out = args.out or str(DEPLOYMENT_OUT)
        body = render_dtypes(*run_dtypes(args.quick), "python benchmarks/retrieval.py" +
                             (" --quick" if args.quick else "") + " --part dtypes")
        print(body)
        update_markdown_section(out, "vector-dtype", body)
        print(f"wrote {out}", file=sys.stderr)
        return
    args.out = args.out or str(DEFAULT_OUT)
    torch.set_num_threads(1)
    settings = QUICK if args.quick else FULL
    command = "python benchmarks/retrieval.py" + (" --quick" if args.quick else "")
    start = time.perf_counter()
    from distill.cli.report import update_markdown_section

    sections = {}
    if args.part in ("all", "latency"):
        rows, notes = run(settings)
        text, sections["retrieval-latency"] = render(rows, notes, settings, command + _part(args.part))
        print(text)
        print("\n".join(verdicts(rows, settings)))
    if args.part in ("all", "backends"):
        backend_rows, backend_notes = run_backends(settings)
        text, sections["retrieval-backends"] = render_backends(backend_rows, backend_notes, settings,
                                                               command + _part(args.part))
        print(text)
        print("\n".join(backend_verdicts(backend_rows, settings)))
    if args.part == "all":
        update_markdown_section(args.out, "retrieval", "\n\n".join(
            f"<!-- {name}:start -->\n{body.rstrip()}\n<!-- {name}:end -->" for name, body in sections.items()))
    else:
        for name, body in sections.items():
            update_markdown_section(args.out, name, body)
    print(f"wrote {args.out} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)


def _part(part: str) -> str:
    return "" if part == "all" else f" --part {part}"


if __name__ == "__main__":
    main()
