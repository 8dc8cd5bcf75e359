"""TextTable: ids, texts and id look-ups of a BEIR jsonl file read from a memory map, equal to parsing it whole."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from distill.data.common import DataError, DataFileNotFound
from distill.data.beir.text_table import TextTable
from tests.helpers import PASSAGES, write_beir

RECORDS = [
    {"_id": "a", "title": "Caf\u00e9", "text": "  cr\u00e8me br\u00fbl\u00e9e \u2014 \u65e5\u672c\u8a9e  "},
    {"_id": "doc-000000000017", "text": "no title here"},
    {"_id": "e", "title": "Only title", "text": ""},
    {"_id": "empty", "text": None},
    {"_id": 42, "title": None, "text": "an integer id \U0001f600"},
    {"_id": "\u00fc\u00f1\u00ef", "title": "  ", "text": "unicode id"},
]


def brute_force(path: Path, use_title: bool) -> tuple[list[str], list[str]]:
    ids, texts = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        text = str(record["text"] or "").strip()
        title = str(record.get("title") or "").strip()
        ids.append(str(record["_id"]))
        texts.append(f"{title} {text}".strip() if use_title and title else text)
    return ids, texts


@pytest.fixture
def jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.jsonl"
    lines = [json.dumps(r, ensure_ascii=i % 2 == 0) for i, r in enumerate(RECORDS)]
    path.write_text("\n".join(lines[:2] + ["", "  "] + lines[2:]), encoding="utf-8")  # blank lines, no final newline
    return path


@pytest.mark.parametrize("use_title", [False, True])
def test_texts_and_ids_equal_a_full_parse(jsonl: Path, use_title: bool) -> None:
    table = TextTable.read(jsonl, use_title)
    ids, texts = brute_force(jsonl, use_title)
    assert len(table) == len(ids) == len(RECORDS)
    assert [table[row] for row in range(len(table))] == texts
    assert table.texts(reversed(range(len(table)))) == texts[::-1]
    assert table[-1] == texts[-1]
    assert table.ids() == ids and table.ids([3, 0]) == [ids[3], ids[0]]
    assert [table.id_of(row) for row in range(len(table))] == ids
    assert [table.row_of(key) for key in ids] == list(range(len(ids)))
    assert table.rows_of(ids[::-1]) == list(range(len(ids)))[::-1]
    assert [table.is_empty(row) for row in range(len(table))] == [not text for text in texts]
    assert table[3] == "" and table.is_empty(3)
    with pytest.raises(IndexError):
        table[len(table)]


def test_unknown_ids_are_none(jsonl: Path) -> None:
    table = TextTable.read(jsonl)
    unknown = ["", "b", "doc-0000000000170", "doc-00000000001", "4", "420", "\u00fc"]
    assert table.rows_of(unknown) == [None] * len(unknown)
    assert table.row_of("zzzz") is None and table.row_of("a") == 0
    assert table.rows_of([]) == []


def test_the_shared_beir_corpus(tmp_path: Path) -> None:
    table = TextTable.read(write_beir(tmp_path / "beir") / "corpus.jsonl", use_title=True)
    assert table.ids() == [p for p, _, _ in PASSAGES]
    assert table.texts(range(len(PASSAGES))) == [f"{title} {text}" for _, title, text in PASSAGES]


def test_an_empty_file_has_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "queries.jsonl"
    path.write_text("\n")
    table = TextTable.read(path)
    assert len(table) == 0 and table.ids() == [] and table.row_of("q0") is None
    with pytest.raises(IndexError):
        table[0]


def test_bad_lines_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    with pytest.raises(DataFileNotFound, match=r"corpus\.jsonl' not found: data\.init_args\.data_dir must hold"):
        TextTable.read(path)
    good = json.dumps({"_id": "p0", "text": "fine"})
    for bad, message in (('{"_id": "p1", "text": ', r"corpus\.jsonl: line 3 is not valid JSON: Expecting value"),
                         ('["p1", "text"]', r"corpus\.jsonl: line 3 is not a JSON object"),
                         ('{"_id": "p1"}', r"corpus\.jsonl: line 3 needs '_id' and 'text' fields"),
                         ('{"text": "no id"}', r"corpus\.jsonl: line 3 needs '_id' and 'text' fields")):
        path.write_text("\n".join([good, "", bad, good]) + "\n")
        with pytest.raises(DataError, match=message):
            TextTable.read(path)
    path.write_bytes(good.encode() + b'\n{"_id": "p1", "text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"corpus\.jsonl' line 2 is not UTF-8 text \(byte 0xe9"):
        TextTable.read(path)


def test_a_repeated_id_names_its_second_line(tmp_path: Path) -> None:
    path = tmp_path / "queries.jsonl"
    rows = [{"_id": key, "text": f"text {n}"} for n, key in enumerate(["q10", "q2", "q1", "", "q2", "q1"])]
    path.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + "\n".join(json.dumps(r) for r in rows[2:]))
    with pytest.raises(DataError, match=r"^queries\.jsonl: line 6 repeats _id 'q2'$"):
        TextTable.read(path)


def test_a_pickled_table_reads_its_texts(jsonl: Path) -> None:
    table = TextTable.read(jsonl, use_title=True)
    expected = table.texts(range(len(table)))  # maps the file before pickling
    copy = pickle.loads(pickle.dumps(table))
    assert copy._map is None
    assert copy.texts(range(len(copy))) == expected
    assert copy.ids() == table.ids() and copy.row_of("e") == 2


def test_a_file_that_changed_after_reading_is_refused(jsonl: Path) -> None:
    table = TextTable.read(jsonl)
    with jsonl.open("a") as handle:
        handle.write("\n" + json.dumps({"_id": "late", "text": "added"}))
    with pytest.raises(DataError, match=r"changed since it was read"):
        table[0]
