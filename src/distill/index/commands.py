"""``distill index`` and ``distill search``: build and query an index with an exported student.

``python -m distill index --student exports/s --data configs/demo/data.yaml --split test --out indexes/s``
encodes the split's b side (captions / passages) with the student's ``tower_b`` and writes an exact
dense index or, for a sparse student, an inverted index, plus ``items.json`` (ids and raw texts) and
``index.json``. ``python -m distill search --index indexes/s --query "text"`` (or ``--image x.png``)
prints the top-k; ``--rerank-with <teacher folder>`` re-scores them with the cross-encoder teacher.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from distill.index.dense import DenseIndex
from distill.index.sparse import SparseIndex, as_csr
from distill.io import atomic_write_json, read_json

INDEX_META = "index.json"
ITEMS_NAME = "items.json"
FORMAT_VERSION = 1
FILE_MODE = 0o644


@dataclass(frozen=True)
class CorpusItem:
    """One indexed b item: its id, the id of the a item it belongs to, and its raw text."""

    id: int
    a_id: int
    text: str


# ---------------------------------------------------------------------------- data
def load_datamodule(path: str | os.PathLike[str]) -> Any:
    """A data module from a recipe (its ``data`` entry) or from a ``class_path`` data yaml."""
    import lightning as L
    import yaml

    from distill.export import instantiate, read_recipe

    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"data file '{source}' does not exist: pass a recipe or a data yaml")
    raw = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    if isinstance(raw, dict) and "class_path" in raw:
        return instantiate(raw, L.LightningDataModule)
    recipe = read_recipe(source)
    if recipe.data is None:
        raise ValueError(f"recipe '{source}' has no `data` entry")
    return instantiate(recipe.data, L.LightningDataModule)


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
    from PIL import Image

    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"image '{source}' does not exist")
    with Image.open(source) as image:
        rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).float()
    mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
    return {"pixel_values": ((pixels / 255.0 - mean_t) / std_t).unsqueeze(0)}


# ---------------------------------------------------------------------------- index
def build_index(student_dir: str | os.PathLike[str], data: str | os.PathLike[str], split: str,
                out_dir: str | os.PathLike[str], chunk_size: int = 256, progress: bool = True,
                weights: str = "float32", top_k: int | None = None) -> Path:
    """Encode ``split``'s b side with the exported student and write the index into ``out_dir``.

    Sparse students only: ``weights`` picks the posting format (``"float32"`` exact or ``"uint8"``
    impacts with block-local uint16 ids, see :mod:`distill.index.sparse`) and ``top_k`` keeps each
    item's ``k`` largest weights before indexing.
    """
    from distill.export import load_student, load_tokenizer, read_student_config

    config = read_student_config(student_dir)
    if config["embedding"]["kind"] != "sparse" and (weights != "float32" or top_k is not None):
        raise ValueError(f"'{student_dir}' is a dense student: --weights and --top-k apply to sparse students")
    tower = config["towers"]["b"]
    if tower["modality"] != "text":
        raise ValueError(f"'{student_dir}' tower b reads {tower['modality']}; `distill index` indexes text b items")
    student, tokenizer = load_student(student_dir), load_tokenizer(student_dir)
    items = split_items(load_datamodule(data), split)
    if not items:
        raise ValueError(f"split '{split}' of '{data}' is empty")
    chunks = encode_texts(student, tokenizer, [item.text for item in items], "b", tower["max_length"],
                          chunk_size, progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kind = config["embedding"]["kind"]
    if kind == "sparse":
        import scipy.sparse as sp

        index: DenseIndex | SparseIndex = SparseIndex.from_vectors(sp.vstack([as_csr(c) for c in chunks]),
                                                                   weights=weights, top_k=top_k)
    else:
        index = DenseIndex(torch.cat(chunks).numpy())
    index.save(out)
    atomic_write_json(out / ITEMS_NAME, [asdict(item) for item in items])
    meta = {
        "format_version": FORMAT_VERSION, "kind": kind, "student": str(Path(student_dir).resolve()),
        "data": str(Path(data).resolve()), "split": split, "side": "b", "count": len(items),
        "bytes": index.nbytes,
    }
    if kind == "sparse":
        meta.update({"weights": weights, "top_k": top_k})
    atomic_write_json(out / INDEX_META, meta)
    for path in out.iterdir():
        if path.is_file() and not path.name.startswith("."):
            os.chmod(path, FILE_MODE)  # temporary files are created private (0600)
    return out


def open_index(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], DenseIndex | SparseIndex, list[CorpusItem]]:
    meta_path = Path(folder) / INDEX_META
    if not meta_path.is_file():
        raise FileNotFoundError(f"'{folder}' is not an index: it has no {INDEX_META} (run `distill index`)")
    meta = read_json(meta_path)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"'{meta_path}' has format_version {meta.get('format_version')!r}; expected {FORMAT_VERSION}")
    index = SparseIndex.load(folder) if meta["kind"] == "sparse" else DenseIndex.load(folder)
    items = [CorpusItem(**row) for row in read_json(Path(folder) / ITEMS_NAME)]
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
    from distill.export import load_student, load_tokenizer, read_student_config

    if (query is None) == (image is None):
        raise ValueError("give exactly one of --query or --image")
    meta, index, items = open_index(index_dir)
    folder = student_dir or meta["student"]
    config = read_student_config(folder)
    student = load_student(folder)
    towers = config["towers"]
    if image is not None:
        if towers["a"]["modality"] != "image":
            raise ValueError(f"student '{folder}' has no image tower: search it with --query")
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
    from distill.export import load_tokenizer, read_student_config
    from distill.teachers import ShapesCrossEncoder

    if image is None:
        raise ValueError("--rerank-with scores (image, text) pairs with the cross-encoder: search with --image")
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


# ---------------------------------------------------------------------------- command line
def index_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="distill index", description="Encode a split's b side into an index.")
    parser.add_argument("--student", required=True, help="export folder written by `distill export`")
    parser.add_argument("--data", required=True, help="recipe or data yaml (class_path + init_args)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", required=True, help="index folder")
    parser.add_argument("--chunk-size", type=int, default=256, help="texts encoded per forward pass")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--weights", choices=("float32", "uint8"), default="float32",
                        help="sparse students: posting weights, exact float32 or uint8 impacts (3 bytes per posting)")
    parser.add_argument("--top-k", type=int, help="sparse students: keep each item's k largest weights")
    args = parser.parse_args(argv)
    if args.chunk_size < 1:
        parser.error(f"--chunk-size must be >= 1, got {args.chunk_size}")
    if args.top_k is not None and args.top_k < 1:
        parser.error(f"--top-k must be >= 1, got {args.top_k}")
    try:
        out = build_index(args.student, args.data, args.split, args.out, args.chunk_size,
                          progress=not args.no_progress and sys.stderr.isatty(), weights=args.weights,
                          top_k=args.top_k)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"distill index: error: {error}") from None
    meta = read_json(out / INDEX_META)
    print(f"indexed {meta['count']} items ({meta['kind']}, {meta['bytes']:,} bytes) into {out}")


def search_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="distill search", description="Search an index built by `distill index`.")
    parser.add_argument("--index", required=True)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--query", help="text query")
    group.add_argument("--image", help="image file query (encoded with tower a)")
    parser.add_argument("-k", "--k", type=int, default=10)
    parser.add_argument("--student", help="export folder (default: the one the index was built with)")
    parser.add_argument("--rerank-with", help="ShapesCrossEncoder folder (save_pretrained) re-ranking the top-k")
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error(f"-k must be >= 1, got {args.k}")
    try:
        hits = search(args.index, args.query, args.image, args.k, args.student, args.rerank_with)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"distill search: error: {error}") from None
    print(format_hits(hits))
