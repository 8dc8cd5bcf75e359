"""A teacher cache whose shards match their SHA-256 is still checked for what they hold: finite scores, ids of
the split, shapes and counts that agree with the manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_safetensors

from distill.cache.format import FORMAT, FORMAT_VERSION, load_cache
from distill.data.common import DataError

K = 2


def _shards() -> dict[str, dict[str, torch.Tensor]]:
    """Three items (a ids 0, 1, 2; b ids 10, 11, 12), K = 2 candidates per anchor, -1 padding once."""
    return {
        "pairs": {"a_ids": torch.tensor([0, 1, 2]), "b_ids": torch.tensor([10, 11, 12]),
                  "teacher_scores": torch.tensor([1.0, 2.0, 3.0])},
        "a2b": {"anchor_ids": torch.tensor([0, 1, 2]), "candidate_ids": torch.tensor([[11, 12], [10, -1], [10, 11]]),
                "teacher_scores": torch.tensor([[0.5, 0.1], [0.2, 0.0], [0.3, 0.4]]),
                "student_scores": torch.zeros(3, K)},
        "b2a": {"anchor_ids": torch.tensor([10, 11, 12]), "candidate_ids": torch.tensor([[1, 2], [0, 2], [0, 1]]),
                "teacher_scores": torch.tensor([[0.5, 0.1], [0.2, 0.3], [0.3, 0.4]]),
                "student_scores": torch.zeros(3, K)},
    }


def write_cache(folder: Path, arrays: dict[str, dict[str, torch.Tensor]], **manifest: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for kind, tensors in arrays.items():
        data = save_safetensors({key: value.contiguous() for key, value in tensors.items()})
        name = f"{kind}-00000.safetensors"
        (folder / name).write_bytes(data)
        entries.append({"file": name, "kind": kind, "sha256": hashlib.sha256(data).hexdigest()})
    body = {"format": FORMAT, "format_version": FORMAT_VERSION, "k": K, "split": "train", "shards": entries,
            "data": {"num_items": 3, "num_a": 3, "num_b": 3}}
    body.update(manifest)
    (folder / "manifest.json").write_text(json.dumps(body))
    return folder


def test_a_sound_cache_loads(tmp_path: Path) -> None:
    cache = load_cache(write_cache(tmp_path / "cache", _shards()))
    assert cache.k == K and cache.candidate_ids["a2b"].shape == (3, K)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_teacher_scores_are_refused_naming_the_shard(tmp_path: Path, value: float) -> None:
    shards = _shards()
    shards["a2b"]["teacher_scores"][1, 0] = value
    with pytest.raises(DataError, match=r"shard '.*a2b-00000\.safetensors': teacher_scores holds 1 NaN or infinite "
                                        r"value\(s\) \(first at flat position 2\)"):
        load_cache(write_cache(tmp_path / "cache", shards))


def test_ids_outside_the_split_are_refused(tmp_path: Path) -> None:
    shards = _shards()
    shards["a2b"]["candidate_ids"][0, 1] = 999
    with pytest.raises(DataError, match=r"a2b candidate_ids name 1 b id\(s\) that no training item has \(e\.g\. 999\)"):
        load_cache(write_cache(tmp_path / "cache", shards))
    shards = _shards()
    shards["b2a"]["candidate_ids"][0, 0] = -7
    with pytest.raises(DataError, match=r"b2a-00000\.safetensors': candidate_ids holds -7, below -1"):
        load_cache(write_cache(tmp_path / "other", shards))


@pytest.mark.parametrize(("manifest", "pattern"), [
    ({"k": 5}, r"a2b-00000\.safetensors': candidate_ids and teacher_scores must be \[n, k\] = \[3, 5\] \(k from "
               r"manifest\.json\), got \[3, 2\]"),
    ({"k": 0}, r"manifest\.json': k must be an integer >= 1, got 0"),
    ({"shards": []}, r"manifest\.json': shards list the kinds \[\], expected \['a2b', 'b2a', 'pairs'\]"),
    ({"data": {"num_items": 4}}, r"manifest\.json says data\.num_items is 4, its shards hold 3"),
])
def test_a_manifest_that_disagrees_with_its_arrays_is_refused(tmp_path: Path, manifest: dict[str, object],
                                                              pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        load_cache(write_cache(tmp_path / "cache", _shards(), **manifest))


def test_a_shard_named_outside_the_folder_is_refused(tmp_path: Path) -> None:
    folder = write_cache(tmp_path / "cache", _shards())
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["shards"][0]["file"] = "../outside.safetensors"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"shard '\.\./outside\.safetensors' is not a file name inside the cache"):
        load_cache(folder)
