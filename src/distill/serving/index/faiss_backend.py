"""Dense search on FAISS: exact ``IndexFlatIP``, approximate ``IVF`` / ``HNSW``, IVF with product quantisation.

The index is written with FAISS's own ``faiss.write_index`` (``faiss.index``) and read back with
``faiss.read_index``; ``faiss.json`` records its type and the search-time settings (``nprobe``,
``efSearch``). Scores are inner products, as for :class:`~distill.serving.index.DenseIndex`, and the exact
type returns the same top-k (ties are ordered by row, as there).
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
from distill.serving.index.backends import BackendSettings, require
from distill.serving.index.checks import check_finite
from distill.serving.index.dense import merge_top_k

INDEX_NAME = "faiss.index"
META_NAME = "faiss.json"
PQ_TRAINING_POINTS = 256  # 8-bit codes: 256 centroids per sub-quantiser
# Exact search of this many queries or more goes through BLAS (sgemm), fewer through FAISS's SIMD kernels. faiss-cpu
# 1.15 compares its `distance_compute_blas_threshold` with queries x width: its default (128,000) sends a batch of 64
# 384-d queries down the SIMD path, several times slower, and a threshold of 20 would send single queries to BLAS.
BLAS_QUERIES = 20

__all__ = ["BLAS_QUERIES", "FaissIndex", "blas_threshold", "factory_string"]


def factory_string(settings: BackendSettings, count: int, dim: int) -> str:
    """The ``faiss.index_factory`` description of ``settings`` for ``count`` vectors of width ``dim``."""
    kind = settings.faiss_type
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        if settings.pq is not None:
            raise InputError("--pq applies to --faiss-type ivf (FAISS's HNSW with PQ codes does not rank by inner "
                             "product)")
        return f"HNSW{settings.hnsw_m},Flat"
    nlist = settings.nlist or max(1, min(count, int(4 * math.sqrt(count))))
    if nlist > count:
        raise InputError(f"--nlist {nlist} needs at least {nlist} vectors to train its lists; the split has {count}")
    if settings.pq is None:
        return f"IVF{nlist},Flat"
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
    """A FAISS index over ``[N, D]`` float32 vectors, ranked by inner product."""

    def __init__(self, index: Any, settings: BackendSettings, description: str) -> None:
        self.index, self.settings, self.description = index, settings, description
        self._faiss = require("faiss")
        self._nbytes: int | None = None
        self._apply_search_settings()

    @classmethod
    def build(cls, vectors: np.ndarray, settings: BackendSettings) -> "FaissIndex":
        """Train (IVF, PQ) and fill an index of ``settings.faiss_type`` with ``vectors``."""
        faiss = require("faiss")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise ValueError(f"FAISS vectors must be [N, D], got shape {vectors.shape}")
        description = factory_string(settings, len(vectors), vectors.shape[1])
        index = faiss.index_factory(vectors.shape[1], description, faiss.METRIC_INNER_PRODUCT)
        if settings.faiss_type == "hnsw":
            index.hnsw.efConstruction = settings.ef_construction
        try:
            if not index.is_trained:
                index.train(vectors)
            index.add(vectors)
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
    def nbytes(self) -> int:
        """Bytes of the index as FAISS writes it (vectors or codes, lists, graph)."""
        if self._nbytes is None:
            faiss = require("faiss")
            if isinstance(self.index, faiss.IndexFlat):
                self._nbytes = len(self) * self.dim * 4
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
                                                     "dim": self.dim, **self.settings.manifest()})

    @classmethod
    def load(cls, folder: str | os.PathLike[str], settings: BackendSettings) -> "FaissIndex":
        faiss = require("faiss")
        meta = read_json(Path(folder) / META_NAME)
        try:
            index = faiss.read_index(str(Path(folder) / INDEX_NAME))
        except RuntimeError as error:
            raise InputError(f"'{Path(folder) / INDEX_NAME}' is not a FAISS index FAISS can read "
                             f"({str(error).splitlines()[0][:120]}): rebuild it") from None
        stored = _flat_vectors(faiss, index)
        if stored is not None:  # flat and HNSW storage: the vectors themselves (IVF and PQ keep codes only)
            check_finite(Path(folder) / INDEX_NAME, stored)
        loaded = cls(index, settings, str(meta.get("description", "")))
        loaded._nbytes = (Path(folder) / INDEX_NAME).stat().st_size
        return loaded


def _flat_vectors(faiss: Any, index: Any) -> np.ndarray | None:
    """A view (no copy) of the float32 vectors a flat or HNSW index stores, or ``None`` for coded indexes."""
    found = faiss.downcast_index(index)
    storage = found if isinstance(found, faiss.IndexFlat) else getattr(found, "storage", None)
    storage = faiss.downcast_index(storage) if storage is not None else None
    if not isinstance(storage, faiss.IndexFlat) or storage.ntotal == 0:
        return None
    return faiss.rev_swig_ptr(storage.get_xb(), storage.ntotal * storage.d).reshape(storage.ntotal, storage.d)
