"""Search an index folder with a text or image query, optionally re-ranked by the cross-encoder teacher.

``python -m distill search --index indexes/s --query "text"`` (or ``--image x.png``) prints the top-k;
``--rerank-with <teacher folder>`` re-scores them with the teacher: the shapes cross-encoder for an image query,
a text cross-encoder (e.g. the MS MARCO recipe's teacher folder) for a text query. Any backend
(:mod:`distill.serving.index.backends`) answers the same way. :func:`search` opens the index and the
student for one query; :class:`~distill.serving.index.searcher.Searcher` keeps them open for many.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from distill.errors import InputError
from distill.serving.index.corpus import CorpusItem, load_image, tokenize, tower_preprocessing
from distill.serving.index.query_tokens import check_query_tokens

__all__ = ["Hit", "format_hits", "rerank", "rerank_texts", "search"]


@dataclass
class Hit:
    rank: int
    item: CorpusItem
    score: float
    teacher_score: float | None = None


@torch.no_grad()
def search(index_dir: str | os.PathLike[str], query: str | None = None, image: str | None = None, k: int = 10,
           student_dir: str | None = None, rerank_with: str | None = None, backend: str | None = None,
           url: str | None = None, trust_remote_code: bool = False) -> list[Hit]:
    """Top-``k`` items of an index for a text ``query`` or an ``image`` file, optionally re-ranked.

    A text query goes through the student's text a-tower, or through ``tower_b`` (text-to-text in
    the shared space) when tower a reads images. An image goes through the image a-tower.
    ``rerank_with`` (a ShapesCrossEncoder folder) re-scores the hits as (image, text) pairs. ``backend``,
    when given, must be the one the index was built with; ``url`` reaches a Qdrant index's server at
    another address. Code the student's export names is refused unless ``trust_remote_code``.
    """
    from distill.serving.index.searcher import open_searcher

    if (query is None) == (image is None):
        raise InputError("give exactly one of --query or --image")
    if query is not None and not query.strip():
        raise InputError("--query is empty: give the text to search for")
    with open_searcher(index_dir, student_dir, backend, url, trust_remote_code) as searcher:
        if query is not None and searcher.tokenizer is not None:
            check_query_tokens(searcher.tokenizer, query)
        hits = searcher.search(None if query is None else [query], None if image is None else [image], k)[0]
    if rerank_with is not None:
        hits = rerank(hits, rerank_with, image, str(searcher.student_dir), trust_remote_code, query)
    return hits


@torch.no_grad()
def rerank(hits: list[Hit], teacher_dir: str, image: str | None, student_dir: str,
           trust_remote_code: bool = False, query: str | None = None) -> list[Hit]:
    """Re-score ``hits`` with a cross-encoder and sort them by its score: an image query's with a
    :class:`ShapesCrossEncoder`, a text ``query``'s with a text cross-encoder (:func:`rerank_texts`)."""
    from distill.serving.loading import load_tokenizer, read_student_config
    from distill.teachers import ShapesCrossEncoder

    if image is None:
        if query is None:
            raise InputError("--rerank-with needs the query: a text (--query) or an image (--image)")
        return rerank_texts(hits, teacher_dir, query, trust_remote_code)
    if not hits:
        return hits
    try:
        teacher = ShapesCrossEncoder.from_pretrained(teacher_dir).freeze()
    except (FileNotFoundError, ValueError) as error:  # the teacher's own lines name its folder and what to do
        raise InputError(f"--rerank-with: {error}") from None
    steps = tower_preprocessing(read_student_config(student_dir)["towers"]["a"], f"'{student_dir}'")
    pixels = load_image(image, replace(steps, size=teacher.config.image_size, resize="square", center_crop=False,
                                       processor=None))
    tokenizer = load_tokenizer(student_dir, trust_remote_code)
    texts = tokenize(tokenizer, [hit.item.text for hit in hits], teacher.config.max_length)
    a_index = torch.zeros(len(hits), dtype=torch.long)
    scores = teacher.score_pairs(pixels, texts, a_index, torch.arange(len(hits))).tolist()
    ranked = sorted(zip(scores, hits), key=lambda pair: -pair[0])
    return [Hit(rank + 1, hit.item, hit.score, float(score)) for rank, (score, hit) in enumerate(ranked)]


