"""``benchmarks/text_speed.py`` on a tiny random BERT: distill's scores and embeddings are sentence-transformers'."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import load_benchmark


@pytest.fixture
def text_speed(monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("sentence_transformers")
    module = load_benchmark("text_speed", monkeypatch)
    return module


def tiny_bert(folder: Path) -> Path:
    """A 1-layer, 32-wide BERT with the packaged MiniLM tokenizer (a fast one, 512 positions), random weights\n    (drawn wider than BERT's default, so that the cross-encoder's scores differ between pairs)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from distill.students import minilm_path

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, initializer_range=0.2)
    BertModel(config).eval().save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(minilm_path())).save_pretrained(folder)
    return folder


def test_distill_paths_compute_what_sentence_transformers_computes(tmp_path: Path, text_speed) -> None:
    passages, queries = text_speed.stdlib_texts()
    assert len(passages) > 500 and len(queries) > 100
    assert text_speed.stdlib_texts() == (passages, queries)  # the same texts on every run
    passages = passages[:60]  # lengths from a few tokens to past 512
    a_rows, b_rows = text_speed.pair_indices(5, len(passages), text_speed.PER_QUERY)
    assert len(a_rows) == len(b_rows) == 5 * text_speed.PER_QUERY and max(b_rows) < len(passages)
    base = tiny_bert(tmp_path / "bert")
    cross = text_speed.save_cross_encoder(tmp_path / "cross-encoder", base)
    spec = {"class_path": "distill.students.TextDualEncoder",
            "init_args": {"pretrained": str(base), "pooling": "mean", "shared": True}}
    student = text_speed.export_minilm_student(tmp_path / "student", spec)
    paths = text_speed.load_paths(cross, student, queries[:5], passages, a_rows, b_rows, passages)

    ours, theirs = paths.distill_scores(), paths.st_scores()
    assert ours.shape == theirs.shape == (40,) and ours.dtype == theirs.dtype == np.float32
    assert np.abs(ours - theirs).max() <= 1e-5
    assert float(np.std(ours)) > 1e-2  # the pairs' scores differ: the comparison is not of constants
    ours, theirs = paths.distill_embeddings(), paths.st_embeddings()
    assert ours.shape == theirs.shape == (60, 32)
    assert np.abs(ours - theirs).max() <= 1e-5

    rows = text_speed.measure(paths, repeats=1)
    assert [row.items for row in rows] == [40, 60]
    assert all(row.max_diff <= 1e-5 and row.ratio > 0 for row in rows)
    notes = {"queries": 5, "passage tokens median": 80.0, "passage tokens max": 900.0, "over 256": 0.1}
    text = text_speed.render(rows, notes, 1, "python benchmarks/text_speed.py")
    assert "| " + " | ".join(text_speed.COLUMNS) + " |" in text
    assert text.count("x |") == 2


def test_the_section_replaces_only_itself(tmp_path: Path, text_speed) -> None:
    from distill.cli.report import update_markdown_section

    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n<!-- other:start -->\nkept\n<!-- other:end -->\n\n"
                   "<!-- text-speed:start -->\nold\n<!-- text-speed:end -->\n\ntail\n")
    update_markdown_section(str(out), text_speed.SECTION, "new table\n")
    assert out.read_text() == ("# Benchmarks\n\n<!-- other:start -->\nkept\n<!-- other:end -->\n\n"
                               "<!-- text-speed:start -->\nnew table\n<!-- text-speed:end -->\n\ntail\n")
