"""The demo pipeline end to end on tiny data: teacher fit + save, two students, the table."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.cli.demo import main
from tests.helpers import REPO_ROOT


def test_demo_smoke_trains_teacher_then_students(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    teacher_dir = tmp_path / "teacher"
    markdown = tmp_path / "table.md"
    main(["--smoke", "--configs", str(REPO_ROOT / "configs" / "demo"), "--teacher-dir", str(teacher_dir),
          "--run-dir", str(tmp_path / "runs"), "--markdown", str(markdown)])
    assert (teacher_dir / "model.safetensors").is_file() and (teacher_dir / "config.json").is_file()
    table = markdown.read_text()
    for row in ("teacher: ITC top-16 + ITM re-rank", "student: InfoNCE only", "student: InfoNCE + logit KL"):
        assert row in table
    assert "RSUM" in capsys.readouterr().out

    # A second run reuses the saved teacher instead of training it again.
    main(["--smoke", "--configs", str(REPO_ROOT / "configs" / "demo"), "--teacher-dir", str(teacher_dir),
          "--run-dir", str(tmp_path / "runs")])
    assert "using the trained teacher" in capsys.readouterr().out
