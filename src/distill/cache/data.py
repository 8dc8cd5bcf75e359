"""Training from a teacher cache: batches whose anchors bring their cached candidates along.

:class:`CachedCandidatesDataModule` wraps the recipe's data module. Validation, test and predict loaders
are the wrapped module's; the train loader adds the cache, in one of two ways (``batching``):

* ``"random"`` (the default, as dense retrievers train on mined negatives: DPR, ANCE, Tevatron): the wrapped
  module's own shuffle and batches, so in-batch negatives stay random, and each anchor brings its first
  ``candidates_per_anchor`` cached candidates per direction as *extra* items that the student encodes
  (:mod:`distill.cache.extras`). Resumable mid-epoch like every train loader (:mod:`distill.data.sampling`).
* ``"grouped"``: :class:`CandidateGroupBatchSampler` fills each batch of ``B`` items breadth-first over the
  *candidate graph*: from a seed item (drawn from a shuffled sampler) it adds the items holding the seed's
  cached candidates (the captions of its a2b list, one caption of each image of its b2a list; an image
  already in the batch is not added twice), then their candidates, and so on, starting from the next seed
  when a neighbourhood is exhausted. The student then scores the candidates in-batch, so a step encodes no
  more than an InfoNCE step, but every in-batch negative is a hard one (topic-aware batching, as in TAS-B).
  Measured on the shapes grid split (docs/benchmarks.md): with InfoNCE in the loss this collapses, because
  the student cannot separate a batch of near-duplicates and InfoNCE drives the learnable temperature up
  until every score ties. Kept for students that can (and for losses without InfoNCE).

:class:`CachedCollate` adds ``batch["teacher_cache"]`` (see :data:`distill.cache.format.CACHE_FIELDS`): per
item, its a2b and b2a cached candidate ids and teacher scores and the teacher score of its own pair, and, with
random batching, ``batch["teacher_cache_extra"]``. The candidate source resolves the ids to batch columns.

Grouped batching: the epoch has ``len(sampler) // B`` batches (the last partial batch is dropped). Seeds
already placed in an earlier batch of the epoch are skipped; items may appear in several batches as
candidates, so an epoch visits hard items more often than easy ones. Under DDP, Lightning injects a
``DistributedSampler`` into the batch sampler (it subclasses ``BatchSampler`` and takes ``sampler``): each
rank draws its seeds from its own shard of the items.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler

from distill.cache.extras import ORDERS, CandidateExtras
from distill.cache.format import (CACHE_BATCH_KEY, CACHE_EXTRA_KEY, TeacherCache, data_identity, load_cache,
                                  verify_manifest)
from distill.data.common import DataError
from distill.data.items import PairCorpus, corpus_from_datamodule
from distill.data.sampling import EpochShuffleSampler, resumable_train_loader

__all__ = [
    "BATCHING",
    "CachedCandidatesDataModule",
    "CachedCollate",
    "CandidateGroupBatchSampler",
    "CandidateTables",
    "IndexedDataset",
]


BATCHING = ("random", "grouped")
DEFAULT_CANDIDATES_PER_ANCHOR = 2


@dataclass(frozen=True)
class CandidateTables:
    """Per-item views of a cache, aligned with a :class:`PairCorpus` (N items, K candidates).

    ``a2b_ids`` / ``a2b_scores``: ``[N, K]``, the cached candidates of each item's a id (b ids, -1 padding);
    ``b2a_ids`` / ``b2a_scores``: ``[N, K]``, those of each item's b id (a ids); ``pair_scores``: ``[N]``.
    ``item_of_b``: the first item holding each b id; ``items_of_a``: the items holding each a id;
    ``item_a_ids``: the a id of every item.
    """

    a2b_ids: Tensor
    a2b_scores: Tensor
    b2a_ids: Tensor
    b2a_scores: Tensor
    pair_scores: Tensor
    item_of_b: dict[int, int]
    items_of_a: dict[int, list[int]]
    item_a_ids: list[int]

    @classmethod
    def build(cls, cache: TeacherCache, corpus: PairCorpus) -> "CandidateTables":
        if not (torch.equal(cache.pair_a_ids, corpus.a_ids) and torch.equal(cache.pair_b_ids, corpus.b_ids)):
            raise DataError(f"teacher cache '{cache.path}' lists other items than the data module's split; "
                             "rebuild it with `python -m distill cache-teacher`")
        a_row = _positions(cache.anchor_ids["a2b"], corpus.a_ids, cache.path, "a2b")
        b_row = _positions(cache.anchor_ids["b2a"], corpus.b_ids, cache.path, "b2a")
        item_of_b: dict[int, int] = {}
        items_of_a: dict[int, list[int]] = {}
        for item, (a_id, b_id) in enumerate(zip(corpus.a_ids.tolist(), corpus.b_ids.tolist())):
            item_of_b.setdefault(b_id, item)
            items_of_a.setdefault(a_id, []).append(item)
        return cls(
            a2b_ids=cache.candidate_ids["a2b"][a_row], a2b_scores=cache.teacher_scores["a2b"][a_row],
            b2a_ids=cache.candidate_ids["b2a"][b_row], b2a_scores=cache.teacher_scores["b2a"][b_row],
            pair_scores=cache.pair_scores.float(), item_of_b=item_of_b, items_of_a=items_of_a,
            item_a_ids=corpus.a_ids.tolist(),
        )

    def fields(self, items: Tensor) -> dict[str, Tensor]:
        """``batch["teacher_cache"]`` for the given items (see :data:`~distill.cache.format.CACHE_FIELDS`)."""
        return {
            "a2b_ids": self.a2b_ids[items], "a2b_scores": self.a2b_scores[items],
            "b2a_ids": self.b2a_ids[items], "b2a_scores": self.b2a_scores[items],
            "pair_scores": self.pair_scores[items],
        }


def _positions(anchor_ids: Tensor, item_ids: Tensor, path: Path, direction: str) -> Tensor:
    """Row of each item's id among the cache's anchors of one direction."""
    row_of = {value: row for row, value in enumerate(anchor_ids.tolist())}
    try:
        return torch.tensor([row_of[value] for value in item_ids.tolist()], dtype=torch.long)
    except KeyError as error:
        raise DataError(f"teacher cache '{path}' has no {direction} row for id {error.args[0]}; rebuild it with "
                         "`python -m distill cache-teacher`") from None


class IndexedDataset(Dataset[tuple[int, Any]]):
    """``dataset[i] -> (i, dataset[i])``: the collate function learns which items it batches."""

    def __init__(self, dataset: Dataset[Any]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.dataset[index]


class CachedCollate:
    """The wrapped data's collate plus ``batch["teacher_cache"]`` for the batched items, and with ``extras``
    ``batch["teacher_cache_extra"]`` (their cached candidates as extra items)."""

    def __init__(self, collate: Callable[[list[Any]], dict[str, Any]], tables: CandidateTables,
                 extras: CandidateExtras | None = None) -> None:
        self.collate = collate
        self.tables = tables
        self.extras = extras

    def __call__(self, pairs: Sequence[tuple[int, Any]]) -> dict[str, Any]:
        batch = self.collate([example for _, example in pairs])
        items = torch.tensor([index for index, _ in pairs], dtype=torch.long)
        if int(batch["a_id"].shape[0]) != items.numel():
            raise ValueError("the wrapped collate function dropped items (unreadable images?); cached batches "
                             "need every item")
        batch[CACHE_BATCH_KEY] = self.tables.fields(items)
        if self.extras is not None:
            batch[CACHE_EXTRA_KEY] = self.extras(items)
        return batch


class CandidateGroupBatchSampler(BatchSampler):
    """Batches of ``batch_size`` items grown breadth-first from seed items over their cached candidates
    (see the module docstring).

    Args:
        sampler: yields seed item indices (a shuffled ``RandomSampler``; under DDP Lightning replaces it
            with a ``DistributedSampler``).
        batch_size: items per batch (B).
        drop_last: must be True: every batch has exactly B items.
        tables: the per-item cache tables.
        group_negatives: cached candidates per direction that each item brings along (default: all K).
    """

    def __init__(self, sampler: Sampler[int], batch_size: int, drop_last: bool = True, *,
                 tables: CandidateTables, group_negatives: int | None = None) -> None:
        super().__init__(sampler, batch_size, drop_last)
        if not drop_last:
            raise ValueError("CandidateGroupBatchSampler needs drop_last=True (every batch holds batch_size items)")
        self.tables = tables
        self.group_negatives = tables.a2b_ids.shape[1] if group_negatives is None else group_negatives
        if self.group_negatives < 0:
            raise ValueError(f"group_negatives must be >= 0, got {group_negatives}")

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size  # type: ignore[arg-type]

    def neighbours(self, item: int, images: set[int]) -> Iterator[int]:
        """The items holding ``item``'s cached candidates: the caption of each b id of its a2b list, then one
        caption of each image of its b2a list that the batch lacks (``images``): caption ``item mod n`` of
        the image's ``n``. At most ``group_negatives`` of each list."""
        tables, k = self.tables, self.group_negatives
        for b_id in tables.a2b_ids[item, :k].tolist():
            holder = tables.item_of_b.get(b_id, -1)
            if holder >= 0:
                yield holder
        for a_id in tables.b2a_ids[item, :k].tolist():
            options = tables.items_of_a.get(a_id)
            if options and a_id not in images:
                yield options[item % len(options)]

    def _fill(self, seeds: list[int], position: int, placed: set[int], reuse_placed: bool) -> tuple[list[int], int]:
        """One batch, breadth-first over the candidate graph from the next seed(s); returns it and the new
        position in ``seeds``. Seeds placed earlier in the epoch are skipped unless ``reuse_placed``."""
        batch: list[int] = []
        members: set[int] = set()
        images: set[int] = set()
        while len(batch) < self.batch_size and position < len(seeds):
            seed = seeds[position]
            position += 1
            if seed in members or (seed in placed and not reuse_placed):
                continue
            queue = deque([seed])
            while queue and len(batch) < self.batch_size:
                item = queue.popleft()
                if item in members:
                    continue
                batch.append(item)
                members.add(item)
                images.add(self.tables.item_a_ids[item])
                queue.extend(other for other in self.neighbours(item, images) if other not in members)
        return batch, position

    def __iter__(self) -> Iterator[list[int]]:
        seeds = list(iter(self.sampler))
        placed: set[int] = set()
        emitted = 0
        for reuse_placed in (False, True):  # the second pass only runs when skipping placed seeds ran short
            position = 0
            while emitted < len(self) and position < len(seeds):
                batch, position = self._fill(seeds, position, placed, reuse_placed)
                if len(batch) < self.batch_size:
                    break
                placed.update(batch)
                emitted += 1
                yield batch
            if emitted == len(self):
                return


