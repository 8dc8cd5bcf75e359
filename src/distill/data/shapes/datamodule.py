"""Lightning data module serving pre-rendered, pre-tokenised shapes image-caption pairs."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from distill.data.batch import PIXEL_MEAN, PIXEL_STD, PairExample, collate_pairs
from distill.data.common import DataError, check_counts
from distill.data.image_preprocessing import ImagePreprocessing
from distill.data.sampling import resumable_train_loader
from distill.data.shapes import SPLITS, ShapesCorpus, binding_negative_caption, generate_corpus
from distill.data.shapes.tokenizer import build_shapes_tokenizer

_NEGATIVE_STREAM = 101


@dataclass(frozen=True)
class EncodedCaptions:
    """Tokenised captions: ``token_ids`` long ``[C, Lmax]`` right-padded, ``lengths`` long ``[C]``."""

    token_ids: torch.Tensor
    lengths: torch.Tensor

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        """Unpadded ids ``[l]`` of caption ``index``."""
        return self.token_ids[index, : int(self.lengths[index])]


def encode_captions(tokenizer: PreTrainedTokenizerBase, captions: list[str], max_length: int) -> EncodedCaptions:
    """Tokenise every caption once (with ``[CLS]``/``[SEP]``); fails if one exceeds ``max_length``.

    Shapes captions are never truncated: their last words name the second and third objects, so a
    cut caption would describe another scene and turn binding negatives into false positives.
    """
    if not captions:
        return EncodedCaptions(torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    sequences = tokenizer(captions)["input_ids"]
    lengths = torch.tensor([len(seq) for seq in sequences], dtype=torch.long)
    longest = int(lengths.max())
    if longest > max_length:
        too_long = int((lengths > max_length).sum())
        example = captions[int(lengths.argmax())]
        raise DataError(
            f"ShapesDataModule: {too_long} of {len(captions)} captions are longer than data.init_args.max_length="
            f"{max_length} tokens (the longest has {longest}, e.g. {example!r}); shapes captions are not truncated "
            f"because the cut words carry the object bindings: set data.init_args.max_length to at least {longest} "
            "(and keep it within the teacher's and the student's position limits)"
        )
    token_ids = np.full((len(sequences), longest), tokenizer.pad_token_id, dtype=np.int64)
    for row, seq in enumerate(sequences):
        token_ids[row, : len(seq)] = seq
    return EncodedCaptions(torch.from_numpy(token_ids), lengths)


def render_split(corpus: ShapesCorpus, split: str) -> torch.Tensor:
    """Render every image of a split once. Returns uint8 ``[N, 3, H, W]``."""
    items = corpus.split(split)
    if not items:
        return torch.zeros(0, 3, corpus.image_size, corpus.image_size, dtype=torch.uint8)
    pixels = np.stack([corpus.render(item) for item in items])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()


class CaptionPairDataset(Dataset[PairExample]):
    """One item per (image, caption) pair of a split, in corpus order.

    ``images`` uint8 ``[N, 3, H, W]``; ``image_rows``, ``image_ids``, ``caption_ids`` long ``[C]``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        image_rows: torch.Tensor,
        image_ids: torch.Tensor,
        caption_ids: torch.Tensor,
        captions: EncodedCaptions,
        negatives: EncodedCaptions | None = None,
    ) -> None:
        self.images = images
        self.image_rows = image_rows
        self.image_ids = image_ids
        self.caption_ids = caption_ids
        self.captions = captions
        self.negatives = negatives

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> PairExample:
        example: PairExample = {
            "pixels": self.images[int(self.image_rows[index])],
            "input_ids": self.captions[index],
            "a_id": int(self.image_ids[index]),
            "b_id": int(self.caption_ids[index]),
        }
        if self.negatives is not None:
            example["neg_input_ids"] = self.negatives[index]
        return example


def _negative_captions(corpus: ShapesCorpus, captions: list[str], seed: int) -> list[str]:
    rng = np.random.default_rng([seed, _NEGATIVE_STREAM])
    exclude = corpus.signatures()
    return [binding_negative_caption(caption, rng, exclude, corpus.layout) for caption in captions]


