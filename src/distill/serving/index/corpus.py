"""What an index holds and how its queries are encoded: a split's b items, tokenised text, image files."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from distill.data.image_preprocessing import ImagePreprocessing, three_channels
from distill.errors import InputError

__all__ = ["TOKENS_PER_FORWARD", "CorpusItem", "encode_texts", "length_sorted_forwards", "load_image", "split_items", "tie_order", "tokenize", "tower_preprocessing"]


@dataclass(frozen=True)
class CorpusItem:
    """One indexed b item: its id, the id of the a item it belongs to, its raw text, and the document id its data
    names it by (a BEIR corpus's ``_id``; ``None`` for data without one)."""

    id: int
    a_id: int
    text: str
    doc_id: str | None = None


def split_items(datamodule: Any, split: str, chunk_size: int = 4096) -> Iterator[list[CorpusItem]]:
    """The b items of ``split`` in the data's order, ``chunk_size`` at a time (an index puts them in tie order,
    :func:`tie_order`, as it writes them).

    Uses ``datamodule.b_texts(split) -> (id, a_id, text) rows`` (any iterable: a generator is read once, row by row)
    when the data module defines it, and ``datamodule.doc_ids(ids) -> [document id]``, a BEIR corpus's ``_id``, per
    chunk when it names its documents; else the corpus of :class:`distill.data.ShapesDataModule`.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    hook = getattr(datamodule, "b_texts", None)
    if callable(hook):
        names = getattr(datamodule, "doc_ids", None)
        rows = iter(hook(split))
        while chunk := list(itertools.islice(rows, chunk_size)):
            doc_ids = [str(name) for name in names([int(i) for i, _, _ in chunk])] if callable(names) else \
                [None] * len(chunk)
            yield [CorpusItem(int(i), int(a), str(t), d) for (i, a, t), d in zip(chunk, doc_ids)]
        return
    datamodule.setup("test")
    corpus = getattr(datamodule, "corpus", None)
    if corpus is None or not hasattr(corpus, "caption_id"):
        raise ValueError(
            f"{type(datamodule).__name__} exposes no raw texts: give it a `b_texts(split)` method returning "
            "(id, a_id, text) rows"
        )
    try:
        records = corpus.split(split)
    except ValueError as error:
        raise InputError(f"--split {split}: {type(datamodule).__name__}: {error}") from None
    items = (CorpusItem(int(corpus.caption_id(item.image_id, index)), int(item.image_id), caption)
             for item in records for index, caption in enumerate(item.captions))
    while chunk := list(itertools.islice(items, chunk_size)):
        yield chunk


def tie_order(datamodule: Any, ids: Sequence[int]) -> np.ndarray:
    """The permutation listing ``ids`` by descending document id: ``datamodule.tie_keys`` (BEIR: the ``_id``
    strings' byte order) or else the ids. Every backend breaks score ties by the lower row, so an index whose
    rows follow this order breaks them by the larger document id, as trec_eval and evaluation do."""
    keys = torch.from_numpy(np.array(ids, dtype=np.int64))
    hook = getattr(datamodule, "tie_keys", None)
    if callable(hook) and len(keys):
        keys = hook(keys)
    return np.argsort(-np.asarray(keys, dtype=np.int64), kind="stable")


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> dict[str, Tensor]:
    encoded = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


# all-MiniLM-L6-v2 on one CPU thread, 384 standard-library functions in chunks of 256: 8,192 tokens per forward
# encode 0.63x as fast as SentenceTransformer.encode (batches of 32), 4,096 0.93x, 2,048 1.12x, 1,024 1.20x:
# activations of a small forward stay in cache.
TOKENS_PER_FORWARD = 2048


def encode_texts(student: nn.Module, tokenizer: Any, texts: Sequence[str], side: str, max_length: int,
                 chunk_size: int = 256, progress: bool = False) -> Iterator[Tensor]:
    """``student.encode_<side>`` of ``texts``, ``chunk_size`` at a time: yields each chunk's ``[n, D]`` float32
    (on the CPU, in the order of ``texts``) as it is encoded, so a caller keeps only what it makes of them (a
    filled array, sparse rows). ``progress``: a bar on a terminal, a line every 30 s otherwise
    (:func:`distill.progress.progress`).

    Within a chunk the texts are sorted by token count and cut into forwards of at most
    :data:`TOKENS_PER_FORWARD` tokens (rows x the longest row), each padded to its own longest text, so a
    chunk mixing short and long texts does not pad every row to the longest one; each row's vector is what
    it would be alone (padding is masked), and the rows come back in their original order.
    """
    from distill.progress import progress as progress_bar

    encode = getattr(student, f"encode_{side}")
    with progress_bar(len(texts), f"encoding {side}", "texts", enabled=progress) as bar:
        for start in range(0, len(texts), chunk_size):
            chunk = texts[start:start + chunk_size]
            batch = tokenize(tokenizer, chunk, max_length)  # [n, L] right-padded to the chunk's longest
            encoded: Tensor | None = None
            for rows, longest in length_sorted_forwards(batch["attention_mask"].sum(1), chunk_size):
                with torch.inference_mode():
                    part = encode({key: value[rows, :longest] for key, value in batch.items()}).float().cpu()
                if encoded is None:
                    encoded = torch.empty((len(chunk), *part.shape[1:]), dtype=torch.float32)
                encoded[rows] = part
            yield encoded if encoded is not None else torch.zeros(0)
            bar.update(len(chunk))


def length_sorted_forwards(lengths: Tensor, max_rows: int) -> Iterator[tuple[Tensor, int]]:
    """A tokenised chunk's rows cut into forwards, longest texts first: yields ``(rows, longest)``, the row indices
    of one forward (at most ``max_rows``, and at most :data:`TOKENS_PER_FORWARD` tokens as rows x ``longest``) and
    the token count its inputs are cut to. ``lengths``: ``[n]`` tokens per row."""
    order = torch.argsort(lengths, descending=True, stable=True)
    sorted_lengths = lengths[order].tolist()
    first = 0
    while first < len(order):
        longest = max(int(sorted_lengths[first]), 1)
        rows = order[first:first + max(1, min(max_rows, TOKENS_PER_FORWARD // longest))]
        yield rows, longest
        first += len(rows)


def tower_preprocessing(spec: dict[str, Any], where: str) -> ImagePreprocessing:
    """The image preprocessing an export's tower spec records; an export written before the record existed
    said only ``image_size`` / ``pixel_mean`` / ``pixel_std`` of a square resize, and gets exactly that."""
    if "preprocessing" in spec:
        return ImagePreprocessing.from_json(spec["preprocessing"], where)
    try:
        return ImagePreprocessing(size=int(spec["image_size"]), resize="square", center_crop=False,
                                  interpolation="bilinear", mean=three_channels(spec["pixel_mean"]),
                                  std=three_channels(spec["pixel_std"]))
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"{where}: the image tower spec is malformed ({error}): export the student again") from None


def load_image(path: str | os.PathLike[str], preprocessing: ImagePreprocessing) -> dict[str, Tensor]:
    """An image file -> ``{"pixel_values": [1, 3, size, size]}`` through the student's preprocessing as trained."""
    from PIL import Image, UnidentifiedImageError

    source = Path(path)
    if not source.is_file():
        raise InputError(f"--image '{source}' does not exist")
    try:
        with Image.open(source) as image:
            rgb = image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise InputError(f"--image '{source}' is not an image Pillow can read ({type(error).__name__}): pass a "
                         "PNG or JPEG file") from None
    return {"pixel_values": preprocessing(rgb).unsqueeze(0)}
