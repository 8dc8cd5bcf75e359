"""Dense search on FAISS: exact flat search, approximate ``IVF`` / ``HNSW``, IVF with product quantisation.

Flat, IVF and HNSW indexes store the vectors in the precision ``settings.vector_dtype`` resolves to
(:func:`~distill.serving.index.backends.stored_dtype`): float32 (``IndexFlatIP``, ``IVF<nlist>,Flat``,
``HNSW<M>``; a batch of queries is one BLAS product) or float16 (FAISS's ``SQfp16`` scalar quantiser, decoded to
float32 to score: 8.8M x 384 vectors take 6.3 GiB, not 12.6, and exact search is several times slower);
``--pq`` stores PQ codes. A build reads the vectors in blocks (from an array or from the ``.npy`` file encoding
wrote): IVF and PQ train on a random sample of at most :func:`training_rows` vectors, and the flat index's codes
are allocated once at their final size and filled block by block.

The index is written with FAISS's own ``faiss.write_index`` (``faiss.index``) and read back with
``faiss.read_index``; ``faiss.json`` records its type, the stored precision (``vector_dtype``) and the
search-time settings (``nprobe``, ``efSearch``). Scores are inner products, as for
:class:`~distill.serving.index.DenseIndex`, and the exact type returns the same top-k as the numpy backend over
the same stored vectors (ties are ordered by row, as there).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from distill.errors import InputError
from distill.io import atomic_path, atomic_write_json, read_json
from distill.serving.index.backends import BackendSettings, require, stored_dtype
from distill.serving.index.checks import check_finite
from distill.serving.index.dense import merge_top_k
from distill.serving.index.vectors import READ_ROWS, read_blocks, sample_rows

INDEX_NAME = "faiss.index"
META_NAME = "faiss.json"
PQ_TRAINING_POINTS = 256  # 8-bit codes: 256 centroids per sub-quantiser
TRAIN_PER_CENTROID = 64  # training vectors per k-means centroid (FAISS uses at most 256, and warns below 39)
TRAIN_MAX = 1 << 19  # at most 524,288 training vectors: 768 MiB of float32 at D = 384
# Exact search of this many queries or more goes through BLAS (sgemm), fewer through FAISS's SIMD kernels. faiss-cpu
# 1.15 compares its `distance_compute_blas_threshold` with queries x width: its default (128,000) sends a batch of 64
# 384-d queries down the SIMD path, several times slower, and a threshold of 20 would send single queries to BLAS.
BLAS_QUERIES = 20

__all__ = ["BLAS_QUERIES", "FaissIndex", "blas_threshold", "factory_string", "training_rows"]

Vectors = np.ndarray | Path  # an [N, D] array (or memory map), or the .npy file of one


def training_rows(count: int, nlist: int, pq: int | None) -> int:
    """How many of ``count`` vectors train an IVF index of ``nlist`` lists (and its PQ codebooks of 256 centroids):
    ``TRAIN_PER_CENTROID`` per centroid, at most ``TRAIN_MAX``, at most ``count``."""
    centroids = max(nlist, PQ_TRAINING_POINTS if pq else 1)
    return min(count, max(TRAIN_PER_CENTROID * centroids, 1), max(TRAIN_MAX, nlist))


def _shape(vectors: Vectors) -> tuple[int, int]:
    if isinstance(vectors, Path):
        return tuple(np.load(vectors, mmap_mode="r", allow_pickle=False).shape)  # type: ignore[return-value]
    if vectors.ndim != 2:
        raise ValueError(f"FAISS vectors must be [N, D], got shape {vectors.shape}")
    return int(vectors.shape[0]), int(vectors.shape[1])


def _blocks(vectors: Vectors, rows: int = READ_ROWS) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, [n, D] float32 contiguous block)`` of ``vectors``, in order."""
    if isinstance(vectors, Path):
        yield from read_blocks(vectors, rows)
        return
    for start in range(0, len(vectors), rows):
        yield start, np.ascontiguousarray(vectors[start:start + rows], dtype=np.float32)


def _sample(vectors: Vectors, count: int) -> np.ndarray:
    if isinstance(vectors, Path):
        return sample_rows(vectors, count)
    if count >= len(vectors):
        return np.ascontiguousarray(vectors, dtype=np.float32)
    picked = np.sort(np.random.default_rng(0).choice(len(vectors), size=count, replace=False))
    return np.ascontiguousarray(vectors[picked], dtype=np.float32)


