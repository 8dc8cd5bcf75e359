"""The values of a teacher-score cache, checked when it is read: a shard that matches its SHA-256 can still hold
NaN scores, ids outside the split or arrays whose shapes disagree with the manifest (an edited manifest is
believed by the hash check, which it also lists).

Each check is one pass over arrays already in memory; every failure is one line naming the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from distill.data.common import DataError

__all__ = ["check_cache", "check_manifest_shards", "check_shard"]

_KEYS = {"pairs": ("a_ids", "b_ids", "teacher_scores"),
         "a2b": ("anchor_ids", "candidate_ids", "teacher_scores"),
         "b2a": ("anchor_ids", "candidate_ids", "teacher_scores")}
_HINT = "rebuild it with `python -m distill cache-teacher --config <recipe> --out <dir>`"


def check_manifest_shards(manifest: Mapping[str, Any], folder: Path) -> int:
    """The manifest's K, after checking that it is a positive integer and that the shard list names files of
    every kind; one line naming ``manifest.json`` otherwise."""
    where = f"teacher cache manifest '{folder / 'manifest.json'}'"
    k = manifest.get("k")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DataError(f"{where}: k must be an integer >= 1, got {k!r}; {_HINT}")
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not all(isinstance(e, dict) and {"file", "kind", "sha256"} <= set(e)
                                               for e in shards):
        raise DataError(f"{where}: shards must be a list of {{file, kind, sha256}}; {_HINT}")
    strays = [entry["file"] for entry in shards if not isinstance(entry["file"], str)
              or Path(entry["file"]).name != entry["file"] or entry["file"] in ("", ".", "..")]
    if strays:
        raise DataError(f"{where}: shard {strays[0]!r} is not a file name inside the cache folder; {_HINT}")
    kinds = {entry["kind"] for entry in shards}
    if kinds - set(_KEYS) or set(_KEYS) - kinds:
        raise DataError(f"{where}: shards list the kinds {sorted(kinds)}, expected {sorted(_KEYS)} (an empty or "
                        f"edited list); {_HINT}")
    return k


def _finite(path: Path, name: str, values: Tensor) -> None:
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        first = int(bad.reshape(-1).nonzero()[0])
        raise DataError(f"teacher cache shard '{path}': {name} holds {int(bad.sum()):,} NaN or infinite value(s) "
                        f"(first at flat position {first}); {_HINT}")


def check_shard(path: Path, kind: str, tensors: Mapping[str, Tensor], k: int) -> None:
    """Keys, shapes and dtypes of one shard against the manifest's K; finite scores; no negative ids besides the
    candidates' -1 padding."""
    missing = [key for key in _KEYS[kind] if key not in tensors]
    if missing:
        raise DataError(f"teacher cache shard '{path}' has no {missing}; {_HINT}")
    if kind == "pairs":
        ids, other, scores = (tensors[key] for key in _KEYS[kind])
        if ids.dim() != 1 or other.shape != ids.shape or scores.shape != ids.shape:
            raise DataError(f"teacher cache shard '{path}': a_ids, b_ids and teacher_scores must be [n] each, got "
                            f"{[tuple(t.shape) for t in (ids, other, scores)]}; {_HINT}")
        least = {"a_ids": 0, "b_ids": 0}
    else:
        ids, candidates, scores = (tensors[key] for key in _KEYS[kind])
        expected = (ids.shape[0], k)
        if ids.dim() != 1 or tuple(candidates.shape) != expected or tuple(scores.shape) != expected:
            raise DataError(f"teacher cache shard '{path}': candidate_ids and teacher_scores must be [n, k] = "
                            f"{list(expected)} (k from manifest.json), got {list(candidates.shape)} and "
                            f"{list(scores.shape)}; {_HINT}")
        least = {"anchor_ids": 0, "candidate_ids": -1}
    for key, low in least.items():
        values = tensors[key]
        if values.is_floating_point() or values.dtype == torch.bool:
            raise DataError(f"teacher cache shard '{path}': {key} must hold integers, got {values.dtype}; {_HINT}")
        if values.numel() and int(values.min()) < low:
            raise DataError(f"teacher cache shard '{path}': {key} holds {int(values.min())}, below {low}; {_HINT}")
    _finite(path, "teacher_scores", scores)


def _outside(ids: Tensor, known: Tensor) -> Tensor:
    ids = ids[ids >= 0]
    return ids[~torch.isin(ids, known)]


def check_cache(folder: Path, manifest: Mapping[str, Any], pair_a: Tensor, pair_b: Tensor,
                anchors: Mapping[str, Tensor], candidates: Mapping[str, Tensor]) -> None:
    """Counts against the manifest's ``data`` and every id within the split's: a2b anchors and b2a candidates are
    a ids of the training items, b2a anchors and a2b candidates their b ids."""
    data = manifest.get("data") or {}
    counts = {"num_items": len(pair_a), "num_a": len(anchors["a2b"]), "num_b": len(anchors["b2a"])}
    for key, found in counts.items():
        recorded = data.get(key)
        if recorded is not None and int(recorded) != found:
            raise DataError(f"teacher cache '{folder}': manifest.json says data.{key} is {recorded}, its shards hold "
                            f"{found}; {_HINT}")
    known = {"a": torch.unique(pair_a), "b": torch.unique(pair_b)}
    for name, ids, side in (("a2b anchor_ids", anchors["a2b"], "a"), ("b2a anchor_ids", anchors["b2a"], "b"),
                            ("a2b candidate_ids", candidates["a2b"], "b"),
                            ("b2a candidate_ids", candidates["b2a"], "a")):
        stray = _outside(ids, known[side])
        if stray.numel():
            raise DataError(f"teacher cache '{folder}': {name} name {stray.numel():,} {side} id(s) that no training "
                            f"item has (e.g. {int(stray[0])}); {_HINT}")
