"""Build and query an index folder of a split's b items with an exported student.

``python -m distill index --student exports/s --data configs/demo/data.yaml --split test --out indexes/s``
encodes the split's b side (captions / passages) with the student's ``tower_b`` and writes an exact
dense index or, for a sparse student, an inverted index, plus ``items.json`` (ids and raw texts) and
``index.json``, the manifest: the build's id, the student's fingerprint, and every file's size and
SHA-256. The folder is built aside and put in place in one step; a second build of the same folder at
the same time is refused; opening checks every file against the manifest.
``python -m distill search --index indexes/s --query "text"`` (or ``--image x.png``) prints the top-k;
``--rerank-with <teacher folder>`` re-scores them with the cross-encoder teacher.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from distill.errors import InputError
from distill.io import atomic_folder, atomic_write_json, folder_manifest, read_json, verify_folder
from distill.serving.index.dense import DenseIndex
from distill.serving.index.sparse import SparseIndex, as_csr
from distill.serving.loading import CONFIG_NAME, WEIGHTS_NAME

INDEX_META = "index.json"
ITEMS_NAME = "items.json"
FORMAT_VERSION = 2
REBUILD = "rebuild it with `python -m distill index`"


@dataclass(frozen=True)
class CorpusItem:
    """One indexed b item: its id, the id of the a item it belongs to, and its raw text."""

    id: int
    a_id: int
    text: str


# ---------------------------------------------------------------------------- data
def split_items(datamodule: Any, split: str) -> list[CorpusItem]:
    """The b items of ``split`` in loader order.

    Uses ``datamodule.b_texts(split) -> [(id, a_id, text), ...]`` when the data module defines it,
    else the corpus of :class:`distill.data.ShapesDataModule`.
    """
    hook = getattr(datamodule, "b_texts", None)
    if callable(hook):
        return [CorpusItem(int(i), int(a), str(t)) for i, a, t in hook(split)]
    datamodule.setup("test")
    corpus = getattr(datamodule, "corpus", None)
    if corpus is None or not hasattr(corpus, "caption_id"):
        raise ValueError(
            f"{type(datamodule).__name__} exposes no raw texts: give it a `b_texts(split)` method returning "
            "(id, a_id, text) rows"
        )
    return [CorpusItem(int(corpus.caption_id(item.image_id, index)), int(item.image_id), caption)
            for item in corpus.split(split) for index, caption in enumerate(item.captions)]


# ---------------------------------------------------------------------------- encoding
def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> dict[str, Tensor]:
    encoded = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


@torch.no_grad()
def encode_texts(student: nn.Module, tokenizer: Any, texts: Sequence[str], side: str, max_length: int,
                 chunk_size: int = 256, progress: bool = False) -> list[Tensor]:
    """``student.encode_<side>`` of ``texts``, ``chunk_size`` at a time. Returns the chunks' ``[n, D]``."""
    from tqdm.auto import tqdm

    encode = getattr(student, f"encode_{side}")
    outputs = []
    with tqdm(total=len(texts), unit="text", desc=f"encoding {side}", disable=not progress) as bar:
        for start in range(0, len(texts), chunk_size):
            chunk = texts[start:start + chunk_size]
            outputs.append(encode(tokenize(tokenizer, chunk, max_length)).float().cpu())
            bar.update(len(chunk))
    return outputs


def load_image(path: str | os.PathLike[str], size: int, mean: float | Sequence[float],
               std: float | Sequence[float]) -> dict[str, Tensor]:
    """An image file -> ``{"pixel_values": [1, 3, size, size]}``, resized and normalised ``(x/255 - mean)/std``.

    ``mean`` / ``std`` are scalars or per-channel (RGB) sequences.
    """
    from PIL import Image, UnidentifiedImageError

    source = Path(path)
    if not source.is_file():
        raise InputError(f"--image '{source}' does not exist")
    try:
        with Image.open(source) as image:
            rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise InputError(f"--image '{source}' is not an image Pillow can read ({type(error).__name__}): pass a "
                         "PNG or JPEG file") from None
    pixels = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).float()
    mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
    return {"pixel_values": ((pixels / 255.0 - mean_t) / std_t).unsqueeze(0)}


