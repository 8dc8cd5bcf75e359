"""``benchmarks/late_retrieval.py --quick``: recall grows with the token candidates, both sections are written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import load_benchmark


@pytest.mark.slow  # about 20 s: 120 grid captions indexed through export and build_index, 600 items at scale
def test_quick_run_writes_both_sections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("faiss")
    module = load_benchmark("late_retrieval", monkeypatch)
    out, scaling = tmp_path / "benchmarks.md", tmp_path / "scaling.md"
    module.main(["--quick", "--out", str(out), "--scaling", str(scaling)])
    text = out.read_text()
    assert "<!-- late-retrieval:start -->" in text and "<!-- late-retrieval:end -->" in text
    assert "| 1024 (default) |" in text and "pooled, FAISS IndexFlatIP float32" in text
    recalls = [float(line.split("|")[2]) for line in text.splitlines() if line.startswith("| ") and
               line.split("|")[1].strip().split(" ")[0].isdigit()]
    assert recalls == sorted(recalls) and 0 < recalls[-1] <= 1
    assert "MS MARCO passages" in scaling.read_text() and "<!-- late-retrieval:start -->" in scaling.read_text()


def test_recall_is_one_when_every_stored_token_is_a_candidate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("faiss")
    module = load_benchmark("late_retrieval", monkeypatch)
    settings = module.Settings(images=6, queries=4, sweep=(1, 10_000), scale_items=0)
    rows, notes = module.recall_at_10k(settings, None, tmp_path)
    assert notes["items"] == 18 and notes["tokens"] == 18 * 36
    assert rows[-1]["recall_stored"] == 1.0 and rows[-1]["candidates"] == 18
    assert rows[-1]["recall_float32"] >= 0.9  # float16 rounding may swap near-tied captions only