def factory_string(settings: BackendSettings, count: int, dim: int) -> str:
    """The ``faiss.index_factory`` description of ``settings`` for ``count`` vectors of width ``dim`` (float32
    storage ``Flat``, float16 ``SQfp16``, as ``settings.vector_dtype`` resolves for them)."""
    kind = settings.faiss_type
    storage = "Flat" if stored_dtype(settings.vector_dtype, count, dim) == "float32" else "SQfp16"
    if kind == "flat":
        return storage
    if kind == "hnsw":
        if settings.pq is not None:
            raise InputError("--pq applies to --faiss-type ivf (FAISS's HNSW with PQ codes does not rank by inner "
                             "product)")
        return f"HNSW{settings.hnsw_m}" + (",SQfp16" if storage == "SQfp16" else "")
    nlist = settings.nlist or max(1, min(count, int(4 * math.sqrt(count))))
    if nlist > count:
        raise InputError(f"--nlist {nlist} needs at least {nlist} vectors to train its lists; the split has {count}")
    if settings.pq is None:
        return f"IVF{nlist},{storage}"
    if dim % settings.pq:
        raise InputError(f"--pq {settings.pq} must divide the embedding width {dim}")
    if count < PQ_TRAINING_POINTS:
        raise InputError(f"--pq needs at least {PQ_TRAINING_POINTS} vectors to train its codebooks; the split has "
                         f"{count}")
    return f"IVF{nlist},PQ{settings.pq}np"  # np: no polysemous training (minutes, and unused by this search)


@contextmanager
def blas_threshold(value: int) -> Iterator[None]:
    """FAISS's ``distance_compute_blas_threshold`` (a process-wide setting) for one block, restored after it."""
    faiss = require("faiss")
    previous = int(faiss.cvar.distance_compute_blas_threshold)
    faiss.cvar.distance_compute_blas_threshold = int(value)
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = previous


