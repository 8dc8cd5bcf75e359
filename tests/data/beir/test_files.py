"""BEIR judgments: a repeated line is counted once and reported; a conflicting grade is an error naming both
lines."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from distill.data.beir.files import read_qrels
from distill.data.common import DataError


def _qrels(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "qrels" / "test.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{line}\n" for line in lines))
    return path


def test_repeated_judgments_count_once_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _qrels(tmp_path, "q1\td1\t1", "q1\td2\t2", "q1\td1\t1", "q2\td1\t1", "q1\td1\t1.0")
    with caplog.at_level(logging.WARNING, logger="distill.data"):
        qrels = read_qrels(path)
    assert qrels == {"q1": {"d1": 1.0, "d2": 2.0}, "q2": {"d1": 1.0}}
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1
    assert "test.tsv': 2 line(s) repeat an earlier judgment with the same grade (first: line 4 repeats line 2)" \
        in warnings[0]


def test_a_conflicting_grade_names_both_lines(tmp_path: Path) -> None:
    path = _qrels(tmp_path, "q1\td1\t1", "q1\td2\t0", "q1\td1\t2")
    with pytest.raises(DataError, match=r"test\.tsv': line 4 grades query 'q1', passage 'd1' 2, line 2 graded it 1: "
                                        r"keep one judgment per pair"):
        read_qrels(path)


def test_distinct_judgments_pass_silently(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _qrels(tmp_path, "q1\td1\t1", "q1\td2\t0", "q2\td1\t2")
    with caplog.at_level(logging.WARNING, logger="distill.data"):
        assert read_qrels(path) == {"q1": {"d1": 1.0, "d2": 0.0}, "q2": {"d1": 2.0}}
    assert not caplog.records


@pytest.mark.parametrize("grade", ["nan", "inf", "-Infinity"])
def test_a_non_finite_grade_is_refused(tmp_path: Path, grade: str) -> None:
    path = _qrels(tmp_path, "q1\td1\t1", f"q1\td2\t{grade}")
    with pytest.raises(DataError, match=rf"test\.tsv': line 3 has the score '{grade}': a judgment's grade is a finite"):
        read_qrels(path)
