"""Inverted index for sparse (vocabulary-sized) vectors: one posting list per vocabulary id.

A query ``q`` with non-zero terms ``T`` scores only the documents in those terms' posting lists,
``score(d) = sum_{j in T} q_j * w_dj``, and returns the top-k of the documents it touched.

Two posting formats (``SparseIndex.from_vectors(docs, weights=...)``):

``"float32"`` (exact)
    The document matrix ``W [N, V]`` column-major (CSC): ``indptr [V+1]`` int64, ``indices [nnz]``
    int32 document ids, ``data [nnz]`` float32 weights. 8 bytes per posting.

``"uint8"`` (compressed)
    Weights become uint8 *impacts* with one global scale, ``scale = max(W) / 255``,
    ``impact = round(w / scale)``, dequantised ``w_hat = impact * scale``, so
    ``|w - w_hat| <= scale / 2`` for every stored weight (weights below ``scale / 2`` round to 0 and
    are not stored), and a score differs from the float32 one by at most ``scale / 2 * sum_j |q_j|``.
    Documents are partitioned into blocks of ``BLOCK_SIZE = 65536`` consecutive rows; postings are
    ordered by (term, block, row) and a document id is stored as its uint16 offset inside its block.
    ``offsets [V * B + 1]`` (uint32, or int64 past 2**32 postings) gives where the postings of
    (term ``j``, block ``b``) start: ``offsets[j * B + b]``. 3 bytes per posting plus
    ``4 (V * B + 1)`` bytes of offsets. Search is exact for the stored (dequantised) weights.

Search works block by block: the query's postings inside one block of 65,536 documents are
gathered and added into a float32 accumulator of that block's size (256 KiB, which stays in the
CPU cache, unlike an accumulator over all N documents), then only the block's documents that beat
the current k-th best score are merged into the running top-k. Nothing per query is O(N) apart from
the accumulator resets and one comparison pass per block; no sparse-matrix product is built.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from distill.io import atomic_write_json, atomic_writer, read_json
from distill.serving.index.sparse_vectors import as_csr, prune_top_k_rows, quantize_impacts

ARRAYS_NAME = "sparse.npz"
META_NAME = "sparse.json"
FORMAT_VERSION = 2  # version 1: float32 postings only, no checksum (still readable)
BLOCK_SIZE = 1 << 16  # documents per block of the uint8 format: an offset inside a block fits uint16
WEIGHT_FORMATS = ("float32", "uint8")
_ARRAY_NAMES = {"float32": ("indptr", "indices", "data"), "uint8": ("offsets", "doc_ids", "impacts", "scale")}

__all__ = ["BLOCK_SIZE", "SparseIndex", "as_csr", "prune_top_k_rows", "quantize_impacts"]


def _describe(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, object]]:
    """``{name: {"dtype", "shape"}}`` of the arrays, as ``sparse.json`` records them."""
    return {name: {"dtype": str(array.dtype), "shape": list(array.shape)} for name, array in arrays.items()}


def _checksum(arrays: dict[str, np.ndarray]) -> int:
    crc = 0
    for name in sorted(arrays):
        crc = zlib.crc32(np.ascontiguousarray(arrays[name]).reshape(-1).view(np.uint8), crc)
    return crc


def _top_k(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of ``(scores, rows)`` by score descending then row ascending, in that order."""
    if scores.size > k:
        kth = np.partition(scores, scores.size - k)[scores.size - k]  # the k-th largest score
        above = np.flatnonzero(scores > kth)
        ties = np.flatnonzero(scores == kth)
        if ties.size > k - above.size:  # keep the lowest rows among the tied
            ties = ties[np.argsort(rows[ties], kind="stable")[:k - above.size]]
        keep = np.concatenate([above, ties])
        scores, rows = scores[keep], rows[keep]
    order = np.lexsort((rows, -scores))
    return scores[order], rows[order]


