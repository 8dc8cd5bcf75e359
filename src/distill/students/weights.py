"""Initialise a student from weights trained earlier: a Lightning checkpoint or a ``distill export`` folder.

Used by ``DistillationModule(student_init=...)`` (distil into a student that was pre-trained, e.g. with
InfoNCE alone, as CLIP students are) and by ``cache-teacher --student-ckpt`` (mine with a warmed student).
Both sources are read without unpickling code: checkpoints with ``torch.load(weights_only=True)``,
export folders with safetensors.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from distill.errors import InputError
from distill.checkpoint_file import load_checkpoint_file
from distill.io import load_weights_into

__all__ = ["STUDENT_PREFIX", "load_student_weights", "read_student_checkpoint"]

STUDENT_PREFIX = "student."
EXPORT_WEIGHTS = "model.safetensors"


def read_student_checkpoint(path: Path, option: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The ``student.*`` tensors of a Lightning checkpoint written by ``DistillationModule`` (prefix
    removed), and the checkpoint's other entries (epoch, hyper-parameters, ...)."""
    checkpoint = load_checkpoint_file(path, option)
    state = checkpoint.get("state_dict")
    if not isinstance(state, Mapping):
        raise InputError(f"{option} '{path}' is not a Lightning checkpoint: it has no state_dict")
    weights = {key[len(STUDENT_PREFIX):]: value for key, value in state.items() if key.startswith(STUDENT_PREFIX)}
    if not weights:
        raise InputError(f"{option} '{path}' holds no '{STUDENT_PREFIX}*' weights: was it saved by "
                         "DistillationModule?")
    return weights, {key: value for key, value in checkpoint.items() if key != "state_dict"}


def load_student_weights(student: nn.Module, source: str | os.PathLike[str], option: str = "student_init") -> None:
    """Load ``source`` into ``student`` in place; every parameter and buffer must match.

    ``source``: a ``.ckpt`` file (its ``student.*`` weights) or a folder written by ``distill export``
    (its ``model.safetensors``). ``option`` names the setting in error messages.
    """
    path = Path(source)
    if path.is_dir():
        weights_file = path / EXPORT_WEIGHTS
        if not weights_file.is_file():
            raise InputError(f"{option} '{path}' is a folder without {EXPORT_WEIGHTS}: pass a checkpoint "
                             "(.ckpt) or a folder written by `python -m distill export`")
        missing, unexpected = load_weights_into(student, weights_file, option)
    else:
        missing, unexpected = student.load_state_dict(read_student_checkpoint(path, option)[0], strict=False)
    if missing or unexpected:
        raise InputError(f"{option} '{path}' does not fit the recipe's student: missing {list(missing)[:5]}, "
                         f"unexpected {list(unexpected)[:5]}; pass weights of the same student preset")