# ---------------------------------------------------------------------------- index
def student_fingerprint(student_dir: str | os.PathLike[str]) -> str:
    """SHA-256 over an export's weights and config: which student encoded an index."""
    digest = hashlib.sha256()
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        path = Path(student_dir) / name
        if not path.is_file():
            raise InputError(f"'{student_dir}' is not a student export: it has no {name} (run `distill export`)")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def build_index(student_dir: str | os.PathLike[str], datamodule: Any, split: str,
                out_dir: str | os.PathLike[str], chunk_size: int = 256, progress: bool = True,
                weights: str = "float32", top_k: int | None = None, source: str = "") -> Path:
    """Encode ``split``'s b side with the exported student and write the index folder ``out_dir``.

    Sparse students only: ``weights`` picks the posting format (``"float32"`` exact or ``"uint8"``
    impacts with block-local uint16 ids, see :mod:`distill.serving.index.sparse`) and ``top_k`` keeps each
    item's ``k`` largest weights before indexing. ``source`` (the data file) is recorded in the manifest.
    """
    from distill.serving.loading import load_student, load_tokenizer, read_student_config

    config = read_student_config(student_dir)
    kind = config["embedding"]["kind"]
    if kind != "sparse" and (weights != "float32" or top_k is not None):
        raise InputError(f"'{student_dir}' is a dense student: --weights and --top-k apply to sparse students")
    tower = config["towers"]["b"]
    if tower["modality"] != "text":
        raise InputError(f"'{student_dir}' tower b reads {tower['modality']}; `distill index` indexes text b items")
    student, tokenizer = load_student(student_dir), load_tokenizer(student_dir)
    items = split_items(datamodule, split)
    if not items:
        raise InputError(f"split '{split}' of '{source}' is empty: nothing to index")
    chunks = encode_texts(student, tokenizer, [item.text for item in items], "b", tower["max_length"],
                          chunk_size, progress)
    if kind == "sparse":
        import scipy.sparse as sp

        index: DenseIndex | SparseIndex = SparseIndex.from_vectors(sp.vstack([as_csr(c) for c in chunks]),
                                                                   weights=weights, top_k=top_k)
    else:
        index = DenseIndex(torch.cat(chunks).numpy())
    meta = {
        "format_version": FORMAT_VERSION, "kind": kind, "build_id": uuid.uuid4().hex,
        "student": str(Path(student_dir).resolve()), "student_fingerprint": student_fingerprint(student_dir),
        "data": source, "split": split, "side": "b", "count": len(items), "bytes": index.nbytes,
    }
    if kind == "sparse":
        meta.update({"weights": weights, "top_k": top_k})
    with atomic_folder(out_dir, "index folder") as scratch:
        index.save(scratch)
        atomic_write_json(scratch / ITEMS_NAME, [asdict(item) for item in items])
        atomic_write_json(scratch / INDEX_META, {**meta, "files": folder_manifest(scratch, exclude=(INDEX_META,))})
    return Path(out_dir)


def open_index(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], DenseIndex | SparseIndex, list[CorpusItem]]:
    """The manifest, the index and the items of an index folder, after checking every file against the manifest."""
    meta_path = Path(folder) / INDEX_META
    if not meta_path.is_file():
        raise InputError(f"'{folder}' is not an index: it has no {INDEX_META} ({REBUILD})")
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        found = meta.get("format_version") if isinstance(meta, dict) else None
        raise InputError(f"'{meta_path}' has format_version {found!r}; this distill reads {FORMAT_VERSION}: {REBUILD}")
    verify_folder(folder, meta.get("files") or {}, "index", REBUILD)
    index = SparseIndex.load(folder) if meta["kind"] == "sparse" else DenseIndex.load(folder)
    items = [CorpusItem(**row) for row in read_json(Path(folder) / ITEMS_NAME)]
    if len(items) != len(index) or len(items) != int(meta.get("count", -1)):
        raise InputError(f"index '{folder}' holds {len(index)} vectors and {len(items)} items, its manifest "
                         f"{meta.get('count')}: {REBUILD}")
    return meta, index, items


# ---------------------------------------------------------------------------- search
@dataclass
class Hit:
    rank: int
    item: CorpusItem
    score: float
    teacher_score: float | None = None


@torch.no_grad()
def search(index_dir: str | os.PathLike[str], query: str | None = None, image: str | None = None, k: int = 10,
           student_dir: str | None = None, rerank_with: str | None = None) -> list[Hit]:
    """Top-``k`` items of an index for a text ``query`` or an ``image`` file, optionally re-ranked.

    A text query goes through the student's text a-tower, or through ``tower_b`` (text-to-text in
    the shared space) when tower a reads images. An image goes through the image a-tower.
    ``rerank_with`` (a ShapesCrossEncoder folder) re-scores the hits as (image, text) pairs.
    """
    from distill.serving.loading import load_student, load_tokenizer, read_student_config

    if (query is None) == (image is None):
        raise InputError("give exactly one of --query or --image")
    if query is not None and not query.strip():
        raise InputError("--query is empty: give the text to search for")
    meta, index, items = open_index(index_dir)
    folder = student_dir or meta["student"]
    if student_fingerprint(folder) != meta.get("student_fingerprint"):
        raise InputError(f"index '{index_dir}' was built with another student than '{folder}' (their fingerprints "
                         "differ): search with the student that built it, or rebuild the index with this one")
    config = read_student_config(folder)
    student = load_student(folder)
    towers = config["towers"]
    if image is not None:
        if towers["a"]["modality"] != "image":
            raise InputError(f"student '{folder}' has no image tower: search it with --query")
        spec = towers["a"]
        inputs = load_image(image, spec["image_size"], spec["pixel_mean"], spec["pixel_std"])
        vector = student.encode_a(inputs)
    else:
        side = "a" if towers["a"]["modality"] == "text" else "b"
        vector = torch.cat(encode_texts(student, load_tokenizer(folder), [query], side, towers[side]["max_length"]))
    vector = vector.float().cpu().numpy()
    scores, rows = index.search(vector, k)
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
    teacher = ShapesCrossEncoder.from_pretrained(teacher_dir).freeze()
    spec = read_student_config(student_dir)["towers"]["a"]
    pixels = load_image(image, teacher.config.image_size, spec["pixel_mean"], spec["pixel_std"])
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


