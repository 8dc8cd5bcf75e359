"""``python -m distill cache-teacher``: score each training anchor's top-K student candidates once, offline.

    python -m distill cache-teacher --config configs/demo/shapes-cprd.yaml --out caches/shapes-k16 \\
        [--k 16] [--student-ckpt runs/x/checkpoints/last.ckpt] [--shard-size 4096] [--split train] \\
        [--data.init_args.num_train=...]         # any further LightningCLI overrides of the recipe

The recipe's model and data are built through :class:`distill.cli.DistillCLI` (``run=False``; its
``seed_everything`` fixes the student's initial weights). Then, for the split:

1. the student (the recipe's, or the ``student.*`` weights of ``--student-ckpt``, loaded with
   ``torch.load(weights_only=True)``) encodes every distinct a item and b item once, in eval mode;
2. per anchor and direction, the top-K candidates by student cosine over the *whole split* are mined, the
   anchor's positives excluded (a2b: the captions of the image; b2a: the images of the caption);
3. the teacher scores every (anchor, candidate) pair and every training pair, ``--chunk-size`` pairs per
   call, in a fixed order;
4. shards are written atomically (temporary file + ``os.replace``) and ``manifest.json`` last
   (:mod:`distill.cache.format` describes the files).

Resuming: a killed build restarted with the same arguments keeps its complete shards and computes the
rest; the result is byte-identical to an uninterrupted build (no randomness, fixed order, no timestamps;
same hardware and thread count). A folder holding a build made with other arguments is refused, naming
the differing field. ``DISTILL_CACHE_SHARD_PAUSE=<seconds>`` sleeps after each shard (to test interruption).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from distill.cache.corpus import PairCorpus, corpus_from_datamodule, unwrap_datamodule
from distill.cache.format import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    data_identity,
    file_digest,
    first_difference,
    shard_name,
    teacher_identity,
    tensor_digest,
)
from distill.io import atomic_write_bytes, atomic_write_json, read_json
from distill.students.weights import load_student_weights

__all__ = ["BuildSettings", "build_teacher_cache", "load_student_checkpoint", "main"]

PLAN_NAME = ".build-plan.json"
PAUSE_ENV = "DISTILL_CACHE_SHARD_PAUSE"


@dataclass(frozen=True)
class BuildSettings:
    """How to build: K candidates per anchor, rows per shard, pairs per teacher call, items per student call."""

    k: int = 16
    split: str = "train"
    shard_size: int = 4096
    chunk_size: int = 1024
    batch_size: int = 256

    def check(self) -> None:
        for name in ("k", "shard_size", "chunk_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class _Shard:
    kind: str  # "pairs", "a2b" or "b2a"
    index: int
    start: int
    stop: int

    @property
    def file(self) -> str:
        return shard_name(self.kind, self.index)

    def pairs(self, k: int) -> int:
        """Teacher pairs this shard needs scored (an upper bound for a2b / b2a: padding is not scored)."""
        return (self.stop - self.start) * (1 if self.kind == "pairs" else k)


def _plan_shards(corpus: PairCorpus, shard_size: int) -> list[_Shard]:
    sizes = {"pairs": len(corpus), "a2b": int(corpus.a_items.numel()), "b2a": int(corpus.b_items.numel())}
    shards = []
    for kind, total in sizes.items():
        for index, start in enumerate(range(0, total, shard_size)):
            shards.append(_Shard(kind, index, start, min(start + shard_size, total)))
    return shards


def load_student_checkpoint(student: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load the ``student.*`` weights of a Lightning checkpoint into ``student`` (``weights_only=True``)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--student-ckpt '{path}' does not exist")
    load_student_weights(student, path, option="--student-ckpt")


def _to_device(inputs: Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {key: value.to(device) for key, value in inputs.items()}


def _views(batch: Mapping[str, Any], teacher: bool) -> tuple[Mapping[str, Tensor], Mapping[str, Tensor]]:
    if teacher:
        return batch.get("teacher_a", batch["a"]), batch.get("teacher_b", batch["b"])
    return batch["a"], batch["b"]


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(start + size, total)


@torch.no_grad()
def _encode(student: nn.Module, corpus: PairCorpus, side: str, batch_size: int, device: torch.device) -> Tensor:
    """Student embeddings ``[U, D]`` float32 (CPU) of the distinct items of one side, eval mode."""
    items = corpus.a_items if side == "a" else corpus.b_items
    encode = student.encode_a if side == "a" else student.encode_b
    outputs = []
    for start, stop in _chunks(int(items.numel()), batch_size):
        batch = corpus.load(items[start:stop])
        a_inputs, b_inputs = _views(batch, teacher=False)
        outputs.append(encode(_to_device(a_inputs if side == "a" else b_inputs, device)).float().cpu())
    return torch.cat(outputs)


@torch.no_grad()
def _mine(anchors: Tensor, columns: Tensor, positive_rows: Tensor, positive_cols: Tensor, k: int,
          ) -> tuple[Tensor, Tensor]:
    """Top-``k`` columns per anchor by cosine, positives excluded.

    ``anchors [n, D]``, ``columns [M, D]``; ``(positive_rows, positive_cols)`` list the excluded cells.
    Returns column positions ``[n, k]`` (-1 where fewer than k negatives exist) and their scores ``[n, k]``.
    """
    similarity = anchors @ columns.T
    similarity[positive_rows, positive_cols] = float("-inf")
    take = min(k, similarity.shape[1])
    scores, index = similarity.topk(take, dim=1)
    found = torch.isfinite(scores)
    index = torch.where(found, index, torch.full_like(index, -1))
    scores = torch.where(found, scores, torch.zeros_like(scores))
    if take < k:
        index = torch.cat([index, index.new_full((index.shape[0], k - take), -1)], dim=1)
        scores = torch.cat([scores, scores.new_zeros(scores.shape[0], k - take)], dim=1)
    return index, scores


class _Builder:
    """Computes the shards of one cache (see the module docstring)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, corpus: PairCorpus, settings: BuildSettings,
                 device: torch.device) -> None:
        self.student, self.teacher, self.corpus = student, teacher, corpus
        self.settings, self.device = settings, device
        self._embeddings: tuple[Tensor, Tensor] | None = None

    def embeddings(self) -> tuple[Tensor, Tensor]:
        if self._embeddings is None:
            self._embeddings = (_encode(self.student, self.corpus, "a", self.settings.batch_size, self.device),
                                _encode(self.student, self.corpus, "b", self.settings.batch_size, self.device))
        return self._embeddings

    @torch.no_grad()
    def _score(self, a_items: Tensor, b_items: Tensor) -> Tensor:
        """Teacher scores ``[P]`` float32 of the pairs (dataset item ``a_items[p]``'s a side, item
        ``b_items[p]``'s b side), ``chunk_size`` pairs per teacher call."""
        scores = []
        for start, stop in _chunks(int(a_items.numel()), self.settings.chunk_size):
            a_unique, a_index = torch.unique(a_items[start:stop], return_inverse=True)
            b_unique, b_index = torch.unique(b_items[start:stop], return_inverse=True)
            a_inputs = _views(self.corpus.load(a_unique), teacher=True)[0]
            b_inputs = _views(self.corpus.load(b_unique), teacher=True)[1]
            value = self.teacher.score_pairs(_to_device(a_inputs, self.device), _to_device(b_inputs, self.device),
                                             a_index.to(self.device), b_index.to(self.device))
            scores.append(value.float().cpu())
        return torch.cat(scores) if scores else torch.zeros(0)

    def shard(self, shard: _Shard) -> tuple[dict[str, Tensor], int]:
        """The tensors of one shard and the number of teacher pairs scored for it."""
        corpus, k = self.corpus, self.settings.k
        if shard.kind == "pairs":
            items = torch.arange(shard.start, shard.stop)
            scores = self._score(items, items)
            return {"a_ids": corpus.a_ids[items].clone(), "b_ids": corpus.b_ids[items].clone(),
                    "teacher_scores": scores}, int(items.numel())
        emb_a, emb_b = self.embeddings()
        if shard.kind == "a2b":
            anchors, columns = emb_a, emb_b
            anchor_index, column_index = corpus.a_index, corpus.b_index
            anchor_items, column_items, column_ids = corpus.a_items, corpus.b_items, corpus.b_unique
            anchor_ids = corpus.a_unique
        else:
            anchors, columns = emb_b, emb_a
            anchor_index, column_index = corpus.b_index, corpus.a_index
            anchor_items, column_items, column_ids = corpus.b_items, corpus.a_items, corpus.a_unique
            anchor_ids = corpus.b_unique
        # Positives: every (anchor, column) that some item of the split pairs together.
        own = (anchor_index >= shard.start) & (anchor_index < shard.stop)
        positions, student_scores = _mine(anchors[shard.start:shard.stop], columns,
                                          anchor_index[own] - shard.start, column_index[own], k)
        found = positions >= 0
        rows = torch.arange(shard.start, shard.stop).unsqueeze(1).expand_as(positions)
        anchor_side, column_side = anchor_items[rows[found]], column_items[positions[found]]
        if shard.kind == "a2b":
            pair_scores = self._score(anchor_side, column_side)
        else:
            pair_scores = self._score(column_side, anchor_side)
        teacher_scores = torch.zeros(positions.shape, dtype=torch.float32)
        teacher_scores[found] = pair_scores
        candidate_ids = torch.where(found, column_ids[positions.clamp(min=0)], torch.full_like(positions, -1))
        return {"anchor_ids": anchor_ids[shard.start:shard.stop].clone(), "candidate_ids": candidate_ids,
                "teacher_scores": teacher_scores, "student_scores": student_scores.float()}, int(found.sum())


