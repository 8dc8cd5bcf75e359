"""Multi-vector index of a late-interaction student: stored token vectors, a FAISS index over them, exact rescoring.

An index folder of a late-interaction student (:class:`~distill.students.LateInteractionEncoder`) holds, besides
``items.jsonl`` / ``items.npy`` and ``index.json``:

* ``tokens.npy``: ``[S, D]`` the items' valid token vectors, item after item in row order (``S`` the split's valid
  tokens; padding is never stored), float16 by default (``--vector-dtype float32`` keeps the student's values);
* ``offsets.npy``: ``[N + 1]`` int64, item ``r`` owns token rows ``offsets[r]:offsets[r + 1]`` (at least one);
* ``faiss.index`` / ``faiss.json``: a FAISS inner-product index over the ``S`` token vectors, built as the dense
  FAISS backend builds one (:mod:`~distill.serving.index.faiss_backend`: ``--faiss-type flat | ivf | hnsw``,
  ``--nlist``, ``--nprobe``, ``--pq``; flat and ivf store float16 as ``SQfp16``);
* ``late.json``: the score (``similarity``, ``query_reduce``, as the export records them), the search default
  ``token_candidates`` and the counts.

Search, as ColBERTv2 / PLAID serve ColBERT (:mod:`distill.serving.late_search` does the same in memory):

1. **candidates**: each valid query token retrieves its ``token_candidates`` nearest stored tokens from the FAISS
   index; the items owning them (``searchsorted`` on ``offsets``) are the query's candidates (at most
   ``Tq x token_candidates``);
2. **exact scores**: the student's own late-interaction score of the query and each candidate's stored tokens
   (:func:`~distill.students.late_interaction.late_scores`, float32) ranks them; the top ``k`` are returned, ties by
   the lower row (the index's rows are in tie order, as for every backend).

An item none of whose tokens is among a query token's nearest is never ranked: recall against the exhaustive ranking
grows with ``token_candidates`` (and ``nprobe``), and with a flat index and ``token_candidates >= S`` the result
is the exhaustive ranking of the stored vectors. Bytes per item: ``tokens x D x 2`` (float16 tokens) ``+ 8`` (its
offset) plus the FAISS index's ``tokens x`` (``D x 2`` flat/ivf float16, ``pq + 8`` ivf-pq); building holds one chunk
of token vectors and the ``N`` lengths.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.errors import InputError
from distill.evaluation.late import TokenTable
from distill.io import atomic_write_json, atomic_writer, read_json
from distill.serving.index.backends import BackendSettings
from distill.serving.index.checks import check_finite
from distill.serving.index.corpus import length_sorted_forwards, tokenize
from distill.students.late_interaction import TokenEmbeddings, late_scores

TOKENS_NAME = "tokens.npy"
OFFSETS_NAME = "offsets.npy"
META_NAME = "late.json"
FORMAT_VERSION = 1
TOKEN_CANDIDATES = 1024  # nearest stored tokens per query token: recall@10 1.0 against the exhaustive ranking of
# 10,002 grid captions' stored tokens (docs/benchmarks.md, late-retrieval), where 32 gave 0.874
HEADER_BYTES = 128  # a fixed .npy header, rewritten with the final row count when the file is closed

__all__ = ["LateIndex", "OFFSETS_NAME", "TOKENS_NAME", "TOKEN_CANDIDATES", "TokenWriter", "build_late",
           "encode_tokens"]


def _npy_header(rows: int, dim: int, dtype: np.dtype) -> bytes:
    """A version-2.0 ``.npy`` header of exactly :data:`HEADER_BYTES` bytes for a C-ordered ``[rows, dim]`` array."""
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (rows, dim)})
    magic = np.lib.format.magic(2, 0)
    size = HEADER_BYTES - len(magic) - 4
    return magic + struct.pack("<I", size) + (text.ljust(size - 1) + "\n").encode("latin1")


class TokenWriter:
    """Appends items' valid token vectors to ``tokens.npy`` (as ``dtype``) as they are encoded, and their counts;
    :meth:`close` writes the final header and returns the ``[N + 1]`` offsets."""

    def __init__(self, path: Path, dim: int, dtype: str = "float16") -> None:
        self.path, self.dim, self.dtype = Path(path), int(dim), np.dtype(dtype)
        self.rows = 0
        self.lengths: list[np.ndarray] = []
        self._handle = open(self.path, "wb")
        self._handle.write(_npy_header(0, self.dim, self.dtype))

    def append(self, table: TokenTable) -> None:
        """Append the items of ``table`` (their valid tokens, any float dtype) in order."""
        flat = np.ascontiguousarray(table.flat.detach().cpu().float().numpy(), dtype=self.dtype)
        if flat.ndim != 2 or flat.shape[1] != self.dim:
            raise ValueError(f"token vectors of shape {flat.shape} do not fit width {self.dim}")
        if not np.isfinite(flat).all():
            bad = self.rows + int(np.argmax(~np.isfinite(flat).all(axis=1)))
            raise InputError(f"the student's token vector {bad} is NaN, infinite or beyond {self.dtype}'s range: the "
                             f"index stores {self.dtype} token vectors; check the student")
        self._handle.write(flat.tobytes())
        self.rows += len(flat)
        self.lengths.append(table.lengths.numpy().astype(np.int64))

    def close(self) -> np.ndarray:
        """Write the header with the final row count, flush the file to disk; returns ``offsets [N + 1]``."""
        self._handle.seek(0)
        self._handle.write(_npy_header(self.rows, self.dim, self.dtype))
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int64)
        return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def encode_tokens(student: nn.Module, tokenizer: Any, texts: Sequence[str], side: str, max_length: int,
                  chunk_size: int = 256) -> Iterator[TokenTable]:
    """``student.encode_<side>`` of ``texts``, ``chunk_size`` at a time: yields each chunk's valid token vectors
    (a float32 :class:`~distill.evaluation.late.TokenTable`, in the order of ``texts``). Within a chunk the texts are
    sorted by length and cut into forwards of at most :data:`~distill.serving.index.corpus.TOKENS_PER_FORWARD` tokens,
    as :func:`~distill.serving.index.corpus.encode_texts` cuts them, each padded to its own longest text (an item's
    tokens do not depend on the padding: it is masked)."""
    encode = getattr(student, f"encode_{side}")
    for start in range(0, len(texts), chunk_size):
        batch = tokenize(tokenizer, texts[start:start + chunk_size], max_length)
        parts: list[torch.Tensor | None] = [None] * len(batch["attention_mask"])
        for rows, longest in length_sorted_forwards(batch["attention_mask"].sum(1), chunk_size):
            with torch.inference_mode():
                encoded = encode({key: value[rows, :longest] for key, value in batch.items()})
            tokens, mask = encoded.tokens.float().cpu(), encoded.mask.cpu()
            for position, row in enumerate(rows.tolist()):
                parts[row] = tokens[position][mask[position]]
        yield _table(parts)


def _table(parts: Sequence[torch.Tensor | None]) -> TokenTable:
    found = [part for part in parts if part is not None]
    if len(found) != len(parts) or any(len(part) == 0 for part in found):
        raise InputError("the student gave an item no valid token: every indexed item needs at least one")
    return TokenTable(torch.cat(found), torch.tensor([len(part) for part in found], dtype=torch.long))


class LateIndex:
    """Stored token vectors (``tokens [S, D]``, ``offsets [N + 1]``) and a FAISS index over them, searched in two
    stages (module docstring). ``similarity`` / ``query_reduce``: the student's score."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, candidates: Any, similarity: str = "filip",
                 query_reduce: str = "mean", token_candidates: int = TOKEN_CANDIDATES) -> None:
        self.tokens, self.offsets, self.candidates = tokens, np.asarray(offsets, dtype=np.int64), candidates
        self.similarity, self.query_reduce, self.token_candidates = similarity, query_reduce, int(token_candidates)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def dim(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes of the stored tokens, the offsets and the FAISS index."""
        return int(self.tokens.nbytes + self.offsets.nbytes + self.candidates.nbytes)

    @classmethod
    def build(cls, tokens_path: Path, offsets: np.ndarray, settings: BackendSettings, similarity: str,
              query_reduce: str, token_candidates: int = TOKEN_CANDIDATES) -> "LateIndex":
        """The FAISS index of ``settings`` over the token file (read in blocks), with the stored tokens mapped."""
        from distill.serving.index.faiss_backend import FaissIndex

        candidates = FaissIndex.build(Path(tokens_path), settings)
        tokens = np.load(tokens_path, mmap_mode="r", allow_pickle=False)
        return cls(tokens, offsets, candidates, similarity, query_reduce, token_candidates)

    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write ``offsets.npy``, the FAISS files and ``late.json`` (``tokens.npy`` was streamed there already)."""
        with atomic_writer(Path(folder) / OFFSETS_NAME) as handle:
            np.save(handle, self.offsets, allow_pickle=False)
        self.candidates.save(folder)
        atomic_write_json(Path(folder) / META_NAME, {
            "format_version": FORMAT_VERSION, "count": len(self), "tokens": int(self.tokens.shape[0]),
            "dim": self.dim, "dtype": str(self.tokens.dtype), "similarity": self.similarity,
            "query_reduce": self.query_reduce, "token_candidates": self.token_candidates})

    @classmethod
    def load(cls, folder: str | os.PathLike[str], settings: BackendSettings) -> "LateIndex":
        """Open the files, checked against ``late.json`` (counts, offsets increasing, no NaN token)."""
        from distill.serving.index.faiss_backend import FaissIndex

        root = Path(folder)
        meta = read_json(root / META_NAME)
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"'{root / META_NAME}' is not a version-{FORMAT_VERSION} late-interaction index")
        tokens = np.load(root / TOKENS_NAME, mmap_mode="r", allow_pickle=False)
        offsets = np.load(root / OFFSETS_NAME, allow_pickle=False)
        if tokens.ndim != 2 or tokens.dtype not in (np.float16, np.float32) or offsets.ndim != 1 or \
                offsets.dtype != np.int64:
            raise ValueError(f"'{root / TOKENS_NAME}' / '{root / OFFSETS_NAME}' are not [S, D] float and [N + 1] int64")
        stated = (meta.get("count"), meta.get("tokens"), meta.get("dim"), meta.get("dtype"))
        if stated != (len(offsets) - 1, len(tokens), tokens.shape[1], str(tokens.dtype)):
            raise ValueError(f"'{root / META_NAME}' says {stated}, the files hold {len(offsets) - 1} items of "
                             f"{len(tokens)} x {tokens.shape[1]} {tokens.dtype} tokens")
        if len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != len(tokens) or (np.diff(offsets) < 1).any():
            raise ValueError(f"'{root / OFFSETS_NAME}' must rise from 0 to {len(tokens)}, at least one token an item")
        check_finite(root / TOKENS_NAME, tokens, "token vectors")
        candidates = FaissIndex.load(root, settings)
        if len(candidates) != len(tokens):
            raise ValueError(f"'{root}' FAISS index holds {len(candidates)} tokens, {TOKENS_NAME} {len(tokens)}")
        return cls(tokens, offsets, candidates, str(meta.get("similarity", "filip")),
                   str(meta.get("query_reduce", "mean")), int(meta.get("token_candidates", TOKEN_CANDIDATES)))

    # ------------------------------------------------------------------ search
    def items(self, rows: np.ndarray) -> TokenTable:
        """The stored tokens of the items ``rows`` (float32), in that order."""
        starts, lengths = self.offsets[rows], self.offsets[rows + 1] - self.offsets[rows]
        within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        flat = np.asarray(self.tokens[np.repeat(starts, lengths) + within], dtype=np.float32)
        return TokenTable(torch.from_numpy(flat), torch.from_numpy(lengths))

    def token_hits(self, queries: TokenTable, token_candidates: int | None = None) -> np.ndarray:
        """``[Sq, t]`` the stored token rows nearest each query token (best first, ``-1`` where fewer)."""
        take = min(int(token_candidates or self.token_candidates), len(self.tokens))
        if take < 1:
            raise InputError(f"--token-candidates {token_candidates}: give at least 1")
        return self.candidates.search(np.ascontiguousarray(queries.flat.float().numpy()), take)[1]

    def candidate_rows(self, queries: TokenTable, hits: np.ndarray) -> list[np.ndarray]:
        """Per query, the sorted rows of the items owning one of its tokens' ``hits`` (:meth:`token_hits`)."""
        owners = np.searchsorted(self.offsets, hits, side="right") - 1
        owners[hits < 0] = -1
        bounds = queries.offsets.tolist()
        return [np.unique(found[found >= 0]) for found in
                (owners[start:stop].ravel() for start, stop in zip(bounds[:-1], bounds[1:]))]

    @torch.no_grad()
    def rank(self, queries: TokenTable, hits: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` of each query's candidates (owners of ``hits``) by the exact late score: ``(scores [Q, k]
        float32, rows [Q, k] int64)``, best first (ties: the lower row), ``-inf`` / ``-1`` past the candidates."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        scores = np.full((len(queries), k), -np.inf, np.float32)
        rows = np.full((len(queries), k), -1, np.int64)
        for number, found in enumerate(self.candidate_rows(queries, hits)):
            if not len(found):
                continue
            query: TokenEmbeddings = queries.block(number, number + 1).float()
            documents = self.items(found)
            exact = late_scores(query, documents.block(0, len(documents)), self.similarity,  # type: ignore[arg-type]
                                self.query_reduce).numpy()[0]  # type: ignore[arg-type]
            order = np.lexsort((found, -exact))[:k]
            scores[number, :len(order)], rows[number, :len(order)] = exact[order], found[order]
        return scores, rows

    def search(self, queries: TokenTable, k: int = 10, token_candidates: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """``queries`` (their valid token vectors) -> ``(scores [Q, k] float32, rows [Q, k] int64)``: :meth:`rank`
        of the :meth:`token_hits` of ``token_candidates`` (default: the index's) per query token."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if queries.shape[1] != self.dim:
            raise ValueError(f"query tokens must be [*, {self.dim}], got width {queries.shape[1]}")
        return self.rank(queries, self.token_hits(queries, token_candidates), k)

def build_late(student_dir: str | os.PathLike[str], config: dict[str, Any], items: Any, scratch: Path,
               settings: BackendSettings, chunk_size: int, progress: bool, trust_remote_code: bool = False,
               token_candidates: int = TOKEN_CANDIDATES) -> LateIndex:
    """Encode the index's items (an :class:`~distill.serving.index.items.ItemTable`, in row order) ``chunk_size``
    at a time with the export's tower b, streaming their tokens to ``scratch / tokens.npy`` as
    ``settings.vector_dtype``, then build and save the FAISS index over them (``READ_ROWS`` tokens at a time)."""
    from distill.progress import progress as progress_bar
    from distill.serving.loading import load_student, load_tokenizer

    student = load_student(student_dir, trust_remote_code)
    tokenizer = load_tokenizer(student_dir, trust_remote_code)
    writer = TokenWriter(scratch / TOKENS_NAME, int(config["embedding"]["dim"]), settings.vector_dtype)
    with progress_bar(len(items), "encoding b", "texts", enabled=progress) as bar:
        for chunk in items.chunks(chunk_size):
            for table in encode_tokens(student, tokenizer, [item.text for item in chunk], "b",
                                       config["towers"]["b"]["max_length"], chunk_size):
                writer.append(table)
            bar.update(len(chunk))
    offsets = writer.close()
    embedding = config["embedding"]
    index = LateIndex.build(scratch / TOKENS_NAME, offsets, settings, str(embedding.get("similarity", "filip")),
                            str(embedding.get("query_reduce", "mean")), token_candidates)
    index.save(scratch)
    return index
