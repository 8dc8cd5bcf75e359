"""Export of a late-interaction student: refused in one line, nothing written (token embeddings are served from
the checkpoint for now)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distill.errors import InputError
from distill.serving.export import export_student
from distill.serving.student_spec import embedding_kind
from tests.helpers import (DENSE_SPEC, REPO_ROOT, TINY_DATA_OVERRIDES, batch_independent_late_student, build,
                           error_line)

LATE_RECIPE = REPO_ROOT / "configs" / "demo" / "grid-late-infonce.yaml"


def test_embedding_kind_names_late_interaction_students() -> None:
    assert embedding_kind(batch_independent_late_student()) == "late-interaction"
    assert embedding_kind(build(DENSE_SPEC)) == "dense"


def test_export_student_refuses_a_late_interaction_student(tmp_path: Path) -> None:
    spec = {"class_path": "distill.students.LateInteractionEncoder", "init_args": {}}
    with pytest.raises(InputError) as error:
        export_student(batch_independent_late_student(), tmp_path / "out", student_spec=spec, onnx=False)
    message = str(error.value)
    assert "\n" not in message
    assert "LateInteractionEncoder" in message and "from the checkpoint" in message
    assert not (tmp_path / "out").exists()


def test_export_command_refuses_a_late_interaction_checkpoint_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from distill.cli.recipe import read_recipe
    from distill.instantiate import instantiate

    student = instantiate(read_recipe(LATE_RECIPE).student)
    checkpoint = tmp_path / "late.ckpt"
    torch.save({"state_dict": {f"student.{key}": value for key, value in student.state_dict().items()},
                "epoch": 0, "global_step": 1}, checkpoint)
    line = error_line(capsys, ["export", "--ckpt", str(checkpoint), "--config", str(LATE_RECIPE),
                               "--out", str(tmp_path / "out"), *TINY_DATA_OVERRIDES])
    assert "cannot export LateInteractionEncoder" in line and "from the checkpoint" in line
    assert not (tmp_path / "out").exists()
