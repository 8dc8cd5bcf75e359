"""A data module's split as (a, b) pairs, and loading its items by id on demand.

A split is a dataset of N items; item ``i`` is the pair ``(a_ids[i], b_ids[i])`` (for image-caption data:
an image id, shared by the captions of one image, and a caption id). The distinct a ids and b ids, in
order of first occurrence, are the two sides the teacher cache ranks against each other.

An :class:`ItemStore` loads the teacher's view of given items by id: evaluation keeps only embeddings and
ids, and fetches the few items that two-stage re-ranking and diagnostics score, chunk by chunk. Data modules
may define ``item_store(stage)``; :func:`item_store` falls back to :class:`PairItemStore` over the stage's
loader for pair splits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from distill.data.batch import teacher_views
from distill.inputs import Inputs

__all__ = ["ItemStore", "PairCorpus", "PairItemStore", "corpus_from_datamodule", "item_store", "split_loader",
           "unwrap_datamodule"]

SPLIT_LOADERS = {"train": "train_dataloader", "val": "val_dataloader", "test": "test_dataloader",
                 "validate": "val_dataloader"}


@dataclass(frozen=True)
class PairCorpus:
    """One split's items as id pairs, with the dataset and collate function that load them.

    ``a_ids`` / ``b_ids``: long ``[N]``, the pair of every item in dataset order.
    ``a_items`` / ``b_items``: long ``[Na]`` / ``[Nb]``, the first item holding each distinct a / b id,
    in order of first occurrence; ``a_unique = a_ids[a_items]``, ``b_unique = b_ids[b_items]``.
    ``a_index`` / ``b_index``: long ``[N]``, each item's position among the distinct a / b ids.
    """

    dataset: Dataset[Any]
    collate: Callable[[list[Any]], Mapping[str, Any]]
    a_ids: Tensor
    b_ids: Tensor
    a_items: Tensor
    b_items: Tensor
    a_index: Tensor
    b_index: Tensor

    @classmethod
    def from_ids(cls, dataset: Dataset[Any], collate: Callable[[list[Any]], Mapping[str, Any]],
                 a_ids: Tensor, b_ids: Tensor) -> "PairCorpus":
        a_ids, b_ids = a_ids.long().cpu(), b_ids.long().cpu()
        if a_ids.shape != b_ids.shape or a_ids.ndim != 1:
            raise ValueError(f"a_ids {tuple(a_ids.shape)} and b_ids {tuple(b_ids.shape)} must be equal 1-D shapes")
        a_items, a_index = _first_occurrences(a_ids)
        b_items, b_index = _first_occurrences(b_ids)
        return cls(dataset, collate, a_ids, b_ids, a_items, b_items, a_index, b_index)

    def __len__(self) -> int:
        return int(self.a_ids.shape[0])

    @property
    def a_unique(self) -> Tensor:
        return self.a_ids[self.a_items]

    @property
    def b_unique(self) -> Tensor:
        return self.b_ids[self.b_items]

    def load(self, items: Sequence[int] | Tensor) -> Mapping[str, Any]:
        """Collate the given dataset items into one batch (in the given order)."""
        indices = [int(i) for i in items]
        examples = [self.dataset[i] for i in indices]
        missing = [i for i, example in zip(indices, examples) if example is None]
        if missing:
            raise ValueError(
                f"items {missing[:5]} of the split could not be loaded (e.g. unreadable images); the teacher "
                "cache needs every item: fix the data or drop those items from the annotation file"
            )
        batch = self.collate(examples)
        if int(batch["a_id"].shape[0]) != len(indices):
            rows = int(batch["a_id"].shape[0])
            raise ValueError(f"the collate function returned {rows} rows for {len(indices)} items")
        return batch


def _first_occurrences(ids: Tensor) -> tuple[Tensor, Tensor]:
    """``ids [N]`` -> (first item of each distinct id in order of first occurrence ``[U]``, position of
    every item's id among them ``[N]``)."""
    slot_of: dict[int, int] = {}
    firsts: list[int] = []
    positions: list[int] = []
    for item, value in enumerate(ids.tolist()):
        slot = slot_of.get(value)
        if slot is None:
            slot = slot_of[value] = len(firsts)
            firsts.append(item)
        positions.append(slot)
    items = torch.tensor(firsts, dtype=torch.long)
    position = torch.tensor(positions, dtype=torch.long)
    return items, position


def unwrap_datamodule(datamodule: Any) -> Any:
    """The data module that owns the items: a :class:`CachedCandidatesDataModule` wraps another one."""
    inner = getattr(datamodule, "wrapped_datamodule", None)
    return datamodule if inner is None else inner


def split_loader(datamodule: Any, split: str) -> DataLoader[Any]:
    """The data module's loader of ``split`` (``train`` / ``val`` / ``test``), after ``setup``."""
    if split not in SPLIT_LOADERS:
        raise ValueError(f"--split must be one of {sorted(SPLIT_LOADERS)}, got {split!r}")
    loader = getattr(datamodule, SPLIT_LOADERS[split])()
    if isinstance(loader, (list, tuple)):
        raise ValueError(
            f"{type(datamodule).__name__}.{SPLIT_LOADERS[split]}() returns several loaders (e.g. queries and "
            "corpus); the teacher cache needs caption-level (a, b) pair items"
        )
    return loader


def corpus_from_datamodule(datamodule: Any, split: str = "train") -> PairCorpus:
    """The (a, b) pairs of a set-up data module's split, read from its loader's dataset and collate function.

    Ids come from the dataset's ``image_ids`` / ``caption_ids`` tensors
    (:class:`~distill.data.CaptionPairDataset`), from ``records[i].a_id / .b_id``
    (:class:`~distill.data.paired.items.PairedImageTextDataset`), or else from each item's ``a_id`` / ``b_id``.
    """
    datamodule = unwrap_datamodule(datamodule)
    loader = split_loader(datamodule, split)
    dataset = loader.dataset
    with_teacher_view = getattr(dataset, "with_teacher_view", None)
    if callable(with_teacher_view):  # evaluation loaders may leave the teacher's inputs out
        dataset = with_teacher_view(True)
    collate = loader.collate_fn
    size = len(dataset)  # type: ignore[arg-type]
    if size == 0:
        raise ValueError(f"the {split} split of {type(datamodule).__name__} is empty")
    image_ids = getattr(dataset, "image_ids", None)
    caption_ids = getattr(dataset, "caption_ids", None)
    records = getattr(dataset, "records", None)
    if isinstance(image_ids, Tensor) and isinstance(caption_ids, Tensor) and len(image_ids) == size:
        a_ids, b_ids = image_ids, caption_ids
    elif isinstance(records, Sequence) and len(records) == size and hasattr(records[0], "a_id"):
        a_ids = torch.tensor([record.a_id for record in records], dtype=torch.long)
        b_ids = torch.tensor([record.b_id for record in records], dtype=torch.long)
    else:
        pairs = []
        for index in range(size):
            item = dataset[index]
            if not isinstance(item, Mapping) or "a_id" not in item or "b_id" not in item:
                raise ValueError(
                    f"item {index} of the {split} split of {type(datamodule).__name__} has no 'a_id' / 'b_id': the "
                    "teacher cache needs caption-level pair items (e.g. distill.data.ShapesDataModule)"
                )
            pairs.append((int(item["a_id"]), int(item["b_id"])))
        a_ids = torch.tensor([a for a, _ in pairs], dtype=torch.long)
        b_ids = torch.tensor([b for _, b in pairs], dtype=torch.long)
    return PairCorpus.from_ids(dataset, collate, a_ids, b_ids)


class ItemStore(Protocol):
    """Loads the teacher's view of a split's items by id (``[len(ids), ...]`` inputs, in the order of ``ids``)."""

    def load_a(self, ids: Tensor) -> Inputs: ...

    def load_b(self, ids: Tensor) -> Inputs: ...


class PairItemStore:
    """An :class:`ItemStore` over a pair split: item ``a`` id -> the first dataset item holding it, collated
    alone with the other requested items (a few images or captions at a time, never the split)."""

    def __init__(self, corpus: PairCorpus) -> None:
        self.corpus = corpus
        self._item_of_a = {value: int(item) for value, item in zip(corpus.a_unique.tolist(), corpus.a_items.tolist())}
        self._item_of_b = {value: int(item) for value, item in zip(corpus.b_unique.tolist(), corpus.b_items.tolist())}

    def _items(self, ids: Tensor, table: dict[int, int], side: str) -> list[int]:
        try:
            return [table[int(value)] for value in ids.tolist()]
        except KeyError as error:
            raise ValueError(f"no item of the split has {side} id {error.args[0]}") from None

    def load_a(self, ids: Tensor) -> Inputs:
        return teacher_views(self.corpus.load(self._items(ids, self._item_of_a, "a")))[0]

    def load_b(self, ids: Tensor) -> Inputs:
        return teacher_views(self.corpus.load(self._items(ids, self._item_of_b, "b")))[1]


def item_store(datamodule: Any, stage: str) -> ItemStore:
    """The data module's own ``item_store(stage)``, else a :class:`PairItemStore` over its ``stage`` loader."""
    datamodule = unwrap_datamodule(datamodule)
    own = getattr(datamodule, "item_store", None)
    if callable(own):
        return own(stage)
    return PairItemStore(corpus_from_datamodule(datamodule, stage))
