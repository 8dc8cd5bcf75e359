"""What an index folder holds, checked when it is opened: files whose SHA-256 match can still hold NaN vectors,
and a manifest edited to list no files (``files: {}``), another side or another count is believed by the hash
check it drives.

:func:`check_manifest` runs before the files are verified; :func:`check_finite` after the vectors are loaded,
in row chunks (an index of 8.8M x 384 float32 vectors is read once, never copied whole).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from distill.errors import InputError

__all__ = ["CHUNK_ROWS", "check_finite", "check_manifest"]

CHUNK_ROWS = 65536  # rows per isfinite pass: 96 MiB of float32 at D = 384
_REBUILD = "rebuild it with `python -m distill index`"


def check_manifest(folder: str | os.PathLike[str], meta: dict[str, Any], items_name: str, meta_name: str) -> None:
    """The manifest's side, kind and count are what this distill writes, and its ``files`` list every file at the
    top of the folder (an emptied or shortened list would skip the hash check of what it leaves out)."""
    root = Path(folder)
    where = f"index manifest '{root / meta_name}'"
    if meta.get("side", "b") != "b":
        raise InputError(f"{where}: side is {meta.get('side')!r}; `distill index` indexes the b side only: {_REBUILD}")
    if meta.get("kind") not in ("dense", "sparse", "late-interaction"):
        raise InputError(f"{where}: kind is {meta.get('kind')!r}, expected 'dense', 'sparse' or 'late-interaction': "
                         f"{_REBUILD}")
    count = meta.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InputError(f"{where}: count must be an integer >= 1, got {count!r}: {_REBUILD}")
    files = meta.get("files")
    if not isinstance(files, dict) or not all(isinstance(entry, dict) for entry in files.values()):
        raise InputError(f"{where}: files must map each file to its bytes and sha256: {_REBUILD}")
    outside = [name for name in files if Path(name).is_absolute() or ".." in Path(name).parts]
    if outside:
        raise InputError(f"{where}: files lists {outside[0]!r}, outside the index folder: {_REBUILD}")
    present = {path.name for path in root.iterdir()
               if path.is_file() and not path.name.startswith(".") and path.name != meta_name}
    unlisted = sorted(present - set(files))
    if unlisted or items_name not in files:
        raise InputError(f"{where} does not list {unlisted or [items_name]} in its files (an edited manifest, or "
                         f"files from another build): {_REBUILD}")


def check_finite(path: str | os.PathLike[str], vectors: np.ndarray, what: str = "embeddings") -> None:
    """Refuse NaN or infinite values in ``vectors`` (``[N, D]``, in memory or memory-mapped), naming ``path``
    and the first bad row; checked ``CHUNK_ROWS`` rows at a time."""
    for start in range(0, len(vectors), CHUNK_ROWS):
        block = vectors[start:start + CHUNK_ROWS]
        finite = np.isfinite(block)
        if not finite.all():
            bad = ~finite.reshape(len(block), -1).all(axis=1)
            row = start + int(np.argmax(bad))
            raise InputError(f"index file '{path}': {what} row {row} holds NaN or infinite values (the vectors of "
                             f"a student whose training diverged, or an edited file): {_REBUILD}")
