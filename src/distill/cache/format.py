"""On-disk format of the teacher-score cache, identities (fingerprints) and verification.

A cache folder holds safetensors shards and a ``manifest.json`` written last:

* ``pairs-NNNNN.safetensors``: the training items in dataset order: ``a_ids [n]``, ``b_ids [n]`` (int64)
  and ``teacher_scores [n]`` (float32), the teacher's score of each pair ``(a, b)``: the column-0
  (positive) score of both directions for that item;
* ``a2b-NNNNN.safetensors``: one row per distinct a id (order of first occurrence): ``anchor_ids [n]``,
  ``candidate_ids [n, K]`` (the b ids of the anchor's top-K student-scored negatives over the whole
  split, best first; ``-1`` where fewer than K exist), ``teacher_scores [n, K]`` (float32; 0 at padding)
  and ``student_scores [n, K]`` (the building student's cosine scores, for inspection);
* ``b2a-NNNNN.safetensors``: the same with b ids as anchors and a ids as candidates.

``manifest.json`` records the format version, K, the split, the teacher (its ``describe()`` and a
SHA-256 of its weights), the mining student (class, weight hash, checkpoint name and hash), the data
(class, corpus-defining init args, item counts and a fingerprint over init args and ids) and the
shard list with each file's SHA-256. Files hold no timestamps: a build is a pure function of its inputs.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from torch import Tensor, nn

from distill.data.items import PairCorpus, unwrap_datamodule
from distill.data.common import DataError
from distill.io import read_json

__all__ = [
    "CACHE_BATCH_KEY",
    "CACHE_EXTRA_KEY",
    "CACHE_FIELDS",
    "CacheMismatchError",
    "DIRECTIONS",
    "FORMAT",
    "FORMAT_VERSION",
    "LOADER_ONLY_ARGS",
    "MANIFEST_NAME",
    "TeacherCache",
    "data_identity",
    "datamodule_init_args",
    "first_difference",
    "load_cache",
    "read_manifest",
    "shard_name",
    "teacher_identity",
    "tensor_digest",
    "verify_manifest",
]

FORMAT = "distill-teacher-cache"
CACHE_BATCH_KEY = "teacher_cache"
# Fields of ``batch[CACHE_BATCH_KEY]`` (:class:`~distill.cache.CachedCandidatesDataModule`), one row per item:
# a2b_ids / b2a_ids long [B, K] (candidate b / a ids, -1 padding), a2b_scores / b2a_scores float32 [B, K],
# pair_scores float32 [B] (the teacher score of the item's own pair).
CACHE_FIELDS: tuple[str, ...] = ("a2b_ids", "a2b_scores", "b2a_ids", "b2a_scores", "pair_scores")
# ``batch[CACHE_EXTRA_KEY]`` (random batching): the cached candidates the batch's anchors bring as extra items,
# ``b`` / ``b_id`` [B*n] (a2b candidates) and ``a`` / ``a_id`` [B*n] (b2a candidates); see distill.cache.extras.
CACHE_EXTRA_KEY = "teacher_cache_extra"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
DIRECTIONS: tuple[str, str] = ("a2b", "b2a")
SHARD_KINDS: tuple[str, ...] = ("pairs", *DIRECTIONS)
# Data-module arguments that change how items are batched or loaded, never which items exist.
LOADER_ONLY_ARGS = frozenset({
    "batch_size", "eval_batch_size", "num_workers", "pin_memory", "persistent_workers", "prefetch_factor",
    "tokenizer_dir",
})
DATA_FIELD_ORDER = ("class", "init_args", "num_items", "num_a", "num_b", "fingerprint")
REBUILD_HINT = "rebuild it with `python -m distill cache-teacher --config <recipe> --out <dir>`"
# A data module's class as caches name it: the module it was defined in when the cache format was fixed. Data
# modules that moved since keep that name, so the caches built before the move still match their recipes.
CACHED_CLASS_NAMES = {
    "distill.data.shapes.datamodule.ShapesDataModule": "distill.data.datamodule.ShapesDataModule",
    "distill.data.paired.datamodule.PairedImageTextDataModule": "distill.data.paired.PairedImageTextDataModule",
    "distill.data.beir.datamodule.BeirTextDataModule": "distill.data.beir.BeirTextDataModule",
}


class CacheMismatchError(DataError):
    """A teacher cache does not match the recipe (the message names the field and both values).

    A :class:`~distill.data.common.DataError` (so a ``ValueError``): ``python -m distill fit`` reports it on one line.
    """


def shard_name(kind: str, index: int) -> str:
    """File name of shard ``index`` of ``kind`` (``pairs``, ``a2b`` or ``b2a``)."""
    return f"{kind}-{index:05d}.safetensors"


def tensor_digest(state: Mapping[str, Tensor]) -> str:
    """SHA-256 over a state dict: names in sorted order, each with its dtype, shape and raw bytes."""
    digest = hashlib.sha256()
    for name in sorted(state):
        value = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def _jsonable(value: Any) -> Any:
    """A JSON round trip (tuples become lists, unknown objects their ``str``), so identities compare equal
    to what a manifest read back holds."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def teacher_identity(teacher: nn.Module) -> dict[str, Any]:
    """``{"describe": teacher.describe(), "weights_sha256": ...}`` of a teacher."""
    describe = teacher.describe() if hasattr(teacher, "describe") else {"class": type(teacher).__qualname__}
    return {"describe": _jsonable(describe), "weights_sha256": tensor_digest(teacher.state_dict())}


