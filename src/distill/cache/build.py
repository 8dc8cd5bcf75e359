"""Building a teacher-score cache: score each training anchor's top-K student candidates once, offline.

For the split of a set-up data module:

1. the student encodes every distinct a item and b item once, in eval mode (embeddings only);
2. per anchor and direction, the top-K candidates by student cosine over the *whole split* are mined in
   bounded memory (:func:`distill.evaluation.top_k`), the anchor's positives excluded (a2b: the captions of
   the image; b2a: the images of the caption);
3. the teacher scores every (anchor, candidate) pair and every training pair through
   :class:`~distill.teachers.TeacherScorer` (``teacher_max_pairs`` per forward, its own precision), loading
   only the items of each chunk, in a fixed order;
4. shards are written atomically, each recorded with its SHA-256 in a progress file, and ``manifest.json``
   last (:mod:`distill.cache.format` describes the files).

**Resuming and verifying.** A rerun with the same arguments checks every shard on disk against the
progress record (or the manifest, for a complete cache): a missing, truncated or edited shard is computed
again and the others are kept; the result is byte-identical to an uninterrupted build (no randomness, fixed
order, no timestamps; same hardware and thread count). A folder holding a build made with other arguments
is refused, naming the differing field.

**Several machines.** ``rank`` / ``world_size`` (``--rank`` / ``--world-size``, or torchrun's ``RANK`` /
``WORLD_SIZE``, or a SLURM array's ``SLURM_ARRAY_TASK_ID`` / ``SLURM_ARRAY_TASK_COUNT``) make each process
compute the shards ``i`` with ``i % world_size == rank`` of the same plan, into one shared folder; the
process that finds every shard present and valid writes the manifest. No process group is needed.
``DISTILL_CACHE_SHARD_PAUSE=<seconds>`` sleeps after each shard (to test interruption).

**Refreshing** (``refresh_from``, ``--refresh-from``): a new student re-mines, and every pair an earlier cache
holds takes its score from there (:mod:`distill.cache.refresh`); the manifest names the earlier caches and
counts the pairs reused and scored.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from distill.cache.format import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    data_identity,
    first_difference,
    teacher_identity,
    tensor_digest,
)
from distill.cache.refresh import KnownScores
from distill.cache.shards import PLAN_NAME, Shard, ShardCheck, plan_shards
from distill.data.batch import teacher_views
from distill.data.items import PairCorpus, corpus_from_datamodule, unwrap_datamodule
from distill.errors import InputError
from distill.evaluation.ranking import pairs_mask, top_k
from distill.inputs import Inputs, to_device
from distill.io import atomic_write_bytes, atomic_write_json, file_sha256, folder_lock, read_json
from distill.teachers.scoring import TeacherScorer

__all__ = ["BuildSettings", "build_teacher_cache"]

PAUSE_ENV = "DISTILL_CACHE_SHARD_PAUSE"


@dataclass(frozen=True)
class BuildSettings:
    """K candidates per anchor, rows per shard, pairs per teacher forward, items per student forward, the
    teacher's precision, and this process's share of the shards (``rank`` of ``world_size``)."""

    k: int = 16
    split: str = "train"
    shard_size: int = 4096
    teacher_max_pairs: int = 1024
    batch_size: int = 256
    teacher_precision: str = "32"
    rank: int = 0
    world_size: int = 1

    def check(self) -> None:
        for name in ("k", "shard_size", "teacher_max_pairs", "batch_size", "world_size"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.rank < self.world_size:
            raise InputError(f"--rank must be in [0, {self.world_size}), got {self.rank}")

    def header(self) -> dict[str, Any]:
        """The settings that define the cache's content (rank and world size do not)."""
        return {"k": self.k, "split": self.split, "shard_size": self.shard_size,
                "teacher_max_pairs": self.teacher_max_pairs, "teacher_precision": self.teacher_precision}


@torch.no_grad()
def _encode(student: nn.Module, corpus: PairCorpus, side: str, batch_size: int, device: torch.device) -> Tensor:
    """Student embeddings ``[U, D]`` float32 (CPU) of the distinct items of one side, eval mode."""
    items = corpus.a_items if side == "a" else corpus.b_items
    encode = student.encode_a if side == "a" else student.encode_b
    outputs = []
    for start in range(0, int(items.numel()), batch_size):
        batch = corpus.load(items[start:start + batch_size])
        outputs.append(encode(to_device(batch[side], device)).float().cpu())
    return torch.cat(outputs)


