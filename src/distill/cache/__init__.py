"""Teacher-score cache: build it once (``python -m distill cache-teacher``), then train without the teacher.

* :mod:`distill.cache.build`: the ``cache-teacher`` command and :func:`build_teacher_cache`;
* :mod:`distill.cache.format`: shard and manifest format, fingerprints, verification, :func:`load_cache`;
* :mod:`distill.cache.data`: :class:`CachedCandidatesDataModule`, which batches anchors with their cached
  candidates and attaches the cached scores;
* :mod:`distill.cache.candidates`: :func:`resolve_cached_candidates`, used by the module's training step.

Names are re-exported lazily, so importing this package does not import Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "BuildSettings": "build",
    "build_teacher_cache": "build",
    "CACHE_BATCH_KEY": "candidates",
    "resolve_cached_candidates": "candidates",
    "PairCorpus": "corpus",
    "corpus_from_datamodule": "corpus",
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
    from distill.cache.candidates import CACHE_BATCH_KEY, resolve_cached_candidates
    from distill.cache.corpus import PairCorpus, corpus_from_datamodule
    from distill.cache.data import (
        CachedCandidatesDataModule,
        CachedCollate,
        CandidateGroupBatchSampler,
        CandidateTables,
    )
    from distill.cache.format import (
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
