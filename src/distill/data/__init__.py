"""Synthetic shapes benchmark: corpus generation, tokenizer, batches and data module.

Names are re-exported lazily, so ``distill.data.shapes`` can be used without importing
Lightning or Transformers.
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
    "BeirTextDataModule": "beir",
    "PairedImageTextDataModule": "paired",
    "CaptionPairDataset": "datamodule",
    "EncodedCaptions": "datamodule",
    "ShapesDataModule": "datamodule",
    "encode_captions": "datamodule",
    "render_split": "datamodule",
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
    "SPECIAL_TOKENS": "tokenizer",
    "build_shapes_tokenizer": "tokenizer",
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
    from distill.data.beir import BeirTextDataModule
    from distill.data.paired import PairedImageTextDataModule
    from distill.data.datamodule import (
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
    from distill.data.tokenizer import SPECIAL_TOKENS, build_shapes_tokenizer


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'distill.data' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"distill.data.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
