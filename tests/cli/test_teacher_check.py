"""`distill teacher-check`: the check `fit` runs before its first step, as a command of its own on a recipe."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from distill.cli import main
from tests.helpers import REPO_ROOT, error_line

TEXT_RECIPE = str(REPO_ROOT / "configs" / "msmarco" / "cross-encoder-to-minilm-margin-mse.yaml")
GRID_RECIPE = str(REPO_ROOT / "configs" / "demo" / "grid-cprd-kl.yaml")
GRID_TEACHER = REPO_ROOT / "artifacts" / "shapes-grid-teacher"
# The split of tests/training/test_teacher_check.py: 24 validation images, 2 captions each.
GRID_DATA = ["--data.init_args.num_train=16", "--data.init_args.num_val=24", "--data.init_args.num_test=8",
             "--data.init_args.captions_per_image=2", "--data.init_args.batch_size=8",
             "--data.init_args.eval_batch_size=16", f"--model.init_args.teacher.init_args.weights={GRID_TEACHER}"]
SUMMARY = re.compile(r"on (\d+) validation queries the student alone scores (\S+) ([\d.]+), re-ranked by the teacher "
                     r"\(its top (\d+)\) ([\d.]+) \(([\d,]+) teacher pairs, [\d.]+ s\)")


@pytest.fixture(autouse=True)
def _check_off_for_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command checks whatever DISTILL_TEACHER_CHECK says: that switch is `fit`'s."""
    monkeypatch.setenv("DISTILL_TEACHER_CHECK", "0")


def test_the_trained_grid_teacher_passes_against_a_random_student(capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """One line on stdout; in a log file, progress lines on stderr (here one per batch)."""
    monkeypatch.setenv("DISTILL_PROGRESS_SECONDS", "0")
    main(["teacher-check", "--config", GRID_RECIPE, *GRID_DATA, "--queries", "16", "--k", "8"])
    captured = capsys.readouterr()
    assert "distill: teacher check: 32 items of the sample encoded" in captured.err  # 16 images x 2 captions
    assert "distill: teacher check: the teacher re-ranks the top 8 of 16 sampled queries" in captured.err
    out = captured.out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("teacher check passed: "), out
    queries, metric, student, k, two_stage, pairs = SUMMARY.search(out[0]).groups()
    assert (queries, metric, k) == ("16", "rsum", "8")
    assert float(two_stage) > float(student)
    # 16 images x their top 8 captions, and their 32 captions x their top 8 images
    assert int(pairs.replace(",", "")) == 16 * 8 + 32 * 8


@pytest.mark.filterwarnings("ignore:student/teacher scale mismatch:UserWarning")
def test_a_random_cross_encoder_fails_against_minilm_in_one_line(tiny_models, beir_dir: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """all-MiniLM-L6-v2 ranks the gold passage of every dev query first; a randomly initialised cross-encoder head
    can only tie or lower that: exit status 1, one line with both numbers and what to do, no traceback."""
    line = error_line(capsys, [
        "teacher-check", "--config", TEXT_RECIPE,
        f"--model.init_args.teacher.init_args.pretrained={tiny_models.cross_encoder}",
        f"--data.init_args.data_dir={beir_dir}", f"--data.init_args.teacher_tokenizer={tiny_models.cross_encoder}",
        "--data.init_args.passage_max_length=32", "--data.init_args.num_workers=0"], status=1)
    assert line.startswith("distill: error: teacher check: on 3 validation queries the student alone scores "
                           "ndcg@10 100.00, re-ranked by the teacher (its top 10) ")
    student, two_stage = map(float, SUMMARY.search(line).group(3, 5))
    assert two_stage <= student
    assert "stronger teacher (model.init_args.teacher)" in line and "`distill fit --teacher_check false`" in line


def test_a_missing_student_checkpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = error_line(capsys, ["teacher-check", "--config", GRID_RECIPE, *GRID_DATA,
                               "--ckpt_path", str(tmp_path / "nope.ckpt")])
    assert "--ckpt_path" in line and "nope.ckpt" in line


def test_a_recipe_without_a_teacher_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    line = error_line(capsys, ["teacher-check", "--config", str(REPO_ROOT / "configs" / "demo" / "grid-infonce.yaml"),
                               *GRID_DATA[:-1]])
    assert "model.init_args.teacher" in line


def test_bad_settings_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    line = error_line(capsys, ["teacher-check", "--config", GRID_RECIPE, "--queries", "0"])
    assert "--queries" in line and "expected an integer >= 1" in line
