"""Sparse search on Seismic (``pyseismic-lsr``): an approximate inverted index with clustered, summarised postings.

The index is built from the items' ``[N, V]`` CSR vectors (document id = row number), written with Seismic's
own ``save`` (``seismic.index.seismic``) and read back with ``SeismicIndex.load``; ``seismic.json`` records the
row count, the vocabulary size and which Seismic class holds the index (``SeismicIndex``, 16-bit term ids, up
to 65,536 terms; ``SeismicIndexLV`` beyond). Searches use ``query_cut`` (the query's largest weights kept) and
``heap_factor`` (below 1 visits more blocks: slower, higher recall), both from the manifest.

Seismic keeps document weights as float16: its scores are exact dot products of the float32 query with the
weights rounded to float16, within about 1e-3 (relative) of float32 scores. Rows without any term are not
indexed and never returned. Building prints progress lines to file descriptor 1; they are silenced.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from distill.errors import InputError
from distill.io import atomic_path, atomic_write_json, read_json, silenced
from distill.serving.index.backends import BackendSettings, require
from distill.serving.index.dense import merge_top_k
from distill.serving.index.sparse_vectors import as_csr

INDEX_NAME = "seismic.index.seismic"
META_NAME = "seismic.json"
SMALL_VOCABULARY = 1 << 16  # SeismicIndex stores term ids as uint16
BUILD_THREADS = 0  # Rayon's default: every core (RAYON_NUM_THREADS caps it)

__all__ = ["INDEX_NAME", "META_NAME", "SeismicIndex"]


def _classes(num_terms: int) -> tuple[str, str]:
    """Seismic's (index, dataset) class names for a vocabulary of ``num_terms``."""
    if num_terms <= SMALL_VOCABULARY:
        return "SeismicIndex", "SeismicDataset"
    return "SeismicIndexLV", "SeismicDatasetLV"


class SeismicIndex:
    """A Seismic index over ``[N, V]`` sparse vectors, ranked (approximately) by inner product."""

    def __init__(self, index: Any, settings: BackendSettings, count: int, num_terms: int, variant: str) -> None:
        self.index, self.settings, self.count, self.num_terms, self.variant = index, settings, count, num_terms, \
            variant
        self._string = require("seismic").get_seismic_string()
        self._nbytes = 0

    @classmethod
    def build(cls, vectors: Any, settings: BackendSettings) -> "SeismicIndex":
        """Index ``vectors`` (``[N, V]`` CSR, dense arrays or tensors); row ``i`` is document ``"i"``."""
        seismic = require("seismic")
        matrix = as_csr(vectors)
        matrix.sort_indices()  # Seismic wants strictly increasing term ids within a row
        variant, dataset_class = _classes(matrix.shape[1])
        dataset = getattr(seismic, dataset_class)(dim=int(matrix.shape[1]))
        dataset.add_documents_by_id([str(row) for row in range(matrix.shape[0])], matrix.indices.astype(np.int64),
                                    matrix.data.astype(np.float32), matrix.indptr.astype(np.int64))
        with silenced(1):
            index = getattr(seismic, variant).build_from_dataset(dataset, num_threads=BUILD_THREADS)
        return cls(index, settings, int(matrix.shape[0]), int(matrix.shape[1]), variant)

    def __len__(self) -> int:
        return self.count

    @property
    def nbytes(self) -> int:
        """Bytes of ``seismic.index.seismic`` (known once the index is saved or loaded; 0 before)."""
        return self._nbytes

    def search(self, queries: Any, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """``[Q, V]`` queries (dense, tensor or scipy sparse) -> ``(scores [Q, k] float32, rows [Q, k] int64)``.

        One query goes through Seismic's ``search``, several through ``batch_search`` on one thread.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        matrix = as_csr(queries, self.num_terms)
        if not np.isfinite(matrix.data).all():
            raise ValueError("query weights must be finite")
        bounds = list(zip(matrix.indptr[:-1], matrix.indptr[1:]))
        terms = [matrix.indices[lo:hi].astype(self._string) for lo, hi in bounds]
        values = [matrix.data[lo:hi].astype(np.float32) for lo, hi in bounds]
        cut, heap = int(self.settings.query_cut), float(self.settings.heap_factor)
        if len(terms) == 1:
            found = [self.index.search("0", terms[0], values[0], k, cut, heap)]
        else:
            ids = np.arange(len(terms)).astype(self._string)
            found = self.index.batch_search(ids, terms, values, k, cut, heap, num_threads=1)
        scores = np.full((len(terms), k), -np.inf, np.float32)
        rows = np.full((len(terms), k), -1, np.int64)
        for hits in found:  # one list per query, in any order: each hit names its query
            for j, (query, score, doc) in enumerate(hits[:k]):
                scores[int(query), j], rows[int(query), j] = score, int(doc)
        tied = (scores[:, 1:] == scores[:, :-1]) & (rows[:, 1:] >= 0)
        if tied.any():  # order ties by row, as the numpy backend does
            return merge_top_k(scores, rows, k)
        return scores, rows

    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write ``seismic.index.seismic`` (Seismic's ``save``) and ``seismic.json``, each atomically."""
        target = Path(folder) / INDEX_NAME
        with atomic_path(target) as tmp:
            written = Path(f"{tmp}.index.seismic")  # Seismic appends its extension to the path it is given
            try:
                with silenced(1):
                    self.index.save(str(tmp))
                os.replace(written, tmp)
            finally:
                written.unlink(missing_ok=True)
        self._nbytes = target.stat().st_size
        atomic_write_json(Path(folder) / META_NAME, {"count": self.count, "num_terms": self.num_terms,
                                                     "variant": self.variant, **self.settings.manifest()})

    @classmethod
    def load(cls, folder: str | os.PathLike[str], settings: BackendSettings) -> "SeismicIndex":
        """The index ``save`` wrote into ``folder``, searched with ``settings``' ``query_cut`` / ``heap_factor``."""
        seismic = require("seismic")
        meta = read_json(Path(folder) / META_NAME)
        path = Path(folder) / INDEX_NAME
        variant = str(meta.get("variant", "SeismicIndex"))
        if variant not in ("SeismicIndex", "SeismicIndexLV"):
            raise InputError(f"'{Path(folder) / META_NAME}' names Seismic class {variant!r}: rebuild it")
        try:
            index = getattr(seismic, variant).load(str(path))
        except (OSError, ValueError) as error:
            raise InputError(f"'{path}' is not a Seismic index Seismic can read ({str(error).splitlines()[0][:120]}): "
                             "rebuild it") from None
        loaded = cls(index, settings, int(meta["count"]), int(meta["num_terms"]), variant)
        loaded._nbytes = path.stat().st_size
        return loaded
