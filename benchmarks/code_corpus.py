"""A natural-language-to-code retrieval corpus in the BEIR layout, built offline from installed Python sources.

    python benchmarks/code_corpus.py --out runs/code-search            # full corpus (about 30 s on one core)
    python benchmarks/code_corpus.py --out runs/code-search --quick    # a few hundred passages from 7 stdlib modules

Sources: the standard library of the running Python and the pinned project dependencies listed in
``PACKAGES`` (numpy, scipy, matplotlib, lightning, torchmetrics, timm, jsonargparse, omegaconf). Their ``.py``
files are walked in sorted order of their path relative to the folder holding the package (``numpy/linalg/
_linalg.py``; stdlib files under ``stdlib/``); folders named ``test``/``tests``/``idle_test``, vendored
folders and path parts that are not identifiers (``site-packages``, ``config-3.11-...``) are skipped.
torch and transformers are left out: most of torch's Python is bindings, generated code and tests, and
transformers' model files repeat one another ("Copied from"), which would fill the corpus with near-copies.

Items: every module-level function and class, and every method or nested class of those classes, whose
qualified name has no part starting with ``_`` (private and dunder names are left out). Its passage id is
``<relative path>::<qualname>`` (``#2``, ``#3`` for a later definition of the same name in the same file),
its passage text the definition's own source lines (decorators included, dedented) with every docstring
inside it removed (with the blank line after it), cut at a line boundary to ``MAX_PASSAGE_CHARS`` characters.
A class passage keeps the class's own statements and each method's header, the method bodies replaced by
``...``: each method is its own passage, and a class holding a copy of it would be a second answer. Dropped: definitions whose
body is only a docstring / ``pass`` / ``...`` / ``raise NotImplementedError``, definitions with a docstring
that shares a line with code (``def f(): "..."``; not rebuilt with ``ast.unparse``), passages under
``MIN_PASSAGE_CHARS`` characters, and every passage whose text repeats an earlier one (in the sorted order).

Queries: the first sentence of the definition's own docstring (first paragraph, whitespace collapsed,
cut at the first ``.``/``!``/``?`` followed by a space and a capital letter or by the end), kept when it
has ``MIN_QUERY_WORDS``..``MAX_QUERY_WORDS`` words and ``MAX_QUERY_CHARS`` characters at most, is not a
reference or a stub (``See ...``, ``Alias ...``, ``Same as ...``, ``Deprecated ...``, a signature such as
``f(x, axis=None)``, a parameter list, a doctest), does not appear, case-folded, in its own passage (a comment
or a string repeating it), and is not shared, case-folded, with any other item of the
whole build (an ambiguous description has no single answer; this also keeps identical queries out of
two splits). A query's id is its passage's id and its single relevant passage (score 1) is that passage.
A passage without a usable query stays in the corpus as a distractor.

Splits, held out by unit (a stdlib top-level module, or a third-party package): ``test`` is the units
in ``TEST_UNITS``, ``dev`` those in ``DEV_UNITS``, ``train`` all the others. Every passage of every unit is
in ``corpus.jsonl``, ordered test passages first, then dev, then train (each in id byte order), so that
``data.init_args.limit_corpus=<manifest counts.test.passages>`` ranks the test queries against the test
passages only (the data module ranks the first ``limit_corpus`` passages plus every judged one); without it
each split ranks against the whole corpus. ``qrels/test.tsv`` and ``qrels/dev.tsv`` hold a fixed sample
of their split's queries (``TEST_QUERIES`` / ``DEV_QUERIES``: the items with the smallest sha256 of their
id), ``qrels/train.tsv`` every train query; ``queries.jsonl`` holds exactly the judged queries. No
``train_triples.jsonl`` is written: ``distill mine`` writes it from ``qrels/train.tsv``.

Output (written atomically into ``--out``, a folder carrying distill's mark; a folder this script did not
write is refused): ``corpus.jsonl`` ({"_id", "title": "", "text"}), ``queries.jsonl`` ({"_id", "text"}),
``qrels/{train,dev,test}.tsv`` (header ``query-id<TAB>corpus-id<TAB>score``) and ``manifest.json`` (Python
version, package versions, the rule's constants, counts per split, the sha256 and size of every other file).

Byte identity: the files depend only on the source texts, so two builds with the same Python minor version
(the stdlib, and ``ast``'s view of the sources) and the same pinned package versions give identical bytes on
any machine: paths are package-relative and sorted, nothing iterates over a set or depends on string hashing,
JSON is written with sorted keys and ``ensure_ascii=True``, lines end in ``"\\n"``. The manifest records the
full Python version; a different micro version of the stdlib may change a few passages.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.metadata
import importlib.util
import json
import platform
import re
import sys
import sysconfig
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from distill.errors import InputError
from distill.io import atomic_folder, file_sha256

KIND = "code-search corpus"
# Third-party sources: (import name, distribution name), all pinned in pyproject.toml.
PACKAGES = (("jsonargparse", "jsonargparse"), ("lightning", "lightning"), ("matplotlib", "matplotlib"),
            ("numpy", "numpy"), ("omegaconf", "omegaconf"), ("scipy", "scipy"), ("timm", "timm"),
            ("torchmetrics", "torchmetrics"))
TEST_UNITS = ("stdlib/email", "stdlib/logging", "stdlib/tkinter", "torchmetrics")
DEV_UNITS = ("omegaconf", "stdlib/asyncio", "stdlib/importlib")
TEST_QUERIES = 800
DEV_QUERIES = 300
# --quick: seven stdlib modules, split by the same rule with its own units and sample sizes.
QUICK_UNITS = ("stdlib/argparse", "stdlib/csv", "stdlib/difflib", "stdlib/json", "stdlib/shlex", "stdlib/string",
               "stdlib/textwrap")
QUICK_TEST_UNITS = ("stdlib/difflib",)
QUICK_DEV_UNITS = ("stdlib/textwrap",)
QUICK_TEST_QUERIES = 20
QUICK_DEV_QUERIES = 10

SKIP_FOLDERS = ("_vendor", "_vendored", "idle_test", "test", "tests", "vendor", "vendored")
MIN_PASSAGE_CHARS = 60
MAX_PASSAGE_CHARS = 2000
MIN_QUERY_WORDS = 4
MAX_QUERY_WORDS = 40
MAX_QUERY_CHARS = 300
_REFERENCE = re.compile(r"^(see|alias|same as|deprecated|equivalent to|overrides?|inherited|implements|"
                        r"wrapper (around|for)|shortcut for|backward|backwards|copied from|todo|note:|"
                        r"parameters|args:|arguments:|returns:|example)\b", re.IGNORECASE)
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)")
_SENTENCE_END = re.compile(r"[.!?](?=\s+[A-Z(`'\"]|$)")
_ABBREVIATION = re.compile(r"(\be\.g|\bi\.e|\betc|\bvs|\bcf|\bresp|\bapprox)$", re.IGNORECASE)


@dataclass(frozen=True)
class Item:
    """One function, method or class: ``pid`` its id, ``unit`` its split unit, ``query`` ('' when unusable)."""

    pid: str
    unit: str
    query: str
    passage: str


# ---------------------------------------------------------------------------------------------- sources
def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def package_root(name: str) -> Path:
    """The folder holding package ``name`` (found without importing it)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"package '{name}' is not installed: install the project (pip install -e .) first")
    return Path(sorted(spec.submodule_search_locations)[0]).parent


