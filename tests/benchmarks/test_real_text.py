"""benchmarks/real_text.py --quick end to end on a tiny BEIR folder with tiny random models: every row of the table
has finite metrics in [0, 1], and a second run recomputes no finished stage."""

from __future__ import annotations

import json
import math
import random
import re
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, WORDS

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import real_text  # noqa: E402


def write_code_beir(root: Path, seed: int = 0) -> Path:
    """40 'functions' (passages) each described by one query; 24 train, 6 dev, 10 test queries."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    (root / "qrels").mkdir()
    corpus, queries, splits = [], [], {"train": [], "dev": [], "test": []}
    for n in range(40):
        words = rng.sample(WORDS, 3)
        corpus.append({"_id": f"pkg{n % 4}:f{n}", "title": "", "text": f"def {words[0]}_{n}(x):\n    return {words[1]}(x, {words[2]})"})
        queries.append({"_id": f"q{n}", "text": f"{words[0]} the {words[1]} with {words[2]}"})
        split = "train" if n < 24 else "dev" if n < 30 else "test"
        splits[split].append((f"q{n}", f"pkg{n % 4}:f{n}"))
    (root / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(row) + "\n" for row in queries))
    for split, pairs in splits.items():
        (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{p}\t1\n" for q, p in pairs))
    return root


@pytest.mark.slow
def test_quick_study_fills_every_row_and_resumes(tmp_path: Path, tiny_models, capsys) -> None:
    data = write_code_beir(tmp_path / "beir")
    out = tmp_path / "study"
    markdown = tmp_path / "benchmarks.md"
    argv = ["--data", str(data), "--out", str(out), "--quick", "--seeds", "0", "--rows", "kl", "infonce-hn", "--student", str(tiny_models.bert),
            "--teacher-init", str(tiny_models.cross_encoder), "--max-length", "24", "--train-queries", "24",
            "--test-passages", "30", "--markdown", str(markdown)]
    real_text.main(argv)
    first = json.loads((out / "results.json").read_text())
    table = (out / "real-text.md").read_text()

    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| row")]
    names = [row.split(" | ")[0].lstrip("| ") for row in rows]
    assert names[:2] == ["BM25 (bm25s)", "zero-shot student (all-MiniLM-L6-v2)"]
    trained = [name for name in names if name.startswith(("InfoNCE", "+ "))]
    assert trained == [real_text.ROWS[row][0] for row in ("infonce", "infonce-hn", "kl")]  # InfoNCE always runs
    assert any(name.startswith("teacher re-ranks the") for name in names)
    assert any(name.startswith("teacher re-ranks BM25") for name in names)
    assert len(rows) == 2 + 3 + 2
    for row in rows:
        cells = row.strip("| ").split(" | ")[1:4]
        for value in cells:  # "mean ± sd" or a single value
            mean = float(value.split(" ± ")[0])
            assert math.isfinite(mean) and 0.0 <= mean <= 1.0, row
    for name, result in first["stages"].items():
        for metric, value in result.get("metrics", {}).items():
            assert 0.0 <= value <= 1.0, (name, metric, value)
    assert set(first["ran"]) >= {"data", "bm25", "teacher", "teacher-bm25", "zero-shot", "mine", "cache", "two-stage"}
    assert first["stages"]["cache"]["teacher_pairs"] > 0
    ce = first["stages"]["teacher"]
    assert (ce["loss"], ce["negatives_from"], ce["pooler"]) == (real_text.TEACHER_LOSS, real_text.TEACHER_NEGATIVES_FROM,
                                                               real_text.TEACHER_POOLER)
    assert ce["queries"] == 24 and ce["pairs_seen"] == 6 * 8 * real_text.teacher.pairs_per_query(ce["loss"], 3)
    assert (out / "teacher" / "model.safetensors").is_file()
    # real_text_teacher.study_candidates ranks the test view as `distill test` did (same student, same checkpoint)
    qrels = real_text.read_qrels(out / "data" / "test" / "qrels" / "test.tsv")
    candidates = real_text.teacher.study_candidates(out, str(tiny_models.bert), 24, depth=100)
    for name, stage in (("zero-shot", "zero-shot"), ("infonce", "infonce-seed0")):
        for metric in ("mrr@10", "ndcg@10"):
            assert real_text.ranked_metrics(candidates[name], qrels)[metric] == \
                pytest.approx(first["stages"][stage]["metrics"][metric], abs=1e-3), (name, metric)
    assert "<!-- real-text:start -->" in markdown.read_text()

    # real_text_teacher.py trains another teacher and scores it against this study's students
    real_text.teacher.main(["--data", str(data), "--out", str(tmp_path / "teacher"), "--study", str(out),
                            "--student", str(tiny_models.bert), "--init", str(tiny_models.cross_encoder),
                            "--queries", "8", "--steps", "2", "--batch-size", "2", "--max-length", "24",
                            "--eval-queries", "6", "--students", "infonce", "zero-shot"])
    scored = json.loads((tmp_path / "teacher" / "result.json").read_text())
    six = {q: judged for q, judged in sorted(qrels.items())[:6]}
    for name in ("infonce", "zero-shot"):
        assert scored[name]["student"] == pytest.approx(real_text.ranked_metrics(candidates[name], six), abs=1e-9)
        assert all(0.0 <= value <= 1.0 for value in scored[name]["reranked"].values())
        assert scored[name]["reranked"]["recall@100"] == pytest.approx(scored[name]["student"]["recall@100"])  # re-ordered
    assert scored["rows"] == 8 and (out / "student-candidates.json").is_file()

    capsys.readouterr()
    real_text.main(argv)  # every stage is done: nothing runs again, the same table comes back
    second = json.loads((out / "results.json").read_text())
    assert second["ran"] == []
    assert (out / "real-text.md").read_text() == table
    assert not re.search(r"\] \S+: running", capsys.readouterr().out)
    with pytest.raises(SystemExit, match="teacher_loss"):  # another teacher recipe needs another --out
        real_text.main([*argv, "--teacher-loss", "bce", "--dry-run"])
