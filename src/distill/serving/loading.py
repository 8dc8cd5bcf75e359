"""Reading a ``distill export`` folder back: the student (rebuilt from its spec) and its tokenizer."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from distill.errors import InputError
from distill.instantiate import instantiate
from distill.io import load_weights, read_json

FORMAT_VERSION = 2  # 1: the whole student in model.safetensors; 2: adds `weights` (which file holds which tensors)
READABLE_VERSIONS = (1, 2)
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "student_config.json"
CARD_NAME = "README.md"
ONNX_NAMES = {"a": "tower_a.onnx", "b": "tower_b.onnx"}
SHARED_ONNX_NAME = "encoder.onnx"  # one graph for both sides of a shared encoder (towers.<side>.onnx names it)

__all__ = ["CARD_NAME", "CONFIG_NAME", "FORMAT_VERSION", "ONNX_NAMES", "SHARED_ONNX_NAME", "WEIGHTS_NAME",
           "export_state_dict", "load_student", "load_tokenizer", "read_student_config", "weight_files"]


def read_student_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``student_config.json`` of an export folder, checked for its format version."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise InputError(f"'{folder}' is not a student export: it has no {CONFIG_NAME} (run `distill export`)")
    config = read_json(path)
    version = config.get("format_version") if isinstance(config, dict) else None
    if version not in READABLE_VERSIONS:
        raise InputError(f"'{path}' has format_version {version!r}; this distill reads {READABLE_VERSIONS}")
    return config


def weight_files(config: dict[str, Any]) -> list[dict[str, str]]:
    """``[{"file", "prefix"}, ...]``: the files holding the student's tensors (a tensor ``k`` of ``file`` is the
    student's ``prefix + k``); version-1 exports hold everything in ``model.safetensors``."""
    entries = config.get("weights") or [{"file": WEIGHTS_NAME, "prefix": ""}]
    for entry in entries:
        name = str(entry.get("file", ""))
        if not name or Path(name).is_absolute() or ".." in Path(name).parts:
            raise InputError(f"{CONFIG_NAME} lists the weights file {name!r}, which is not inside the export folder")
    return entries


def export_state_dict(folder: str | os.PathLike[str], config: dict[str, Any] | None = None) -> dict[str, Tensor]:
    """The student's state dict as stored in an export folder, from every file of :func:`weight_files`."""
    config = config if config is not None else read_student_config(folder)
    state: dict[str, Tensor] = {}
    for entry in weight_files(config):
        path = Path(folder) / entry["file"]
        if not path.is_file():
            raise InputError(f"export '{folder}' has no {entry['file']}: export it again")
        for key, value in load_weights(path, f"export '{folder}'").items():
            state[entry.get("prefix", "") + key] = value
    return state


def load_state_into(student: nn.Module, state: dict[str, Tensor]) -> tuple[list[str], list[str]]:
    """``load_state_dict(strict=False)``; a missing key tied to a loaded one (e.g. an MLM decoder) is not missing."""
    own = student.state_dict()
    storage: dict[int, set[str]] = {}
    for key, value in own.items():
        storage.setdefault(value.untyped_storage().data_ptr(), set()).add(key)
    missing, unexpected = student.load_state_dict(state, strict=False)
    loaded = set(state)
    missing = [key for key in missing if not (storage[own[key].untyped_storage().data_ptr()] & loaded)]
    return missing, list(unexpected)


def load_student(folder: str | os.PathLike[str], trust_remote_code: bool = False) -> nn.Module:
    """Rebuild an exported student from ``student_config.json`` and its weights files; eval mode.

    Code the folder names (a class outside distill, ``trust_remote_code``, an ``auto_map``) is refused unless
    ``trust_remote_code`` (:func:`distill.serving.remote_code.check_export_code`).
    """
    from distill.serving.remote_code import check_export_code

    config = read_student_config(folder)
    check_export_code(folder, config, allow=trust_remote_code)
    student = instantiate(config["student"])
    try:
        missing, unexpected = load_state_into(student, export_state_dict(folder, config))
    except RuntimeError as error:  # torch's "size mismatch for <key>: ..." (several lines)
        shapes = [line.strip() for line in str(error).splitlines() if "size mismatch" in line]
        raise InputError(f"the weights of export '{folder}' do not match {config['student']['class_path']}: "
                         f"{(shapes or [str(error).splitlines()[0]])[0][:200]}") from None
    if missing or unexpected:
        raise InputError(
            f"the weights of export '{folder}' do not match {config['student']['class_path']}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return student.eval()


def load_tokenizer(folder: str | os.PathLike[str], trust_remote_code: bool = False) -> Any:
    """The tokenizer saved with an export (``AutoTokenizer.from_pretrained`` of the folder); an ``auto_map`` in the
    folder's configs is refused unless ``trust_remote_code``."""
    from distill.serving.remote_code import check_folder_auto_map

    config = read_student_config(folder)
    if not config.get("tokenizer"):
        raise InputError(f"export '{folder}' was written without a tokenizer (its data module had none)")
    check_folder_auto_map(folder, allow=trust_remote_code)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