class CachedCandidatesDataModule(L.LightningDataModule):
    """Wraps a data module so that training reads teacher scores from a cache (``cache-teacher``).

    Recipe (the model's ``CachedCandidates`` source names the folder; the teacher, when set, is verified, not
    called)::

        model:
          init_args:
            candidates:
              class_path: distill.training.candidates.CachedCandidates
              init_args: {path: caches/shapes-k16}
        data:
          class_path: distill.cache.CachedCandidatesDataModule
          init_args:
            data: data.yaml            # the original data module

    Args:
        data: the data module whose train split the cache was built from.
        cache_dir: the cache folder; default: the attached model's ``teacher_cache`` (its CachedCandidates path).
        batching: ``"random"`` (default): the wrapped module's random batches, each anchor bringing
            ``candidates_per_anchor`` cached candidates per direction as extra items; ``"grouped"``: batches
            grown over the candidate graph (see the module docstring and its measured collapse).
        candidates_per_anchor: cached candidates per direction that each item brings (random batching:
            default 2, each costs one more encoded item per side and anchor; grouped batching: default K).
        candidate_order: random batching: which ``candidates_per_anchor`` of the K: ``"teacher"`` (default, the
            teacher's highest-scored) or ``"student"`` (the building student's top ones, cache order).
        seed: seeds the shuffle of seed items (grouped batching; random batching keeps the wrapped module's).

    ``setup("fit")`` loads the cache and refuses it (naming the field) when its data fingerprint, split or
    items differ from the wrapped module's. Attributes this class lacks (``tokenizer``, ``vocab_size``,
    ``dataset()``...) are the wrapped module's.
    """

    def __init__(self, data: L.LightningDataModule, cache_dir: str | None = None, batching: str = "random",
                 candidates_per_anchor: int | None = None, candidate_order: str = "teacher", seed: int = 0) -> None:
        super().__init__()
        if batching not in BATCHING:
            raise ValueError(f"data.init_args.batching must be one of {list(BATCHING)}, got {batching!r}")
        if candidates_per_anchor is not None and candidates_per_anchor < (1 if batching == "random" else 0):
            raise ValueError(f"data.init_args.candidates_per_anchor must be >= {1 if batching == 'random' else 0} "
                             f"with batching {batching!r}, got {candidates_per_anchor}")
        self.data = data
        self.cache_dir = cache_dir
        self.batching = batching
        if candidate_order not in ORDERS:
            raise ValueError(f"data.init_args.candidate_order must be one of {list(ORDERS)}, got {candidate_order!r}")
        self.candidates_per_anchor = candidates_per_anchor
        self.candidate_order = candidate_order
        self.seed = seed
        self.cache: TeacherCache | None = None
        self.tables: CandidateTables | None = None
        self._table_readers: list[Any] = []  # the train loader's parts that read the tables (see load)

    @property
    def wrapped_datamodule(self) -> L.LightningDataModule:
        return self.data

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("data", "_trainer"):
            raise AttributeError(name)
        data = self.__dict__.get("data")
        if data is None:
            raise AttributeError(name)
        return getattr(data, name)

    def resolved_cache_dir(self) -> Path:
        """``cache_dir``, else the attached model's ``teacher_cache``; both set must agree."""
        model = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        from_model = getattr(model, "teacher_cache", None)
        if self.cache_dir is not None and from_model is not None and \
                Path(self.cache_dir).resolve() != Path(from_model).resolve():
            raise DataError(f"data.init_args.cache_dir '{self.cache_dir}' and the model's CachedCandidates path "
                             f"'{from_model}' name different folders: set one of them")
        folder = self.cache_dir or from_model
        if folder is None:
            raise DataError("CachedCandidatesDataModule needs a cache: set model.init_args.candidates to "
                            "{class_path: distill.training.candidates.CachedCandidates, init_args: {path: <dir>}} (or "
                             "data.init_args.cache_dir) to a folder built by `python -m distill cache-teacher`")
        return Path(folder)

    def prepare_data(self) -> None:
        self.data.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None:
            self.data.trainer = self.trainer
        self.data.setup(stage)
        if stage in (None, "fit") and self.tables is None:
            self.load(self.resolved_cache_dir())

    def load(self, folder: str | Path) -> None:
        """Load and verify the cache against the wrapped data's train split; build the batching tables.

        A train loader made earlier reads the new tables from the next batch it collates in this process
        (worker processes keep their copy until the loader is made again)."""
        corpus = corpus_from_datamodule(self.data, "train")
        cache = load_cache(folder)
        verify_manifest(cache.manifest, folder, data=data_identity(self.data, corpus, "train"), split="train")
        self.cache = cache
        self.tables = CandidateTables.build(cache, corpus)
        for reader in self._table_readers:
            reader.tables = self.tables

    def train_dataloader(self) -> DataLoader[Any]:
        if self.tables is None:
            raise RuntimeError("CachedCandidatesDataModule.setup('fit') must run before train_dataloader()")
        inner = self.data.train_dataloader()
        if inner.batch_size is None:
            raise ValueError(f"{type(self.data).__name__}.train_dataloader() has no batch_size; the cached batches "
                             "need one")
        if self.batching == "random":
            per_anchor = self.candidates_per_anchor or min(DEFAULT_CANDIDATES_PER_ANCHOR, self.tables.a2b_ids.shape[1])
            extras = CandidateExtras(inner.dataset, inner.collate_fn, self.tables, per_anchor, self.candidate_order)
            sampler = inner.sampler
            seed = sampler.seed if isinstance(sampler, EpochShuffleSampler) else self.seed
            collate = CachedCollate(inner.collate_fn, self.tables, extras)
            self._table_readers = [collate, extras]
            return resumable_train_loader(IndexedDataset(inner.dataset), inner.batch_size, seed, collate,
                                          inner.num_workers, drop_last=True)
        sampler = RandomSampler(inner.dataset, generator=torch.Generator().manual_seed(self.seed))
        batch_sampler = CandidateGroupBatchSampler(sampler, inner.batch_size, True, tables=self.tables,
                                                   group_negatives=self.candidates_per_anchor)
        collate = CachedCollate(inner.collate_fn, self.tables)
        self._table_readers = [collate, batch_sampler]
        return DataLoader(IndexedDataset(inner.dataset), batch_sampler=batch_sampler, collate_fn=collate,
                          num_workers=inner.num_workers, persistent_workers=inner.num_workers > 0)

    def val_dataloader(self) -> Any:
        return self.data.val_dataloader()

    def test_dataloader(self) -> Any:
        return self.data.test_dataloader()

    def predict_dataloader(self) -> Any:
        return self.data.predict_dataloader()

    def teardown(self, stage: str) -> None:
        self.data.teardown(stage)

    def state_dict(self) -> dict[str, Any]:
        return self.data.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.data.load_state_dict(dict(state_dict))
