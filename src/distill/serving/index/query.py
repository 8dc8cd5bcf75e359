"""Search an index folder with a text or image query, optionally re-ranked by the cross-encoder teacher.

``python -m distill search --index indexes/s --query "text"`` (or ``--image x.png``) prints the top-k;
``--rerank-with <teacher folder>`` re-scores them with the teacher. Any backend
(:mod:`distill.serving.index.backends`) answers the same way. :func:`search` opens the index and the
student for one query; :class:`~distill.serving.index.searcher.Searcher` keeps them open for many.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from distill.errors import InputError
from distill.serving.index.corpus import CorpusItem, load_image, tokenize, tower_preprocessing
from distill.serving.index.query_tokens import check_query_tokens

__all__ = ["Hit", "format_hits", "rerank", "search"]


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
        hits = rerank(hits, rerank_with, image, str(searcher.student_dir), trust_remote_code)
    return hits


@torch.no_grad()
def rerank(hits: list[Hit], teacher_dir: str, image: str | None, student_dir: str,
           trust_remote_code: bool = False) -> list[Hit]:
    """Re-score ``hits`` with a :class:`ShapesCrossEncoder` and sort them by its score."""
    from distill.serving.loading import load_tokenizer, read_student_config
    from distill.teachers import ShapesCrossEncoder

    if image is None:
        raise InputError("--rerank-with scores (image, text) pairs with the cross-encoder: search with --image")
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


def format_hits(hits: Sequence[Hit]) -> str:
    """Plain-text table: rank, id, a_id, student score, [teacher score,] text."""
    with_teacher = any(hit.teacher_score is not None for hit in hits)
    teacher_column = f"  {'teacher':>9}" if with_teacher else ""
    lines = [f"{'rank':>4}  {'id':>8}  {'a_id':>8}  {'score':>9}{teacher_column}  text"]
    for hit in hits:
        teacher = f"  {hit.teacher_score:9.4f}" if with_teacher and hit.teacher_score is not None else ""
        lines.append(f"{hit.rank:>4}  {hit.item.id:>8}  {hit.item.a_id:>8}  {hit.score:9.4f}{teacher}  {hit.item.text}")
    return "\n".join(lines)
