"""A train-set shuffle that a resumed run reproduces exactly.

:class:`EpochShuffleSampler` draws epoch ``e``'s order from a generator seeded with ``(seed, e)``
alone, so the order does not depend on how many epochs this process has already run (a generator
seeded once per process would give a restarted run other orders). Lightning calls ``set_epoch``
before every epoch.

:class:`ResumableDataLoader` reports ``{"epoch", "batches"}`` (the batches delivered so far in that
epoch) through ``state_dict``; Lightning stores it in every checkpoint and hands it back through
``load_state_dict`` on ``fit --ckpt_path ...``, and the next pass then skips the batches the
interrupted run had already trained on. A checkpoint written in the middle of an epoch therefore
resumes with exactly the batches the uninterrupted run would have seen (under DDP, per process).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sized
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Sampler

__all__ = ["EpochShuffleSampler", "ResumableDataLoader", "epoch_seed"]


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed derived from ``(seed, epoch)`` alone."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch)]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & ((1 << 63) - 1)


class EpochShuffleSampler(DistributedSampler):
    """A permutation of ``range(size)`` that depends only on ``(seed, epoch)``, sharded across processes.

    With ``num_replicas`` processes (default: the ``torch.distributed`` world size when it is
    initialised, else 1) process ``rank`` reads every ``num_replicas``-th index of the permutation,
    which is first padded by wrapping around to a multiple of ``num_replicas`` (as ``DistributedSampler``
    does). It is a ``DistributedSampler`` so that Lightning neither wraps nor replaces it under DDP.
    ``skip(n)`` drops the first ``n`` indices of this process's next pass only (resuming mid-epoch).
    """

    def __init__(self, size: int, seed: int = 0, num_replicas: int | None = None, rank: int | None = None) -> None:
        # DistributedSampler.__init__ is not called: it needs an initialised process group, and the
        # process layout is read at each pass instead.
        if size < 0:
            raise ValueError(f"EpochShuffleSampler size must be >= 0, got {size}")
        self.size = int(size)
        self.seed = int(seed)
        self.epoch = 0
        self.shuffle = True
        self.drop_last = False
        self._num_replicas = num_replicas
        self._rank = rank
        self._skip = 0

    @property
    def num_replicas(self) -> int:  # type: ignore[override]
        if self._num_replicas is not None:
            return self._num_replicas
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    @property
    def rank(self) -> int:  # type: ignore[override]
        if self._rank is not None:
            return self._rank
        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip(self, count: int) -> None:
        """Leave out the first ``count`` indices of this process's next pass."""
        self._skip = max(0, int(count))

    def order(self, epoch: int | None = None) -> list[int]:
        """The full (unsharded) order of ``epoch`` (default: the current one)."""
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch if epoch is None else epoch))
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        order = self.order()
        replicas = self.num_replicas
        if replicas > 1 and order:
            total = math.ceil(len(order) / replicas) * replicas
            order = (order * math.ceil(total / len(order)))[:total][self.rank:total:replicas]
        start, self._skip = self._skip, 0
        return iter(order[start:])

    def __len__(self) -> int:
        return math.ceil(self.size / self.num_replicas)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over an :class:`EpochShuffleSampler` whose position Lightning checkpoints.

    Takes the ``DataLoader`` arguments (``sampler`` an :class:`EpochShuffleSampler`, ``batch_size`` an
    integer). Should a caller rebuild it with another sampler (Lightning does for ``overfit_batches``),
    it reads that sampler as a plain ``DataLoader`` would, and resumes from the epoch's start.
    """

    def __init__(self, dataset: Any, *, sampler: Sampler[int], batch_size: int = 1, **kwargs: Any) -> None:
        super().__init__(dataset, sampler=sampler, batch_size=batch_size, **kwargs)
        self._position = {"epoch": 0, "batches": 0}
        self._resume: dict[str, int] | None = None

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batches"}``: the epoch being read and the batches delivered in it so far."""
        return dict(self._position)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Resume at ``state_dict``'s position: the next pass over that epoch skips the delivered batches."""
        epoch, batches = int(state_dict.get("epoch", 0)), int(state_dict.get("batches", 0))
        self._resume = {"epoch": epoch, "batches": batches}
        self._position = {"epoch": epoch, "batches": batches}
        if isinstance(self.sampler, EpochShuffleSampler):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        # A generator: the sampler is read at the first ``next()``, after Lightning's ``set_epoch``.
        sampler = self.sampler
        resumable = isinstance(sampler, EpochShuffleSampler) and self.batch_size is not None
        epoch = sampler.epoch if isinstance(sampler, EpochShuffleSampler) else self._position["epoch"]
        start = 0
        if resumable and self._resume is not None and self._resume["epoch"] == epoch:
            total = len(self) if isinstance(self.dataset, Sized) else self._resume["batches"]
            start = min(self._resume["batches"], total)
            sampler.skip(start * int(self.batch_size))  # type: ignore[union-attr]
        self._resume = None
        self._position = {"epoch": epoch, "batches": start}
        set_dataset_epoch = getattr(self.dataset, "set_epoch", None)
        if callable(set_dataset_epoch):  # datasets that draw per epoch (listed negatives) draw from the epoch
            set_dataset_epoch(epoch)
        for batch in super().__iter__():
            self._position = {"epoch": epoch, "batches": self._position["batches"] + 1}
            yield batch


def resumable_train_loader(dataset: Sized, batch_size: int, seed: int, collate_fn: Any, num_workers: int = 0,
                           drop_last: bool = True) -> ResumableDataLoader:
    """The training loader every data module uses: epoch ``e``'s order depends on ``(seed, e)`` only
    and the loader's position is checkpointed, so a run resumed with ``--ckpt_path`` sees the same
    batches as an uninterrupted one."""
    return ResumableDataLoader(
        dataset,  # type: ignore[arg-type]
        sampler=EpochShuffleSampler(len(dataset), seed),
        batch_size=batch_size,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        # Workers that persist across epochs keep their copy of the dataset: one drawing per epoch needs fresh ones.
        persistent_workers=num_workers > 0 and not hasattr(dataset, "set_epoch"),
        collate_fn=collate_fn,
    )