class _Builder:
    """Computes the shards of one cache (see the module docstring)."""

    def __init__(self, student: nn.Module, scorer: TeacherScorer, corpus: PairCorpus, settings: BuildSettings,
                 device: torch.device, known: KnownScores | None = None) -> None:
        self.student, self.scorer, self.corpus = student, scorer, corpus
        self.settings, self.device, self.known = settings, device, known
        self._embeddings: tuple[Tensor, Tensor] | None = None

    def embeddings(self) -> tuple[Tensor, Tensor]:
        if self._embeddings is None:
            self._embeddings = (_encode(self.student, self.corpus, "a", self.settings.batch_size, self.device),
                                _encode(self.student, self.corpus, "b", self.settings.batch_size, self.device))
        return self._embeddings

    def _load(self, side: str, items: Tensor) -> Inputs:
        view = teacher_views(self.corpus.load(items))[0 if side == "a" else 1]
        return to_device(view, self.device)

    def _teacher(self, a_items: Tensor, b_items: Tensor) -> Tensor:
        return self.scorer.score_loaded(lambda ids: self._load("a", ids), lambda ids: self._load("b", ids),
                                        a_items, b_items)

    def _score(self, a_items: Tensor, b_items: Tensor) -> Tensor:
        """Teacher scores ``[P]`` of (item ``a_items[p]``'s a side, item ``b_items[p]``'s b side): known ones
        from the earlier caches of a refresh, the others from the teacher."""
        if self.known is None:
            return self._teacher(a_items, b_items)
        keys = self.corpus.a_index[a_items] * self.known.num_b + self.corpus.b_index[b_items]
        found, scores = self.known.lookup(keys)
        if not bool(found.all()):
            scores[~found] = self._teacher(a_items[~found], b_items[~found]).float()
        return scores

    def shard(self, shard: Shard) -> tuple[dict[str, Tensor], int]:
        """The tensors of one shard and the number of teacher pairs scored for it."""
        corpus, k = self.corpus, self.settings.k
        if shard.kind == "pairs":
            items = torch.arange(shard.start, shard.stop)
            return {"a_ids": corpus.a_ids[items].clone(), "b_ids": corpus.b_ids[items].clone(),
                    "teacher_scores": self._score(items, items)}, int(items.numel())
        emb_a, emb_b = self.embeddings()
        a2b = shard.kind == "a2b"
        anchors, columns = (emb_a, emb_b) if a2b else (emb_b, emb_a)
        anchor_index, column_index = (corpus.a_index, corpus.b_index) if a2b else (corpus.b_index, corpus.a_index)
        anchor_items, column_items = (corpus.a_items, corpus.b_items) if a2b else (corpus.b_items, corpus.a_items)
        anchor_ids, column_ids = (corpus.a_unique, corpus.b_unique) if a2b else (corpus.b_unique, corpus.a_unique)
        own = (anchor_index >= shard.start) & (anchor_index < shard.stop)  # the split's pairs are positives
        mask = pairs_mask(anchor_index[own] - shard.start, column_index[own])
        ranking = top_k(anchors[shard.start:shard.stop], columns, k, column_ids, mask)
        positions, found = ranking.index, ranking.index >= 0
        rows = torch.arange(shard.start, shard.stop).unsqueeze(1).expand_as(positions)
        anchor_side, column_side = anchor_items[rows[found]], column_items[positions[found]]
        pair_scores = self._score(anchor_side, column_side) if a2b else self._score(column_side, anchor_side)
        teacher_scores = torch.zeros(positions.shape, dtype=torch.float32)
        teacher_scores[found] = pair_scores
        candidate_ids = torch.where(found, column_ids[positions.clamp(min=0)], torch.full_like(positions, -1))
        student_scores = torch.where(found, ranking.scores, torch.zeros_like(ranking.scores))
        return {"anchor_ids": anchor_ids[shard.start:shard.stop].clone(), "candidate_ids": candidate_ids,
                "teacher_scores": teacher_scores, "student_scores": student_scores.float()}, int(found.sum())


def _write_shard(path: Path, tensors: Mapping[str, Tensor], kind: str) -> None:
    # One metadata key: safetensors writes its metadata map in hash order, which changes between processes.
    metadata = {"distill": json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind},
                                      sort_keys=True)}
    payload = save_safetensors({key: value.contiguous() for key, value in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, payload)


def _header(student: nn.Module, teacher: nn.Module, datamodule: Any, corpus: PairCorpus, settings: BuildSettings,
            shards: list[Shard], student_checkpoint: str | None) -> dict[str, Any]:
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, **settings.header(),
        "teacher": teacher_identity(teacher),
        "student": {
            "class": f"{type(student).__module__}.{type(student).__qualname__}",
            "weights_sha256": tensor_digest(student.state_dict()),
            "checkpoint": Path(student_checkpoint).name if student_checkpoint else None,
            "checkpoint_sha256": _source_sha256(student_checkpoint) if student_checkpoint else None,
        },
        "data": data_identity(datamodule, corpus, settings.split),
        "score_dtype": "float32",
        "files": [shard.file for shard in shards],
    }


def _source_sha256(source: str) -> str:
    """SHA-256 of a checkpoint file, or of an export folder's weights."""
    path = Path(source)
    return file_sha256(path / "model.safetensors" if path.is_dir() else path)


def _refuse(out: Path, what: str, found: tuple[str, Any, Any]) -> None:
    where, have, want = found
    raise InputError(f"'{out}' already holds {what} made with different arguments: {where} is {have!r} there and "
                     f"{want!r} now; delete the folder or choose another --out")


