"""Artefacts are data: the code an export folder could make distill run is refused unless the command line allows it.

Rebuilding an exported student reads ``student_config.json``; three things written there, or beside it, would run
code that did not come with distill: a ``class_path`` outside the ``distill`` package (importing it runs its
module), ``trust_remote_code: true`` (Hugging Face runs a model folder's own Python), and an ``auto_map`` in a
model or tokenizer config (the module it names). :func:`check_export_code` refuses each in one line naming the
file and the key, unless the user passed ``--trust-remote-code`` on that command line (``allow=True``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from distill.errors import UnsafeFileError

__all__ = ["ALLOW_FLAG", "check_export_code", "check_folder_auto_map"]

ALLOW_FLAG = "--trust-remote-code"
OWN_PACKAGE = "distill."
IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


def _refuse(where: Path, key: str, value: Any) -> UnsafeFileError:
    shown = repr(sorted({item for _, item in _walk(value, "") if isinstance(item, str)}) if isinstance(value, Mapping)
                 else value)
    return UnsafeFileError(f"'{where}' sets {key} = {shown[:100]}, code that loading it would run; distill loads "
                           f"exports as data: pass {ALLOW_FLAG} only if you trust where the folder came from")


def _walk(value: Any, key: str) -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of every entry of nested dicts and lists."""
    if isinstance(value, Mapping):
        for name, inner in value.items():
            path = f"{key}.{name}" if key else str(name)
            yield path, inner
            yield from _walk(inner, path)
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield f"{key}[{index}]", inner
            yield from _walk(inner, f"{key}[{index}]")


def _foreign_import_path(value: Any) -> bool:
    """True for a dotted name (``pkg.module.Class``) whose top-level module exists outside distill (found without
    importing it)."""
    import importlib.util

    if not isinstance(value, str) or not IMPORT_PATH.match(value) or value.startswith(OWN_PACKAGE):
        return False
    try:
        return importlib.util.find_spec(value.split(".", 1)[0]) is not None
    except (ImportError, ValueError):
        return False


def check_folder_auto_map(folder: str | os.PathLike[str], allow: bool = False) -> None:
    """Refuse a model folder whose top-level JSON configs (``config.json``, ``tokenizer_config.json``...) name an
    ``auto_map`` module, unless ``allow``."""
    root = Path(folder)
    if allow or not root.is_dir():
        return
    for path in sorted(root.glob("*.json")):
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not ours to judge: the loader reports a damaged file
        if isinstance(config, dict) and config.get("auto_map"):
            raise _refuse(path, "auto_map", config["auto_map"])


def check_export_code(folder: str | os.PathLike[str], config: Mapping[str, Any], allow: bool = False) -> None:
    """Refuse an export whose ``student_config.json`` (``config``) or model files would run code, unless ``allow``.

    Checked: every ``class_path`` (and every other value that names an importable module's object) lies in the
    ``distill`` package, no ``trust_remote_code`` is set, no ``auto_map`` appears in the spec, in the folder's
    top-level JSON configs or in a local ``pretrained`` folder's.
    """
    if allow:
        return
    from distill.serving.loading import CONFIG_NAME

    source = Path(folder) / CONFIG_NAME
    pretrained = []
    for key, value in _walk(config.get("student"), "student"):
        name = key.rsplit(".", 1)[-1]
        if name == "class_path" and not (isinstance(value, str) and value.startswith(OWN_PACKAGE)):
            raise _refuse(source, key, value)
        if _foreign_import_path(value):  # jsonargparse reads a bare string as a class path where a class is expected
            raise _refuse(source, key, value)
        if (name == "trust_remote_code" and value) or (name == "auto_map" and value):
            raise _refuse(source, key, value)
        if name == "pretrained" and isinstance(value, str):
            pretrained.append(Path(value).expanduser())
    for other in [Path(folder), *pretrained]:
        check_folder_auto_map(other)
