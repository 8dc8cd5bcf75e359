"""The plan of a teacher cache's shards, and which of them on disk can be trusted.

Every shard is recorded with its SHA-256 when it is written (a small progress file per process) and in
``manifest.json`` once the cache is complete. A shard is trusted only when its bytes match that record; a
missing, truncated or edited shard, or one written by a process killed before recording it, is computed
again. The manifest is written by whichever process finds every shard trusted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.cache.format import MANIFEST_NAME, shard_name
from distill.data.items import PairCorpus
from distill.io import atomic_write_json, file_sha256, folder_lock, read_json

__all__ = ["PROGRESS_PREFIX", "Shard", "ShardCheck", "plan_shards"]

PROGRESS_PREFIX = ".build-progress-rank"
PLAN_NAME = ".build-plan.json"


@dataclass(frozen=True)
class Shard:
    """Rows ``[start, stop)`` of one kind (``pairs``, ``a2b``, ``b2a``); ``index_in_plan`` assigns it to a
    process; ``pairs`` bounds the teacher pairs it needs (padding is not scored)."""

    kind: str
    index: int
    start: int
    stop: int
    index_in_plan: int
    pairs: int

    @property
    def file(self) -> str:
        return shard_name(self.kind, self.index)


def plan_shards(corpus: PairCorpus, shard_size: int, k: int) -> list[Shard]:
    """Every shard of a cache of ``corpus``: the training pairs, then the a2b and the b2a anchors."""
    sizes = {"pairs": len(corpus), "a2b": int(corpus.a_items.numel()), "b2a": int(corpus.b_items.numel())}
    shards: list[Shard] = []
    for kind, total in sizes.items():
        for index, start in enumerate(range(0, total, shard_size)):
            stop = min(start + shard_size, total)
            shards.append(Shard(kind, index, start, stop, len(shards), (stop - start) * (1 if kind == "pairs" else k)))
    return shards


class ShardCheck:
    """What the folder's records say about each shard file (see the module docstring)."""

    def __init__(self, folder: Path, from_manifest: dict[str, str]) -> None:
        self.folder = folder
        self.recorded: dict[str, str] = dict(from_manifest)
        for progress in sorted(folder.glob(f"{PROGRESS_PREFIX}*.json")):
            try:
                self.recorded.update(read_json(progress))
            except ValueError:  # a progress file cut short: its shards are recomputed
                continue

    def valid(self, shard: Shard) -> bool:
        path = self.folder / shard.file
        expected = self.recorded.get(shard.file)
        return expected is not None and path.is_file() and file_sha256(path) == expected

    def record(self, shard: Shard, rank: int) -> None:
        """Note a freshly written shard's SHA-256 in this process's progress file."""
        self.recorded[shard.file] = file_sha256(self.folder / shard.file)
        path = self.folder / f"{PROGRESS_PREFIX}{rank}.json"
        mine = read_json(path) if path.is_file() else {}
        mine[shard.file] = self.recorded[shard.file]
        atomic_write_json(path, mine)

    def complete(self, shards: list[Shard], header: dict[str, Any],
                 summary: Callable[[], dict[str, Any]] | None = None) -> bool:
        """Write the manifest when every shard is trusted (re-reading other processes' progress first);
        ``summary()`` adds fields computed from the complete shards."""
        with folder_lock(self.folder / "manifest", "teacher cache manifest"):
            fresh = ShardCheck(self.folder, self.recorded)
            if not all(fresh.valid(shard) for shard in shards):
                return False
            entries = [{"file": s.file, "kind": s.kind, "rows": s.stop - s.start, "sha256": fresh.recorded[s.file]}
                       for s in shards]
            manifest = {**header, **(summary() if summary is not None else {}), "shards": entries}
            path = self.folder / MANIFEST_NAME
            if not path.is_file() or read_json(path) != manifest:
                atomic_write_json(path, manifest)
            (self.folder / PLAN_NAME).unlink(missing_ok=True)
            for progress in self.folder.glob(f"{PROGRESS_PREFIX}*.json"):
                progress.unlink(missing_ok=True)
            for stale in self.folder.glob(".*.tmp"):  # temporary files of an interrupted write
                stale.unlink(missing_ok=True)
            return True
