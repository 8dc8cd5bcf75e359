"""``benchmarks/warm_search.py --quick``: one searcher per index answers every query; the section is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import load_benchmark


@pytest.mark.slow  # about 25 s: MiniLM and a MiniLM-size MLM encode a few hundred queries
def test_quick_run_writes_the_table_and_loads_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("faiss")
    module = load_benchmark("warm_search", monkeypatch)
    rows, notes = module.run(module.QUICK)
    assert [(row.student, row.backend) for row in rows] == [("dense", "faiss flat"), ("dense", "faiss ivf"),
                                                            ("sparse", "numpy inverted index")]
    assert notes["student loads"] == notes["index loads"] == 1 and notes["queries"] == module.QUICK.many
    assert all(value > 0 for row in rows for value in row.ms.values())
    text = module.render(rows, notes, module.QUICK, "python benchmarks/warm_search.py --quick")
    assert "| " + " | ".join(module.COLUMNS) + " |" in text and "1 student load and 1 index load" in text
