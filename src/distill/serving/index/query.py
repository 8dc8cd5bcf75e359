"""Search an index folder with a text or image query, optionally re-ranked by the cross-encoder teacher.

``python -m distill search --index indexes/s --query "text"`` (or ``--image x.png``) prints the top-k;
``--rerank-with <teacher folder>`` re-scores them with the teacher. Any backend
(:mod:`distill.serving.index.backends`) answers the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from distill.errors import InputError
from distill.serving.index.corpus import CorpusItem, encode_texts, load_image, tokenize, tower_preprocessing
from distill.serving.index.folder import open_index, student_fingerprint

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
           url: str | None = None) -> list[Hit]:
    """Top-``k`` items of an index for a text ``query`` or an ``image`` file, optionally re-ranked.

    A text query goes through the student's text a-tower, or through ``tower_b`` (text-to-text in
    the shared space) when tower a reads images. An image goes through the image a-tower.
    ``rerank_with`` (a ShapesCrossEncoder folder) re-scores the hits as (image, text) pairs. ``backend``,
    when given, must be the one the index was built with; ``url`` reaches a Qdrant index's server at
    another address.
    """
    from distill.serving.loading import load_student, load_tokenizer, read_student_config

    if (query is None) == (image is None):
        raise InputError("give exactly one of --query or --image")
    if query is not None and not query.strip():
        raise InputError("--query is empty: give the text to search for")
    meta, index, items = open_index(index_dir, url, backend)
    try:
        folder = student_dir or meta["student"]
        if student_fingerprint(folder) != meta.get("student_fingerprint"):
            raise InputError(f"index '{index_dir}' was built with another student than '{folder}' (their "
                             "fingerprints differ): search with the student that built it, or rebuild the index "
                             "with this one")
        towers = read_student_config(folder)["towers"]
        student = load_student(folder)
        if image is not None:
            if towers["a"]["modality"] != "image":
                raise InputError(f"student '{folder}' has no image tower: search it with --query")
            steps = tower_preprocessing(towers["a"], f"'{folder}'")
            vector = student.encode_a(load_image(image, steps))
        else:
            side = "a" if towers["a"]["modality"] == "text" else "b"
            vector = torch.cat(list(encode_texts(student, load_tokenizer(folder), [query], side,
                                                 towers[side]["max_length"])))
        scores, rows = index.search(vector.float().cpu().numpy(), k)
    finally:
        getattr(index, "close", lambda: None)()
    hits = [Hit(rank + 1, items[row], float(score))
            for rank, (score, row) in enumerate(zip(scores[0].tolist(), rows[0].tolist())) if row >= 0]
    if rerank_with is not None:
        hits = rerank(hits, rerank_with, image, folder)
    return hits


@torch.no_grad()
def rerank(hits: list[Hit], teacher_dir: str, image: str | None, student_dir: str) -> list[Hit]:
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
    texts = tokenize(load_tokenizer(student_dir), [hit.item.text for hit in hits], teacher.config.max_length)
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
