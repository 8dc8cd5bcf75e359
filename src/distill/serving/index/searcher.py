"""A searcher that stays loaded: an index folder and the student that built it, opened once, answering batches.

``distill search`` opens the index and the student for every call (seconds); a :class:`Searcher` keeps both
and answers any number of text or image queries, ``batch_size`` encoded per forward pass and searched per
backend call::

    with distill.open_searcher("indexes/x") as searcher:
        results = searcher.search(["a red circle", "a blue square"], k=10)   # one list of hits per query
        vectors = searcher.encode_texts(queries)                              # [Q, D] float32 (or [Q, V])
        results = searcher.search_vectors(vectors, k=10)                      # search alone

A text query goes through the student's text a-tower, or through tower b (text-to-text in the shared space)
when tower a reads images; an image file (or PIL image) through the image a-tower, with the preprocessing the
student was trained with (:func:`~distill.serving.index.corpus.tower_preprocessing`).

An index of a late-interaction student encodes each query as its token vectors (a
:class:`~distill.evaluation.late.TokenTable` instead of ``[Q, D]``) and searches in two stages
(:mod:`distill.serving.index.late`): ``token_candidates`` nearest stored tokens per query token (default: the
index's own, ``late.json``), then the student's exact score of the items owning them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.errors import InputError
from distill.evaluation.late import TokenRows, TokenTable
from distill.serving.index.corpus import encode_texts, load_image, tower_preprocessing
from distill.serving.index.folder import open_index, student_fingerprints
from distill.serving.index.query import Hit
from distill.serving.loading import load_student, load_tokenizer, read_student_config

ImageQuery = str | os.PathLike[str] | Any  # a file path or a PIL image
Queries = np.ndarray | TokenTable  # [Q, D] vectors, or a late-interaction student's query tokens

__all__ = ["Searcher", "open_searcher"]


class Searcher:
    """An index and its student, loaded once (see the module docstring). Close it (or use ``with``) to release
    the backend (an embedded Qdrant collection holds a lock). ``items`` is the index's
    :class:`~distill.serving.index.items.ItemTable`: a hit's id and text are read from ``items.jsonl`` when the hit
    is returned, never all loaded. ``token_candidates``: late-interaction indexes only, the nearest stored tokens
    per query token (``None``: the index's default)."""

    def __init__(self, index_dir: str | os.PathLike[str], student_dir: str | os.PathLike[str] | None = None,
                 backend: str | None = None, url: str | None = None, trust_remote_code: bool = False,
                 token_candidates: int | None = None) -> None:
        self.index_dir = Path(index_dir)
        self.token_candidates = token_candidates
        self.meta, self.index, self.items = open_index(index_dir, url, backend)
        try:
            self.student_dir = Path(student_dir or self.meta["student"])
            if self.meta.get("student_fingerprint") not in student_fingerprints(self.student_dir):
                raise InputError(f"index '{index_dir}' was built with another student than '{self.student_dir}' "
                                 "(their fingerprints differ): search with the student that built it, or rebuild "
                                 "the index with this one")
            config = read_student_config(self.student_dir)
            self.towers: dict[str, dict[str, Any]] = config["towers"]
            self.dim = int(config["embedding"]["dim"])
            self.late = self.meta.get("kind") == "late-interaction"
            if token_candidates is not None and not self.late:
                raise InputError(f"--token-candidates applies to late-interaction indexes; '{index_dir}' is "
                                 f"{self.meta.get('kind')}")
            self.student = load_student(self.student_dir, trust_remote_code)
            self.tokenizer = load_tokenizer(self.student_dir, trust_remote_code) if config.get("tokenizer") else None
        except BaseException:
            self.close()
            raise
        self.text_side = "a" if self.towers["a"]["modality"] == "text" else "b"

    # ------------------------------------------------------------------ encoding
    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> Queries:
        """``texts`` -> ``[Q, D]`` float32 query vectors (``[Q, V]`` for a sparse student; a late-interaction
        student's token vectors as a :class:`~distill.evaluation.late.TokenTable`)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        for number, text in enumerate(texts, start=1):
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"query {number} is empty: give the text to search for")
        if self.tokenizer is None:
            raise InputError(f"student '{self.student_dir}' was exported without a tokenizer: search it with images")
        max_length = self.towers[self.text_side]["max_length"]
        if self.late:
            from distill.serving.index.late import encode_tokens

            return TokenTable.cat(list(encode_tokens(self.student, self.tokenizer, texts, self.text_side, max_length,
                                                     batch_size)))
        chunks = encode_texts(self.student, self.tokenizer, texts, self.text_side, max_length, batch_size)
        return _stack([chunk.numpy() for chunk in chunks], self.dim)

    @torch.no_grad()
    def encode_images(self, images: Sequence[ImageQuery], batch_size: int = 64) -> Queries:
        """Image files or PIL images -> ``[Q, D]`` float32 (late interaction: their token vectors), through the
        preprocessing the student trained with."""
        if self.towers["a"]["modality"] != "image":
            raise InputError(f"student '{self.student_dir}' has no image tower: search it with text queries")
        steps = tower_preprocessing(self.towers["a"], f"'{self.student_dir}'")
        chunks, tokens = [], TokenRows()
        for start in range(0, len(images), batch_size):
            pixels = [load_image(image, steps)["pixel_values"] if isinstance(image, (str, os.PathLike))
                      else steps(image).unsqueeze(0) for image in images[start:start + batch_size]]
            encoded = self.student.encode_a({"pixel_values": torch.cat(pixels)})
            if self.late:
                tokens.append(encoded)
            else:
                chunks.append(encoded.float().cpu().numpy())
        return tokens.finish() if self.late else _stack(chunks, self.dim)

    # ------------------------------------------------------------------ searching
    def search_vectors(self, vectors: Queries, k: int = 10) -> list[list[Hit]]:
        """The top-``k`` hits of each query vector ``[Q, D]`` (late interaction: each query's token vectors, a
        :class:`~distill.evaluation.late.TokenTable`), best first (score ties: the larger document id)."""
        if k < 1:
            raise InputError(f"-k {k}: ask for at least one hit")
        if not len(vectors):
            return []
        if isinstance(vectors, TokenTable) != self.late:
            raise InputError(f"index '{self.index_dir}' holds {self.meta.get('kind')} vectors: search it with "
                             f"{'token vectors (a TokenTable)' if self.late else '[Q, D] vectors'}")
        if self.late:
            scores, rows = self.index.search(vectors, k, self.token_candidates)  # type: ignore[call-arg]
        else:
            scores, rows = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)
        return [[Hit(rank + 1, self.items[row], float(score))
                 for rank, (score, row) in enumerate(zip(line_scores, line_rows)) if row >= 0]
                for line_scores, line_rows in zip(scores.tolist(), rows.tolist())]

    def search(self, queries: str | Sequence[str] | None = None, images: Sequence[ImageQuery] | None = None,
               k: int = 10, batch_size: int = 64) -> list[list[Hit]]:
        """One list of hits per text query (or per image), in the order given; ``batch_size`` queries are encoded
        per forward pass and searched per backend call."""
        if (queries is None) == (images is None):
            raise InputError("give text queries or images, not both")
        results: list[list[Hit]] = []
        batch = [queries] if isinstance(queries, str) else list(queries if queries is not None else images or [])
        for start in range(0, len(batch), batch_size):
            part = batch[start:start + batch_size]
            vectors = self.encode_texts(part, batch_size) if queries is not None else \
                self.encode_images(part, batch_size)
            results += self.search_vectors(vectors, k)
        return results

    def close(self) -> None:
        """Release the backend (idempotent)."""
        getattr(getattr(self, "index", None), "close", lambda: None)()

    def __enter__(self) -> "Searcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stack(chunks: list[np.ndarray], width: int) -> np.ndarray:
    return np.concatenate(chunks) if chunks else np.zeros((0, width), np.float32)


def open_searcher(index_dir: str | os.PathLike[str], student_dir: str | os.PathLike[str] | None = None,
                  backend: str | None = None, url: str | None = None, trust_remote_code: bool = False,
                  token_candidates: int | None = None) -> Searcher:
    """Open an index folder and the student that built it, once (:class:`Searcher`)."""
    return Searcher(index_dir, student_dir, backend, url, trust_remote_code, token_candidates)