class FaissIndex:
    """A FAISS index over ``[N, D]`` vectors (stored as float32, float16 or PQ codes), ranked by inner product."""

    def __init__(self, index: Any, settings: BackendSettings, description: str) -> None:
        self.index, self.settings, self.description = index, settings, description
        self._faiss = require("faiss")
        self._nbytes: int | None = None
        self._apply_search_settings()

    @classmethod
    def build(cls, vectors: Vectors, settings: BackendSettings) -> "FaissIndex":
        """Train (IVF, PQ: on a sample of :func:`training_rows`) and fill an index of ``settings.faiss_type`` with
        ``vectors`` (an ``[N, D]`` array or its ``.npy`` file), ``READ_ROWS`` at a time, stored in the precision
        ``settings.vector_dtype`` resolves to for ``[N, D]``."""
        faiss = require("faiss")
        count, dim = _shape(vectors)
        description = factory_string(settings, count, dim)
        index = faiss.index_factory(dim, description, faiss.METRIC_INNER_PRODUCT)
        if settings.faiss_type == "hnsw":
            index.hnsw.efConstruction = settings.ef_construction
        if isinstance(index, faiss.IndexIVFScalarQuantizer):
            index.by_residual = False  # store the float16 vectors themselves, not their float16 offset from a centroid
        try:
            if not index.is_trained:
                nlist = int(faiss.extract_index_ivf(index).nlist)
                index.train(_sample(vectors, training_rows(count, nlist, settings.pq)))
            if isinstance(index, faiss.IndexFlatCodes):
                _fill_codes(faiss, index, count, _blocks(vectors))
            else:
                for _, block in _blocks(vectors):
                    index.add(block)
        except RuntimeError as error:
            raise InputError(f"FAISS could not build {description!r}: {str(error).splitlines()[0][:200]}") from None
        return cls(index, settings, description)

    def _apply_search_settings(self) -> None:
        faiss = require("faiss")
        space = faiss.ParameterSpace()
        if self.settings.faiss_type == "ivf":
            space.set_index_parameter(self.index, "nprobe", int(self.settings.nprobe))
        elif self.settings.faiss_type == "hnsw":
            space.set_index_parameter(self.index, "efSearch", int(self.settings.ef_search))

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def vector_dtype(self) -> str:
        """How the index stores its vectors: ``float32``, ``float16`` or ``pq`` (product-quantisation codes)."""
        stored = _stored_vectors(self._faiss, self.index)
        if stored is not None:
            return str(stored.dtype)
        if "PQ" in self.description:
            return "pq"
        return "float16" if "SQfp16" in self.description else "float32"

    @property
    def nbytes(self) -> int:
        """Bytes of the index as FAISS writes it (vectors or codes, lists, graph)."""
        if self._nbytes is None:
            faiss = require("faiss")
            if isinstance(self.index, faiss.IndexFlatCodes):
                self._nbytes = len(self) * int(self.index.code_size)
            else:
                self._nbytes = int(faiss.serialize_index(self.index).nbytes)
        return self._nbytes

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """``queries [Q, D]`` -> ``(scores [Q, k] float32, rows [Q, k] int64)``, score descending then row."""
        queries = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
        if queries.ndim == 1:
            queries = queries[None]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be [Q, {self.dim}], got shape {queries.shape}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        settings = self._faiss.cvar
        previous, settings.distance_compute_blas_threshold = settings.distance_compute_blas_threshold, \
            BLAS_QUERIES * self.dim
        try:
            scores, rows = self.index.search(queries, k)
        finally:
            settings.distance_compute_blas_threshold = previous
        if (rows < 0).any():
            scores[rows < 0] = -np.inf
        if (scores[:, 1:] == scores[:, :-1]).any():  # ties: order them by row, as the numpy backend does
            return merge_top_k(scores, rows, k)
        return scores, rows

    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write ``faiss.index`` (``faiss.write_index``) and ``faiss.json``, each atomically."""
        faiss = require("faiss")
        target = Path(folder) / INDEX_NAME
        with atomic_path(target) as tmp:
            faiss.write_index(self.index, str(tmp))
        self._nbytes = target.stat().st_size
        atomic_write_json(Path(folder) / META_NAME, {"description": self.description, "count": len(self),
                                                     "dim": self.dim, "vector_dtype": self.vector_dtype,
                                                     **self.settings.manifest()})

    @classmethod
    def load(cls, folder: str | os.PathLike[str], settings: BackendSettings) -> "FaissIndex":
        faiss = require("faiss")
        meta = read_json(Path(folder) / META_NAME)
        try:
            index = faiss.read_index(str(Path(folder) / INDEX_NAME))
        except RuntimeError as error:
            raise InputError(f"'{Path(folder) / INDEX_NAME}' is not a FAISS index FAISS can read "
                             f"({str(error).splitlines()[0][:120]}): rebuild it") from None
        stored = _stored_vectors(faiss, index)
        if stored is not None:  # flat and HNSW storage: the vectors themselves (IVF and PQ keep codes only)
            check_finite(Path(folder) / INDEX_NAME, stored)
        loaded = cls(index, settings, str(meta.get("description", "")))
        loaded._nbytes = (Path(folder) / INDEX_NAME).stat().st_size
        return loaded


def _fill_codes(faiss: Any, index: Any, count: int, blocks: Iterator[tuple[int, np.ndarray]]) -> None:
    """Fill a flat index with ``count`` vectors: its codes allocated once at their final size (``add`` would grow
    them block by block, copying what it holds at each growth), each block encoded into place."""
    size = int(index.code_size)
    index.codes.resize(count * size)
    codes = faiss.rev_swig_ptr(index.codes.data(), count * size) if count else np.zeros(0, np.uint8)
    for start, block in blocks:
        codes[start * size:(start + len(block)) * size] = index.sa_encode(block).reshape(-1)
    index.ntotal = count


def _stored_vectors(faiss: Any, index: Any) -> np.ndarray | None:
    """A view (no copy) of the vectors a flat or HNSW index stores (float32, or float16 for ``SQfp16``), or
    ``None`` for coded indexes."""
    found = faiss.downcast_index(index)
    storage = found if isinstance(found, faiss.IndexFlatCodes) else getattr(found, "storage", None)
    storage = faiss.downcast_index(storage) if storage is not None else None
    if storage is None or storage.ntotal == 0:
        return None
    if isinstance(storage, faiss.IndexFlat):
        return faiss.rev_swig_ptr(storage.get_xb(), storage.ntotal * storage.d).reshape(storage.ntotal, storage.d)
    if isinstance(storage, faiss.IndexScalarQuantizer) and storage.sq.qtype == faiss.ScalarQuantizer.QT_fp16:
        codes = faiss.rev_swig_ptr(storage.codes.data(), storage.ntotal * storage.code_size)
        return codes.view(np.float16).reshape(storage.ntotal, storage.d)
    return None
