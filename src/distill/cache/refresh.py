"""Refreshing a teacher cache (ANCE): a new student re-mines, the teacher scores only pairs it never scored.

A refresh is a build (:func:`distill.cache.build.build_teacher_cache` with ``refresh_from``) whose candidates
are mined by the current student over the whole split; every (a, b) pair that one of the earlier caches
already holds (its training pairs and its a2b / b2a candidates) takes its teacher score from there, and only
the other pairs go to the teacher. The result is a complete cache folder of the usual format, resumable and
verified like any build; its manifest names each earlier cache (folder name and manifest SHA-256) under
``refresh_from`` and counts ``pairs_reused`` and ``pairs_scored``.

:class:`KnownScores` keeps the earlier pairs as sorted int64 keys ``a_position * num_b + b_position``
(positions among the split's distinct ids) beside their float32 scores: 12 bytes per known pair, looked up
by binary search, so a COCO-size cache (K=16: about 12M pairs) costs about 140 MB, never a Python dict per pair.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from distill.cache.format import MANIFEST_NAME, TeacherCache, first_difference, load_cache
from distill.data.items import PairCorpus
from distill.errors import InputError
from distill.io import file_sha256

__all__ = ["KnownScores", "REUSED_FIELDS", "pair_keys"]

# Header fields an earlier cache must share with the refresh for its scores to be reused.
REUSED_FIELDS = ("teacher", "data", "split", "teacher_precision")


def _positions(ids: Tensor, unique: Tensor) -> Tensor:
    """Position of each of ``ids`` among ``unique`` (distinct ids), ``-1`` where absent."""
    if unique.numel() == 0:
        return torch.full_like(ids, -1)
    order = torch.argsort(unique)
    ordered = unique[order]
    at = torch.searchsorted(ordered, ids).clamp(max=ordered.numel() - 1)
    return torch.where(ordered[at] == ids, order[at], torch.full_like(ids, -1))


def pair_keys(corpus: PairCorpus, a_ids: Tensor, b_ids: Tensor) -> Tensor:
    """Keys ``[P]`` of the pairs ``(a_ids[p], b_ids[p])`` (ids of the split; ``-1`` where either is not)."""
    a_pos, b_pos = _positions(a_ids.long(), corpus.a_unique), _positions(b_ids.long(), corpus.b_unique)
    num_b = int(corpus.b_items.numel())
    return torch.where((a_pos >= 0) & (b_pos >= 0), a_pos * num_b + b_pos, torch.full_like(a_pos, -1))


def _cache_pairs(cache: TeacherCache) -> tuple[Tensor, Tensor, Tensor]:
    """Every scored pair of a loaded cache: ``(a_ids [P], b_ids [P], scores [P])``, padding left out."""
    a_parts, b_parts, s_parts = [cache.pair_a_ids], [cache.pair_b_ids], [cache.pair_scores.float()]
    for direction in ("a2b", "b2a"):
        candidates = cache.candidate_ids[direction]
        anchors = cache.anchor_ids[direction].unsqueeze(1).expand_as(candidates)
        found = candidates >= 0
        a_side, b_side = (anchors, candidates) if direction == "a2b" else (candidates, anchors)
        a_parts.append(a_side[found])
        b_parts.append(b_side[found])
        s_parts.append(cache.teacher_scores[direction][found].float())
    return torch.cat(a_parts), torch.cat(b_parts), torch.cat(s_parts)


@dataclass(frozen=True)
class KnownScores:
    """The teacher scores of the pairs earlier caches hold (see the module docstring).

    ``keys`` ``[P]`` int64 sorted, distinct; ``scores`` ``[P]`` float32; ``num_b`` distinct b ids of the split;
    ``parents`` the manifest record of each earlier cache (``folder``, ``manifest_sha256``), in lookup order.
    """

    keys: Tensor
    scores: Tensor
    num_b: int
    parents: list[dict[str, str]]

    @classmethod
    def from_caches(cls, folders: Sequence[str | os.PathLike[str]], corpus: PairCorpus,
                    header: Mapping[str, Any]) -> "KnownScores":
        """Load and verify the earlier caches; a pair several of them hold takes the first one's score."""
        keys, scores, parents = [], [], []
        for folder in folders:
            cache = load_cache(folder)
            found = first_difference({key: cache.manifest.get(key) for key in REUSED_FIELDS},
                                     {key: header.get(key) for key in REUSED_FIELDS})
            if found is not None:
                where, have, want = found
                raise InputError(f"--refresh-from '{folder}' holds scores of another set-up: {where} is {have!r} "
                                 f"there and {want!r} now; refresh from a cache of this teacher, data and precision")
            a_ids, b_ids, values = _cache_pairs(cache)
            key = pair_keys(corpus, a_ids, b_ids)
            keys.append(key[key >= 0])
            scores.append(values[key >= 0])
            parents.append({"folder": Path(folder).name, "manifest_sha256": file_sha256(Path(folder) / MANIFEST_NAME)})
        all_keys = torch.cat(keys) if keys else torch.zeros(0, dtype=torch.long)
        all_scores = torch.cat(scores) if scores else torch.zeros(0)
        ordered, order = torch.sort(all_keys, stable=True)
        first = torch.ones_like(ordered, dtype=torch.bool)
        first[1:] = ordered[1:] != ordered[:-1]
        return cls(ordered[first], all_scores[order][first], int(corpus.b_items.numel()), parents)

    def lookup(self, keys: Tensor) -> tuple[Tensor, Tensor]:
        """``(found [P] bool, scores [P] float32, 0 where not found)`` of the pairs with these keys."""
        if self.keys.numel() == 0:
            return torch.zeros(keys.shape, dtype=torch.bool), torch.zeros(keys.shape)
        at = torch.searchsorted(self.keys, keys).clamp(max=self.keys.numel() - 1)
        found = (self.keys[at] == keys) & (keys >= 0)
        return found, torch.where(found, self.scores[at], torch.zeros(keys.shape))

    def summary(self, folder: Path, files: Sequence[str], corpus: PairCorpus) -> dict[str, Any]:
        """The manifest fields of a refresh: its earlier caches, and how many pairs of the shard ``files`` in
        ``folder`` took a known score (``pairs_reused``) or were scored by the teacher (``pairs_scored``)."""
        total = reused = 0
        for name in files:
            shard = load_file(str(folder / name))
            if "a_ids" in shard:
                a_ids, b_ids = shard["a_ids"], shard["b_ids"]
            else:
                candidates = shard["candidate_ids"]
                anchors = shard["anchor_ids"].unsqueeze(1).expand_as(candidates)
                a_ids, b_ids = (anchors, candidates) if name.startswith("a2b") else (candidates, anchors)
                found = candidates >= 0
                a_ids, b_ids = a_ids[found], b_ids[found]
            total += int(a_ids.numel())
            reused += int(self.lookup(pair_keys(corpus, a_ids, b_ids))[0].sum())
        return {"pairs_reused": reused, "pairs_scored": total - reused}
