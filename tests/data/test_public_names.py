"""Every ``distill.data.<name>`` that recipes, presets, docs, benchmarks and the code name resolves, so a recipe's
``class_path`` and a checkpoint's saved hyper-parameters keep loading wherever the data modules live."""

from __future__ import annotations

import importlib
import re
from typing import Any

import pytest

import distill.data
from distill.cache.format import CACHED_CLASS_NAMES
from tests.helpers import REPO_ROOT

PLACES = ("configs", "teachers", "students", "docs", "benchmarks", "src", "tests", "README.md")
SUFFIXES = {".py", ".md", ".yaml", ".yml"}
DOTTED = re.compile(r"(?<![\w.])distill\.data(?:\.\w+)+")


def _named() -> list[str]:
    names = set()
    for place in PLACES:
        root = REPO_ROOT / place
        files = [root] if root.is_file() else [path for path in root.rglob("*") if path.suffix in SUFFIXES]
        for path in files:
            names.update(DOTTED.findall(path.read_text(encoding="utf-8")))
    # A cache's name for a data module that has moved since: a label in its manifest, not an import path.
    return sorted(names - set(CACHED_CLASS_NAMES.values()))


def _resolve(dotted: str) -> Any:
    """The longest importable module prefix of ``dotted``, then the attributes after it."""
    parts = dotted.split(".")
    for end in range(len(parts), 1, -1):
        try:
            value: Any = importlib.import_module(".".join(parts[:end]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[end:]:
            value = getattr(value, attribute)
        return value
    raise ModuleNotFoundError(dotted)


def test_the_recipes_data_modules_are_named_from_distill_data() -> None:
    assert {"distill.data.ShapesDataModule", "distill.data.BeirTextDataModule",
            "distill.data.PairedImageTextDataModule"} <= set(_named())


@pytest.mark.parametrize("dotted", _named())
def test_each_named_data_path_resolves(dotted: str) -> None:
    _resolve(dotted)


def test_every_public_name_resolves() -> None:
    """``distill.data`` imports its names on first use, so a wrong module in its table fails only here."""
    missing = [name for name in distill.data.__all__ if getattr(distill.data, name, None) is None]
    assert not missing, missing


def test_the_data_set_packages_give_their_data_modules() -> None:
    from distill.data.beir import BeirTextDataModule
    from distill.data.paired import PairedImageTextDataModule

    assert BeirTextDataModule is distill.data.BeirTextDataModule
    assert PairedImageTextDataModule is distill.data.PairedImageTextDataModule
    with pytest.raises(AttributeError, match="distill.data.beir"):
        getattr(importlib.import_module("distill.data.beir"), "NoSuchName")
