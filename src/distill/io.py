"""Atomic file writes and safe weight loading."""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch
from safetensors.torch import load_file, save_file

from distill.finite import refuse_non_finite


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
    except BaseException as error:
        Path(tmp_name).unlink(missing_ok=True)
        named = full_disk_error(error, target)
        if named is not error:
            raise named from None
        raise
    fsync_folder(target.parent)


def full_disk_error(error: BaseException, path: str | os.PathLike[str]) -> BaseException:
    """``OSError(ENOSPC)`` naming ``path`` when ``error`` is a full disk that does not say where (a file object's
    write, or a writer that reports it in its own words, e.g. safetensors' ``os error 28``); else ``error``."""
    import errno

    full = (isinstance(error, OSError) and error.errno == errno.ENOSPC and not error.filename) or \
        (not isinstance(error, OSError) and "(os error 28)" in str(error))
    return OSError(errno.ENOSPC, "No space left on device", os.fspath(path)) if full else error


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
    except BaseException as error:
        Path(tmp_name).unlink(missing_ok=True)
        named = full_disk_error(error, target)
        if named is not error:
            raise named from None
        raise


def load_weights(path: str | os.PathLike[str], option: str = "weights file") -> dict[str, torch.Tensor]:
    """Load a safetensors file (never pickle); a missing or damaged file is one line naming it."""
    from distill.errors import InputError

    source = Path(path)
    if not source.is_file():
        raise InputError(f"{option} '{source}' does not exist")
    try:
        tensors = load_file(str(source))
    except Exception as error:  # safetensors raises its own SafetensorError (and OSError, ValueError)
        raise InputError(f"{option} '{source}' is damaged or not a safetensors file "
                         f"({str(error).splitlines()[0][:120] if str(error) else type(error).__name__}): "
                         "restore it or export it again") from None
    refuse_non_finite(tensors, option, source, "export or save it again from a run that did not diverge")
    return tensors


def load_weights_into(module: torch.nn.Module, path: str | os.PathLike[str],
                      option: str = "weights file") -> tuple[list[str], list[str]]:
    """``safetensors.torch.load_model(module, path, strict=False)`` (which re-ties shared tensors), with the
    errors of :func:`load_weights`; returns ``(missing, unexpected)`` keys."""
    from safetensors.torch import load_model

    load_weights(path, option)  # validates the file; cheap next to the model load
    missing, unexpected = load_model(module, str(path), strict=False)
    return list(missing), list(unexpected)


def read_json(path: str | os.PathLike[str]) -> Any:
    """A JSON file's contents; a missing, non-UTF-8 or malformed file is one line naming it."""
    from distill.errors import InputError

    source = Path(path)
    if not source.is_file():
        raise InputError(f"'{source}' does not exist")
    try:
        return json.loads(source.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise InputError(f"'{source}' is not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
                         f"{error.start}): re-encode it as UTF-8") from None
    except json.JSONDecodeError as error:
        raise InputError(f"'{source}' is not valid JSON: {error}") from None


# ---------------------------------------------------------------------------------------------- folders
def _folder_busy(message: str) -> Exception:
    from distill.errors import FolderBusyError

    return FolderBusyError(message)


_HELD_LOCKS: dict[str, int] = {}
"""Lock files this process holds, with their depth: an inner :func:`folder_lock` of the same path re-enters."""


@contextmanager
def folder_lock(target: str | os.PathLike[str], what: str = "folder") -> Iterator[None]:
    """Hold an exclusive lock on ``target`` (a ``.<name>.lock`` file beside it) or refuse at once.

    A second writer of the same folder gets :class:`~distill.errors.FolderBusyError` naming the folder instead of
    interleaving its files with the first writer's. The lock is released, and its file removed, when the block
    ends (``fcntl.flock``: also when the process dies). A block inside another on the same path re-enters it.
    """
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.parent / f".{path.name}.lock"
    key = os.path.realpath(lock_path)
    if key in _HELD_LOCKS:
        _HELD_LOCKS[key] += 1
        try:
            yield
        finally:
            _HELD_LOCKS[key] -= 1
        return
    handle = _acquire(lock_path, path, what)
    _HELD_LOCKS[key] = 1
    try:
        yield
    finally:
        del _HELD_LOCKS[key]
        lock_path.unlink(missing_ok=True)  # still held: a process that opened this file finds it gone and retries
        handle.close()


def _acquire(lock_path: Path, path: Path, what: str) -> IO[bytes]:
    """Open and ``flock`` the lock file; retried when the file was removed by a writer that just finished."""
    import fcntl

    for _ in range(5):
        try:
            handle = open(lock_path, "a+b")
        except PermissionError:
            from distill.errors import InputError

            raise InputError(f"cannot write the {what} '{path}': permission denied in '{path.parent}'; choose a "
                             "folder you can write to") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise _folder_busy(f"another process is writing the {what} '{path}': wait for it to finish, or write "
                               "to another folder") from None
        try:
            if os.stat(lock_path).st_ino == os.fstat(handle.fileno()).st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()
    raise _folder_busy(f"another process keeps writing the {what} '{path}': wait for it to finish, or write to "
                       "another folder")


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange)
    return result == 0


