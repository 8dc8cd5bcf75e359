"""A teacher cache names its data module's class as it was when the cache was built, wherever the class lives now."""

from __future__ import annotations

import importlib

from distill.cache.format import CACHED_CLASS_NAMES, data_identity
from distill.data import BeirTextDataModule, PairedImageTextDataModule, ShapesDataModule
from distill.data.items import corpus_from_datamodule
from tests.helpers import tiny_shapes


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def test_the_moved_data_modules_keep_their_cached_names() -> None:
    assert {cls.__name__: CACHED_CLASS_NAMES.get(_path(cls)) for cls in
            (ShapesDataModule, PairedImageTextDataModule, BeirTextDataModule)} == {
        "ShapesDataModule": "distill.data.datamodule.ShapesDataModule",
        "PairedImageTextDataModule": "distill.data.paired.PairedImageTextDataModule",
        "BeirTextDataModule": "distill.data.beir.BeirTextDataModule",
    }


def test_every_renamed_class_is_where_the_table_says() -> None:
    """Each key names a class that imports from that path (a later move has to update the table)."""
    for path in CACHED_CLASS_NAMES:
        module, _, name = path.rpartition(".")
        assert _path(getattr(importlib.import_module(module), name)) == path


def test_a_shapes_split_is_fingerprinted_under_its_cached_name() -> None:
    datamodule = tiny_shapes(num_train=8, batch_size=4)
    identity = data_identity(datamodule, corpus_from_datamodule(datamodule, "train"), "train")
    assert identity["class"] == "distill.data.datamodule.ShapesDataModule"
