"""The student fingerprint an index records covers weights and architecture, not how the export was written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from distill.cli.index import main as index_main
from distill.errors import InputError
from distill.serving.index.folder import INDEX_META, student_fingerprint, student_fingerprints
from distill.serving.index.searcher import open_searcher
from tests.helpers import TINY_DATA


@pytest.fixture
def export(dense_export: Path) -> Path:
    return dense_export


def _with(export: Path, target: Path, **changes: object) -> Path:
    shutil.copytree(export, target)
    config = json.loads((target / "student_config.json").read_text())
    (target / "student_config.json").write_text(json.dumps({**config, **changes}, indent=2))
    return target


def test_export_options_leave_the_fingerprint_alone(export: Path, tmp_path: Path) -> None:
    """The same weights written with ONNX (another "onnx" value, another layout of the JSON) fingerprint alike;
    another architecture or other weights do not."""
    with_onnx = _with(export, tmp_path / "with-onnx", onnx=True)
    assert student_fingerprint(with_onnx) == student_fingerprint(export)
    embedding = json.loads((export / "student_config.json").read_text())["embedding"]
    wider = _with(export, tmp_path / "wider", embedding={**embedding, "dim": embedding["dim"] + 1})
    assert student_fingerprint(wider) != student_fingerprint(export)
    other = _with(export, tmp_path / "other")
    weights = next(path for path in other.iterdir() if path.suffix == ".safetensors")
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1
    weights.write_bytes(bytes(blob))
    assert student_fingerprint(other) != student_fingerprint(export)


def test_an_index_opens_with_a_re_export_and_with_its_earlier_fingerprint(export: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"class_path": "distill.data.ShapesDataModule", "init_args": TINY_DATA}))
    index_main(["--student", str(export), "--data", str(data), "--out", str(tmp_path / "index"), "--no-progress"])
    with open_searcher(tmp_path / "index", _with(export, tmp_path / "again", onnx=True)) as searcher:
        assert searcher.search(["a red circle"], k=2)[0]
    meta_path = tmp_path / "index" / INDEX_META
    meta = json.loads(meta_path.read_text())
    assert meta["student_fingerprint"] == student_fingerprints(export)[0]
    # an index built when the fingerprint hashed the config file's bytes still opens with its export
    legacy = student_fingerprints(export)[1]
    assert legacy != meta["student_fingerprint"]
    meta["student_fingerprint"] = legacy
    meta_path.write_text(json.dumps(meta))
    with open_searcher(tmp_path / "index", export) as searcher:
        assert searcher.search(["a red circle"], k=2)[0]
    with pytest.raises(InputError, match="fingerprints differ"):  # the earlier fingerprint matches those bytes only
        open_searcher(tmp_path / "index", _with(export, tmp_path / "onnx-copy", onnx=True))
