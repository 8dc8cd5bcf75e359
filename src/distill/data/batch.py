"""Batch types and the collate function for image-caption pairs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NotRequired, TypedDict

import torch

PIXEL_MEAN = 0.5
PIXEL_STD = 0.5
NEGATIVE_KEYS = ("b_neg", "b_neg_id")
"""Batch keys of listed negatives: ``b_neg`` inputs ``[B*n, ...]`` (item-major) and their ids ``b_neg_id [B, n]``."""


def teacher_views(batch: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The teacher's inputs: ``batch["teacher_a"/"teacher_b"]`` when the data module preprocesses separately
    for the teacher (another tokenizer, image size or normalisation), else the student's ``a`` / ``b``."""
    return batch.get("teacher_a", batch["a"]), batch.get("teacher_b", batch["b"])


class ImageInputs(TypedDict):
    """Image side of a batch: ``pixel_values`` float ``[B, 3, H, W]``, normalised."""

    pixel_values: torch.Tensor


class TextInputs(TypedDict):
    """Text side of a batch: ``input_ids`` / ``attention_mask`` long ``[B, L]``, right-padded."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor


class PairBatch(TypedDict):
    """A batch of image-caption pairs.

    ``a_id`` long ``[B]`` is the image id (shared by captions of one image); ``b_id`` long
    ``[B]`` the unique caption id. ``b_neg``, when present, holds one binding-swapped
    caption per pair that describes none of the batch's images.
    """

    a: ImageInputs
    b: TextInputs
    a_id: torch.Tensor
    b_id: torch.Tensor
    b_neg: NotRequired[TextInputs]


class PairExample(TypedDict):
    """One dataset item: uint8 ``pixels`` ``[3, H, W]`` and unpadded long ``input_ids`` ``[l]``."""

    pixels: torch.Tensor
    input_ids: torch.Tensor
    a_id: int
    b_id: int
    neg_input_ids: NotRequired[torch.Tensor]


def normalize_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` in ``[0, 255]`` -> float32 in ``[-1, 1]``: ``(x / 255 - 0.5) / 0.5``."""
    return images.to(torch.float32).div_(255.0).sub_(PIXEL_MEAN).div_(PIXEL_STD)


def pad_token_ids(sequences: Sequence[torch.Tensor], pad_token_id: int = 0) -> TextInputs:
    """Right-pad 1-D long sequences to the longest one. Returns ``[B, L]`` ids and mask."""
    lengths = torch.tensor([len(seq) for seq in sequences], dtype=torch.long)
    input_ids = torch.full((len(sequences), int(lengths.max())), pad_token_id, dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = seq
    attention_mask = (torch.arange(input_ids.shape[1]) < lengths[:, None]).long()
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def collate_pairs(examples: Sequence[PairExample], pad_token_id: int = 0) -> PairBatch:
    """Stack images, pad captions, gather ids; adds ``b_neg`` when the examples carry negatives."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    batch: PairBatch = {
        "a": {"pixel_values": normalize_pixels(torch.stack([ex["pixels"] for ex in examples]))},
        "b": pad_token_ids([ex["input_ids"] for ex in examples], pad_token_id),
        "a_id": torch.tensor([ex["a_id"] for ex in examples], dtype=torch.long),
        "b_id": torch.tensor([ex["b_id"] for ex in examples], dtype=torch.long),
    }
    if "neg_input_ids" in examples[0]:
        batch["b_neg"] = pad_token_ids([ex["neg_input_ids"] for ex in examples], pad_token_id)
    return batch
