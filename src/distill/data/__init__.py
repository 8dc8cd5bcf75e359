"""Data modules of the three data sets, each in its own package, over shared batch conventions.

* :mod:`distill.data.shapes`: the synthetic shapes benchmark (scenes in a row or a 3x3 grid, rendering,
  captions, its tokenizer and :class:`ShapesDataModule`);
* :mod:`distill.data.paired`: image-caption pairs from files, COCO / Flickr30K Karpathy JSON or JSONL
  (:class:`PairedImageTextDataModule`);
* :mod:`distill.data.beir`: text retrieval data in the BEIR layout (:class:`BeirTextDataModule`).

Shared by all three: :mod:`~distill.data.batch` (batch types, collate), :mod:`~distill.data.common` (file
reading, tokenising, bad items), :mod:`~distill.data.items` (splits as (a, b) pairs, items by id),
:mod:`~distill.data.sampling` (resumable train loaders), :mod:`~distill.data.image_preprocessing`. The data
set packages import these and never each other.

The names below are re-exported lazily (recipes name them as ``class_path: distill.data.<Name>``), so
``distill.data.shapes`` can be used without importing Lightning or Transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "ImageInputs": "batch",
    "PairBatch": "batch",
    "PairExample": "batch",
    "TextInputs": "batch",
    "collate_pairs": "batch",
    "normalize_pixels": "batch",
    "pad_token_ids": "batch",
    "BeirTextDataModule": "beir.datamodule",
    "PairedImageTextDataModule": "paired.datamodule",
    "CaptionPairDataset": "shapes.datamodule",
    "EncodedCaptions": "shapes.datamodule",
    "ShapesDataModule": "shapes.datamodule",
    "encode_captions": "shapes.datamodule",
    "render_split": "shapes.datamodule",
    "COLORS": "shapes",
    "SHAPES": "shapes",
    "SIZES": "shapes",
    "SPLITS": "shapes",
    "TEMPLATES": "shapes",
    "Placement": "shapes",
    "ShapeItem": "shapes",
    "ShapeObject": "shapes",
    "ShapesCorpus": "shapes",
    "Signature": "shapes",
    "are_twins": "shapes",
    "binding_negative_caption": "shapes",
    "caption_template": "shapes",
    "describe": "shapes",
    "generate_corpus": "shapes",
    "parse_caption": "shapes",
    "perturb_signature": "shapes",
    "perturbations": "shapes",
    "render_scene": "shapes",
    "sample_signature": "shapes",
    "scene_layout": "shapes",
    "templates_for": "shapes",
    "vocabulary": "shapes",
    "SPECIAL_TOKENS": "shapes.tokenizer",
    "build_shapes_tokenizer": "shapes.tokenizer",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from distill.data.batch import (
        ImageInputs,
        PairBatch,
        PairExample,
        TextInputs,
        collate_pairs,
        normalize_pixels,
        pad_token_ids,
    )
    from distill.data.beir.datamodule import BeirTextDataModule
    from distill.data.paired.datamodule import PairedImageTextDataModule
    from distill.data.shapes.datamodule import (
        CaptionPairDataset,
        EncodedCaptions,
        ShapesDataModule,
        encode_captions,
        render_split,
    )
    from distill.data.shapes import (
        COLORS,
        SHAPES,
        SIZES,
        SPLITS,
        TEMPLATES,
        Placement,
        ShapeItem,
        ShapeObject,
        ShapesCorpus,
        Signature,
        are_twins,
        binding_negative_caption,
        caption_template,
        describe,
        generate_corpus,
        parse_caption,
        perturb_signature,
        perturbations,
        render_scene,
        sample_signature,
        scene_layout,
        templates_for,
        vocabulary,
    )
    from distill.data.shapes.tokenizer import SPECIAL_TOKENS, build_shapes_tokenizer


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'distill.data' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"distill.data.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
