"""CacheRefresh: every N steps the current student re-mines the teacher cache (ANCE), scoring only new pairs."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from distill.cache.build import BuildSettings, build_teacher_cache
from distill.cache.format import FORMAT, MANIFEST_NAME, read_manifest, tensor_digest
from distill.cache.shards import PLAN_NAME, PROGRESS_PREFIX
from distill.errors import InputError

__all__ = ["CacheRefresh"]


class CacheRefresh(Callback):
    """Re-mines the teacher cache with the current student every ``every_n_steps`` optimizer steps (ANCE).

    At step ``s`` (a multiple of ``every_n_steps``) the student, in eval mode and without gradients, mines each
    anchor's top-K candidates over the whole train split into ``<first cache>-step<s>``, a sibling of the cache
    the run started from, with the K, shard size, teacher batch and precision of the current cache; every pair
    that an earlier generation holds keeps its score, and the teacher (``model.init_args.teacher``, which must
    be set) scores only the others (:func:`~distill.cache.build.build_teacher_cache` with ``refresh_from``).
    The data module (:class:`~distill.cache.CachedCandidatesDataModule`) then reads the new cache: with
    ``num_workers: 0`` the next batch carries its candidates; with loader worker processes (which hold a copy
    of the old one), the first batch of the next epoch, when the loader is made again.
    No refresh happens after the run's last batch, which no batch would read. ``train/cache_pairs_scored`` and
    ``train/cache_pairs_reused`` are logged at each refresh. (Grouped batching
    under DDP: Lightning rebuilds the batch sampler, which keeps grouping by the first cache's candidates, while
    the batches carry the new cache's.)

    Under DDP every process computes its share of the shards, then they meet at a barrier, process 0 writes the
    manifest, and every process loads the new cache. The checkpoint stores the generations, so ``fit
    --ckpt_path`` resumes on the cache the run was reading. A generation folder left by a run killed during a
    refresh is resumed when the student is the same, and replaced when it is not (a resume from an earlier
    checkpoint that trained differently).

    Args:
        every_n_steps: optimizer steps between refreshes.
        batch_size: items per student forward while mining.
    """

    def __init__(self, every_n_steps: int, batch_size: int = 256) -> None:
        if every_n_steps < 1 or batch_size < 1:
            raise ValueError(f"CacheRefresh needs every_n_steps and batch_size >= 1, got {every_n_steps}, {batch_size}")
        self.every_n_steps = every_n_steps
        self.batch_size = batch_size
        self.generations: list[str] = []  # the cache folders read so far, oldest first
        self._last_step = -1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if getattr(pl_module, "teacher", None) is None:
            raise ValueError("CacheRefresh needs model.init_args.teacher: the teacher scores the pairs a refresh "
                             "mines that no earlier cache holds")
        if not hasattr(trainer.datamodule, "resolved_cache_dir"):
            raise ValueError(f"CacheRefresh needs data: distill.cache.CachedCandidatesDataModule, not "
                             f"{type(trainer.datamodule).__name__}")

    def state_dict(self) -> dict[str, Any]:
        return {"generations": list(self.generations), "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.generations = list(state_dict.get("generations", []))
        self._last_step = int(state_dict.get("last_step", -1))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        data = trainer.datamodule
        if not self.generations:
            self.generations = [str(data.cache.path)]
        elif Path(self.generations[-1]) != Path(data.cache.path):  # resumed: read the generation the run was on
            data.load(self.generations[-1])

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self._last_step = step
            if not _last_batch(trainer, step, batch_idx):  # no batch would read a refresh at the run's end
                self.refresh(trainer, pl_module, step)

    def refresh(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> Path:
        """Build generation ``step`` with the current student and switch the data module to it."""
        data = trainer.datamodule
        first = Path(self.generations[0])
        target = first.parent / f"{first.name}-step{step}"
        manifest = data.cache.manifest
        settings = BuildSettings(k=int(manifest["k"]), split="train", shard_size=int(manifest["shard_size"]),
                                 teacher_max_pairs=int(manifest["teacher_max_pairs"]), batch_size=self.batch_size,
                                 teacher_precision=str(manifest["teacher_precision"]), rank=trainer.global_rank,
                                 world_size=trainer.world_size)
        student, teacher = pl_module.student, pl_module.teacher
        _broadcast_buffers(student, trainer.world_size)
        stale = _other_student(target, tensor_digest(student.state_dict()))  # every process checks, one deletes
        trainer.strategy.barrier("cache_refresh_check")
        if stale and trainer.global_rank == 0:
            shutil.rmtree(target)
        trainer.strategy.barrier("cache_refresh_start")
        was_training, teacher_device = student.training, next(teacher.parameters()).device
        parents = list(reversed(self.generations))  # newest first: a pair several hold takes the newest score
        try:
            build_teacher_cache(student, teacher, data, target, settings, device=pl_module.device, progress=False,
                                refresh_from=parents, write_manifest=trainer.world_size == 1)
            trainer.strategy.barrier("cache_refresh_shards")
            if trainer.world_size > 1 and trainer.global_rank == 0:
                whole = replace(settings, rank=0, world_size=1)
                build_teacher_cache(student, teacher, data, target, whole, device=pl_module.device, progress=False,
                                    refresh_from=parents)
            trainer.strategy.barrier("cache_refresh_manifest")
        finally:
            student.train(was_training)
            teacher.to(teacher_device)
        data.load(target)
        self.generations.append(str(target))
        counts = read_manifest(target)
        for name in ("pairs_scored", "pairs_reused"):
            pl_module.log(f"train/cache_{name}", float(counts[name]), on_step=True, on_epoch=False, sync_dist=False)
        if getattr(trainer.train_dataloader, "num_workers", 0) > 0:
            trainer.fit_loop._combined_loader = None  # workers hold the old tables: make the loader again next epoch
        return target


def _last_batch(trainer: L.Trainer, step: int, batch_idx: int) -> bool:
    """Whether the run ends after this batch: ``max_steps`` reached (``fast_dev_run`` sets it), or the last batch of
    the last epoch of an epoch-bound run."""
    if trainer.max_steps is not None and trainer.max_steps > 0:
        return step >= trainer.max_steps
    epochs, batches = trainer.max_epochs, trainer.num_training_batches
    return (epochs is not None and epochs > 0 and trainer.current_epoch >= epochs - 1
            and isinstance(batches, int) and batch_idx + 1 >= batches)


def _broadcast_buffers(student: torch.nn.Module, world_size: int) -> None:
    """Process 0's buffers (batch-norm statistics) in every process: each updated its own in its last forward,
    and every process must mine with one student (DDP itself broadcasts them at the next forward)."""
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        for buffer in student.buffers():
            torch.distributed.broadcast(buffer, src=0)


def _other_student(target: Path, student_digest: str) -> bool:
    """Whether ``target`` holds a cache (complete or begun) of another student, made of cache files only (which a
    refresh may then replace); a refusal when it holds anything else."""
    for name in (MANIFEST_NAME, PLAN_NAME):
        try:
            header = json.loads((target / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if header.get("format") != FORMAT or header.get("student", {}).get("weights_sha256") == student_digest:
            return False
        foreign = [p.name for p in sorted(target.iterdir()) if not (
            p.suffix == ".safetensors" or p.name in (MANIFEST_NAME, PLAN_NAME) or p.name.startswith(PROGRESS_PREFIX)
            or p.name.endswith((".tmp", ".lock")))]
        if foreign:
            raise InputError(f"CacheRefresh: '{target}' holds a cache of another student and '{foreign[0]}', which "
                             "distill did not write: move it out of the folder (the folder is then rebuilt)")
        return True
    return False