@functools.lru_cache(maxsize=2)
def text_cross_encoder(folder: str, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a text cross-encoder folder (``AutoModelForSequenceClassification``, safetensors),
    loaded once per process for all the queries of a search."""
    from transformers import AutoModelForSequenceClassification

    from distill.pretrained import load_pretrained, load_tokenizer

    if not Path(folder).is_dir():
        raise InputError(f"--rerank-with '{folder}' is not a folder: give a text cross-encoder saved with "
                         "save_pretrained (model and tokenizer), e.g. the recipe's teacher")
    if _is_shapes_teacher(Path(folder)):
        raise InputError(f"--rerank-with '{folder}' is a ShapesCrossEncoder, which scores image-text pairs: re-rank "
                         "--image queries with it, or give a text cross-encoder for text queries")
    try:
        model = load_pretrained(AutoModelForSequenceClassification, folder, "--rerank-with",
                                trust_remote_code=trust_remote_code)
        tokenizer = load_tokenizer(folder, "--rerank-with", trust_remote_code=trust_remote_code)
    except (FileNotFoundError, ValueError) as error:
        raise InputError(str(error)) from None
    return model.eval(), tokenizer


def _is_shapes_teacher(folder: Path) -> bool:
    import json

    try:
        return json.loads((folder / "config.json").read_text()).get("class") == "ShapesCrossEncoder"
    except (OSError, ValueError, AttributeError):
        return False


@torch.no_grad()
def rerank_texts(hits: list[Hit], teacher_dir: str, query: str, trust_remote_code: bool = False,
                 batch_size: int = 32, label_index: int = 0) -> list[Hit]:
    """Re-score a text query's ``hits`` with a text cross-encoder (query and passage read as one sequence, as
    the recipe's TextCrossEncoderTeacher reads them) and sort them by its score."""
    if not hits:
        return hits
    model, tokenizer = text_cross_encoder(str(teacher_dir), trust_remote_code)
    scores: list[float] = []
    for start in range(0, len(hits), batch_size):
        passages = [hit.item.text for hit in hits[start:start + batch_size]]
        inputs = tokenizer([query] * len(passages), passages, padding=True, truncation="only_second",
                           max_length=min(512, int(getattr(tokenizer, "model_max_length", 512) or 512)),
                           return_tensors="pt")
        scores += model(**inputs).logits[:, label_index].float().tolist()
    ranked = sorted(zip(scores, hits), key=lambda pair: -pair[0])
    return [Hit(rank + 1, hit.item, hit.score, float(score)) for rank, (score, hit) in enumerate(ranked)]


def format_hits(hits: Sequence[Hit]) -> str:
    """Plain-text table, one line per hit: rank, id and a_id (or the document id, for a corpus that names its
    documents), student score, [teacher score,] the text on one line."""
    with_teacher = any(hit.teacher_score is not None for hit in hits)
    teacher_column = f"  {'teacher':>9}" if with_teacher else ""
    named = bool(hits) and all(hit.item.doc_id is not None for hit in hits)
    width = max([6, *(len(str(hit.item.doc_id)) for hit in hits)]) if named else 0
    ids = f"{'doc_id':>{width}}" if named else f"{'id':>8}  {'a_id':>8}"
    lines = [f"{'rank':>4}  {ids}  {'score':>9}{teacher_column}  text"]
    for hit in hits:
        teacher = f"  {hit.teacher_score:9.4f}" if with_teacher and hit.teacher_score is not None else ""
        where = f"{hit.item.doc_id:>{width}}" if named else f"{hit.item.id:>8}  {hit.item.a_id:>8}"
        lines.append(f"{hit.rank:>4}  {where}  {hit.score:9.4f}{teacher}  {' '.join(hit.item.text.split())}")
    return "\n".join(lines)
