"""Index backends: which library holds an index's vectors, its settings, and the optional extras it needs.

============ ======= ======================================================= =========================
backend      kinds   what                                                     extra
============ ======= ======================================================= =========================
``numpy``    both    exact dense search (:class:`DenseIndex`) or distill's     none
                     blockwise inverted index (:class:`SparseIndex`; the
                     sparse default)
``faiss``    dense,  FAISS ``IndexFlatIP`` (exact; the dense default when      ``faiss`` (faiss-cpu)
             late    installed), ``IVF`` or ``HNSW`` (approximate),
                     optionally with product quantisation; for a
                     late-interaction student, over its token vectors
                     (:mod:`~distill.serving.index.late`)
``qdrant``   both    a Qdrant collection with named ``dense`` / ``sparse``    ``qdrant`` (qdrant-client)
                     vectors: embedded in the index folder, or on a server
``seismic``  sparse  Seismic's approximate inverted index (``query_cut``,      ``seismic`` (pyseismic-lsr)
                     ``heap_factor``); float16 document weights
============ ======= ======================================================= =========================

Every backend answers ``search(queries, k) -> (scores [Q, k] float32, rows [Q, k] int64)`` with rows
into the index's item table (``items.jsonl``), best first, padded with ``-inf`` / ``-1``.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from distill.errors import InputError

__all__ = ["BACKENDS", "EXTRAS", "FLOAT32_BUDGET", "VECTOR_DTYPES", "BackendSettings", "VectorIndex",
           "default_backend", "require", "stored_dtype"]

EXTRAS: dict[str, tuple[str, str]] = {
    # backend: (module to import, pinned requirement)
    "faiss": ("faiss", "faiss-cpu==1.15.1"),
    "qdrant": ("qdrant_client", "qdrant-client==1.20.0"),
    "seismic": ("seismic", "pyseismic-lsr==0.5.4"),
}
BACKENDS: dict[str, tuple[str, ...]] = {"numpy": ("dense", "sparse"), "faiss": ("dense", "late-interaction"),
                                        "qdrant": ("dense", "sparse"), "seismic": ("sparse",)}
FAISS_TYPES = ("flat", "ivf", "hnsw")
VECTOR_DTYPES = ("auto", "float32", "float16")
FLOAT32_BUDGET = 2 << 30  # bytes: dense vectors up to this size as float32 are stored as float32 (``auto``)


def stored_dtype(requested: str, count: int, dim: int, budget: int = FLOAT32_BUDGET) -> str:
    """The precision dense vectors are stored in: ``requested`` (``float32`` / ``float16``), or for ``auto``
    float32 when the ``[count, dim]`` float32 array takes at most ``budget`` bytes (2 GiB: 1.4M vectors at
    D = 384) and float16 above it.

    Why: float32 is what BLAS and FAISS's ``IndexFlatIP`` score fastest (no conversion per query; measured in
    docs/deployment.md, "Stored precision") and what the student computed; float16 halves the memory (8.8M x 384
    is 6.3 GiB, not 12.6) at a relative error of at most 2**-11 per coordinate, which matters only once the
    float32 vectors would crowd a serving machine's memory.
    """
    if requested not in VECTOR_DTYPES:
        raise InputError(f"--vector-dtype {requested!r} is not one of {VECTOR_DTYPES}")
    if requested != "auto":
        return requested
    return "float32" if int(count) * int(dim) * 4 <= budget else "float16"


class VectorIndex(Protocol):
    """What every backend's index offers (see the module docstring)."""

    nbytes: int

    def __len__(self) -> int: ...

    def search(self, queries: Any, k: int = 10) -> tuple[np.ndarray, np.ndarray]: ...


def require(backend: str) -> ModuleType:
    """The module behind ``backend``; one line naming the pip command when its extra is not installed."""
    module, requirement = EXTRAS[backend]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f"--backend {backend} needs {requirement.split('==')[0]}, which is not installed: "
                         f"pip install '{requirement}' (or `pip install -e '.[{backend}]'` in a distill "
                         "checkout)") from None


def default_backend(kind: str) -> str:
    """The backend ``distill index`` uses when none is named.

    Dense: FAISS (exact ``IndexFlatIP``) when faiss-cpu is installed, else numpy, whose results are the same and
    which ``benchmarks/retrieval.py`` measured more than 1.2x slower than FAISS (docs/benchmarks.md, "Index
    backends side by side"). Sparse: distill's own inverted index, which builds 55x faster than Seismic into a
    12x smaller index; the same benchmark measured it faster per query at N = 100,000 and Seismic 1.11x faster
    at N = 1,000,000 (recall@10 0.952 against 0.989), which ``--backend seismic`` offers.
    """
    if kind == "late-interaction" or (kind == "dense" and importlib.util.find_spec(EXTRAS["faiss"][0]) is not None):
        return "faiss"  # late interaction: FAISS only (`require` names the pip command when it is missing)
    return "numpy"