class ShapesDataModule(L.LightningDataModule):
    """The synthetic shapes benchmark as caption-level image-text pairs.

    ``setup`` generates the corpus, renders every image once and tokenises every caption
    once; loaders only index and pad. Batches follow :class:`distill.data.batch.PairBatch`.
    With ``binding_negatives`` the train batches also carry ``b_neg``: per pair, a caption
    of a binding swap of the pair's scene (same template) that describes no corpus image.
    ``layout`` (``row`` or ``grid``) and ``twins_per_scene`` select the scene family and the size of
    its twin groups (:func:`distill.data.shapes.generate_corpus`); the defaults are the original
    benchmark (``configs/demo/data.yaml``).
    """

    def __init__(
        self,
        seed: int = 0,
        num_train: int = 6000,
        num_val: int = 300,
        num_test: int = 500,
        num_objects: int = 3,
        captions_per_image: int = 3,
        twin_prob: float = 0.5,
        image_size: int = 64,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        max_length: int = 32,
        binding_negatives: bool = False,
        tokenizer_dir: str | None = None,
        layout: str = "row",
        twins_per_scene: int = 1,
    ) -> None:
        super().__init__()
        check_counts("ShapesDataModule", 1, num_train=num_train, batch_size=batch_size,
                     eval_batch_size=eval_batch_size, image_size=image_size, max_length=max_length)
        check_counts("ShapesDataModule", 0, num_val=num_val, num_test=num_test, num_workers=num_workers)
        self.save_hyperparameters()
        self.seed = seed
        self.num_train = num_train
        self.num_val = num_val
        self.num_test = num_test
        self.num_objects = num_objects
        self.captions_per_image = captions_per_image
        self.twin_prob = twin_prob
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.max_length = max_length
        self.binding_negatives = binding_negatives
        self.tokenizer_dir = tokenizer_dir
        self.layout = layout
        self.twins_per_scene = twins_per_scene
        self.tokenizer: PreTrainedTokenizerFast = build_shapes_tokenizer(max_length)
        self.corpus: ShapesCorpus | None = None
        self.images: dict[str, torch.Tensor] = {}
        self.datasets: dict[str, CaptionPairDataset] = {}

    def image_preprocessing(self) -> ImagePreprocessing:
        """The student's images: rendered at ``image_size`` and normalised ``(x / 255 - 0.5) / 0.5``
        (:func:`~distill.data.batch.normalize_pixels`); an image of another size is resized to a square, bilinear."""
        return ImagePreprocessing(size=self.image_size, resize="square", center_crop=False, interpolation="bilinear",
                                  mean=(PIXEL_MEAN,) * 3, std=(PIXEL_STD,) * 3)

    @property
    def vocab_size(self) -> int:
        """Number of tokenizer ids, special tokens included."""
        return len(self.tokenizer)

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def setup(self, stage: str | None = None) -> None:
        """Generate, render and tokenise all splits (once; later calls are no-ops)."""
        if self.tokenizer_dir is not None and self._is_global_zero():
            Path(self.tokenizer_dir).mkdir(parents=True, exist_ok=True)
            self.tokenizer.save_pretrained(self.tokenizer_dir)
        if self.corpus is not None:
            return
        self.corpus = generate_corpus(
            seed=self.seed,
            num_train=self.num_train,
            num_val=self.num_val,
            num_test=self.num_test,
            num_objects=self.num_objects,
            captions_per_image=self.captions_per_image,
            twin_prob=self.twin_prob,
            image_size=self.image_size,
            layout=self.layout,
            twins_per_scene=self.twins_per_scene,
        )
        for split in SPLITS:
            self.images[split] = render_split(self.corpus, split)
            self.datasets[split] = self._build_dataset(split)

    def dataset(self, split: str) -> CaptionPairDataset:
        """Caption-level dataset of a split (after :meth:`setup`)."""
        if split not in self.datasets:
            raise RuntimeError(f"split '{split}' is not available; call setup() first")
        return self.datasets[split]

    def train_dataloader(self) -> DataLoader:
        """Caption-level train pairs shuffled by ``(seed, epoch)``; the last partial batch is dropped."""
        return self._loader("train", self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        """Every val caption once, in corpus order."""
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        """Every test caption once, in corpus order."""
        return self._loader("test", self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        """Same as :meth:`test_dataloader`."""
        return self._loader("test", self.eval_batch_size)

    def _is_global_zero(self) -> bool:
        trainer = self.trainer
        return trainer is None or trainer.is_global_zero

    def _build_dataset(self, split: str) -> CaptionPairDataset:
        assert self.corpus is not None
        rows, image_ids, caption_ids, captions = [], [], [], []
        for row, item in enumerate(self.corpus.split(split)):
            for index, caption in enumerate(item.captions):
                rows.append(row)
                image_ids.append(item.image_id)
                caption_ids.append(self.corpus.caption_id(item.image_id, index))
                captions.append(caption)
        negatives = None
        if self.binding_negatives and split == "train":
            negative_text = _negative_captions(self.corpus, captions, self.seed)
            negatives = encode_captions(self.tokenizer, negative_text, self.max_length)
        return CaptionPairDataset(
            images=self.images[split],
            image_rows=torch.tensor(rows, dtype=torch.long),
            image_ids=torch.tensor(image_ids, dtype=torch.long),
            caption_ids=torch.tensor(caption_ids, dtype=torch.long),
            captions=encode_captions(self.tokenizer, captions, self.max_length),
            negatives=negatives,
        )

    def _loader(self, split: str, batch_size: int, train: bool = False) -> DataLoader:
        collate = partial(collate_pairs, pad_token_id=self.pad_token_id)
        dataset = self.dataset(split)
        if train:
            return resumable_train_loader(dataset, batch_size, self.seed, collate, self.num_workers, drop_last=True)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate,
        )
