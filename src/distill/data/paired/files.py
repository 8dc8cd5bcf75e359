"""Reading image-caption annotations: the Karpathy-split JSON of COCO / Flickr30K, or a JSONL list.

Both give ``{split: [(image path, captions, image id, caption ids, where)]}``; ``where`` locates the entry in
the annotation file for messages. Repeated ids are reported through ``bad_items`` (default: raise).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill.data.common import BadItems, DataError, read_utf8, utf8_lines

OWNER = "PairedImageTextDataModule"
Entries = dict[str, list[tuple[Path, list[str], int, list[int], str]]]

__all__ = ["Entries", "read_jsonl", "read_karpathy"]


def _duplicates(bad_items: BadItems | None) -> BadItems:
    return bad_items if bad_items is not None else BadItems("error", OWNER)


def read_karpathy(path: Path, image_root: Path, bad_items: BadItems | None = None,
                  ) -> dict[str, list[tuple[Path, list[str], int, list[int], str]]]:
    """Karpathy JSON -> ``{split: [(image path, captions, image id, caption ids, where)]}``.

    A repeated ``imgid`` (two images sharing one id would make each other's captions positives) or
    ``sentid`` is reported through ``bad_items`` (default: raise); under ``skip`` the later image or
    caption is dropped.
    """
    bad_items = _duplicates(bad_items)
    try:
        data = json.loads(read_utf8(path))
    except json.JSONDecodeError as error:
        raise DataError(f"'{path}' is not valid JSON: {error}") from error
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DataError(f"'{path}' has no 'images' list: expected the Karpathy-split JSON (dataset_coco.json)")
    splits: dict[str, list[tuple[Path, list[str], int, list[int], str]]] = {}
    next_caption = 0
    image_owner: dict[int, str] = {}
    caption_owner: dict[int, str] = {}
    for index, entry in enumerate(images):
        where = f"{path.name}: images[{index}]"
        if not isinstance(entry, dict):
            raise DataError(f"{where} is not an object: expected {{filename, sentences, split, imgid}}")
        for key, hint in (("filename", "the image file name"), ("sentences", "the captions"),
                          ("split", "train, restval, val or test; the Karpathy-split JSON has one per image")):
            if key not in entry:
                raise DataError(f"{where} has no '{key}' field ({hint})")
        folder = image_root / entry["filepath"] if entry.get("filepath") else image_root
        image_id = int(entry.get("imgid", index))
        if image_id in image_owner:
            bad_items.report("duplicate_id", f"{where} repeats imgid {image_id} of {image_owner[image_id]}: each "
                             "image needs its own imgid, or the two images' captions count as positives of each other")
            next_caption += len(entry["sentences"])
            continue
        image_owner[image_id] = where
        captions, caption_ids = [], []
        for position, sentence in enumerate(entry["sentences"]):
            raw = sentence.get("raw", sentence.get("caption")) if isinstance(sentence, dict) else sentence
            sentid = sentence.get("sentid") if isinstance(sentence, dict) else None
            caption_id = int(sentid) if sentid is not None else next_caption + position
            if caption_id in caption_owner:
                bad_items.report("duplicate_id", f"{where} sentences[{position}] repeats sentid {caption_id} of "
                                 f"{caption_owner[caption_id]}: each caption needs its own sentid")
                continue
            caption_owner[caption_id] = f"{where} sentences[{position}]"
            captions.append("" if raw is None else str(raw))
            caption_ids.append(caption_id)
        next_caption += len(entry["sentences"])
        splits.setdefault(str(entry["split"]), []).append(
            (folder / entry["filename"], captions, image_id, caption_ids, f"{where} '{entry['filename']}'")
        )
    return splits


def read_jsonl(path: Path, image_root: Path, bad_items: BadItems | None = None,
               ) -> dict[str, list[tuple[Path, list[str], int, list[int], str]]]:
    """JSONL of ``{image, caption, image_id?, split?}`` -> the same layout as :func:`read_karpathy`.

    An ``image_id`` given to two different image files, or one image file listed under two
    ``image_id`` values, is reported through ``bad_items`` (default: raise); under ``skip`` the
    later line is dropped.
    """
    bad_items = _duplicates(bad_items)
    grouped: dict[tuple[str, Any], tuple[Path, list[str], int, list[int], str]] = {}
    image_ids: dict[Any, int] = {}
    id_owner: dict[str, tuple[str, int]] = {}  # image_id key -> (image path, first line)
    path_owner: dict[str, tuple[str, int]] = {}  # image path -> (image_id key, first line)
    for number, line in utf8_lines(path):
        if not line.strip():
            continue
        where = f"{path.name}: line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{where} is not valid JSON: {error}") from error
        if not isinstance(row, dict):
            raise DataError(f"{where} is not an object (expected {{image, caption, image_id}})")
        for key in ("image", "caption"):
            if key not in row:
                raise DataError(f"{where} has no '{key}' field (expected {{image, caption, image_id}})")
        key_id = json.dumps(row.get("image_id", row["image"]), sort_keys=True)
        image = str(row["image"])
        owner_path, owner_line = id_owner.setdefault(key_id, (image, number))
        if owner_path != image:
            bad_items.report("duplicate_id", f"{where}: image_id {key_id} names '{image}', but line {owner_line} gave "
                             f"it to '{owner_path}': give each image file its own image_id")
            continue
        owner_id, owner_line = path_owner.setdefault(image, (key_id, number))
        if owner_id != key_id:
            bad_items.report("duplicate_id", f"{where}: image '{image}' has image_id {key_id}, but line {owner_line} "
                             f"listed it as image_id {owner_id}: use one image_id per image file")
            continue
        image_id = image_ids.setdefault(key_id, len(image_ids))
        split = str(row.get("split", "train"))
        entry = grouped.setdefault(
            (split, image_id), (image_root / image, [], image_id, [], f"{where} '{image}'")
        )
        entry[1].append("" if row["caption"] is None else str(row["caption"]))
        entry[3].append(number)
    splits: dict[str, list[tuple[Path, list[str], int, list[int], str]]] = {}
    for (split, _), entry in grouped.items():
        splits.setdefault(split, []).append(entry)
    return splits


