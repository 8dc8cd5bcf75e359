"""Every recipe runs one fast_dev_run step; recipe mistakes fail with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.cli import main
from tests.helpers import REPO_ROOT, fit_and_check

TINY_DATA_ARGS = [
    "--data.init_args.num_train=48", "--data.init_args.num_val=8", "--data.init_args.num_test=8",
    "--data.init_args.batch_size=12", "--data.init_args.eval_batch_size=16",
]
DEMO_RECIPES = sorted(p.name for p in (REPO_ROOT / "configs" / "demo").glob("shapes-*.yaml"))
STUDENT_ARGS = [
    # A smaller text tower keeps the smoke runs fast; the recipe's structure is unchanged.
    "--model.init_args.student.init_args.tower_b.init_args.config.hidden_size=32",
    "--model.init_args.student.init_args.tower_b.init_args.config.num_attention_heads=2",
    "--model.init_args.student.init_args.tower_b.init_args.config.intermediate_size=64",
]


def _recipe_args(recipe: str, tmp_path: Path, teacher_dir: Path) -> list[str]:
    text = (REPO_ROOT / "configs" / "demo" / recipe).read_text()
    args = ["--config", str(REPO_ROOT / "configs" / "demo" / recipe), "--trainer.fast_dev_run=true",
            f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false", *TINY_DATA_ARGS,
            "--data.init_args.image_size=32"]
    if "CrossEncoderPretraining" in text:
        args += [f"--model.init_args.output_dir={tmp_path / 'teacher-out'}",
                 "--model.init_args.teacher.init_args.image_size=32"]
    elif "shapes-cross-encoder.yaml" in text:
        args += [f"--model.init_args.teacher.init_args.weights={teacher_dir}"]
    if "CosineEmbedding" in text:
        args += ["--model.init_args.losses.cosine.init_args.teacher_dim=16"]  # the tiny teacher's width
    return args


@pytest.mark.parametrize("recipe", DEMO_RECIPES)
def test_demo_recipe_fast_dev_run(recipe: str, tmp_path: Path, tiny_teacher_dir: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = fit_and_check(_recipe_args(recipe, tmp_path, tiny_teacher_dir))
    assert "val/rsum" in cli.trainer.callback_metrics  # fast_dev_run validates one batch


def test_print_config_resolves_presets(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO_ROOT / "configs/demo/shapes-kl.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "distill.teachers.ShapesCrossEncoder" in printed
    assert "distill.students.TimmImageTower" in printed
    assert "distill.losses.LogitKL" in printed


def _error_line(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("distill: error:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_missing_teacher_checkpoint_names_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _error_line(capsys, ["fit", "--config", str(REPO_ROOT / "configs/demo/shapes-kl.yaml"),
                                f"--model.init_args.teacher.init_args.weights={tmp_path / 'missing-teacher'}",
                                "--trainer.fast_dev_run=true", *TINY_DATA_ARGS])
    assert "missing-teacher" in line and "shapes-teacher.yaml" in line


def test_unknown_class_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    line = _error_line(capsys, ["fit", "--config", str(REPO_ROOT / "configs/demo/shapes-infonce.yaml"),
                                "--model.init_args.losses.infonce.class_path=distill.losses.NoSuchLoss"])
    assert "distill.losses.NoSuchLoss" in line


def test_wrong_key_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    line = _error_line(capsys, ["fit", "--config", str(REPO_ROOT / "configs/demo/shapes-infonce.yaml"),
                                "--model.init_args.num_hard_negativez=4"])
    assert "num_hard_negativez" in line


def test_wrong_key_in_a_recipe_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text((REPO_ROOT / "configs/demo/shapes-infonce.yaml").read_text()
                      .replace("trainer: trainer.yaml", f"trainer: {REPO_ROOT / 'configs/demo/trainer.yaml'}")
                      .replace("../../students/", f"{REPO_ROOT}/students/")
                      .replace("data: data.yaml", f"data: {REPO_ROOT / 'configs/demo/data.yaml'}")
                      .replace("num_hard_negatives", "num_hard_negatives")
                      .replace("    losses:", "    lossez:"))
    line = _error_line(capsys, ["fit", "--config", str(recipe)])
    assert "lossez" in line
