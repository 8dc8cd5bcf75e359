"""Recipe mistakes: each ends in one ``distill: error:`` line naming the key and the fix, or one warning."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from distill.cli import main
from distill.teachers import ShapesCrossEncoder
from tests.helpers import REPO_ROOT, TINY_TEACHER

DEMO = REPO_ROOT / "configs" / "demo"
TINY = ["--data.init_args.num_train=16", "--data.init_args.num_val=4", "--data.init_args.num_test=4",
        "--data.init_args.batch_size=8", "--data.init_args.eval_batch_size=16", "--data.init_args.image_size=32",
        "--model.init_args.student.init_args.tower_b.init_args.config.hidden_size=32",
        "--model.init_args.student.init_args.tower_b.init_args.config.num_attention_heads=2",
        "--model.init_args.student.init_args.tower_b.init_args.config.intermediate_size=64",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def fit_args(recipe: str, tmp_path: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(DEMO / recipe), f"--trainer.default_root_dir={tmp_path}", *TINY, *extra]


def error_line(capsys: pytest.CaptureFixture[str], args: list[str], status: int = 2) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == status
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("distill: error:")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("key, value", [
    ("--model.init_args.losses.infonce.class_path", "distill.losses.NoSuchLoss"),
    ("--model.init_args.student.class_path", "distill.students.NoSuchStudent"),
])
def test_unknown_loss_or_model_class(key: str, value: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    line = error_line(capsys, fit_args("shapes-infonce.yaml", tmp_path, f"{key}={value}"))
    assert value in line


def test_loss_needing_teacher_embeddings_with_a_teacher_without(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    line = error_line(capsys, fit_args(
        "shapes-cosine.yaml", tmp_path, "--model.init_args.teacher=tests.helpers.ScoreOnlyTeacher"))
    assert ("loss 'cosine' (CosineEmbedding) needs teacher embeddings, but ScoreOnlyTeacher exposes none: remove it "
            "or use a teacher with embed_a/embed_b") in line


def test_teacher_with_another_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    teacher = ShapesCrossEncoder(**{**TINY_TEACHER, "vocab_size": 16}).save_pretrained(tmp_path / "teacher16")
    line = error_line(capsys, fit_args("shapes-kl.yaml", tmp_path, "--trainer.fast_dev_run=true",
                                       f"--model.init_args.teacher.init_args.weights={teacher}"))
    from distill.data import ShapesDataModule

    vocab = ShapesDataModule().vocab_size
    assert (f"CompatibilityCheck: the data module's tokenizer makes {vocab} token ids (ShapesDataModule.vocab_size) "
            "but the teacher (model.init_args.teacher: ShapesCrossEncoder) embeds only 16 (ShapesCrossEncoder.config."
            "vocab_size), so the teacher was built for another tokenizer") in line


def test_student_with_another_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = error_line(capsys, fit_args("shapes-infonce.yaml", tmp_path, "--trainer.fast_dev_run=true",
                                       "--model.init_args.student.init_args.tower_b.init_args.config.vocab_size=20"))
    assert "but the student (model.init_args.student: DualEncoder) embeds only 20 (DualEncoder.tower_b." in line


def test_more_hard_negatives_than_a_batch_has(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(fit_args("shapes-kl.yaml", tmp_path, "--trainer.fast_dev_run=3", "--data.init_args.batch_size=4",
                      "--model.init_args.num_hard_negatives=8",
                      f"--model.init_args.teacher.init_args.weights={tiny_teacher_dir}"))
    messages = [str(w.message) for w in caught if str(w.message).startswith("model.init_args.num_hard_negatives")]
    assert messages == ["model.init_args.num_hard_negatives=8 but a training batch has 4 pairs, so an anchor has at "
                        "most 3 candidate negatives: mining uses k=3 (padding slots are masked). Raise "
                        "data.init_args.batch_size above 8 or lower num_hard_negatives to 3"]


@pytest.mark.parametrize("override, expected", [
    ("--model.init_args.losses.kl.init_args.student_temperature=0",
     "model.init_args.losses.kl.init_args.student_temperature: student_temperature must be a finite number > 0, "
     "got 0.0"),
    ("--model.init_args.losses.kl.init_args.teacher_temperature=-1",
     "model.init_args.losses.kl.init_args.teacher_temperature: teacher_temperature must be a finite number > 0, "
     "got -1.0"),
    ("--model.init_args.student.init_args.temperature=0",
     "model.init_args.student.init_args.temperature: student temperature must be > 0, got 0.0"),
    ("--model.init_args.loss_weights.kl=-0.5", "model.init_args.loss_weights.kl must be a finite number >= 0, got -0.5"),
])
def test_non_positive_temperatures_and_weights(override: str, expected: str, tmp_path: Path, tiny_teacher_dir: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    line = error_line(capsys, fit_args("shapes-kl.yaml", tmp_path, override,
                                       f"--model.init_args.teacher.init_args.weights={tiny_teacher_dir}"))
    assert expected in line