def _plain(value: Any) -> Any:
    """JSON-native values as they are; any other object by its type name (never its ``repr``, which may hold
    a memory address)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def datamodule_init_args(datamodule: Any) -> dict[str, Any]:
    """The corpus-defining constructor arguments of a data module, read from its attributes.

    Every named parameter of ``type(datamodule).__init__`` is read from the attribute of the same name
    (falling back to ``hparams``), except :data:`LOADER_ONLY_ARGS`. Attributes are preferred because
    LightningCLI can overwrite a nested data module's ``hparams`` with its parent's.
    """
    hparams = dict(getattr(datamodule, "hparams", {}) or {})
    args: dict[str, Any] = {}
    for parameter in inspect.signature(type(datamodule).__init__).parameters.values():
        name = parameter.name
        if name == "self" or name in LOADER_ONLY_ARGS or parameter.kind in (parameter.VAR_POSITIONAL,
                                                                           parameter.VAR_KEYWORD):
            continue
        if name in vars(datamodule):
            args[name] = _plain(vars(datamodule)[name])
        elif name in hparams:
            args[name] = _plain(hparams[name])
    return args


def data_identity(datamodule: Any, corpus: PairCorpus, split: str) -> dict[str, Any]:
    """Class, corpus-defining init args, counts and fingerprint of a data module's split.

    ``fingerprint = sha256(json(class, init_args, split) + a_ids + b_ids)`` with ``init_args`` from
    :func:`datamodule_init_args` (batch sizes and workers are left out, so they can change freely) and
    ``class`` the module path and name, or its :data:`CACHED_CLASS_NAMES` entry.
    """
    datamodule = unwrap_datamodule(datamodule)
    init_args = datamodule_init_args(datamodule)
    cls = f"{type(datamodule).__module__}.{type(datamodule).__qualname__}"
    cls = CACHED_CLASS_NAMES.get(cls, cls)
    digest = hashlib.sha256(json.dumps({"class": cls, "init_args": init_args, "split": split},
                                       sort_keys=True).encode())
    digest.update(corpus.a_ids.numpy().astype("<i8").tobytes())
    digest.update(corpus.b_ids.numpy().astype("<i8").tobytes())
    return {
        "class": cls,
        "init_args": init_args,
        "num_items": len(corpus),
        "num_a": int(corpus.a_items.numel()),
        "num_b": int(corpus.b_items.numel()),
        "fingerprint": digest.hexdigest(),
    }


def first_difference(expected: Any, actual: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first field (dotted path, keys in sorted order) where two JSON-like values differ, or None."""
    if isinstance(expected, Mapping) and isinstance(actual, Mapping):
        for key in sorted(set(expected) | set(actual), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in expected or key not in actual:
                return where, expected.get(key, "<absent>"), actual.get(key, "<absent>")
            found = first_difference(expected[key], actual[key], where)
            if found is not None:
                return found
        return None
    return None if expected == actual else (path, expected, actual)


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a complete cache folder; a clear error when the folder is not one."""
    folder = Path(path)
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        partial = " (it holds a partial build: run the same cache-teacher command again to resume)" \
            if folder.is_dir() and any(folder.glob("*.safetensors")) else ""
        raise DataError(f"teacher cache '{folder}' has no {MANIFEST_NAME}{partial}; {REBUILD_HINT}")
    manifest = read_json(manifest_path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"'{manifest_path}' is not a {FORMAT} manifest; {REBUILD_HINT}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CacheMismatchError(
            f"teacher cache '{folder}': format_version is {manifest.get('format_version')!r}, this code reads "
            f"{FORMAT_VERSION}; {REBUILD_HINT}"
        )
    return manifest


def verify_manifest(manifest: Mapping[str, Any], folder: str | Path, *, teacher: nn.Module | None = None,
                    k: int | None = None, data: Mapping[str, Any] | None = None,
                    split: str | None = None) -> None:
    """Refuse a cache built for another teacher, data, split or a smaller K than ``k``.

    Raises :class:`CacheMismatchError` naming the first mismatching field, e.g.
    ``data.init_args.num_train is 48 in the cache, 40 in the recipe``.
    """
    checks: list[tuple[str, Any, Any]] = []
    if split is not None:
        checks.append(("split", manifest.get("split"), split))
    if data is not None:
        cached = dict(manifest.get("data", {}))
        # Named fields first, so that a changed init arg is reported rather than the fingerprint it changes.
        order = [key for key in DATA_FIELD_ORDER if key in data] + sorted(set(data) - set(DATA_FIELD_ORDER))
        checks += [(f"data.{key}", cached.get(key), data[key]) for key in order]
    if teacher is not None:
        checks.append(("teacher", manifest.get("teacher"), teacher_identity(teacher)))
    for field, cached, current in checks:
        found = first_difference(cached, current, field)
        if found is not None:
            where, have, want = found
            if where.endswith("fingerprint"):
                detail = "the corpus ids differ"
            else:
                detail = f"{_short(have)} in the cache, {_short(want)} in the recipe"
            raise CacheMismatchError(f"teacher cache '{folder}' does not match the recipe: {where} is {detail}; "
                                     f"{REBUILD_HINT}")
    if k is not None and int(manifest.get("k", 0)) < k:
        raise CacheMismatchError(
            f"teacher cache '{folder}' does not match the recipe: k is {manifest.get('k')} in the cache, but "
            f"model.init_args.num_hard_negatives is {k}; lower num_hard_negatives or rebuild with --k {k}"
        )


@dataclass(frozen=True)
class TeacherCache:
    """A loaded cache: every shard concatenated.

    ``pair_a_ids`` / ``pair_b_ids`` / ``pair_scores``: ``[N]`` per training item (dataset order).
    ``anchor_ids[d]`` ``[N_d]``, ``candidate_ids[d]`` ``[N_d, K]`` (-1 padding), ``teacher_scores[d]``
    ``[N_d, K]`` float32 for ``d`` in ``("a2b", "b2a")``.
    """

    path: Path
    manifest: dict[str, Any]
    pair_a_ids: Tensor
    pair_b_ids: Tensor
    pair_scores: Tensor
    anchor_ids: dict[str, Tensor]
    candidate_ids: dict[str, Tensor]
    teacher_scores: dict[str, Tensor]

    @property
    def k(self) -> int:
        return int(self.manifest["k"])


def load_cache(path: str | Path, verify_checksums: bool = True) -> TeacherCache:
    """Read a complete cache folder (manifest + shards), checking each shard's SHA-256."""
    from distill.cache.checks import check_cache, check_manifest_shards, check_shard

    folder = Path(path)
    manifest = read_manifest(folder)
    k = check_manifest_shards(manifest, folder)
    parts: dict[str, list[dict[str, Tensor]]] = {kind: [] for kind in SHARD_KINDS}
    for entry in manifest["shards"]:
        shard_path = folder / entry["file"]
        if not shard_path.is_file():
            raise CacheMismatchError(f"teacher cache '{folder}' lists {entry['file']}, which is missing; {REBUILD_HINT}")
        data = shard_path.read_bytes()
        if verify_checksums and hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise CacheMismatchError(f"teacher cache shard '{shard_path}' does not match its sha256 in "
                                     f"{MANIFEST_NAME} (corrupted or edited); {REBUILD_HINT}")
        parts[entry["kind"]].append(load_safetensors(data))
        check_shard(shard_path, entry["kind"], parts[entry["kind"]][-1], k)

    def cat(kind: str, key: str) -> Tensor:
        return torch.cat([part[key] for part in parts[kind]]) if parts[kind] else torch.zeros(0)

    cache = TeacherCache(
        path=folder,
        manifest=manifest,
        pair_a_ids=cat("pairs", "a_ids"),
        pair_b_ids=cat("pairs", "b_ids"),
        pair_scores=cat("pairs", "teacher_scores"),
        anchor_ids={d: cat(d, "anchor_ids") for d in DIRECTIONS},
        candidate_ids={d: cat(d, "candidate_ids") for d in DIRECTIONS},
        teacher_scores={d: cat(d, "teacher_scores") for d in DIRECTIONS},
    )
    check_cache(folder, manifest, cache.pair_a_ids, cache.pair_b_ids, cache.anchor_ids, cache.candidate_ids)
    return cache
