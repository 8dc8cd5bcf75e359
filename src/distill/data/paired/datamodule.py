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
:func:`distill.data.batch.teacher_views`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from PIL import Image
from torch.utils.data import DataLoader

from distill.data.common import (
    check_counts,
    BadItemPolicy,
    BadItems,
    DataError,
    DataFileNotFound,
    TruncationLog,
    model_max_length,
    same_tokenizer,
)
from distill.data.image_preprocessing import ImagePreprocessing
from distill.data.items import PairCorpus, PairItemStore
from distill.data.paired.files import read_jsonl, read_karpathy
from distill.data.sampling import resumable_train_loader
from distill.errors import InputError
from distill.pretrained import load_processor_parts

from distill.data.paired.items import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    UNREADABLE_IMAGE_ERRORS,
    ImageTransform,
    PairedCollator,
    PairedImageTextDataset,
    PairRecord,
)

OWNER = "PairedImageTextDataModule"


def _same_image_processor(first: Any, second: Any) -> bool:
    try:
        return type(first) is type(second) and first.to_dict() == second.to_dict()
    except AttributeError:
        return False


# ---------------------------------------------------------------------------------------------- module
def _student_parts(processor: str | None, tokenizer_name: str | None, image_size: int,
                   mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[Any, Any]:
    """The student's image preprocessing (its processor's, else resize/crop/normalise) and tokenizer."""
    image_processor, tokenizer = (None, None)
    if processor is not None:
        image_processor, tokenizer = load_processor_parts(processor, "data.init_args.student_processor")
    if tokenizer_name is not None:
        _, tokenizer = load_processor_parts(tokenizer_name, "data.init_args.student_tokenizer")
    if tokenizer is None:
        raise DataError(
            f"{OWNER} needs the student's tokenizer: set data.init_args.student_tokenizer (a folder with "
            "tokenizer.json) or data.init_args.student_processor"
        )
    return image_processor or ImageTransform(image_size, tuple(mean), tuple(std)), tokenizer


def _teacher_parts(processor: str | None, tokenizer_name: str | None, student_image: Any,
                   student_tokenizer: Any) -> tuple[Any, Any]:
    """The teacher's image processor and tokenizer, each ``None`` when it preprocesses like the student."""
    image, tokenizer = (None, None)
    if processor is not None:
        image, tokenizer = load_processor_parts(processor, "data.init_args.teacher_processor")
    if tokenizer_name is not None:
        _, tokenizer = load_processor_parts(tokenizer_name, "data.init_args.teacher_tokenizer")
    if image is not None and _same_image_processor(image, student_image):
        image = None
    if tokenizer is not None and same_tokenizer(tokenizer, student_tokenizer):
        tokenizer = None
    return image, tokenizer


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
        check_counts(OWNER, 1, image_size=image_size, max_length=max_length, teacher_max_length=teacher_max_length,
                     batch_size=batch_size, eval_batch_size=eval_batch_size, limit_per_split=limit_per_split,
                     teacher_image_canvas=teacher_image_canvas)
        check_counts(OWNER, 0, num_workers=num_workers)
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
        self._load_processors(student_processor, student_tokenizer, image_size, image_mean, image_std,
                              teacher_processor, teacher_tokenizer, max_length, teacher_max_length)
        self.datasets: dict[str, PairedImageTextDataset] = {}
        self._kind = format
        self.student_truncation = TruncationLog(OWNER, "captions", "data.init_args.max_length")
        self.teacher_truncation = TruncationLog(OWNER, "captions (teacher tokens)",
                                                "data.init_args.teacher_max_length")

    def _load_processors(self, student_processor: str | None, student_tokenizer: str | None, image_size: int,
                         image_mean: tuple[float, float, float], image_std: tuple[float, float, float],
                         teacher_processor: str | None, teacher_tokenizer: str | None, max_length: int,
                         teacher_max_length: int | None) -> None:
        """Image transforms and tokenizers of the student and of the teacher (the student's when it has none)."""
        self.student_image, self.student_tokenizer = _student_parts(student_processor, student_tokenizer,
                                                                    image_size, image_mean, image_std)
        self.max_length = model_max_length(self.student_tokenizer, max_length)
        self.teacher_image, self.teacher_tokenizer = _teacher_parts(teacher_processor, teacher_tokenizer,
                                                                    self.student_image, self.student_tokenizer)
        self.teacher_max_length = (model_max_length(self.teacher_tokenizer, teacher_max_length or max_length)
                                   if self.teacher_tokenizer is not None else None)

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

    def b_texts(self, split: str) -> list[tuple[int, int, str]]:
        """``(caption id, image id, caption)`` of every caption of ``split`` in loader order (``distill index``)."""
        self.setup()
        if split not in self.datasets:
            raise InputError(f"--split {split}: {OWNER} has the splits {sorted(self.datasets)}; pass one of those")
        return [(record.b_id, record.a_id, record.caption) for record in self.datasets[split].records]

    def image_preprocessing(self) -> ImagePreprocessing:
        """The student's image preprocessing as its batches apply it (what an export carries)."""
        if isinstance(self.student_image, ImageTransform):
            return self.student_image.preprocessing
        try:
            return ImagePreprocessing.from_transformers(self.student_image)
        except ValueError as error:
            raise InputError(f"data.init_args.student_processor: {error}; an exported student needs square images "
                             "of one size") from None

    def _eval_teacher_view(self) -> bool:
        """Whether evaluation batches carry the teacher's pixels: only when the module being evaluated asks
        (``evaluates_teacher_embeddings``); without a module, as the training batches do."""
        module = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        return bool(getattr(module, "evaluates_teacher_embeddings", True))

    def item_store(self, stage: str) -> PairItemStore:
        """The teacher's view of the ``stage`` split's items by id, for re-ranking and diagnostics."""
        dataset = self.dataset("val" if stage == "validate" else stage).with_teacher_view(True)
        a_ids = torch.tensor([record.a_id for record in dataset.records], dtype=torch.long)
        b_ids = torch.tensor([record.b_id for record in dataset.records], dtype=torch.long)
        return PairItemStore(PairCorpus.from_ids(dataset, self.collator, a_ids, b_ids))

    def _loader(self, split: str, batch_size: int, train: bool = False) -> DataLoader:
        dataset = self.dataset(split)
        if train:
            return resumable_train_loader(dataset, batch_size, self.seed, self.collator, self.num_workers,
                                          drop_last=len(dataset) > batch_size)
        return DataLoader(
            dataset.with_teacher_view(self._eval_teacher_view()),
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
