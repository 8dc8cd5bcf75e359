"""Recipes parsed safely: YAML aliases may not expand without bound, nor refer to themselves.

PyYAML shares the object an alias names, so ``yaml.safe_load`` of an "alias bomb" (each level lists the one
above nine times) returns at once; the expansion happens later, when the parser copies or walks the tree
(minutes and gigabytes), and a recursive alias (``a: &a [*a]``) ends in a ``RecursionError``. Both are
caught here on the composed node graph, before anything is constructed: :func:`check_yaml` counts the
nodes the document would have once every alias is expanded (memoised per node, so a bomb costs what its
text costs) and refuses a cycle or more than :data:`MAX_NODES` nodes.

:func:`check_recipe_files` checks a recipe and every YAML file it composes (a value naming an existing
``.yaml`` file, as ``trainer: trainer.yaml`` does), each refusal naming its file; :func:`install` makes
jsonargparse's own YAML loader apply the same bound to every value it parses.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from distill.errors import RecipeError

__all__ = ["MAX_NODES", "YamlBoundError", "check_recipe_files", "check_yaml", "install", "load_yaml"]

MAX_NODES = 1_000_000  # the largest shipped recipe with its fragments has a few hundred
_SUFFIXES = (".yaml", ".yml")


class YamlBoundError(yaml.YAMLError):
    """A YAML document whose aliases expand without bound or refer to themselves."""


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """Nodes of the tree ``root`` stands for once aliases are expanded (stops early above ``limit``)."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    # Iterative post-order walk: a deep document must not overflow Python's stack either.
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            total = 1 + sum(sizes[id(child)] for child in _children(node))
            sizes[key] = min(total, limit + 1)
            continue
        if key in sizes:
            continue
        if key in on_path:
            line = node.start_mark.line + 1 if node.start_mark is not None else 0
            raise YamlBoundError(f"an alias refers to a node that contains it (line {line}): the document is "
                                 "infinitely deep; write the values out, or use fewer aliases")
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                line = child.start_mark.line + 1 if child.start_mark is not None else 0
                raise YamlBoundError(f"an alias refers to a node that contains it (line {line}): the document is "
                                     "infinitely deep; write the values out, or use fewer aliases")
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def _children(node: yaml.Node) -> Iterable[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return ()


def check_yaml(text: str, limit: int = MAX_NODES) -> None:
    """Raise :class:`YamlBoundError` when ``text``'s aliases would expand past ``limit`` nodes or into a cycle."""
    loader = yaml.SafeLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is not None and _expanded_size(node, limit) > limit:
                raise YamlBoundError(f"its aliases expand to more than {limit:,} values; write the values out, or use "
                                     "fewer aliases")
    except RecursionError:  # PyYAML composes nested collections recursively
        raise YamlBoundError("its collections are nested deeper than the parser can follow; flatten them") \
            from None
    finally:
        loader.dispose()


def load_yaml(source: str | os.PathLike[str], label: str | None = None) -> Any:
    """A YAML file's contents (safe types only) after :func:`check_yaml`; every failure is one line starting with
    ``label`` (by default the file's path in quotes)."""
    path = Path(source)
    label = label or f"'{path}'"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RecipeError(f"{label} is not UTF-8 text: re-encode it as UTF-8") from None
    try:
        check_yaml(text)
        return yaml.safe_load(text)
    except YamlBoundError as error:
        raise RecipeError(f"{label} is refused: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise RecipeError(f"{label} is not valid YAML ({problem} at{where}): fix it") from None


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def check_recipe_files(paths: Sequence[str | os.PathLike[str]], label: str = "--config: recipe") -> None:
    """Check each file and, recursively, every ``.yaml`` file it names (relative to its own folder or the working
    directory): a bounded alias expansion, no cycle, valid YAML; one line naming the file otherwise."""
    seen: set[Path] = set()
    pending = [(Path(path), f"{label} '{path}'") for path in paths]
    while pending:
        path, name = pending.pop()
        resolved = path.resolve()
        if resolved in seen:
            continue
        seen.add(resolved)
        for text in _strings(load_yaml(path, name)):
            if not text.lower().endswith(_SUFFIXES) or "\n" in text:
                continue
            candidate = next((base / text for base in (path.parent, Path.cwd()) if (base / text).is_file()), None)
            if candidate is not None:
                pending.append((candidate, f"'{candidate}' (composed by '{path}')"))


def _bounded(original: Any) -> Any:
    def load(stream: str) -> Any:
        if isinstance(stream, str) and ("&" in stream or "*" in stream):
            check_yaml(stream)
        try:
            return original(stream)
        except RecursionError:
            raise YamlBoundError("a value is nested deeper than the parser can follow; flatten it") from None

    return load


def install() -> None:
    """Make jsonargparse's ``yaml`` loader refuse unbounded or recursive aliases (once per process)."""
    from jsonargparse import get_loader, set_loader

    current = get_loader("yaml")
    if getattr(current, "_distill_bounded", False):
        return
    bounded = _bounded(current)
    bounded._distill_bounded = True  # type: ignore[attr-defined]
    set_loader("yaml", bounded, exceptions=(yaml.YAMLError,))