def _wanted(relative: Path) -> bool:
    parts = relative.parts
    stem = [*parts[:-1], parts[-1][:-3]]
    return all(part.isidentifier() and part not in SKIP_FOLDERS for part in stem)


def source_files(quick: bool) -> Iterator[tuple[str, str, Path]]:
    """``(unit, id prefix, file)`` of every source file, in sorted order of the id prefix."""
    found: list[tuple[str, str, Path]] = []
    root = stdlib_root()
    for path in root.rglob("*.py"):
        relative = path.relative_to(root)
        if _wanted(relative):
            unit = "stdlib/" + relative.parts[0].removesuffix(".py")
            found.append((unit, "stdlib/" + relative.as_posix(), path))
    if not quick:
        for name, _ in PACKAGES:
            base = package_root(name)
            for path in (base / name).rglob("*.py"):
                relative = path.relative_to(base)
                if _wanted(relative):
                    found.append((name, relative.as_posix(), path))
    if quick:
        found = [entry for entry in found if entry[0] in QUICK_UNITS]
    yield from sorted(found, key=lambda entry: entry[1].encode())


# ---------------------------------------------------------------------------------------------- queries
def first_sentence(docstring: str) -> str:
    """The first sentence of a docstring's first paragraph, whitespace collapsed ('' when there is none)."""
    paragraph = re.split(r"\n\s*\n", docstring.strip(), maxsplit=1)[0]
    text = " ".join(paragraph.split())
    for match in _SENTENCE_END.finditer(text):
        if match.group() == "." and _ABBREVIATION.search(text[: match.start()]):
            continue
        return text[: match.end()]
    return text


