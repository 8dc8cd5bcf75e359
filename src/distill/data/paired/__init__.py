"""Image-caption pairs from files (COCO / Flickr30K Karpathy JSON, or JSONL): :class:`PairedImageTextDataModule`.

* :mod:`~distill.data.paired.datamodule`: the Lightning data module (splits, student and teacher views, loaders);
* :mod:`~distill.data.paired.files`: reading the annotation files;
* :mod:`~distill.data.paired.items`: caption-level items, decoded once and preprocessed, and their collator.

:class:`PairedImageTextDataModule` is imported on first use, so the annotation readers need neither Lightning
nor Transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distill.data.paired.datamodule import PairedImageTextDataModule

__all__ = ["PairedImageTextDataModule"]


def __getattr__(name: str) -> Any:
    if name == "PairedImageTextDataModule":
        from distill.data.paired.datamodule import PairedImageTextDataModule

        return PairedImageTextDataModule
    raise AttributeError(f"module 'distill.data.paired' has no attribute '{name}'")
