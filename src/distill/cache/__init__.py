"""Teacher-score cache: build it once (``python -m distill cache-teacher``), then train without the teacher.

* :mod:`distill.cache.build`: the ``cache-teacher`` command and :func:`build_teacher_cache`;
* :mod:`distill.cache.format`: shard and manifest format, fingerprints, verification, :func:`load_cache`;
* :mod:`distill.cache.data`: :class:`CachedCandidatesDataModule`, which batches anchors with their cached
  candidates and attaches the cached scores;
* :class:`distill.training.candidates.CachedCandidates`: the candidate source that reads the cached fields of
  a batch in the training step.

Names are re-exported lazily, so importing this package does not import Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "BuildSettings": "build",
    "build_teacher_cache": "build",
    "CACHE_BATCH_KEY": "format",
    "CachedCandidatesDataModule": "data",
    "CachedCollate": "data",
    "CandidateGroupBatchSampler": "data",
    "CandidateTables": "data",
    "CacheMismatchError": "format",
    "TeacherCache": "format",
    "data_identity": "format",
    "load_cache": "format",
    "read_manifest": "format",
    "teacher_identity": "format",
    "verify_manifest": "format",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from distill.cache.build import BuildSettings, build_teacher_cache
    from distill.cache.data import (
        CachedCandidatesDataModule,
        CachedCollate,
        CandidateGroupBatchSampler,
        CandidateTables,
    )
    from distill.cache.format import (
        CACHE_BATCH_KEY,
        CacheMismatchError,
        TeacherCache,
        data_identity,
        load_cache,
        read_manifest,
        teacher_identity,
        verify_manifest,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'distill.cache' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"distill.cache.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
