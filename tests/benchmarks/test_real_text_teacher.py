"""benchmarks/real_text_teacher.py: the teacher's training examples, its pooler reset, its losses and re-ranking."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from tests.benchmarks.test_real_text import write_code_beir
from tests.helpers import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import real_text  # noqa: E402
import real_text_teacher as teacher  # noqa: E402


@pytest.mark.parametrize("source", teacher.SOURCES)
def test_examples_mine_negatives_outside_each_querys_judged_passages(tmp_path: Path, tiny_models, source: str) -> None:
    data = write_code_beir(tmp_path / "beir")
    queries, passages, judged = teacher.sample_queries(data, 10)
    assert len(queries) == 10 and set(queries) <= {f"q{n}" for n in range(24)}  # train split only
    assert set(passages) == {p for ps in judged.values() for p in ps}
    rows = teacher.examples(queries, passages, judged, 3, source, str(tiny_models.bert), 24)
    assert len(rows) == 10
    by_text = {text: p for p, text in passages.items()}
    for (query, positive, negatives), q in zip(rows, queries):
        assert query == queries[q] and by_text[positive] == judged[q][0]
        assert len(negatives) == 3 and len(set(negatives)) == 3
        assert not {by_text[n] for n in negatives} & set(judged[q])


def test_sample_is_seeded_and_capped_at_the_train_split(tmp_path: Path) -> None:
    data = write_code_beir(tmp_path / "beir")
    assert teacher.sample_queries(data, 8)[0] == teacher.sample_queries(data, 8)[0]
    assert len(teacher.sample_queries(data, 100)[0]) == 24  # capped at the train split


def test_identity_pooler_makes_the_pooler_tanh_of_cls(tiny_models) -> None:
    from sentence_transformers.cross_encoder import CrossEncoder

    model = CrossEncoder(str(tiny_models.cross_encoder), num_labels=1, max_length=24, device="cpu")
    assert teacher.identity_pooler(model) == 1
    bert = next(m for name, m in model.named_modules() if name.endswith("bert"))
    inputs = model.tokenizer(["sort the list"], ["def f(x): return sorted(x)"], return_tensors="pt")
    with torch.no_grad():
        out = bert(**inputs)
    torch.testing.assert_close(out.pooler_output, torch.tanh(out.last_hidden_state[:, 0]), rtol=0, atol=1e-6)


def test_pairs_per_query() -> None:
    assert teacher.pairs_per_query("bce", 3) == 1
    assert teacher.pairs_per_query("listnet", 3) == 4
    assert teacher.pairs_per_query("mnrl", 3) == 5


@pytest.mark.parametrize("loss", teacher.LOSSES)
def test_each_loss_trains_and_changes_the_weights(tmp_path: Path, tiny_models, loss: str) -> None:
    rows = [(f"query {i}", f"positive {i}", [f"negative {i} {j}" for j in range(3)]) for i in range(6)]
    from sentence_transformers.cross_encoder import CrossEncoder

    before = CrossEncoder(str(tiny_models.cross_encoder), num_labels=1, device="cpu")
    model = teacher.train(rows, loss, 2, 2, 1e-3, 24, str(tiny_models.cross_encoder), tmp_path / "trainer")
    start = dict(before.named_parameters())
    changed = [name for name, p in model.named_parameters() if not torch.equal(p.detach(), start[name].detach())]
    assert any("classifier" in name for name in changed) and any("encoder.layer" in name for name in changed)
    scores = model.predict([("query 0", "positive 0"), ("query 0", "negative 0 0")])
    assert all(0.0 <= s <= 1.0 for s in scores)  # predict's sigmoid


class FixedScores:
    """A stand-in cross-encoder whose score is a number written in the passage."""

    def predict(self, pairs, **_):
        return [float(passage.split()[-1]) for _, passage in pairs]


def test_rerank_orders_the_head_by_score_and_keeps_the_tail() -> None:
    passages = {"a": "x 0.1", "b": "x 0.9", "c": "x 0.5", "d": "x 2.0"}
    run = {"q": ["a", "b", "c", "d"], "r": ["d"]}
    out = teacher.rerank(FixedScores(), {"q": "?", "r": "?"}, passages, run, 3)
    assert out == {"q": ["b", "c", "a", "d"], "r": ["d"]}  # d (score 2.0) is below the depth: stays last


def test_settings_of_a_run_before_the_teacher_options_read_as_its_recipe(tmp_path: Path) -> None:
    old = {"data": "/d", "student": "s", "teacher_init": None, **real_text.FULL, "train_queries": 1280}
    old.pop("teacher_queries")
    (tmp_path / "settings.json").write_text(json.dumps(old))
    saved = real_text.saved_settings(tmp_path / "settings.json")
    assert saved["teacher_loss"] == "bce" and saved["teacher_negatives_from"] == "bm25"
    assert saved["teacher_lr"] == 5e-5 and saved["teacher_queries"] == 1280 and saved["teacher_pooler"] == "keep"
