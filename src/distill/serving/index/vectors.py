"""An index's encoded vectors on disk, written chunk by chunk as they are encoded and read back in chunks.

Dense: one ``[N, D]`` ``.npy`` (float32, or float16 for corpora whose float32 vectors exceed the budget of
:func:`~distill.serving.index.backends.stored_dtype`: 8.8M x 384 vectors are 6.3 GiB), its header written first
and each chunk appended with a plain file write, so building holds one chunk of vectors, never the whole
array. :func:`read_blocks` reads it back ``rows`` at a time as float32 with file reads (the pages go to the
page cache, not to the process); :func:`open_vectors` maps it for search.

Sparse: each chunk's CSR rows appended to two raw files (int32 term ids, float32 weights) and a per-row count;
:meth:`SparseSpill.matrix` is the ``[N, V]`` CSR matrix over copy-on-write memory maps of the two files.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from distill.errors import InputError
from distill.serving.index.sparse_vectors import as_csr

VECTOR_DTYPE = np.float16  # the default of VectorWriter; `distill index` passes the dtype it resolved
READ_ROWS = 16384  # rows per block read back: 24 MiB of float32 at D = 384

__all__ = ["READ_ROWS", "SparseSpill", "VECTOR_DTYPE", "VectorWriter", "open_vectors", "read_blocks"]


class VectorWriter:
    """Writes ``count`` rows of width ``dim`` to the ``.npy`` file ``path`` as chunks come (:meth:`append`)."""

    def __init__(self, path: Path, count: int, dim: int, dtype: np.dtype | type = VECTOR_DTYPE) -> None:
        self.path, self.count, self.dim, self.dtype = Path(path), int(count), int(dim), np.dtype(dtype)
        self.rows = 0
        self._handle = open(self.path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.count, self.dim)}
        np.lib.format.write_array_header_2_0(self._handle, header)

    def append(self, block: np.ndarray) -> None:
        """Append ``block [n, dim]`` (any float dtype), stored as this file's dtype; refuses a value the dtype cannot
        hold (a float16 overflow would otherwise store infinity)."""
        block = np.asarray(block)
        if block.ndim != 2 or block.shape[1] != self.dim or self.rows + len(block) > self.count:
            raise ValueError(f"vectors of shape {block.shape} do not fit [{self.count}, {self.dim}] at row {self.rows}")
        stored = np.ascontiguousarray(block, dtype=self.dtype)
        if not np.isfinite(stored).all():
            bad = self.rows + int(np.argmax(~np.isfinite(stored).all(axis=1)))
            limit = " (largest 65504)" if self.dtype == np.float16 else ""
            raise InputError(f"the student's vector of item row {bad} is NaN, infinite or beyond {self.dtype}'s range"
                             f"{limit}: the index stores {self.dtype} vectors; check the student")
        self._handle.write(stored.tobytes())
        self.rows += len(stored)

    def close(self) -> None:
        """Flush the file to disk (as every file of an index folder is before the folder is put in place)."""
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        if self.rows != self.count:
            raise ValueError(f"'{self.path}' got {self.rows} rows, {self.count} announced")

    def __enter__(self) -> "VectorWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._handle.closed:
            self._handle.close()


def _header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, data offset)`` of an ``.npy`` file."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(handle)
        if fortran or len(shape) != 2:
            raise ValueError(f"'{path}' is not a C-ordered [N, D] array")
        return shape, dtype, handle.tell()


def read_blocks(path: Path, rows: int = READ_ROWS) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, block [n, D] float32)`` of a vector file, ``rows`` at a time, in order."""
    (count, dim), dtype, offset = _header(path)
    width = dim * dtype.itemsize
    with open(path, "rb") as handle:
        handle.seek(offset)
        for start in range(0, count, rows):
            n = min(rows, count - start)
            data = handle.read(n * width)
            if len(data) != n * width:
                raise ValueError(f"'{path}' ends before row {start + len(data) // max(width, 1)} of {count}")
            yield start, np.frombuffer(data, dtype=dtype).reshape(n, dim).astype(np.float32)


def open_vectors(path: Path) -> np.ndarray:
    """The vector file ``path`` memory-mapped read-only (``[N, D]``, its stored dtype)."""
    return np.load(path, mmap_mode="r", allow_pickle=False)


def sample_rows(path: Path, count: int, seed: int = 0) -> np.ndarray:
    """``count`` distinct rows of a vector file drawn at random (or all of them), in row order, as float32."""
    vectors = open_vectors(path)
    if count >= len(vectors):
        return np.asarray(vectors, dtype=np.float32)
    picked = np.sort(np.random.default_rng(seed).choice(len(vectors), size=count, replace=False))
    return np.asarray(vectors[picked], dtype=np.float32)


class SparseSpill:
    """Sparse rows written to disk chunk by chunk (:meth:`append`), read as one CSR matrix (:meth:`matrix`)."""

    def __init__(self, folder: Path, num_terms: int | None = None) -> None:
        self.indices_path, self.data_path = Path(folder) / ".sparse-indices.bin", Path(folder) / ".sparse-data.bin"
        self._indices, self._data = open(self.indices_path, "wb"), open(self.data_path, "wb")
        self.counts = array("q")
        self.num_terms = num_terms

    def append(self, block: object) -> None:
        """Append ``block`` (``[n, V]`` dense rows, tensor or sparse) as CSR rows, zeros dropped."""
        matrix = as_csr(block, self.num_terms)
        self.num_terms = matrix.shape[1]
        self._indices.write(np.ascontiguousarray(matrix.indices, dtype=np.int32).tobytes())
        self._data.write(np.ascontiguousarray(matrix.data, dtype=np.float32).tobytes())
        self.counts.extend(np.diff(matrix.indptr).tolist())

    def matrix(self) -> sp.csr_matrix:
        """The rows appended so far as ``[N, V]`` float32 CSR over copy-on-write maps of the two files."""
        self._indices.close()
        self._data.close()
        indptr = np.zeros(len(self.counts) + 1, dtype=np.int64)
        np.cumsum(np.frombuffer(self.counts, dtype=np.int64), out=indptr[1:])
        nnz = int(indptr[-1])
        indices = np.memmap(self.indices_path, np.int32, "c", shape=(nnz,)) if nnz else np.zeros(0, np.int32)
        data = np.memmap(self.data_path, np.float32, "c", shape=(nnz,)) if nnz else np.zeros(0, np.float32)
        return sp.csr_matrix((data, indices, indptr), shape=(len(self.counts), int(self.num_terms or 0)), copy=False)

    def remove(self) -> None:
        for handle in (self._indices, self._data):
            handle.close()
        for path in (self.indices_path, self.data_path):
            if path.exists():
                os.unlink(path)
