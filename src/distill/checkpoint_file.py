"""Reading a checkpoint file: local paths only, ``torch.load(weights_only=True)``, every failure one line naming
the file (damaged, pickled code, non-finite weights)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from distill.finite import refuse_non_finite

__all__ = ["REMOTE_SCHEMES", "load_checkpoint_file"]

REMOTE_SCHEMES = ("http://", "https://", "ftp://", "s3://", "gs://", "gcs://", "hdfs://", "az://", "abfs://")


def load_checkpoint_file(path: str | os.PathLike[str], option: str = "checkpoint") -> dict[str, Any]:
    """A checkpoint's contents, read with ``torch.load(weights_only=True)``: tensors and plain containers only.

    Remote paths (``http://``, ``s3://``...) are refused: download the file yourself and pass the local copy.
    Every failure names the file and ``option`` (the setting it came from) in one line; a file holding
    pickled code or objects is refused, and nothing suggests turning the check off.
    """
    from distill.errors import InputError, UnsafeFileError

    text = os.fspath(path)
    if text.lower().startswith(REMOTE_SCHEMES) or "://" in text:
        raise InputError(f"{option} '{text}' is a remote address; distill reads checkpoints from local files only: "
                         "download it, check where it came from, and pass the local path")
    source = Path(text)
    if source.is_dir():
        raise InputError(f"{option} '{source}' is a folder, not a checkpoint file: pass the .ckpt file inside it "
                         "(e.g. .../checkpoints/last.ckpt)")
    if not source.is_file():
        raise InputError(f"{option} '{source}' does not exist: check the path")
    if source.stat().st_size == 0:
        raise InputError(f"{option} '{source}' is empty: it is not a checkpoint (an interrupted copy?)")
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():  # torch's note on an unusual pickle protocol: the refusal below says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        from distill.pickled import foreign_globals

        names = foreign_globals(source)  # read from the pickle's opcodes, whatever torch's wording
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise UnsafeFileError(
                f"{option} '{source}' holds pickled code ({shown}), which distill never runs: refused; use a "
                "checkpoint written by distill or another run you trust") from None
        raise InputError(f"{option} '{source}' is damaged or not a PyTorch checkpoint") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as error:
        first = (str(error).splitlines() or [type(error).__name__])[0][:160]
        raise InputError(f"{option} '{source}' is damaged or not a PyTorch checkpoint (truncated or another "
                         f"format: {first})") from None
    if not isinstance(checkpoint, dict):
        raise InputError(f"{option} '{source}' holds a {type(checkpoint).__name__}, not a checkpoint dictionary")
    weights = checkpoint.get("state_dict", checkpoint)
    if isinstance(weights, dict):
        refuse_non_finite(weights, option, source, "use an earlier checkpoint, from before the run diverged")
    return checkpoint
