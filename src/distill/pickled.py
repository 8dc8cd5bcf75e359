"""Name the code a pickled file would import, without running it.

``torch.load(weights_only=True)`` refuses a checkpoint that imports anything outside its allowlist, but
how it says so changes between torch versions. :func:`foreign_globals` reads the pickle's opcodes
(``GLOBAL``, ``STACK_GLOBAL``, ``INST``) with :mod:`pickletools`, which never executes them, and returns the
objects outside torch's tensor-rebuilding allowlist, so a refusal can say what the file holds whatever
torch's wording.
"""

from __future__ import annotations

import io
import os
import pickletools
import zipfile
from pathlib import Path

__all__ = ["foreign_globals"]

# Objects a tensor checkpoint imports besides torch's allowlist (read from torch when it has one).
_PLAIN_OBJECTS = {"collections.OrderedDict", "collections.Counter", "builtins.set", "builtins.frozenset",
                  "builtins.bytearray", "builtins.complex", "_codecs.encode"}
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
_MAX_PICKLE_BYTES = 64 << 20  # the object tree of a checkpoint; tensors live in separate zip entries


def _pickles(path: Path) -> list[bytes]:
    """The pickle streams of a torch file: ``*/data.pkl`` of a zip checkpoint, else the file's leading bytes."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return [archive.read(info) for info in archive.infolist()
                    if info.filename.endswith(".pkl") and info.file_size <= _MAX_PICKLE_BYTES]
    with open(path, "rb") as handle:
        return [handle.read(_MAX_PICKLE_BYTES)]


def _globals(data: bytes) -> list[str]:
    """``module.name`` of every global a pickle stream (and the streams following it) imports."""
    found: list[str] = []
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        strings: list[str] = []
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                if opcode.name in _STRING_OPS:
                    strings.append(arg.decode("latin-1") if isinstance(arg, bytes) else str(arg))
                elif opcode.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL":
                    found.append(".".join(strings[-2:]) if len(strings) >= 2 else "<unknown>")
        except (ValueError, EOFError, UnicodeDecodeError, TypeError):
            break  # the tensor bytes of a legacy file follow its pickles: stop at the first non-pickle
    return found


def _allowed() -> set[str]:
    """torch's own ``weights_only`` allowlist and the user's ``add_safe_globals``, or torch's storages and
    rebuild functions where this torch has no such list."""
    allowed = set(_PLAIN_OBJECTS)
    try:
        import torch
        from torch import _weights_only_unpickler

        allowed |= set(_weights_only_unpickler._get_allowed_globals())
        allowed |= {f"{getattr(obj, '__module__', '')}.{getattr(obj, '__name__', '')}"
                    for obj in torch.serialization.get_safe_globals() if not isinstance(obj, tuple)}
    except (ImportError, AttributeError):
        allowed.add("torch.*")
    return allowed


def foreign_globals(path: str | os.PathLike[str]) -> list[str]:
    """The objects, outside a tensor checkpoint's usual ones, that unpickling ``path`` would import (call)."""
    try:
        streams = _pickles(Path(path))
    except (OSError, zipfile.BadZipFile, RuntimeError):
        return []
    allowed = _allowed()
    names: list[str] = []
    for data in streams:
        for name in _globals(data):
            safe = name in allowed or ("torch.*" in allowed and name.startswith("torch."))
            if not safe and name not in names:
                names.append(name)
    return names