@dataclass(frozen=True)
class BackendSettings:
    """Everything a backend is built with; :meth:`manifest` is what ``index.json`` records of it.

    FAISS (dense): ``faiss_type`` ``flat`` (exact ``IndexFlatIP``), ``ivf`` (``nlist`` lists, default
    ``4 sqrt(N)``; ``nprobe`` searched) or ``hnsw`` (``hnsw_m`` links per node, ``ef_construction``,
    ``ef_search``); ``pq`` = sub-vectors of 8-bit product quantisation for ``ivf`` / ``hnsw``.
    Qdrant: ``url`` (``None``: embedded in the index folder), ``collection`` (the alias users query),
    ``exact`` (full scan instead of Qdrant's HNSW on a server), ``shards`` / ``replicas`` (the collection's
    ``shard_number`` / ``replication_factor`` on a cluster).
    Seismic (sparse): ``query_cut`` (the query's largest weights searched) and ``heap_factor`` (below 1: more
    blocks visited, slower, higher recall).
    Dense numpy and FAISS: ``vector_dtype`` the stored precision, ``auto`` / ``float32`` / ``float16``
    (:func:`stored_dtype`); Qdrant stores float32.
    """

    backend: str | None = None
    faiss_type: str = "flat"
    nlist: int | None = None
    nprobe: int = 16
    pq: int | None = None
    hnsw_m: int = 32
    ef_construction: int = 40
    ef_search: int = 128
    url: str | None = None
    collection: str = "distill"
    exact: bool = False
    shards: int | None = None
    replicas: int | None = None
    query_cut: int = 10
    heap_factor: float = 0.9
    vector_dtype: str = "auto"

    def resolve(self, kind: str) -> "BackendSettings":
        """These settings with the backend chosen and checked against the student's ``kind``."""
        backend = self.backend or default_backend(kind)
        if backend not in BACKENDS:
            raise InputError(f"--backend {backend!r} is not one of {sorted(BACKENDS)}")
        if kind not in BACKENDS[backend]:
            kinds = [name for name, allowed in BACKENDS.items() if kind in allowed]
            raise InputError(f"--backend {backend} indexes {' and '.join(BACKENDS[backend])} vectors; this student's "
                             f"are {kind}: use --backend {' or '.join(kinds)}")
        if self.faiss_type not in FAISS_TYPES:
            raise InputError(f"--faiss-type {self.faiss_type!r} is not one of {FAISS_TYPES}")
        if backend != "faiss" and (self.faiss_type != "flat" or self.pq is not None or self.nlist is not None):
            raise InputError(f"--faiss-type, --nlist and --pq apply to --backend faiss, not {backend}")
        if backend != "qdrant" and self.url is not None:
            raise InputError(f"--url applies to --backend qdrant, not {backend}")
        if self.url is None and (self.shards is not None or self.replicas is not None):
            raise InputError("--shards and --replicas apply to a Qdrant server or cluster: add --url")
        if self.pq is not None and self.faiss_type == "flat":
            raise InputError("--pq compresses an approximate index: add --faiss-type ivf or hnsw")
        if self.vector_dtype not in VECTOR_DTYPES:
            raise InputError(f"--vector-dtype {self.vector_dtype!r} is not one of {VECTOR_DTYPES}")
        if self.vector_dtype != "auto" and kind == "sparse":
            raise InputError(f"--vector-dtype applies to dense and late-interaction students; this student's vectors "
                             f"are {kind} (use "
                             "--weights for the numpy inverted index's precision)")
        if self.vector_dtype == "float16" and backend == "qdrant":
            raise InputError("--vector-dtype float16 applies to --backend faiss and numpy; Qdrant stores float32")
        if self.query_cut < 1 or not 0 < self.heap_factor < float("inf"):
            raise InputError(f"--query-cut must be >= 1 and --heap-factor > 0, got {self.query_cut} and "
                             f"{self.heap_factor}")
        return BackendSettings(**{**asdict(self), "backend": backend})

    def manifest(self) -> dict[str, Any]:
        """The settings ``index.json`` keeps for this backend (search reads them back)."""
        if self.backend == "faiss":
            keys = {"flat": (), "ivf": ("nlist", "nprobe", "pq"), "hnsw": ("hnsw_m", "ef_construction", "ef_search",
                                                                          "pq")}[self.faiss_type]
            return {"faiss_type": self.faiss_type, **{key: getattr(self, key) for key in keys}}
        if self.backend == "qdrant":
            return {"url": self.url, "collection": self.collection, "exact": self.exact, "shards": self.shards,
                    "replicas": self.replicas}
        if self.backend == "seismic":
            return {"query_cut": self.query_cut, "heap_factor": self.heap_factor}
        return {}
