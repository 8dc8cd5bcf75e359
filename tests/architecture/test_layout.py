"""The layout the architecture page promises: small files and functions, imports that point one way, data sets
that do not import each other, and no import cycle between modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

SRC = REPO_ROOT / "src" / "distill"
SOURCES = sorted(SRC.rglob("*.py"))
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60

# Each package may import only from the packages listed for it (and from the bottom-level modules).
BOTTOM = {"errors", "io", "inputs", "instantiate", "distributed", "outputs", "pretrained", "checkpoint_file", "finite",
          "pickled", "progress"}
ALLOWED: dict[str, set[str]] = {
    "losses": set(),
    "teachers": set(),
    "students": set(),
    "data": set(),
    # evaluation ranks by the student's own similarity (late interaction): it reads the students' embedding types
    "evaluation": {"data", "teachers", "students"},
    "cache": {"data", "teachers", "evaluation"},
    "training": {"data", "teachers", "students", "losses", "evaluation", "cache"},
    # late-interaction search re-scores candidates with evaluation's chunked ranking and its tie order
    "serving": {"data", "teachers", "students", "evaluation"},
    "cli": {"data", "teachers", "students", "losses", "evaluation", "cache", "training", "serving"},
}


def _package(path: Path) -> str:
    parts = path.relative_to(SRC).parts
    return parts[0] if len(parts) > 1 else path.stem


def _module_name(path: Path) -> str:
    """``src/distill/data/shapes/row.py`` -> ``distill.data.shapes.row``; a package's ``__init__.py`` -> the package."""
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in SOURCES}
DATA = SRC / "data"
DATA_SETS = sorted(path.parent.name for path in DATA.glob("*/__init__.py"))
SHARED_DATA = sorted(path.stem for path in DATA.glob("*.py") if path.stem != "__init__")


def _top_level(tree: ast.Module) -> list[ast.stmt]:
    """The statements that run when the module is imported: everything but the bodies of functions (an import
    under ``if TYPE_CHECKING:`` counts, since a cycle of type names is still two modules needing each other)."""
    found: list[ast.stmt] = []
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.stmt):
            found.append(node)
        pending.extend(ast.iter_child_nodes(node))
    return found


def _imports(path: Path, top_level_only: bool = False) -> list[tuple[int, str]]:
    """``(line, module)`` for every ``distill`` module ``path`` imports: ``from a.b import c`` names ``a.b.c``
    when that is a module, else ``a.b``; relative imports are resolved."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    nodes = _top_level(tree) if top_level_only else ast.walk(tree)
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name in MODULES]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:
                    found.append((node.lineno, f"{base}.{alias.name}"))
                elif base in MODULES:
                    found.append((node.lineno, base))
    return found


def test_no_source_file_is_longer_than_400_lines() -> None:
    long = {str(path.relative_to(REPO_ROOT)): n for path in SOURCES
            if (n := len(path.read_text().splitlines())) > MAX_FILE_LINES}
    assert not long, long


def test_no_function_is_longer_than_60_lines() -> None:
    long = {}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name}"] = length
    assert not long, long


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path: Path) -> None:
    """Commands on top, models and losses at the bottom: no package imports one above it."""
    package = _package(path)
    if package not in ALLOWED:
        return
    allowed = ALLOWED[package] | BOTTOM | {package}
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("distill."):
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.startswith("distill.")]
        for name in names:
            target = name.split(".")[1]
            assert target in allowed, f"{path.relative_to(REPO_ROOT)}:{node.lineno} imports {name}"


def test_the_data_package_has_one_package_per_data_set() -> None:
    assert DATA_SETS == ["beir", "paired", "shapes"]
    assert set(SHARED_DATA) >= {"batch", "common", "items", "sampling"}


@pytest.mark.parametrize("path", sorted(DATA.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_data_sets_import_only_themselves_and_the_shared_data_modules(path: Path) -> None:
    """``data/shapes`` never imports ``data/beir`` or ``data/paired`` (and so on); the shared modules beside them
    (batch conventions, file reading, items, sampling) import no data set. Only ``distill.data`` itself, which
    re-exports the public names, sees all of them."""
    if path == DATA / "__init__.py":
        return
    relative = path.relative_to(DATA).parts
    own = relative[0] if len(relative) > 1 else None
    allowed = {f"distill.data.{name}" for name in SHARED_DATA}
    if own is not None:
        allowed.add(f"distill.data.{own}")
    for line, module in _imports(path):
        if not module.startswith("distill.data"):
            continue
        target = ".".join(module.split(".")[:3])
        assert target in allowed, f"{path.relative_to(REPO_ROOT)}:{line} imports {module}" + \
            (" (import the name from the module that defines it)" if target == "distill.data" else "")


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (``[a, b, ..., a]``), or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target)) is not None:
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def test_cycle_finder_finds_a_cycle_and_only_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_between_modules() -> None:
    """Module-level imports of ``src/distill`` form no cycle (imports inside a function run when it is called,
    after every module has loaded, and are left out)."""
    graph = {name: {module for _, module in _imports(path, top_level_only=True)} - {name}
             for name, path in MODULES.items()}
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])