class SparseIndex:
    """Posting lists of ``W [N, V]`` in the exact float32 or the compressed uint8 format (module docstring).

    ``SparseIndex(indptr, indices, data, num_docs)`` wraps float32 CSC arrays; :meth:`from_vectors`
    builds either format from document vectors; :meth:`from_impacts` wraps uint8 arrays.

    ``search`` returns, per query, the ``k`` best documents among those sharing at least one term with
    it (non-zero score), as ``(scores [Q, k] float32, rows [Q, k] int64)`` sorted by score descending
    then row ascending; missing places are padded with ``-inf`` / ``-1``.
    """

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, num_docs: int) -> None:
        self.weights = "float32"
        self.num_docs = int(num_docs)
        self.indptr = np.ascontiguousarray(indptr, dtype=np.int64)
        self.indices = np.ascontiguousarray(indices, dtype=np.int32)
        self.data = np.ascontiguousarray(data, dtype=np.float32)
        self._num_terms = len(self.indptr) - 1
        self.scale: float | None = None
        if self.indptr.ndim != 1 or len(self.indptr) < 1 or self.indptr[0] != 0 or (np.diff(self.indptr) < 0).any():
            raise ValueError("indptr must be a non-decreasing [V+1] array starting at 0")
        if self.indptr[-1] != len(self.indices) or len(self.indices) != len(self.data):
            raise ValueError("inconsistent posting lists: indptr[-1] must equal len(indices) == len(data)")
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= self.num_docs):
            raise ValueError(f"document ids must lie in [0, {self.num_docs})")
        if not np.isfinite(self.data).all():
            raise ValueError("posting weights must be finite")

    @classmethod
    def from_impacts(cls, offsets: np.ndarray, doc_ids: np.ndarray, impacts: np.ndarray, scale: float,
                     num_docs: int, num_terms: int) -> "SparseIndex":
        """Wrap uint8-format arrays (module docstring); checks that they fit together."""
        index = cls.__new__(cls)
        index.weights = "uint8"
        index.num_docs, index._num_terms = int(num_docs), int(num_terms)
        blocks = index.num_blocks
        offsets = np.asarray(offsets)
        if offsets.dtype not in (np.uint32, np.int64) or offsets.shape != (num_terms * blocks + 1,):
            raise ValueError(f"offsets must be uint32 or int64 [V * B + 1] = [{num_terms * blocks + 1}] for "
                             f"{num_docs} documents in blocks of {BLOCK_SIZE}, got {offsets.dtype} {offsets.shape}")
        index.offsets = np.ascontiguousarray(offsets)
        index.doc_ids = np.ascontiguousarray(doc_ids)
        index.impacts = np.ascontiguousarray(impacts)
        if index.doc_ids.dtype != np.uint16 or index.impacts.dtype != np.uint8:
            raise ValueError(f"doc_ids must be uint16 and impacts uint8, got {index.doc_ids.dtype} and "
                             f"{index.impacts.dtype}")
        nnz = len(index.doc_ids)
        rising = (np.diff(offsets.astype(np.int64)) >= 0).all()
        if offsets[0] != 0 or offsets[-1] != nnz or len(index.impacts) != nnz or not rising:
            raise ValueError("inconsistent posting lists: offsets must rise from 0 to len(doc_ids) == len(impacts)")
        index.scale = float(scale)
        if not (np.isfinite(index.scale) and index.scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {scale}")
        last = index.num_docs - (blocks - 1) * BLOCK_SIZE  # rows in the last block
        if blocks and last < BLOCK_SIZE:
            starts = offsets[blocks - 1::blocks][:num_terms].astype(np.int64)
            ends = offsets[blocks::blocks].astype(np.int64)
            if (ends > starts).any():
                tail = np.concatenate([index.doc_ids[s:e] for s, e in zip(starts.tolist(), ends.tolist()) if e > s])
                if tail.max() >= last:
                    raise ValueError(f"document ids in the last block must be < {last} ({num_docs} documents)")
        return index

    @classmethod
    def from_vectors(cls, documents: object, weights: str = "float32", top_k: int | None = None) -> "SparseIndex":
        """Build from ``[N, V]`` document vectors (dense array, tensor or scipy sparse).

        ``weights``: ``"float32"`` (exact) or ``"uint8"`` (impacts with one global scale and block-local
        uint16 document ids; needs non-negative weights). ``top_k`` first keeps each document's ``k``
        largest weights (:func:`prune_top_k_rows`).
        """
        if weights not in WEIGHT_FORMATS:
            raise ValueError(f"weights must be one of {WEIGHT_FORMATS}, got {weights!r}")
        matrix = prune_top_k_rows(documents, top_k) if top_k is not None else as_csr(documents)
        num_docs, num_terms = matrix.shape
        postings = matrix.tocsc()
        del matrix
        postings.sort_indices()
        if weights == "float32":
            return cls(postings.indptr, postings.indices, postings.data, num_docs)
        data, ids = postings.data, postings.indices
        if data.size and data.min() < 0:
            raise ValueError(f"uint8 impacts need non-negative weights, found {float(data.min()):g}: use "
                             "weights='float32'")
        if data.size and not np.isfinite(data).all():
            raise ValueError("posting weights must be finite")
        scale = float(data.max()) / 255 if data.size else 1.0
        impacts = quantize_impacts(data, scale)
        keep = impacts > 0  # weights below scale / 2 dequantise to 0: not stored
        blocks = max(1, -(-num_docs // BLOCK_SIZE))
        # postings are sorted by (term, row), hence by (term, block, row): count each (term, block) run
        key_type = np.int32 if num_terms * blocks < 2**31 else np.int64
        key = np.repeat(np.arange(num_terms, dtype=key_type) * key_type(blocks), np.diff(postings.indptr))
        key += (ids >> 16).astype(key_type)
        counts = np.bincount(key[keep], minlength=num_terms * blocks)
        del key
        offsets = np.zeros(num_terms * blocks + 1, dtype=np.uint32 if keep.sum() < 2**32 else np.int64)
        np.cumsum(counts, out=offsets[1:])
        doc_ids = (ids[keep] & (BLOCK_SIZE - 1)).astype(np.uint16)
        return cls.from_impacts(offsets, doc_ids, impacts[keep], scale, num_docs, num_terms)

    # ------------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return self.num_docs

    @property
    def num_terms(self) -> int:
        return int(self._num_terms)

    @property
    def num_blocks(self) -> int:
        """Blocks of ``BLOCK_SIZE`` documents (at least 1)."""
        return max(1, -(-self.num_docs // BLOCK_SIZE))

    @property
    def nnz(self) -> int:
        return int(len(self.indices) if self.weights == "float32" else len(self.doc_ids))

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """Every array the index holds; exactly what :meth:`save` writes to ``sparse.npz``."""
        if self.weights == "float32":
            return {"indptr": self.indptr, "indices": self.indices, "data": self.data}
        return {"offsets": self.offsets, "doc_ids": self.doc_ids, "impacts": self.impacts,
                "scale": np.array(self.scale, dtype=np.float64)}

    @property
    def nbytes(self) -> int:
        """Bytes of all arrays held and saved: offsets, document ids, weights or impacts (and the uint8 scale)."""
        return int(sum(array.nbytes for array in self.arrays.values()))

    def to_csr(self) -> sp.csr_matrix:
        """The stored document vectors ``[N, V]`` as float32 CSR (dequantised ``impact * scale`` for uint8)."""
        if self.weights == "float32":
            matrix = sp.csc_matrix((self.data, self.indices, self.indptr), shape=(self.num_docs, self.num_terms))
            return matrix.tocsr()
        blocks = self.num_blocks
        runs = np.diff(self.offsets.astype(np.int64))  # postings per (term, block)
        terms = np.repeat(np.arange(self.num_terms * blocks) // blocks, runs)
        rows = np.repeat(np.arange(self.num_terms * blocks) % blocks * BLOCK_SIZE, runs) + self.doc_ids
        values = (self.impacts * np.float64(self.scale)).astype(np.float32)
        return sp.csr_matrix((values, (rows, terms)), shape=(self.num_docs, self.num_terms))

    # ------------------------------------------------------------------------ search
    def search_one(self, terms: np.ndarray, weights: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """One query given by its non-zero ``terms [T]`` and ``weights [T]`` -> ``(scores [k], rows [k])``.

        Repeated terms have their weights summed; zero weights are ignored.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        terms = np.asarray(terms).reshape(-1)
        weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        if terms.shape != weights.shape:
            raise ValueError(f"terms and weights must have the same length, got {terms.size} and {weights.size}")
        if terms.size and not np.issubdtype(terms.dtype, np.integer):
            raise ValueError(f"query term ids must be integers, got {terms.dtype}")
        if terms.size and (terms.min() < 0 or terms.max() >= self.num_terms):
            raise ValueError(f"query term ids must lie in [0, {self.num_terms})")
        if not np.isfinite(weights).all():
            raise ValueError("query weights must be finite")
        unique, inverse = np.unique(terms.astype(np.int64), return_inverse=True)
        summed = np.bincount(inverse.reshape(-1), weights, minlength=unique.size).astype(np.float32)
        nonzero = summed != 0
        return self._search_terms(unique[nonzero], summed[nonzero], k)

    def search(self, queries: object, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """``[Q, V]`` query vectors (dense, tensor or scipy sparse) -> ``(scores [Q, k], rows [Q, k])``.

        Only documents with a non-zero score (sharing a term with the query) are candidates.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        matrix = as_csr(queries, self.num_terms)
        if matrix.nnz and (matrix.indices.min() < 0 or matrix.indices.max() >= self.num_terms):
            raise ValueError(f"query term ids must lie in [0, {self.num_terms})")
        if not np.isfinite(matrix.data).all():
            raise ValueError("query weights must be finite")
        scores = np.empty((matrix.shape[0], k), np.float32)
        rows = np.empty((matrix.shape[0], k), np.int64)
        for i in range(matrix.shape[0]):
            lo, hi = matrix.indptr[i], matrix.indptr[i + 1]
            scores[i], rows[i] = self._search_terms(matrix.indices[lo:hi].astype(np.int64), matrix.data[lo:hi], k)
        return scores, rows

    def _spans(self, terms: np.ndarray) -> list[list[int]]:
        """Per query term, the B+1 positions where its postings of each block start (and the last ends)."""
        blocks = self.num_blocks
        if self.weights == "uint8":
            return self.offsets[(terms * blocks)[:, None] + np.arange(blocks + 1)].tolist()
        bounds = np.arange(1, blocks, dtype=np.int64) * BLOCK_SIZE
        spans = []
        for lo, hi in zip(self.indptr[terms].tolist(), self.indptr[terms + 1].tolist()):
            inner = (np.searchsorted(self.indices[lo:hi], bounds) + lo).tolist() if blocks > 1 else []
            spans.append([lo, *inner, hi])
        return spans

    def _search_terms(self, terms: np.ndarray, weights: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k for unique ``terms`` with non-zero float32 ``weights``, one block of documents at a time."""
        best_scores, best_rows = np.empty(0, np.float32), np.empty(0, np.int64)
        if terms.size and self.num_docs:
            if self.weights == "uint8":
                ids, values = self.doc_ids, self.impacts
                factors = (weights.astype(np.float64) * self.scale).astype(np.float32)
            else:
                ids, values, factors = self.indices, self.data, weights.astype(np.float32)
            spans = self._spans(terms)
            accumulator = np.zeros(min(BLOCK_SIZE, self.num_docs), dtype=np.float32)
            threshold = -np.inf  # the k-th best score so far, once k documents are held
            for block in range(self.num_blocks):
                ranges = [(span[block], span[block + 1]) for span in spans]
                lengths = [hi - lo for lo, hi in ranges]
                if not any(lengths):
                    continue
                base = block * BLOCK_SIZE
                block_ids = np.concatenate([ids[lo:hi] for lo, hi in ranges])
                if self.weights == "float32" and base:
                    block_ids -= base  # global int32 ids -> offsets inside the block
                block_values = np.concatenate([values[lo:hi] for lo, hi in ranges]) * np.repeat(factors, lengths)
                scores = accumulator[:min(BLOCK_SIZE, self.num_docs - base)]
                np.add.at(scores, block_ids, block_values)  # a document may appear under several terms
                # Later blocks hold higher rows, which lose ties: a candidate must beat the threshold strictly.
                if best_scores.size == k and threshold >= 0:
                    # untouched documents score 0 <= threshold, so only touched ones can pass
                    candidates = np.flatnonzero(scores > threshold) if scores.max() > threshold else None
                else:
                    candidates = np.flatnonzero(scores)  # touched documents with a non-zero score
                    if best_scores.size == k:
                        candidates = candidates[scores[candidates] > threshold]
                if candidates is not None and candidates.size:
                    best_scores, best_rows = _top_k(np.concatenate([best_scores, scores[candidates]]),
                                                    np.concatenate([best_rows, candidates + base]), k)
                    if best_scores.size == k:
                        threshold = float(best_scores[-1])
                scores.fill(0)
        pad = k - best_scores.size
        return (np.concatenate([best_scores, np.full(pad, -np.inf, np.float32)]),
                np.concatenate([best_rows, np.full(pad, -1, np.int64)]))

    # ------------------------------------------------------------------------ files
    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write ``sparse.npz`` (every array) then ``sparse.json`` (format, shapes, CRC-32), each atomically.

        A reader that finds a ``sparse.json`` from another save next to the ``sparse.npz`` (e.g. after a
        crash between the two renames) gets a checksum error from :meth:`load`, never a wrong index.
        """
        folder = Path(folder)
        arrays = self.arrays
        with atomic_writer(folder / ARRAYS_NAME) as handle:
            np.savez(handle, **arrays)
        atomic_write_json(folder / META_NAME, {
            "format_version": FORMAT_VERSION, "kind": "sparse", "weights": self.weights, "count": self.num_docs,
            "num_terms": self.num_terms, "nnz": self.nnz, "block_size": BLOCK_SIZE, "scale": self.scale,
            "bytes": self.nbytes, "crc32": _checksum(arrays),
            "arrays": _describe(arrays),
        })

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> "SparseIndex":
        """Read an index written by :meth:`save` (or a version-1 float32 one); checks it against its JSON."""
        meta_path, arrays_path = Path(folder) / META_NAME, Path(folder) / ARRAYS_NAME
        meta = read_json(meta_path)
        version = meta.get("format_version") if isinstance(meta, dict) else None
        if version not in (1, FORMAT_VERSION) or meta.get("kind") != "sparse":
            found = (meta.get("kind"), version) if isinstance(meta, dict) else (None, None)
            raise ValueError(f"'{meta_path}' is not a sparse index (kind {found[0]!r}, format_version {found[1]!r}; "
                             f"expected kind 'sparse', format_version 1 or {FORMAT_VERSION})")
        weights = meta.get("weights", "float32")
        if weights not in WEIGHT_FORMATS:
            raise ValueError(f"'{meta_path}' has weights {weights!r}; expected one of {WEIGHT_FORMATS}")
        if not arrays_path.is_file():
            raise FileNotFoundError(f"'{arrays_path}' does not exist: the index folder is incomplete")
        try:
            with np.load(arrays_path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
            raise ValueError(f"'{arrays_path}' is not a readable sparse index array file ({error}): rebuild the "
                             "index") from None
        expected = _ARRAY_NAMES[weights]
        if sorted(arrays) != sorted(expected):
            raise ValueError(f"'{arrays_path}' holds arrays {sorted(arrays)}; a {weights} sparse index has "
                             f"{sorted(expected)}")
        if version == FORMAT_VERSION:
            if _describe(arrays) != meta.get("arrays") or _checksum(arrays) != meta.get("crc32"):
                raise ValueError(f"'{arrays_path}' does not match '{meta_path}' (array shapes or CRC-32 differ): the "
                                 "two files come from different saves or one is damaged; rebuild the index")
        try:
            if weights == "float32":
                index = cls(arrays["indptr"], arrays["indices"], arrays["data"], meta["count"])
            else:
                index = cls.from_impacts(arrays["offsets"], arrays["doc_ids"], arrays["impacts"],
                                         float(arrays["scale"]), meta["count"], meta["num_terms"])
        except (KeyError, ValueError) as error:
            raise ValueError(f"'{arrays_path}' is not a valid {weights} sparse index: {error}") from None
        if index.num_terms != meta.get("num_terms", index.num_terms) or index.nnz != meta.get("nnz", index.nnz):
            raise ValueError(f"'{arrays_path}' has {index.num_terms} terms and {index.nnz} postings; '{meta_path}' "
                             f"says {meta.get('num_terms')} and {meta.get('nnz')}")
        return index