def clean_query(docstring: str | None) -> str:
    """The query of a docstring, or '' when its first sentence is too short, too long, or not a description."""
    if not docstring:
        return ""
    text = first_sentence(docstring)
    words = text.split()
    if not MIN_QUERY_WORDS <= len(words) <= MAX_QUERY_WORDS or len(text) > MAX_QUERY_CHARS:
        return ""
    if _REFERENCE.match(text) or _SIGNATURE.match(text) or ">>>" in text or ":param" in text or "--" in text[:3]:
        return ""
    if not any(ch.isalpha() for ch in words[0]):
        return ""
    return text


# ---------------------------------------------------------------------------------------------- passages
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _docstring_node(node: ast.AST) -> ast.Expr | None:
    body = getattr(node, "body", None)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        return body[0]
    return None


def _trivial(node: ast.AST) -> bool:
    """A body that is only a docstring, ``pass``, ``...`` or ``raise NotImplementedError``."""
    body = list(node.body)  # type: ignore[attr-defined]
    if _docstring_node(node) is not None:
        body = body[1:]
    for statement in body:
        if isinstance(statement, ast.Pass):
            continue
        if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
            continue
        if isinstance(statement, ast.Raise) and statement.exc is not None and "NotImplementedError" in ast.unparse(
                statement.exc):
            continue
        return False
    return True


def _elide_methods(node: ast.AST, drop: dict[int, str]) -> None:
    """A class keeps its own statements and each method's (or nested class's) header; the bodies become ``...``
    (a method is its own passage: a class passage holding it would be a second copy of its answer)."""
    if not isinstance(node, ast.ClassDef):
        return
    for child in node.body:
        if isinstance(child, _DEFS) and child.body[0].lineno > child.lineno:
            start = child.body[0].lineno
            for number in range(start, (child.end_lineno or start) + 1):
                drop[number] = ""
            drop[start] = " " * child.body[0].col_offset + "..."


