"""`distill mine` writes the MS MARCO recipe's training file from a BEIR folder, and the recipe trains on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distill.cli import main
from distill.errors import InputError
from tests.helpers import REPO_ROOT, error_line, fit_and_check

RECIPE = str(REPO_ROOT / "configs" / "msmarco" / "cross-encoder-to-minilm-margin-mse.yaml")

# Tiny randomly initialised teachers score every pair almost alike; the loss guard says so, as it should.
pytestmark = pytest.mark.filterwarnings("ignore:student/teacher scale mismatch:UserWarning")


def _data_args(beir: Path, tiny_models) -> list[str]:
    return [f"--model.init_args.teacher.init_args.pretrained={tiny_models.cross_encoder}",
            f"--data.init_args.data_dir={beir}", f"--data.init_args.teacher_tokenizer={tiny_models.cross_encoder}",
            "--data.init_args.passage_max_length=32"]


def test_mine_then_fit_the_msmarco_recipe(tmp_path: Path, tiny_models, beir_dir: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (beir_dir / "train_triples.jsonl").unlink()  # nothing written by hand: mine it
    out = beir_dir / "train_triples.jsonl"
    main(["mine", "--config", RECIPE, "--out", str(out), "--negatives", "2", "--depth", "4", "--teacher-scores",
          "--batch-size", "3", *_data_args(beir_dir, tiny_models)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["query_id"] for row in rows] == ["q0", "q1", "q2", "q3", "q4"]  # the queries of qrels/train.tsv
    gold = {"q0": "p0", "q1": "p1", "q2": "p2", "q3": "p3", "q4": "p4"}
    for row in rows:
        assert row["positive_ids"] == [gold[row["query_id"]]]
        assert len(row["negative_ids"]) == 2 and gold[row["query_id"]] not in row["negative_ids"]
        assert set(row["teacher_scores"]) == {*row["positive_ids"], *row["negative_ids"]}
    # The real all-MiniLM-L6-v2 student ranks the gold passage first, so its hard negatives are the next ones.
    cli = fit_and_check(["--config", RECIPE, *_data_args(beir_dir, tiny_models), "--trainer.fast_dev_run=true",
                         "--trainer.logger=false", "--data.init_args.batch_size=5", "--data.init_args.eval_batch_size=4",
                         "--trainer.val_check_interval=1.0"])
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss/margin_mse"])


def test_mine_refuses_impossible_settings(tmp_path: Path, tiny_models, beir_dir: Path) -> None:
    with pytest.raises(InputError, match="leave fewer than --negatives 8 ranks"):
        from distill.cli.mine import main as mine_main

        mine_main(["--config", RECIPE, "--out", str(tmp_path / "x.jsonl"), "--depth", "5",
                   *_data_args(beir_dir, tiny_models)])
    assert not (tmp_path / "x.jsonl").exists()


def test_mine_with_the_student_alone_never_loads_the_teacher(tmp_path: Path, beir_dir: Path,
                                                             capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The recipe's teacher and teacher tokenizer are hub ids this machine cannot reach: mining without
    --teacher-scores needs neither. Outside a terminal the encoding prints progress lines."""
    monkeypatch.setenv("DISTILL_PROGRESS_SECONDS", "0")
    out = tmp_path / "mined.jsonl"
    main(["mine", "--config", RECIPE, "--out", str(out), "--negatives", "2", "--depth", "4", "--batch-size", "3",
          f"--data.init_args.data_dir={beir_dir}", "--data.init_args.passage_max_length=32"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and all(len(row["negative_ids"]) == 2 and "teacher_scores" not in row for row in rows)
    err = capsys.readouterr().err
    assert "distill: encoding passages: 3/" in err and "texts/s" in err and "distill: encoding queries: 5/5" in err


def test_mine_with_teacher_scores_and_an_unreachable_teacher_is_one_line(tmp_path: Path, beir_dir: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    line = error_line(capsys, ["mine", "--config", RECIPE, "--out", str(tmp_path / "x.jsonl"), "--teacher-scores",
                               f"--data.init_args.data_dir={beir_dir}"])
    assert "cross-encoder/ms-marco-MiniLM-L-6-v2" in line and "hub downloads are off" in line
    assert not (tmp_path / "x.jsonl").exists()
