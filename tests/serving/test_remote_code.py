"""An export is data: code its folder names (trust_remote_code, an auto_map module, a class outside distill) never
runs in `distill index` or `distill search` unless that command line says --trust-remote-code."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from distill.cli import main
from distill.errors import UnsafeFileError
from distill.serving import export_student, load_student
from distill.serving.index.folder import INDEX_META, student_fingerprint
from tests.helpers import save_bert, write_beir

EVIL_MODULE = '''
from pathlib import Path

from transformers import BertConfig, BertModel


class EvilConfig(BertConfig):
    pass


class EvilModel(BertModel):
    config_class = EvilConfig

    def __init__(self, config, *args, **kwargs):
        Path({marker!r}).write_text("this ran")
        super().__init__(config, *args, **kwargs)
'''


def _evil_model(folder: Path, marker: Path) -> Path:
    """A tiny BERT folder whose config maps AutoModel to a module that writes ``marker`` when it builds a model."""
    save_bert(folder)
    (folder / "evil_model.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil_model.EvilConfig", "AutoModel": "evil_model.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _crafted_export(tmp_path: Path, marker: Path, **init_args: object) -> tuple[Path, Path]:
    """A real export of a text student (and a BEIR data yaml), whose student_config.json is then edited to rebuild
    the encoder from the evil folder with ``init_args``."""
    from distill.data import BeirTextDataModule
    from distill.students import TextDualEncoder

    evil = _evil_model(tmp_path / "evil", marker)
    data = {"data_dir": str(write_beir(tmp_path / "beir")), "student_tokenizer": str(evil), "train_file": None}
    spec = {"class_path": "distill.students.TextDualEncoder", "init_args": {"pretrained": str(evil)}}
    export = tmp_path / "export"
    export_student(TextDualEncoder(pretrained=str(evil)), export, spec, BeirTextDataModule(**data), onnx=False)
    config = json.loads((export / "student_config.json").read_text())
    config["student"]["init_args"] = {"pretrained": str(evil), "pooling": "mean", **init_args}
    (export / "student_config.json").write_text(json.dumps(config))
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({"class_path": "distill.data.BeirTextDataModule", "init_args": data}))
    assert not marker.exists()
    return export, data_yaml


def _error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("distill: error:")]
    assert exit_info.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def test_index_and_search_run_no_code_an_export_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "ran"
    export, data_yaml = _crafted_export(tmp_path, marker, trust_remote_code=True)
    index = ["index", "--student", str(export), "--data", str(data_yaml), "--split", "test", "--no-progress"]
    line = _error(capsys, [*index, "--out", str(tmp_path / "index")])
    assert line.startswith(f"distill: error: '{export / 'student_config.json'}' sets "
                           "student.init_args.trust_remote_code = True, code that loading it would run")
    assert line.endswith("pass --trust-remote-code only if you trust where the folder came from")
    assert not marker.exists() and not (tmp_path / "index").exists()

    # without trust_remote_code, the folder `pretrained` names still maps AutoModel to its own module
    clean = shutil.copytree(export, tmp_path / "clean")
    config = json.loads((clean / "student_config.json").read_text())
    config["student"]["init_args"].pop("trust_remote_code")
    (clean / "student_config.json").write_text(json.dumps(config))
    encoder = json.loads((clean / "config.json").read_text())  # the export's own copy of the encoder config
    encoder.pop("auto_map")
    (clean / "config.json").write_text(json.dumps(encoder))
    line = _error(capsys, ["index", "--student", str(clean), "--data", str(data_yaml), "--split", "test",
                           "--out", str(tmp_path / "index")])
    assert f"'{tmp_path / 'evil' / 'config.json'}' sets auto_map = ['evil_model.EvilConfig', 'evil_model.EvilModel']" \
        in line  # the module the pretrained folder maps AutoModel to
    assert not marker.exists()


def test_search_of_an_index_built_from_such_an_export_runs_no_code(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "ran"
    export, data_yaml = _crafted_export(tmp_path, marker, trust_remote_code=True)
    index = tmp_path / "index"
    main(["index", "--student", str(export), "--data", str(data_yaml), "--split", "test", "--out", str(index),
          "--no-progress", "--trust-remote-code"])  # the user's consent, on this command line only
    assert marker.exists()  # the crafted folder does run code when allowed: the refusals below are real
    marker.unlink()
    meta = json.loads((index / INDEX_META).read_text())
    assert meta["student_fingerprint"] == student_fingerprint(export)
    line = _error(capsys, ["search", "--index", str(index), "--query", "a red circle"])
    assert "student.init_args.trust_remote_code = True" in line and "--trust-remote-code" in line
    assert not marker.exists()


@pytest.mark.parametrize("where", ["class_path", "shorthand"])
def test_a_class_outside_distill_is_never_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  tiny_datamodule, where: str) -> None:
    """``tower_a: {class_path: evil_student.Tower}``, or jsonargparse's shorthand ``tower_a: evil_student.Tower``
    (a bare string where a class is expected is imported as one): the module is never imported."""
    from tests.helpers import DENSE_SPEC, build

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "evil_student.py").write_text(f"from pathlib import Path\nPath({str(tmp_path / 'ran')!r}).touch()\n")
    export = tmp_path / "export"
    export_student(build(DENSE_SPEC), export, DENSE_SPEC, tiny_datamodule, onnx=False)
    config = json.loads((export / "student_config.json").read_text())
    if where == "class_path":
        config["student"]["init_args"]["tower_a"]["class_path"] = "evil_student.Tower"
    else:
        config["student"]["init_args"]["tower_a"] = "evil_student.Tower"
    (export / "student_config.json").write_text(json.dumps(config))
    key = "tower_a.class_path" if where == "class_path" else "tower_a"
    with pytest.raises(UnsafeFileError, match=rf"sets student\.init_args\.{key} = 'evil_student\.Tower'"):
        load_student(export)
    assert "evil_student" not in sys.modules and not (tmp_path / "ran").exists()