def passage_text(node: ast.AST, lines: list[str]) -> str | None:
    """The definition's source lines without the docstrings inside it (a class without its methods' bodies),
    dedented and capped; None when a docstring shares a line with code (left out rather than rebuilt)."""
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])  # type: ignore[attr-defined]
    last = node.end_lineno  # type: ignore[attr-defined]
    drop: dict[int, str] = {}  # line number -> replacement ('' removes the line)
    _elide_methods(node, drop)
    for inner in ast.walk(node):
        if not isinstance(inner, _DEFS):
            continue
        doc = _docstring_node(inner)
        if doc is None:
            continue
        start, end = doc.lineno, doc.end_lineno or doc.lineno
        if all(number in drop for number in range(start, end + 1)):
            continue  # inside an elided method body
        if lines[start - 1][: doc.col_offset].strip() or lines[end - 1][doc.end_col_offset:].strip():
            return None
        for number in range(start, end + 1):
            drop[number] = ""
        if end < last and not lines[end].strip():  # the blank line that followed the docstring
            drop[end + 1] = ""
        if len(inner.body) == 1:  # keep the inner body valid
            drop[start] = " " * doc.col_offset + "..."
    kept = []
    for number in range(first, last + 1):
        line = drop.get(number, lines[number - 1])
        if number in drop and not line:
            continue
        kept.append(line.rstrip())
    text = textwrap.dedent("\n".join(kept)).strip("\n")
    if len(text) > MAX_PASSAGE_CHARS:
        cut = text.rfind("\n", 0, MAX_PASSAGE_CHARS)
        text = text[: cut if cut > 0 else MAX_PASSAGE_CHARS]
    return text


def _definitions(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, ast.AST]]:
    """Public module-level functions and classes, and the public methods / nested classes of those classes."""
    for node in body:
        if isinstance(node, _DEFS) and not node.name.startswith("_"):
            name = f"{prefix}{node.name}"
            yield name, node
            if isinstance(node, ast.ClassDef):
                yield from _definitions(node.body, f"{name}.")


def file_items(unit: str, prefix: str, path: Path) -> Iterator[Item]:
    """The items of one source file, in source order."""
    try:
        source = path.read_bytes().decode("utf-8")
        tree = ast.parse(source, filename=prefix)
    except (UnicodeDecodeError, SyntaxError, ValueError):
        return
    lines = source.splitlines()
    seen: dict[str, int] = {}
    for name, node in _definitions(tree.body, ""):
        seen[name] = seen.get(name, 0) + 1
        pid = f"{prefix}::{name}" + (f"#{seen[name]}" if seen[name] > 1 else "")
        if _trivial(node):
            continue
        text = passage_text(node, lines)
        if text is None or len(text) < MIN_PASSAGE_CHARS:
            continue
        query = clean_query(ast.get_docstring(node, clean=True))
        if query and query.rstrip(".!?").casefold() in text.casefold():  # a comment or string repeats it
            query = ""
        yield Item(pid, unit, query, text)


# ---------------------------------------------------------------------------------------------- splits
def collect(quick: bool) -> list[Item]:
    """Every item, without repeated passages (the first in sorted order stays) or ambiguous queries."""
    items: list[Item] = []
    passages: set[str] = set()  # membership only; never iterated
    for unit, prefix, path in source_files(quick):
        for item in file_items(unit, prefix, path):
            if item.passage in passages:
                continue
            passages.add(item.passage)
            items.append(item)
    counts: dict[str, int] = {}
    for item in items:
        if item.query:
            counts[item.query.casefold()] = counts.get(item.query.casefold(), 0) + 1
    return [item if not item.query or counts[item.query.casefold()] == 1 else
            Item(item.pid, item.unit, "", item.passage) for item in items]


def split_of(unit: str, quick: bool) -> str:
    test, dev = (QUICK_TEST_UNITS, QUICK_DEV_UNITS) if quick else (TEST_UNITS, DEV_UNITS)
    return "test" if unit in test else "dev" if unit in dev else "train"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def judged(items: list[Item], split: str, quick: bool) -> list[Item]:
    """The split's judged queries: all for train, the ``*_QUERIES`` items with the smallest sha256(id) otherwise."""
    candidates = [item for item in items if item.query]
    if split == "train":
        return candidates
    size = {("test", False): TEST_QUERIES, ("dev", False): DEV_QUERIES,
            ("test", True): QUICK_TEST_QUERIES, ("dev", True): QUICK_DEV_QUERIES}[split, quick]
    chosen = sorted(candidates, key=lambda item: _digest(item.pid))[:size]
    return sorted(chosen, key=lambda item: item.pid.encode())