@contextmanager
def atomic_folder(target: str | os.PathLike[str], what: str = "folder", kind: str | None = None) -> Iterator[Path]:
    """Build a folder in a temporary sibling, then put it in place of ``target`` in one step.

    Yields the temporary folder. On success it replaces ``target`` (an existing folder is swapped out in one
    ``renameat2`` exchange where the system has it, else moved aside and removed after the rename), so a
    reader sees the old complete folder or the new complete one. On failure the temporary folder is removed
    and ``target`` is untouched. The whole build holds :func:`folder_lock` on ``target``. With ``kind``, the
    folder gets distill's mark (:func:`distill.outputs.write_mark`) and an existing ``target`` is replaced only
    when :func:`distill.outputs.check_output` allows it (checked before the build and again before the swap).
    """
    import shutil

    from distill.outputs import check_output, write_mark

    path = Path(target)
    if kind is not None:
        check_output(path, kind, "output")
    with folder_lock(path, what):
        for stale in path.parent.glob(f".{path.name}.tmp-*"):  # an earlier build killed before its rename
            shutil.rmtree(stale, ignore_errors=True)
        scratch = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
        try:
            yield scratch
            os.chmod(scratch, 0o777 & ~_umask())
            for inner in scratch.rglob("*"):  # some writers create private (0600) files; give them the usual mode
                os.chmod(inner, (0o777 if inner.is_dir() else 0o666) & ~_umask())
            if kind is not None:
                write_mark(scratch, kind)
                check_output(path, kind, "output")
            if path.is_dir() and not path.is_symlink():
                if not _exchange(scratch, path):
                    aside = path.parent / f".{path.name}.old-{os.getpid()}"
                    os.replace(path, aside)
                    os.replace(scratch, path)
                    scratch = aside
                shutil.rmtree(scratch, ignore_errors=True)
            else:
                if path.exists() or path.is_symlink():
                    raise FileExistsError(f"'{path}' exists and is not a folder: choose another output folder")
                os.replace(scratch, path)
            fsync_folder(path.parent)
        except BaseException as error:
            shutil.rmtree(scratch, ignore_errors=True)
            named = full_disk_error(error, path)
            if isinstance(named, OSError) and named.errno == 28:  # name the output, not the removed scratch folder
                where = os.fspath(named.filename or path).replace(os.fspath(scratch), os.fspath(path), 1)
                raise OSError(28, "No space left on device", where) from None
            raise


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for a writer that takes a file name (ONNX, safetensors);
    rename it onto ``path`` if the block succeeds, remove it otherwise."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp_name)
        os.chmod(tmp_name, _default_mode())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_manifest(folder: str | os.PathLike[str], exclude: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """``{relative path: {"bytes", "sha256"}}`` of every file under ``folder``, sub-folders included (dot files and
    folders, and the paths in ``exclude``, left out); :func:`verify_folder` checks a folder against it."""
    root = Path(folder)
    files = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts) and str(relative) not in exclude:
            files[str(relative)] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    return files


@contextmanager
def silenced(fd: int = 1) -> Iterator[None]:
    """Send file descriptor ``fd`` (1: stdout, 2: stderr) to ``/dev/null`` for one block, so that native
    libraries' own prints (progress lines, warnings) are silenced too."""
    (sys.stdout if fd == 1 else sys.stderr).flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def verify_folder(folder: str | os.PathLike[str], files: dict[str, dict[str, Any]], what: str, fix: str) -> None:
    """Check every file listed in a manifest: present, same size, same SHA-256; one line naming the first that
    is not (damaged, or written by another build)."""
    from distill.errors import InputError

    root = Path(folder)
    for name, expected in sorted(files.items()):
        path = root / name
        if not path.is_file():
            raise InputError(f"{what} '{root}' lists {name}, which is missing: {fix}")
        if path.stat().st_size != int(expected.get("bytes", -1)) or file_sha256(path) != expected.get("sha256"):
            raise InputError(f"{what} file '{path}' does not match its manifest (damaged, or from another build): "
                             f"{fix}")