def _write_shard(path: Path, tensors: dict[str, Tensor], kind: str) -> None:
    # One metadata key: safetensors writes its metadata map in hash order, which changes between processes.
    metadata = {"distill": json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind},
                                      sort_keys=True)}
    payload = save_safetensors({key: value.contiguous() for key, value in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, payload)


def _refuse(out: Path, what: str, found: tuple[str, Any, Any]) -> None:
    where, have, want = found
    raise ValueError(
        f"'{out}' already holds {what} made with different arguments: {where} is {have!r} there and {want!r} "
        "now; delete the folder or choose another --out"
    )


def build_teacher_cache(student: nn.Module, teacher: nn.Module, datamodule: Any, out: str | os.PathLike[str],
                        settings: BuildSettings = BuildSettings(), student_checkpoint: str | None = None,
                        device: str | torch.device | None = None, progress: bool | None = None) -> Path:
    """Build (or resume, or confirm) the teacher cache of ``datamodule``'s split in ``out``.

    ``datamodule`` must be set up. ``student`` and ``teacher`` are moved to ``device`` (default: the
    student's) and put in eval mode. ``student_checkpoint`` (already loaded into ``student``) is recorded in
    the manifest by file name and SHA-256. ``progress=None`` shows the bar only on a terminal.
    Returns the folder.
    """
    from tqdm.auto import tqdm

    settings.check()
    target = Path(out)
    run_device = torch.device(device) if device is not None else next(student.parameters()).device
    student.to(run_device).eval()
    teacher.to(run_device).eval()
    datamodule = unwrap_datamodule(datamodule)
    corpus = corpus_from_datamodule(datamodule, settings.split)
    shards = _plan_shards(corpus, settings.shard_size)
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "k": settings.k,
        "split": settings.split,
        "shard_size": settings.shard_size,
        "chunk_size": settings.chunk_size,
        "teacher": teacher_identity(teacher),
        "student": {
            "class": f"{type(student).__module__}.{type(student).__qualname__}",
            "weights_sha256": tensor_digest(student.state_dict()),
            "checkpoint": Path(student_checkpoint).name if student_checkpoint else None,
            "checkpoint_sha256": file_digest(student_checkpoint) if student_checkpoint else None,
        },
        "data": data_identity(datamodule, corpus, settings.split),
        "score_dtype": "float32",
        "files": [shard.file for shard in shards],
    }
    manifest_path, plan_path = target / MANIFEST_NAME, target / PLAN_NAME
    if manifest_path.is_file():
        existing = read_json(manifest_path)
        found = first_difference({key: existing.get(key) for key in header}, header)
        if found is not None:
            _refuse(target, "a teacher cache", found)
        plan_path.unlink(missing_ok=True)
        print(f"teacher cache '{target}' is complete and matches the recipe; nothing to do", file=sys.stderr)
        return target
    target.mkdir(parents=True, exist_ok=True)
    if plan_path.is_file():
        found = first_difference(read_json(plan_path), header)
        if found is not None:
            _refuse(target, "a partial teacher cache build", found)
    else:
        atomic_write_json(plan_path, header)
    for stale in target.glob(".*.tmp"):  # temporary files of an interrupted write
        stale.unlink()

    builder = _Builder(student, teacher, corpus, settings, run_device)
    pause = float(os.environ.get(PAUSE_ENV, "0") or 0)
    todo = [shard for shard in shards if not (target / shard.file).is_file()]
    total = sum(shard.pairs(settings.k) for shard in shards)
    done = total - sum(shard.pairs(settings.k) for shard in todo)
    scored = 0
    started = time.perf_counter()
    with tqdm(total=total, initial=done, unit="pair", unit_scale=True, desc="teacher pairs", dynamic_ncols=True,
              disable=None if progress is None else not progress) as bar:
        for shard in todo:
            tensors, pairs = builder.shard(shard)
            _write_shard(target / shard.file, tensors, shard.kind)
            scored += pairs
            bar.update(shard.pairs(settings.k))
            if pause > 0:
                time.sleep(pause)
    entries = [{"file": shard.file, "kind": shard.kind, "rows": shard.stop - shard.start,
                "sha256": file_digest(target / shard.file)} for shard in shards]
    atomic_write_json(manifest_path, {**header, "shards": entries})
    plan_path.unlink(missing_ok=True)
    elapsed = time.perf_counter() - started
    rate = f", {scored / elapsed:,.0f} pairs/s" if elapsed > 0 and scored else ""
    print(f"teacher cache '{target}': {len(todo)} of {len(shards)} shards computed, {scored:,} teacher pairs scored "
          f"in {elapsed:.1f} s{rate}", file=sys.stderr)
    return target


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m distill cache-teacher",
        description="Score every training anchor's top-K student candidates with the teacher, once, into a "
                    "resumable cache folder. Unknown --key=value arguments override the recipe (LightningCLI).",
    )
    parser.add_argument("--config", required=True, help="the distillation recipe (its model.teacher scores the pairs)")
    parser.add_argument("--out", default=None,
                        help="cache folder (default: the recipe's model.init_args.teacher_cache)")
    parser.add_argument("--k", type=int, default=BuildSettings.k, help="candidates per anchor and direction")
    parser.add_argument("--student-ckpt", default=None,
                        help="Lightning checkpoint whose student.* weights mine the candidates (default: the recipe's "
                             "initial student)")
    parser.add_argument("--shard-size", type=int, default=BuildSettings.shard_size, help="anchors per shard file")
    parser.add_argument("--split", default=BuildSettings.split, choices=("train", "val", "test"))
    parser.add_argument("--chunk-size", type=int, default=BuildSettings.chunk_size, help="pairs per teacher call")
    parser.add_argument("--batch-size", type=int, default=BuildSettings.batch_size, help="items per student call")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _build_from_recipe(config: str, overrides: Sequence[str]) -> tuple[Any, Any]:
    from distill.cli import DistillCLI, RecipeError, one_line

    if not Path(config).is_file():
        raise SystemExit(f"distill cache-teacher: error: recipe '{config}' does not exist")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
            cli = DistillCLI(args=["--config", config, *overrides], run=False)
    except RecipeError as error:
        raise SystemExit(f"distill cache-teacher: error: {error}") from None
    except Exception as error:  # jsonargparse reports parse errors as several exception types
        raise SystemExit(f"distill cache-teacher: error: {one_line(error)}") from None
    return cli.model, cli.datamodule


def main(argv: list[str]) -> None:
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    model, datamodule = _build_from_recipe(args.config, overrides)
    teacher = getattr(model, "teacher", None)
    student = getattr(model, "student", None)
    if student is None or teacher is None:
        parser.error(f"recipe '{args.config}' needs model.init_args.student and model.init_args.teacher: the "
                     "teacher scores the cached pairs")
    out = args.out or getattr(model, "teacher_cache", None)
    if out is None:
        parser.error("--out is required (the recipe sets no model.init_args.teacher_cache)")
    if args.student_ckpt:
        load_student_checkpoint(student, args.student_ckpt)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    datamodule = unwrap_datamodule(datamodule)
    datamodule.setup("fit")
    settings = BuildSettings(k=args.k, split=args.split, shard_size=args.shard_size, chunk_size=args.chunk_size,
                             batch_size=args.batch_size)
    try:
        build_teacher_cache(student, teacher, datamodule, out, settings, args.student_ckpt, device,
                            progress=False if args.no_progress else None)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"distill cache-teacher: error: {error}") from None
