"""Atomic file writes and safe weight loading."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch
from safetensors.torch import load_file, save_file


def _default_mode() -> int:
    """``0o666`` minus the process umask: the mode ``open()`` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return (stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH) & ~umask


def fsync_folder(folder: str | os.PathLike[str]) -> None:
    """Flush a folder's entry table to disk, so that a rename inside it survives a power loss."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # folders cannot be opened on every platform
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Open a temporary file next to ``path`` for writing; on success, fsync it and rename it onto ``path``.

    A reader, or a process that restarts after a crash or a kill during the write, finds either the
    old complete file or the new complete one, never a partial write. The temporary file
    (``.<name>.<random>.tmp`` in the same folder, so the rename stays on one file system) is removed
    when the block raises.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, _default_mode())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_folder(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename.

    A reader sees either the old file or the complete new one, never a partial write.
    """
    with atomic_writer(path) as handle:
        handle.write(data)


def atomic_write_json(path: str | os.PathLike[str], payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def save_weights(path: str | os.PathLike[str], state_dict: dict[str, torch.Tensor]) -> None:
    """Save a state dict as safetensors, atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        tensors = {key: value.detach().contiguous().cpu() for key, value in state_dict.items()}
        save_file(tensors, tmp_name)
        os.chmod(tmp_name, _default_mode())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def load_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a safetensors file (never pickle)."""
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"weights file '{source}' does not exist")
    return load_file(str(source))


def read_json(path: str | os.PathLike[str]) -> Any:
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"'{source}' does not exist")
    try:
        return json.loads(source.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"'{source}' is not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
                         f"{error.start}): re-encode it as UTF-8") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"'{source}' is not valid JSON: {error}") from error
