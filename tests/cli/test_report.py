"""``test`` prints one results table: one value column, full metric names."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.cli import main
from distill.cli.report import stage_results_table
from tests.helpers import REPO_ROOT

RECIPE = str(REPO_ROOT / "configs" / "msmarco" / "cross-encoder-to-minilm-margin-mse.yaml")
pytestmark = pytest.mark.filterwarnings("ignore:student/teacher scale mismatch:UserWarning")


def test_table_lists_each_metric_once_with_its_full_name() -> None:
    long = "test/two_stage/a_very_long_metric_name_that_a_narrow_terminal_would_cut@100"
    table = stage_results_table({"test/ndcg@10": 81.234, f"{long}/dataloader_idx_0": 1.0, f"{long}/dataloader_idx_1": 1.0,
                                 "test/two_stage/teacher_pairs": 12000.0, "train/loss": 3.0}, "test")
    lines = table.splitlines()
    assert lines[0].split() == ["test", "metric", "value"]
    assert [line.split()[0] for line in lines[2:]] == ["test/ndcg@10", long, "test/two_stage/teacher_pairs"]
    assert lines[2].split()[1] == "81.23" and lines[4].split()[1] == "12,000"


def test_text_test_run_prints_one_table(tmp_path: Path, tiny_models, beir_dir: Path,
                                        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A query/corpus recipe evaluates with two loaders; the table still has one value column."""
    monkeypatch.chdir(tmp_path)
    main(["test", "--config", RECIPE, f"--model.init_args.teacher.init_args.pretrained={tiny_models.cross_encoder}",
          f"--data.init_args.data_dir={beir_dir}", f"--data.init_args.teacher_tokenizer={tiny_models.cross_encoder}",
          "--data.init_args.passage_max_length=32", "--trainer.logger=false", "--data.init_args.num_workers=0",
          "--model.init_args.evaluator.init_args.two_stage_k=3"])
    out = capsys.readouterr().out
    assert "DataLoader" not in out and "┃" not in out
    lines = out.strip().splitlines()
    assert lines[0].split() == ["test", "metric", "value"]
    names = [line.split()[0] for line in lines[2:]]
    assert "test/ndcg@10" in names and "test/two_stage/ndcg@10" in names and len(names) == len(set(names))
    assert all(len(line.split()) == 2 for line in lines[2:])
