"""Image-caption pairs from files: the Karpathy-split JSON of COCO / Flickr30K, or a JSONL list.

Annotation formats:

* Karpathy JSON (``dataset_coco.json``, ``dataset_flickr30k.json``): ``{"images": [{"filename",
  "filepath"?, "imgid"?, "split": train|restval|val|test, "sentences": [{"raw", "sentid"?}]}]}``;
  images live at ``image_root/filepath/filename`` (COCO) or ``image_root/filename`` (Flickr30K).
* JSONL: one ``{"image": "relative/path.jpg", "caption": "...", "image_id"?: any, "split"?: str}``
  per line; ``image_id`` defaults to the path, ``split`` to ``train``.

Each item is one (image, caption) pair; ``a_id`` identifies the image (its captions are all
positives of each other), ``b_id`` the caption. An item's image is decoded with Pillow once, then
turned into the student's ``pixel_values`` and, when the teacher's image processor differs, the
teacher's. Captions are tokenised per batch for the student and, when the teacher's tokenizer
differs, for the teacher: batches then carry ``teacher_a`` / ``teacher_b`` (see
:func:`distill.module.teacher_views`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from distill.data.common import (
    BadItemPolicy,
    BadItems,
    DataError,
    DataFileNotFound,
    TruncationLog,
    model_max_length,
    read_utf8,
    same_tokenizer,
    stack_images,
    tokenize,
    utf8_lines,
)
from distill.data.sampling import resumable_train_loader
from distill.pretrained import load_processor_parts

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
    normalise with ``mean`` / ``std``. ``PIL RGB image -> float [3, size, size]``."""

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        if size <= 0:
            raise ValueError(f"{OWNER}: image_size must be > 0, got {size}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"{OWNER}: image_mean / image_std need 3 values each (std > 0), got {mean} / {std}")
        self.size = size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: Image.Image) -> Tensor:
        width, height = image.size
        scale = self.size / min(width, height)
        resized = image.resize((max(self.size, round(width * scale)), max(self.size, round(height * scale))),
                               Image.Resampling.BICUBIC)
        left = (resized.width - self.size) // 2
        top = (resized.height - self.size) // 2
        cropped = resized.crop((left, top, left + self.size, top + self.size))
        pixels = torch.from_numpy(np.asarray(cropped, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        return (pixels - self.mean) / self.std


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


# ---------------------------------------------------------------------------------------------- reading
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


# ---------------------------------------------------------------------------------------------- dataset
class PairedImageTextDataset(Dataset):
    """Caption-level items: decode the image once, return student (and teacher) pixels and the caption.

    ``__getitem__`` returns ``None`` for an unreadable image under ``on_bad_item: skip`` (the
    collate function drops it).
    """

    def __init__(self, records: list[PairRecord], student_image: Any, teacher_image: Any | None,
                 bad_items: BadItems) -> None:
        self.records = records
        self.student_image = student_image
        self.teacher_image = teacher_image
        self.bad_items = bad_items

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
        if self.teacher_image is not None:
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


# ---------------------------------------------------------------------------------------------- module
class PairedImageTextDataModule(L.LightningDataModule):
    """Image-text retrieval data from a Karpathy-split JSON or a JSONL file and an image folder.

    Args:
        annotations: the Karpathy JSON (``dataset_coco.json`` / ``dataset_flickr30k.json``) or a ``.jsonl``.
        image_root: folder the image paths are relative to (COCO: the folder holding ``train2014/``
            and ``val2014/``; Flickr30K: the ``flickr30k-images/`` folder).
        format: ``auto`` (by file suffix: ``.jsonl`` or JSON), ``karpathy`` or ``jsonl``.
        train_splits / val_split / test_split: split names (Karpathy: train, restval, val, test).
        student_processor: folder (or hub id) with the student's image processor and/or tokenizer
            (a CLIP folder holds both).
        student_tokenizer: folder with the student's tokenizer (overrides the processor's).
        image_size / image_mean / image_std: the student's preprocessing when ``student_processor``
            has no image processor (timm students: their pretrained config's size, mean and std).
        teacher_processor: the teacher's folder (image processor + tokenizer). When it preprocesses
            differently from the student, batches carry ``teacher_a`` (its pixels) and ``teacher_b``
            (its tokens).
        teacher_tokenizer: folder with the teacher's tokenizer (overrides the processor's).
        teacher_image_canvas: pad every teacher image to this square size (with ``pixel_mask``), for
            teachers whose processor keeps the aspect ratio (ViLT: 640), so that all batches share
            one shape and test-time re-ranking can concatenate them.
        max_length / teacher_max_length: caption token limits (capped by each tokenizer's own limit;
            ``teacher_max_length`` defaults to ``max_length``). Longer captions are truncated and
            counted in the log (``... captions so far were longer than ...``).
        on_bad_item: ``error`` (default) stops on a missing or unreadable image, an empty caption or
            a repeated id with a message naming the file and field; ``skip`` drops such items, counts
            and logs them.
        verify_images: open every image at setup (catches unreadable files before training starts).
        limit_per_split: keep only the first N images of each split (quick trials).
    """

    def __init__(
        self,
        annotations: str,
        image_root: str,
        format: Literal["auto", "karpathy", "jsonl"] = "auto",
        train_splits: list[str] | None = None,
        val_split: str | None = "val",
        test_split: str | None = "test",
        student_processor: str | None = None,
        student_tokenizer: str | None = None,
        image_size: int = 224,
        image_mean: tuple[float, float, float] = IMAGENET_MEAN,
        image_std: tuple[float, float, float] = IMAGENET_STD,
        teacher_processor: str | None = None,
        teacher_tokenizer: str | None = None,
        teacher_image_canvas: int | None = None,
        max_length: int = 64,
        teacher_max_length: int | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        on_bad_item: BadItemPolicy = "error",
        verify_images: bool = False,
        limit_per_split: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.annotations = Path(annotations)
        self.image_root = Path(image_root)
        if format not in ("auto", "karpathy", "jsonl"):
            raise ValueError(f"{OWNER}: format must be auto, karpathy or jsonl, got {format!r}")
        self.format = format
        self.train_splits = list(train_splits) if train_splits is not None else ["train", "restval"]
        self.val_split = val_split
        self.test_split = test_split
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.verify_images = verify_images
        self.teacher_image_canvas = teacher_image_canvas
        self.limit_per_split = limit_per_split
        self.bad_items = BadItems(on_bad_item, OWNER)

        image_processor, tokenizer = (None, None)
        if student_processor is not None:
            image_processor, tokenizer = load_processor_parts(student_processor, "data.init_args.student_processor")
        if student_tokenizer is not None:
            _, tokenizer = load_processor_parts(student_tokenizer, "data.init_args.student_tokenizer")
        if tokenizer is None:
            raise ValueError(
                f"{OWNER} needs the student's tokenizer: set data.init_args.student_tokenizer (a folder with "
                "tokenizer.json) or data.init_args.student_processor"
            )
        self.student_image: Any = image_processor or ImageTransform(image_size, tuple(image_mean), tuple(image_std))
        self.student_tokenizer = tokenizer
        self.max_length = model_max_length(tokenizer, max_length)

        teacher_image = teacher_tok = None
        if teacher_processor is not None:
            teacher_image, teacher_tok = load_processor_parts(teacher_processor, "data.init_args.teacher_processor")
        if teacher_tokenizer is not None:
            _, teacher_tok = load_processor_parts(teacher_tokenizer, "data.init_args.teacher_tokenizer")
        if teacher_image is not None and _same_image_processor(teacher_image, self.student_image):
            teacher_image = None
        if teacher_tok is not None and same_tokenizer(teacher_tok, self.student_tokenizer):
            teacher_tok = None
        self.teacher_image = teacher_image
        self.teacher_tokenizer = teacher_tok
        self.teacher_max_length = (model_max_length(teacher_tok, teacher_max_length or max_length)
                                   if teacher_tok is not None else None)
        self.datasets: dict[str, PairedImageTextDataset] = {}
        self._kind = format
        self.student_truncation = TruncationLog(OWNER, "captions", "data.init_args.max_length")
        self.teacher_truncation = TruncationLog(OWNER, "captions (teacher tokens)",
                                                "data.init_args.teacher_max_length")

    # ------------------------------------------------------------------ setup
    def _read(self) -> dict[str, list[tuple[Path, list[str], int, list[int], str]]]:
        if not self.annotations.is_file():
            raise DataFileNotFound(f"data.init_args.annotations: file '{self.annotations}' not found")
        if not self.image_root.is_dir():
            raise DataFileNotFound(f"data.init_args.image_root: folder '{self.image_root}' not found")
        kind = self.format
        if kind == "auto":
            kind = "jsonl" if self.annotations.suffix == ".jsonl" else "karpathy"
        self._kind = kind
        reader = read_jsonl if kind == "jsonl" else read_karpathy
        return reader(self.annotations, self.image_root, self.bad_items)

    def _records(self, entries: list[tuple[Path, list[str], int, list[int], str]]) -> list[PairRecord]:
        if self.limit_per_split is not None:
            entries = entries[: self.limit_per_split]
        records: list[PairRecord] = []
        for image, captions, image_id, caption_ids, where in entries:
            if not image.is_file():
                self.bad_items.report("missing_image", f"image file '{image}' not found ({where}: filename; "
                                      f"image_root '{self.image_root}')")
                continue
            if self.verify_images and not self._verify(image, where):
                continue
            for position, (caption, caption_id) in enumerate(zip(captions, caption_ids)):
                if not caption.strip():
                    field = (f"{self.annotations.name}: line {caption_id} 'caption'" if self._kind == "jsonl"
                             else f"{where} sentences[{position}].raw")
                    self.bad_items.report("empty_caption", f"empty caption (blank or whitespace only): {field}")
                    continue
                records.append(PairRecord(image, caption.strip(), image_id, caption_id, where))
        return records

    def _verify(self, image: Path, where: str) -> bool:
        try:
            with Image.open(image) as handle:
                handle.verify()
            return True
        except UNREADABLE_IMAGE_ERRORS as error:
            self.bad_items.report("unreadable_image", f"cannot decode image file '{image}' ({where}): "
                                  f"{error or type(error).__name__}; replace or remove the file")
            return False

    def setup(self, stage: str | None = None) -> None:
        """Read the annotations, check files and captions, build one dataset per split (once)."""
        if self.datasets:
            return
        splits = self._read()
        wanted = {"train": self.train_splits, "val": [self.val_split] if self.val_split else [],
                  "test": [self.test_split] if self.test_split else []}
        for name, split_names in wanted.items():
            entries = [entry for split in split_names for entry in splits.get(split, [])]
            if split_names and not entries and name != "train":
                continue
            self.datasets[name] = PairedImageTextDataset(
                self._records(entries), self.student_image, self.teacher_image, self.bad_items
            )
        if not self.datasets.get("train") or not len(self.datasets["train"]):
            raise DataError(
                f"'{self.annotations}' has no usable training pairs in splits {self.train_splits} "
                f"(splits present: {sorted(splits)}): set data.init_args.train_splits"
            )
        self.bad_items.summary()

    # ------------------------------------------------------------------ loaders
    @property
    def collator(self) -> PairedCollator:
        return PairedCollator(self.student_tokenizer, self.max_length, self.teacher_tokenizer, self.teacher_max_length,
                              self.teacher_image_canvas, self.student_truncation, self.teacher_truncation)

    def dataset(self, split: str) -> PairedImageTextDataset:
        if split not in self.datasets:
            raise RuntimeError(f"{OWNER}: split '{split}' is not available (call setup(); have "
                               f"{sorted(self.datasets)})")
        return self.datasets[split]

    def _loader(self, split: str, batch_size: int, train: bool = False) -> DataLoader:
        dataset = self.dataset(split)
        if train:
            return resumable_train_loader(dataset, batch_size, self.seed, self.collator, self.num_workers,
                                          drop_last=len(dataset) > batch_size)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=self.collator,
        )

    def train_dataloader(self) -> DataLoader:
        """Caption-level pairs of the train splits, shuffled by ``(seed, epoch)``."""
        return self._loader("train", self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """Every caption of the val split once, in file order; no loader when the file has no val split."""
        if "val" not in self.datasets:
            return []
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        """Every caption of the test split once, in file order."""
        return self._loader("test", self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
