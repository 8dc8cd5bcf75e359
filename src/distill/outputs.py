"""Where a command may write: a new path, an empty folder, or an artefact of the same kind that distill wrote.

A folder distill builds (:func:`distill.io.atomic_folder`) carries a mark, ``.distill.json``: its kind (export,
index...) and its top-level entries. An existing output path is replaced only when its mark (or, for artefacts
built in place such as a teacher cache, its own manifest) says it is an artefact of the same kind, and it holds
nothing else at its top level. Anything else is refused in one line before any work: a user's folder, a file,
a FIFO, a device, a socket, a symbolic link, a path under a file, a path ending in ``..``, the command's own
input or a folder holding it. :func:`claim_output` adds the writer lock, so a second writer is refused too.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from distill.errors import InputError

__all__ = ["MARK_NAME", "check_output", "claim_output", "write_mark"]

MARK_NAME = ".distill.json"
LEGACY_MANIFESTS = ("student_config.json", "index.json")  # exports and indexes written before the mark existed
Inputs = Mapping[str, "str | os.PathLike[str] | None"]
Recognise = Callable[[Path], bool]


def write_mark(folder: str | os.PathLike[str], kind: str) -> None:
    """Record in a folder distill built its ``kind`` and its top-level entries (what a rebuild may replace)."""
    from distill.io import atomic_write_json

    root = Path(folder)
    entries = sorted(entry.name for entry in root.iterdir() if entry.name != MARK_NAME)
    atomic_write_json(root / MARK_NAME, {"kind": kind, "entries": entries})


def _a(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def _mark(folder: Path) -> dict[str, object] | None:
    try:
        mark = json.loads((folder / MARK_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return mark if isinstance(mark, dict) and isinstance(mark.get("entries"), list) else None


def _special(mode: int) -> str | None:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return None


def _check_path(text: str, flag: str, what: str) -> Path:
    """Refuse what can never be written whatever it holds: ``..``, links, paths under a file, special files."""
    path = Path(text)
    if not text.strip() or os.path.basename(os.path.normpath(text)) in ("", ".", "..") or path.name in (".", ".."):
        raise InputError(f"{flag} '{text}' does not name a new {what} ('.', '..' or the root): give the new "
                         f"{what}'s own name")
    for ancestor in reversed(path.parents):
        if str(ancestor) not in ("", ".") and (ancestor.exists() or ancestor.is_symlink()) and not ancestor.is_dir():
            raise InputError(f"{flag} '{text}' is under '{ancestor}', which is not a folder: choose a path in a "
                             "folder")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    if stat.S_ISLNK(mode):
        raise InputError(f"{flag} '{text}' is a symbolic link (to '{os.readlink(path)}'): distill does not write "
                         f"through links; give the real path or a new {what}")
    if (kind := _special(mode)) is not None:
        raise InputError(f"{flag} '{text}' is {kind}, not {_a(what)}: choose a new path")
    return path


def _check_inputs(path: Path, flag: str, inputs: Inputs) -> None:
    """The output may not be an input or a folder holding one (replacing it would delete the input)."""
    out = Path(os.path.realpath(path))
    for name, value in inputs.items():
        if value is None or not Path(value).exists():
            continue
        source = Path(os.path.realpath(value))
        if out == source:
            raise InputError(f"{flag} '{path}' is the command's own {name}: write the output to another path")
        if out in source.parents:
            raise InputError(f"{flag} '{path}' holds the command's own {name} '{value}': replacing it would delete "
                             "the input; write the output to another path")


def _check_folder(path: Path, kind: str, flag: str, recognise: Recognise | None) -> None:
    if path.is_symlink() or not path.exists():
        return
    if not path.is_dir():
        raise InputError(f"{flag} '{path}' is a file, not {_a(kind)} folder distill wrote: distill never replaces what "
                         "it did not write; choose a new folder")
    entries = sorted(entry.name for entry in path.iterdir())
    if not entries:
        return
    mark = _mark(path)
    if mark is None:
        if recognise is not None and recognise(path):
            return
        if any(name in LEGACY_MANIFESTS for name in entries):
            raise InputError(f"{flag} '{path}' looks like a distill artefact written before folders carried the "
                             f"{MARK_NAME} mark, so distill cannot tell what in it is yours: delete it yourself or "
                             "choose a new folder")
        shown = ", ".join(f"'{name}'" for name in entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise InputError(f"{flag} '{path}' is a folder distill did not write (it holds {shown}): distill replaces "
                         f"only {kind} folders it wrote; choose a new or empty folder")
    if mark.get("kind") != kind:
        raise InputError(f"{flag} '{path}' is a distill {mark.get('kind')} folder: this command writes {kind} "
                         f"folders and replaces only those; choose another folder")
    foreign = [name for name in entries if name != MARK_NAME and name not in mark["entries"]]  # type: ignore[operator]
    if foreign:
        raise InputError(f"{flag} '{path}' is {_a(kind)} folder distill wrote, but '{foreign[0]}' in it is not: "
                         "move it out of the folder or choose another folder")


def check_output(path: str | os.PathLike[str], kind: str, flag: str = "--out", inputs: Inputs | None = None,
                 recognise: Recognise | None = None, file: Recognise | None = None) -> Path:
    """Refuse ``path`` as the output of a command writing a ``kind``, unless writing it loses nothing of the user's.

    ``inputs`` (``{flag: path}``) are the command's own inputs. ``recognise(folder)`` accepts a folder without a
    mark (an artefact built in place, e.g. a teacher cache with its manifest). ``file`` makes the output a file:
    an existing file is replaced only when ``file(path)`` says distill wrote it as a ``kind``.
    """
    text = os.fspath(path)
    target = _check_path(text, flag, kind if file is not None else f"{kind} folder")
    _check_inputs(target, flag, inputs or {})
    if file is None:
        _check_folder(target, kind, flag, recognise)
    elif target.is_dir():
        raise InputError(f"{flag} '{text}' is a folder: name the {kind} to write")
    elif target.exists() and not file(target):
        raise InputError(f"{flag} '{text}' exists and is not {_a(kind)} distill wrote: distill never replaces what it "
                         "did not write; choose a new file name")
    return target


@contextmanager
def claim_output(path: str | os.PathLike[str], kind: str, flag: str = "--out", inputs: Inputs | None = None,
                 recognise: Recognise | None = None, file: Recognise | None = None) -> Iterator[Path]:
    """:func:`check_output`, then hold the writer lock of ``path`` for the block (a second writer is refused);
    checked again once the lock is held."""
    from distill.io import folder_lock

    check_output(path, kind, flag, inputs, recognise, file)
    with folder_lock(path, kind if file is not None else f"{kind} folder"):
        yield check_output(path, kind, flag, inputs, recognise, file)