def _adopt_plan(target: Path, header: dict[str, Any]) -> ShardCheck:
    """Check an existing build (complete or partial) against the header; return the shard check to resume."""
    manifest_path, plan_path = target / MANIFEST_NAME, target / PLAN_NAME
    recorded: dict[str, str] = {}
    if manifest_path.is_file():
        existing = read_json(manifest_path)
        found = first_difference({key: existing.get(key) for key in header}, header)
        if found is not None:
            _refuse(target, "a teacher cache", found)
        recorded = {entry["file"]: entry["sha256"] for entry in existing.get("shards", [])}
    elif plan_path.is_file():
        found = first_difference(read_json(plan_path), header)
        if found is not None:
            _refuse(target, "a partial teacher cache build", found)
    atomic_write_json(plan_path, header)
    return ShardCheck(target, recorded)


def build_teacher_cache(student: nn.Module, teacher: nn.Module, datamodule: Any, out: str | os.PathLike[str],
                        settings: BuildSettings = BuildSettings(), student_checkpoint: str | None = None,
                        device: str | torch.device | None = None, progress: bool | None = None,
                        refresh_from: Sequence[str | os.PathLike[str]] = (), write_manifest: bool = True) -> Path:
    """Build (or resume, repair, or confirm) this process's share of the teacher cache of ``datamodule``'s split.

    ``datamodule`` must be set up. ``student`` and ``teacher`` are moved to ``device`` (default: the
    student's) and put in eval mode. ``student_checkpoint`` (already loaded into ``student``) is recorded by
    file name and SHA-256. ``progress=None`` shows the bar only on a terminal. ``refresh_from``: earlier caches
    of the same teacher and data whose scores are reused (see the module docstring). ``write_manifest=False``
    leaves the manifest to a later call (processes that meet at a barrier first). Returns the folder.
    """
    settings.check()
    target = Path(out)
    run_device = torch.device(device) if device is not None else next(student.parameters()).device
    student.to(run_device).eval()
    teacher.to(run_device).eval()
    scorer = TeacherScorer(teacher, settings.teacher_max_pairs, settings.teacher_precision)
    scorer.apply_precision()
    datamodule = unwrap_datamodule(datamodule)
    corpus = corpus_from_datamodule(datamodule, settings.split)
    shards = plan_shards(corpus, settings.shard_size, settings.k)
    header = _header(student, teacher, datamodule, corpus, settings, shards, student_checkpoint)
    known = KnownScores.from_caches(refresh_from, corpus, header) if refresh_from else None
    if known is not None:
        header["refresh_from"] = known.parents
    target.mkdir(parents=True, exist_ok=True)

    def summary() -> dict[str, Any]:
        return known.summary(target, [shard.file for shard in shards], corpus) if known is not None else {}

    with folder_lock(target / f"rank-{settings.rank}", "teacher cache share"):
        check = _adopt_plan(target, header)
        mine = [shard for shard in shards if shard.index_in_plan % settings.world_size == settings.rank]
        todo = [shard for shard in mine if not check.valid(shard)]
        if not todo and (not write_manifest or check.complete(shards, header, summary)):
            done = "is complete, every shard verified" if write_manifest else \
                f"has every shard of rank {settings.rank}/{settings.world_size}"
            print(f"teacher cache '{target}' {done}; nothing to do", file=sys.stderr)
            return target
        builder = _Builder(student, scorer, corpus, settings, run_device, known)
        _compute(builder, check, target, todo, mine, progress)
    if write_manifest:
        check.complete(shards, header, summary)
    return target


def _compute(builder: _Builder, check: ShardCheck, target: Path, todo: list[Shard], mine: list[Shard],
             progress: bool | None) -> None:
    """Compute and record the ``todo`` shards of this process's share ``mine``, with a progress bar."""
    from distill.progress import progress as progress_bar

    settings = builder.settings
    pause = float(os.environ.get(PAUSE_ENV, "0") or 0)
    started, scored, calls = time.perf_counter(), 0, len(builder.scorer.calls)
    total = sum(shard.pairs for shard in mine)
    with progress_bar(total, "teacher pairs", "pairs", enabled=progress,
                      initial=total - sum(s.pairs for s in todo)) as bar:
        for shard in todo:
            tensors, pairs = builder.shard(shard)
            _write_shard(target / shard.file, tensors, shard.kind)
            check.record(shard, settings.rank)
            scored += pairs
            bar.update(shard.pairs)
            if pause > 0:
                time.sleep(pause)
    elapsed = time.perf_counter() - started
    rate = f", {scored / elapsed:,.0f} pairs/s" if elapsed > 0 and scored else ""
    print(f"teacher cache '{target}': {len(todo)} of {len(mine)} shards of rank {settings.rank}/{settings.world_size} "
          f"computed, {scored:,} pairs in {elapsed:.1f} s{rate}, {sum(builder.scorer.calls[calls:]):,} scored by the "
          "teacher", file=sys.stderr)
