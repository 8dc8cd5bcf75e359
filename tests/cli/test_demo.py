"""The demo pipeline end to end on tiny data: teacher fit + save, starting student, two students, the table."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.cli.demo import StageClock, main
from tests.helpers import REPO_ROOT


@pytest.mark.slow
def test_demo_smoke_trains_teacher_then_students(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    teacher_dir = tmp_path / "teacher"
    markdown = tmp_path / "table.md"
    runs = tmp_path / "runs"
    main(["--smoke", "--configs", str(REPO_ROOT / "configs" / "demo"), "--teacher-dir", str(teacher_dir),
          "--run-dir", str(runs), "--markdown", str(markdown)])
    assert (teacher_dir / "model.safetensors").is_file() and (teacher_dir / "config.json").is_file()
    table = markdown.read_text()
    for row in ("teacher: ITC top-16 + ITM re-rank", "teacher: ITC only", "student: InfoNCE only",
                "student: InfoNCE + CPRD + KL", "two-stage"):
        assert row in table
    out = capsys.readouterr().out
    assert "RSUM" in out
    for stage in ("[demo 1/4] training the teacher", "[demo 2/4] training the starting student",
                  "[demo 3/4] training student: InfoNCE only", "[demo 4/4] training student: InfoNCE + CPRD + KL"):
        assert stage in out
    assert f"tensorboard --logdir {runs}" in out
    export_line = next(line for line in out.splitlines() if "python -m distill export --ckpt" in line)
    checkpoint = Path(export_line.split("--ckpt ")[1].split()[0])
    assert checkpoint.is_file() and (checkpoint.parent.parent / "config.yaml").is_file()
    assert "python -m distill index --student" in out and "python -m distill search --index" in out

    # A second run reuses the saved teacher instead of training it again.
    main(["--smoke", "--configs", str(REPO_ROOT / "configs" / "demo"), "--teacher-dir", str(teacher_dir),
          "--run-dir", str(runs)])
    assert "[demo 1/4] evaluating the trained teacher" in capsys.readouterr().out


def test_stage_clock_rescales_the_estimate_by_the_measured_pace(capsys: pytest.CaptureFixture[str]) -> None:
    clock = StageClock({"a": 10.0, "b": 20.0, "c": 30.0})
    assert clock.estimate_left() == 60.0
    clock.done["a"] = 20.0  # the first stage took twice its reference time
    assert clock.pace() == 2.0 and clock.estimate_left() == 100.0
    clock.run("b", "second stage", lambda: None)
    assert "[demo 2/3] second stage (est. 1m40s left)" in capsys.readouterr().out
    assert set(clock.done) == {"a", "b"}

