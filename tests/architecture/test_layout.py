"""The layout the architecture page promises: small files and functions, imports that point one way."""

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
