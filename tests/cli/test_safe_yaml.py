"""Recipes are parsed safely: aliases expand within a bound and never into themselves, whichever file holds them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distill.cli.safe_yaml import MAX_NODES, YamlBoundError, check_recipe_files, check_yaml, install
from distill.errors import RecipeError
from tests.helpers import REPO_ROOT


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """Each level lists the one above ``width`` times: ``width ** levels`` strings once expanded."""
    lines = [f"l0: &l0 [{', '.join(['x'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_it_expands() -> None:
    assert 9 ** 9 > MAX_NODES
    with pytest.raises(YamlBoundError, match=r"aliases expand to more than 1,000,000 values"):
        check_yaml(alias_bomb())
    check_yaml(alias_bomb(levels=3))  # 9 ** 3 values: an ordinary use of aliases


def test_a_recursive_alias_is_refused() -> None:
    with pytest.raises(YamlBoundError, match=r"refers to a node that contains it \(line 2\)"):
        check_yaml("x: 1\na: &a [1, {b: *a}]\n")


def test_shared_aliases_that_stay_small_pass() -> None:
    text = "base: &base {lr: 0.1, betas: [0.9, 0.99]}\none: *base\ntwo: {<<: *base, lr: 0.2}\n"
    check_yaml(text)
    assert yaml.safe_load(text)["two"]["lr"] == 0.2


def test_every_shipped_recipe_and_fragment_passes() -> None:
    recipes = sorted((REPO_ROOT / "configs").rglob("*.yaml"))
    check_recipe_files(recipes)


def test_a_composed_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "bomb.yaml").write_text(alias_bomb())
    (tmp_path / "recipe.yaml").write_text("seed_everything: 0\ntrainer: bomb.yaml\n")
    with pytest.raises(RecipeError, match=r"'.*bomb\.yaml' \(composed by '.*recipe\.yaml'\) is refused: its aliases"):
        check_recipe_files([tmp_path / "recipe.yaml"])
    (tmp_path / "loop.yaml").write_text("a: &a [*a]\n")
    (tmp_path / "recipe.yaml").write_text("trainer: loop.yaml\n")
    with pytest.raises(RecipeError, match=r"'.*loop\.yaml' \(composed by .*\) is refused: an alias refers to a node"):
        check_recipe_files([tmp_path / "recipe.yaml"])


def test_the_parser_loader_is_bounded_too() -> None:
    from jsonargparse import get_loader

    install()
    install()  # once per process, however often it is called
    load = get_loader("yaml")
    assert load("{a: 1}") == {"a": 1}
    with pytest.raises(YamlBoundError):
        load(alias_bomb())


def test_nesting_deeper_than_the_parser_follows_is_refused(tmp_path: Path) -> None:
    deep = "a: " + "[" * 50_000 + "]" * 50_000 + "\n"
    with pytest.raises(YamlBoundError, match=r"nested deeper than the parser can follow"):
        check_yaml(deep)
    (tmp_path / "deep.yaml").write_text(deep)
    with pytest.raises(RecipeError, match=r"--config: recipe '.*deep\.yaml' is refused: its collections are nested"):
        check_recipe_files([tmp_path / "deep.yaml"])
