"""`distill index` given an export folder that holds a late-interaction student: one error line, no index folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from safetensors.torch import save_file

from distill.serving.export import export_student
from distill.serving.loading import CONFIG_NAME
from tests.helpers import BERT_TINY, DENSE_SPEC, TINY_DATA, build, error_line

LATE_SPEC = {
    "class_path": "distill.students.LateInteractionEncoder",
    "init_args": {
        "embed_dim": 16,
        "tower_a": {"class_path": "distill.students.sparse.TimmTokenTower", "init_args": {"model_name": "resnet10t"}},
        "tower_b": {"class_path": "distill.students.TransformersTokenTower", "init_args": {"config": BERT_TINY}},
    },
}


def late_export(folder: Path, datamodule) -> Path:
    """A pooled student's export whose config and weights are then swapped for a late-interaction student's (export
    refuses late students, so such a folder is written by hand or by another tool)."""
    export_student(build(DENSE_SPEC), folder, student_spec=DENSE_SPEC, datamodule=datamodule, onnx=False)
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["student"] = LATE_SPEC
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    weights = {key: value.contiguous() for key, value in build(LATE_SPEC).state_dict().items()}
    save_file(weights, str(folder / config["weights"][0]["file"]))
    return folder


def test_index_refuses_a_late_interaction_student_in_one_line(tmp_path: Path, tiny_datamodule,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    student = late_export(tmp_path / "export", tiny_datamodule)
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"class_path": "distill.data.ShapesDataModule", "init_args": dict(TINY_DATA)}))
    line = error_line(capsys, ["index", "--student", str(student), "--data", str(data), "--out", str(tmp_path / "index"),
                               "--backend", "numpy", "--no-progress"])
    assert "LateInteractionEncoder" in line and "pooled students" in line
    assert not (tmp_path / "index").exists()