# ---------------------------------------------------------------------------------------------- writing
def _jsonl(records: list[dict[str, str]]) -> bytes:
    return "".join(json.dumps(record, sort_keys=True, ensure_ascii=True) + "\n" for record in records).encode()


def versions(quick: bool) -> dict[str, str]:
    found = {"python": platform.python_version()}
    if not quick:
        for _, dist in PACKAGES:
            found[dist] = importlib.metadata.version(dist)
    return found


def build(out: str, quick: bool) -> dict[str, object]:
    """Build the corpus into ``out`` (atomically); returns the manifest."""
    items = collect(quick)
    by_split: dict[str, list[Item]] = {"test": [], "dev": [], "train": []}
    for item in items:
        by_split[split_of(item.unit, quick)].append(item)
    corpus: list[dict[str, str]] = []
    queries: list[dict[str, str]] = []
    qrels: dict[str, bytes] = {}
    counts: dict[str, dict[str, int]] = {}
    for split, members in by_split.items():
        members = sorted(members, key=lambda item: item.pid.encode())
        corpus += [{"_id": item.pid, "title": "", "text": item.passage} for item in members]
        asked = judged(members, split, quick)
        queries += [{"_id": item.pid, "text": item.query} for item in asked]
        qrels[split] = ("query-id\tcorpus-id\tscore\n" + "".join(f"{item.pid}\t{item.pid}\t1\n" for item in asked)).encode()
        counts[split] = {"passages": len(members), "queries": len(asked),
                         "units": len(sorted({item.unit for item in members}))}
    queries.sort(key=lambda record: record["_id"].encode())
    files = {"corpus.jsonl": _jsonl(corpus), "queries.jsonl": _jsonl(queries),
             **{f"qrels/{split}.tsv": data for split, data in qrels.items()}}
    manifest: dict[str, object] = {
        "python": sys.version.split()[0], "python_minor": f"{sys.version_info[0]}.{sys.version_info[1]}",
        "versions": versions(quick), "quick": quick,
        "rule": {"test_units": list(QUICK_TEST_UNITS if quick else TEST_UNITS),
                 "dev_units": list(QUICK_DEV_UNITS if quick else DEV_UNITS),
                 "test_queries": QUICK_TEST_QUERIES if quick else TEST_QUERIES,
                 "dev_queries": QUICK_DEV_QUERIES if quick else DEV_QUERIES,
                 "corpus_order": "test, dev, train; each in _id byte order",
                 "passage_chars": [MIN_PASSAGE_CHARS, MAX_PASSAGE_CHARS],
                 "query_words": [MIN_QUERY_WORDS, MAX_QUERY_WORDS], "query_chars_max": MAX_QUERY_CHARS},
        "counts": counts,
        "files": {name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                  for name, data in sorted(files.items())},
    }
    files["manifest.json"] = (json.dumps(manifest, sort_keys=True, ensure_ascii=True, indent=1) + "\n").encode()
    with atomic_folder(out, KIND, kind=KIND) as scratch:
        (scratch / "qrels").mkdir()
        for name, data in files.items():
            (scratch / name).write_bytes(data)
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (new, or one this script wrote)")
    parser.add_argument("--quick", action="store_true", help="seven stdlib modules only: a few hundred passages")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        manifest = build(args.out, args.quick)
    except InputError as error:
        raise SystemExit(f"code_corpus: error: {error}") from None
    seconds = time.perf_counter() - start
    for split, count in manifest["counts"].items():  # type: ignore[union-attr]
        print(f"{split:5s}  {count['passages']:6d} passages  {count['queries']:6d} queries  {count['units']:4d} units")
    print(f"wrote {args.out} in {seconds:.1f} s")
    for name, entry in manifest["files"].items():  # type: ignore[union-attr]
        print(f"{entry['sha256']}  {name}")
    print(f"{file_sha256(Path(args.out) / 'manifest.json')}  manifest.json")


if __name__ == "__main__":
    main()
