"""Weights load from safetensors or ``torch.load(weights_only=True)`` only; no remote code unless asked;
exports stay inside their folder."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill.errors import InputError, UnsafeFileError
from distill.training.checkpoint import AtomicCheckpointIO
from distill.serving.export import safe_join
from distill.pretrained import load_pretrained
from tests.helpers import REPO_ROOT

SOURCES = sorted((REPO_ROOT / "src" / "distill").rglob("*.py"))


def _calls(path: Path) -> list[ast.Call]:
    return [node for node in ast.walk(ast.parse(path.read_text(), str(path))) if isinstance(node, ast.Call)]


def _name(call: ast.Call) -> str:
    return ast.unparse(call.func)


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_constant(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def test_torch_load_always_restricts_to_weights() -> None:
    offenders = [f"{path.relative_to(REPO_ROOT)}:{call.lineno}" for path in SOURCES for call in _calls(path)
                 if _name(call) == "torch.load" and not _is_constant(_keyword(call, "weights_only"), True)]
    assert offenders == [], f"torch.load without weights_only=True: {offenders}"


def test_no_unrestricted_unpickling_anywhere() -> None:
    offenders = []
    for path in SOURCES:
        for call in _calls(path):
            name = _name(call)
            if name in ("pickle.load", "pickle.loads", "yaml.load", "yaml.unsafe_load", "dill.load"):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{call.lineno} {name}")
            loads = not name.endswith("save_checkpoint")  # there weights_only=False means "save the full state"
            if (_is_constant(_keyword(call, "allow_pickle"), True)
                    or _is_constant(_keyword(call, "use_safetensors"), False)
                    or (loads and _is_constant(_keyword(call, "weights_only"), False))):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{call.lineno} {name}")
    assert offenders == []


def test_trust_remote_code_is_off_unless_a_recipe_sets_it() -> None:
    offenders = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _is_constant(_keyword(node, "trust_remote_code"), True):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} passes trust_remote_code=True")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.args + node.args.kwonlyargs
                defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + list(node.args.defaults)
                defaults += list(node.args.kw_defaults)
                for arg, default in zip(args, defaults):
                    if arg.arg == "trust_remote_code" and not _is_constant(default, False):
                        offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name}() defaults "
                                         "trust_remote_code to something other than False")
    shipped = [p for folder in ("configs", "teachers", "students") for p in (REPO_ROOT / folder).rglob("*.yaml")]
    offenders += [str(p.relative_to(REPO_ROOT)) for p in shipped
                  if "trust_remote_code: true" in p.read_text().lower().replace("  ", " ")]
    assert offenders == []


def test_checkpoints_with_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": argparse.Namespace(lr=0.1)}, path)  # needs the full unpickler
    io = AtomicCheckpointIO()
    with pytest.raises(UnsafeFileError, match=r"--ckpt_path '.*evil\.ckpt' holds pickled code \(argparse\.Namespace\), "
                                              r"which distill never runs: refused"):
        io.load_checkpoint(path)
    with pytest.raises(UnsafeFileError):  # asking for the unrestricted unpickler changes nothing
        io.load_checkpoint(path, weights_only=False)
    with pytest.raises(InputError, match=r"--ckpt_path '.*missing\.ckpt' does not exist"):
        io.load_checkpoint(tmp_path / "missing.ckpt")
    with pytest.raises(InputError, match=r"--ckpt_path 'http://127.0.0.1:1/x.ckpt' is a remote address"):
        io.load_checkpoint("http://127.0.0.1:1/x.ckpt")


def test_pickled_hugging_face_weights_are_refused(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    folder = tmp_path / "bert"
    BertModel(config).save_pretrained(folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")  # the pickled format
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.init_args\.teacher\.init_args\.pretrained='.*bert' could not "
                                                r"be loaded as BertModel: it must be a local folder with config\.json "
                                                r"\+ model\.safetensors"):
        load_pretrained(BertModel, str(tmp_path / "bert"), "model.init_args.teacher.init_args.pretrained")


def test_export_writes_inside_its_folder_only(tmp_path: Path) -> None:
    out = tmp_path / "export"
    out.mkdir()
    (out / "escape").symlink_to(tmp_path)
    for name in ("../model.safetensors", "/tmp/model.safetensors", "tokenizer/../../x.json", "escape/x.json"):
        with pytest.raises(ValueError, match="refusing to write"):
            safe_join(out, name)
    assert safe_join(out, "tokenizer/vocab.txt") == (out / "tokenizer" / "vocab.txt").resolve()


def test_cli_refuses_an_unsafe_checkpoint_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.helpers import error_line, fit_args

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": argparse.Namespace(lr=0.1)}, path)
    line = error_line(capsys, fit_args("shapes-infonce.yaml", tmp_path, f"--ckpt_path={path}"))
    assert line.startswith(f"distill: error: --ckpt_path '{path}' holds pickled code (argparse.Namespace)")
    assert "weights_only=False" not in line and "trust the source" not in line


class _RunsCode:
    """Unpickling this runs a shell command (what a malicious checkpoint does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("zipped", [True, False])
def test_a_checkpoint_that_runs_code_is_named_as_such(tmp_path: Path, protocol: int, zipped: bool) -> None:
    """Whatever torch says when it refuses (its wording differs by opcode and version), the line names the code
    the pickle would call, read from its opcodes, and the code never runs."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _RunsCode(marker)}, path, pickle_protocol=protocol,
               _use_new_zipfile_serialization=zipped)
    with pytest.raises(UnsafeFileError, match=r"--ckpt_path '.*evil\.ckpt' holds pickled code \((posix|os|nt)\.system\)"):
        AtomicCheckpointIO().load_checkpoint(path)
    assert not marker.exists()


def test_a_tensor_checkpoint_names_no_foreign_code(tmp_path: Path) -> None:
    from distill.pickled import foreign_globals

    torch.save({"state_dict": {"w": torch.zeros(2, 3)}, "epoch": 1, "loops": {"a": [1.5, "x"]}}, tmp_path / "ok.ckpt")
    assert foreign_globals(tmp_path / "ok.ckpt") == []
    (tmp_path / "text.ckpt").write_bytes(b"not a pickle at all")
    assert foreign_globals(tmp_path / "text.ckpt") == []


@pytest.mark.parametrize("recipe", ["demo/shapes-infonce.yaml", "coco/blip-itm-to-clip-cprd.yaml",
                                    "flickr/vilt-to-timm-bert-dcd.yaml",
                                    "msmarco/cross-encoder-to-minilm-margin-mse.yaml"])
def test_a_remote_checkpoint_never_runs_code(recipe: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A pickle whose loading runs a command, served on 127.0.0.1: every recipe refuses the URL in one line and
    the command never runs (the checkpoint is not even fetched)."""
    import functools
    import http.server
    import threading

    from tests.helpers import error_line

    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "payload": _RunsCode(marker)}, tmp_path / "evil.ckpt")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/evil.ckpt"
        line = error_line(capsys, ["fit", "--config", str(REPO_ROOT / "configs" / recipe), f"--ckpt_path={url}"])
    finally:
        server.shutdown()
        server.server_close()
    assert line == (f"distill: error: --ckpt_path '{url}' is a remote address; distill reads checkpoints from local "
                    "files only: download it, check where it came from, and pass the local path")
    assert not marker.exists() and not (tmp_path / "torch-home").exists()
