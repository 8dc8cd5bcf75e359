"""Caption-level items of an image-text split: decoded once, preprocessed for the student (and the teacher)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from distill.data.common import BadItems, DataError, TruncationLog, stack_images, tokenize
from distill.data.image_preprocessing import ImagePreprocessing

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageTransform", "PairRecord", "PairedCollator",
           "PairedImageTextDataset", "UNREADABLE_IMAGE_ERRORS"]

UNREADABLE_IMAGE_ERRORS: tuple[type[BaseException], ...] = (
    UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError,
)
"""What Pillow raises for a missing, truncated, corrupt, non-image or oversized file."""
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
OWNER = "PairedImageTextDataModule"



@dataclass(frozen=True)
class PairRecord:
    """One (image, caption) pair; ``where`` locates it in the annotation file for messages."""

    image: Path
    caption: str
    a_id: int
    b_id: int
    where: str


class ImageTransform:
    """Resize the shorter side to ``size`` (bicubic), centre-crop ``size`` x ``size``, scale to [0, 1],
    normalise with ``mean`` / ``std`` (torchvision's steps, as timm's eval transform runs them).
    ``PIL RGB image -> float [3, size, size]``; :attr:`preprocessing` is the record an export carries."""

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        if size <= 0:
            raise ValueError(f"{OWNER}: image_size must be > 0, got {size}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"{OWNER}: image_mean / image_std need 3 values each (std > 0), got {mean} / {std}")
        self.size = size
        self.preprocessing = ImagePreprocessing(size=size, resize="shortest_edge", center_crop=True,
                                                interpolation="bicubic", mean=(mean[0], mean[1], mean[2]),
                                                std=(std[0], std[1], std[2]))

    def __call__(self, image: Image.Image) -> Tensor:
        return self.preprocessing(image)


def _hf_image(processor: Any, image: Image.Image) -> dict[str, Tensor]:
    """Run a Hugging Face image processor on one image: ``{"pixel_values": [3, H, W], "pixel_mask"?: [H, W]}``."""
    features = processor(images=image, return_tensors="pt")
    out = {"pixel_values": features["pixel_values"][0].float()}
    if "pixel_mask" in features:
        out["pixel_mask"] = features["pixel_mask"][0].long()
    return out


def _same_image_processor(first: Any, second: Any) -> bool:
    try:
        return type(first) is type(second) and first.to_dict() == second.to_dict()
    except AttributeError:
        return False


# ---------------------------------------------------------------------------------------------- dataset
class PairedImageTextDataset(Dataset):
    """Caption-level items: decode the image once, return student (and teacher) pixels and the caption.

    ``__getitem__`` returns ``None`` for an unreadable image under ``on_bad_item: skip`` (the
    collate function drops it). ``teacher_view``: whether items carry the teacher's pixels (evaluation
    batches leave them out unless the teacher ranks with its own embeddings: at BLIP's 384 px they are
    three quarters of a batch; re-ranking fetches the few it scores through :meth:`with_teacher_view`).
    """

    def __init__(self, records: list[PairRecord], student_image: Any, teacher_image: Any | None,
                 bad_items: BadItems, teacher_view: bool = True) -> None:
        self.records = records
        self.student_image = student_image
        self.teacher_image = teacher_image
        self.bad_items = bad_items
        self.teacher_view = teacher_view

    def with_teacher_view(self, teacher_view: bool = True) -> "PairedImageTextDataset":
        """The same items, with or without the teacher's pixels."""
        return PairedImageTextDataset(self.records, self.student_image, self.teacher_image, self.bad_items,
                                      teacher_view)

    def __len__(self) -> int:
        return len(self.records)

    def decode(self, record: PairRecord) -> Image.Image | None:
        try:
            with Image.open(record.image) as handle:
                return handle.convert("RGB")
        except FileNotFoundError:
            self.bad_items.report("missing_image", f"image file '{record.image}' not found ({record.where})")
        except UNREADABLE_IMAGE_ERRORS as error:
            self.bad_items.report("unreadable_image", f"cannot decode image file '{record.image}' ({record.where}): "
                                  f"{error or type(error).__name__}; replace or remove the file")
        return None

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        record = self.records[index]
        image = self.decode(record)
        if image is None:
            return None
        item: dict[str, Any] = {"caption": record.caption, "a_id": record.a_id, "b_id": record.b_id}
        if isinstance(self.student_image, ImageTransform):
            item["pixels"] = {"pixel_values": self.student_image(image)}
        else:
            item["pixels"] = _hf_image(self.student_image, image)
        if self.teacher_image is not None and self.teacher_view:
            item["teacher_pixels"] = _hf_image(self.teacher_image, image)
        return item


class PairedCollator:
    """Builds a :class:`distill.data.batch.PairBatch` (plus ``teacher_a`` / ``teacher_b``) from items."""

    def __init__(self, student_tokenizer: Any, student_max_length: int, teacher_tokenizer: Any | None = None,
                 teacher_max_length: int | None = None, teacher_image_canvas: int | None = None,
                 student_truncation: TruncationLog | None = None,
                 teacher_truncation: TruncationLog | None = None) -> None:
        self.student_tokenizer = student_tokenizer
        self.teacher_image_canvas = teacher_image_canvas
        self.student_max_length = student_max_length
        self.teacher_tokenizer = teacher_tokenizer
        self.teacher_max_length = teacher_max_length
        self.student_truncation = student_truncation
        self.teacher_truncation = teacher_truncation

    def __call__(self, items: list[dict[str, Any] | None]) -> dict[str, Any]:
        kept = [item for item in items if item is not None]
        if not kept:
            raise DataError(f"{OWNER}: every item of a batch was skipped (unreadable images); check image_root")
        captions = [item["caption"] for item in kept]
        student = [item["pixels"] for item in kept]
        batch: dict[str, Any] = {
            "a": {"pixel_values": stack_images([p["pixel_values"] for p in student])["pixel_values"]},
            "b": tokenize(self.student_tokenizer, captions, self.student_max_length,
                          truncation_log=self.student_truncation),
            "a_id": torch.tensor([item["a_id"] for item in kept], dtype=torch.long),
            "b_id": torch.tensor([item["b_id"] for item in kept], dtype=torch.long),
        }
        if "teacher_pixels" in kept[0]:
            views = [item["teacher_pixels"] for item in kept]
            masks = [v["pixel_mask"] for v in views] if "pixel_mask" in views[0] else None
            batch["teacher_a"] = stack_images([v["pixel_values"] for v in views], masks, self.teacher_image_canvas)
        if self.teacher_tokenizer is not None:
            assert self.teacher_max_length is not None
            batch["teacher_b"] = tokenize(self.teacher_tokenizer, captions, self.teacher_max_length,
                                          truncation_log=self.teacher_truncation)
        return batch


