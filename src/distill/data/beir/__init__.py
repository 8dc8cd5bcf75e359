"""Text retrieval data in the BEIR layout (MS MARCO, NQ, ...): :class:`BeirTextDataModule` and its parts.

* :mod:`~distill.data.beir.datamodule`: the Lightning data module (splits, training triples, loaders);
* :mod:`~distill.data.beir.files`: JSONL records and ``qrels/<split>.tsv``;
* :mod:`~distill.data.beir.text_table`: the texts of ``corpus.jsonl`` / ``queries.jsonl`` by row, from a
  memory map;
* :mod:`~distill.data.beir.batches`: training items, evaluation rows, the collator and the item store.

:class:`BeirTextDataModule` is imported on first use, so the file readers need neither Lightning nor
Transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distill.data.beir.datamodule import BeirTextDataModule

__all__ = ["BeirTextDataModule"]


def __getattr__(name: str) -> Any:
    if name == "BeirTextDataModule":
        from distill.data.beir.datamodule import BeirTextDataModule

        return BeirTextDataModule
    raise AttributeError(f"module 'distill.data.beir' has no attribute '{name}'")
