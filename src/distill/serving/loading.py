"""Reading a ``distill export`` folder back: the student (rebuilt from its spec) and its tokenizer."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from distill.instantiate import instantiate
from distill.errors import InputError
from distill.io import load_weights_into, read_json

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "student_config.json"
CARD_NAME = "README.md"
ONNX_NAMES = {"a": "tower_a.onnx", "b": "tower_b.onnx"}

__all__ = ["CARD_NAME", "CONFIG_NAME", "FORMAT_VERSION", "ONNX_NAMES", "WEIGHTS_NAME", "load_student", "load_tokenizer",
           "read_student_config"]


def read_student_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``student_config.json`` of an export folder, checked for its format version."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise InputError(f"'{folder}' is not a student export: it has no {CONFIG_NAME} (run `distill export`)")
    config = read_json(path)
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise InputError(f"'{path}' has format_version {version!r}; this distill reads {FORMAT_VERSION}")
    return config


def load_student(folder: str | os.PathLike[str]) -> nn.Module:
    """Rebuild an exported student from ``student_config.json`` + ``model.safetensors``; eval mode."""
    config = read_student_config(folder)
    student = instantiate(config["student"])
    path = Path(folder) / WEIGHTS_NAME
    if not path.is_file():
        raise InputError(f"export '{folder}' has no {WEIGHTS_NAME}: export it again")
    missing, unexpected = load_weights_into(student, path, f"export '{folder}'")  # re-ties dropped aliases
    if missing or unexpected:
        raise InputError(
            f"'{Path(folder) / WEIGHTS_NAME}' does not match {config['student']['class_path']}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return student.eval()


def load_tokenizer(folder: str | os.PathLike[str]) -> Any:
    """The tokenizer saved with an export (``AutoTokenizer.from_pretrained`` of the folder)."""
    config = read_student_config(folder)
    if not config.get("tokenizer"):
        raise InputError(f"export '{folder}' was written without a tokenizer (its data module had none)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))
