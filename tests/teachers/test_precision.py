"""``teacher_precision``: a bf16 teacher scores close to its fp32 self, but not identically.

The largest score difference is measured on a tiny ShapesCrossEncoder and a tiny BLIP over a grid of
pairs; ``benchmarks/scale.py`` reports the same comparison on the trained demo teacher.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from distill.teachers import BlipITMTeacher, ShapesCrossEncoder
from distill.teachers.scoring import TeacherScorer
from tests.helpers import BERT_VOCAB, IMAGE_SIZE, TINY_TEACHER, fit_args


def score_grid(teacher: nn.Module, images: dict[str, torch.Tensor], captions: dict[str, torch.Tensor],
               precision: str) -> torch.Tensor:
    """Scores ``[images, captions]`` of every pair by a copy of ``teacher`` run at ``precision``."""
    scorer = TeacherScorer(copy.deepcopy(teacher), max_pairs=16, precision=precision)
    scorer.apply_precision()
    assert next(scorer.teacher.parameters()).dtype == scorer.dtype
    rows, columns = images["pixel_values"].shape[0], captions["input_ids"].shape[0]
    a_index = torch.arange(rows).repeat_interleave(columns)
    b_index = torch.arange(columns).repeat(rows)
    scores = scorer.score_pairs(images, captions, a_index, b_index)
    assert scores.dtype == torch.float32
    return scores.view(rows, columns)


def compare(teacher: nn.Module, images: dict[str, torch.Tensor], captions: dict[str, torch.Tensor]) -> tuple[float, float]:
    """``(max |bf16 - fp32|, standard deviation of the fp32 scores)``; the teacher itself stays fp32."""
    reference = score_grid(teacher, images, captions, "32")
    low = score_grid(teacher, images, captions, "bf16")
    assert next(teacher.parameters()).dtype == torch.float32
    return float((low - reference).abs().max()), float(reference.std())


def test_bf16_shapes_cross_encoder_stays_close_to_fp32() -> None:
    torch.manual_seed(0)
    teacher = ShapesCrossEncoder(**TINY_TEACHER).freeze()
    images = {"pixel_values": torch.rand(6, 3, TINY_TEACHER["image_size"], TINY_TEACHER["image_size"])}
    ids = torch.randint(5, TINY_TEACHER["vocab_size"], (8, 12))
    captions = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    difference, spread = compare(teacher, images, captions)
    assert 0 < difference < 0.1 * spread, (difference, spread)


def test_bf16_blip_stays_close_to_fp32(tiny_models) -> None:
    torch.manual_seed(0)
    teacher = BlipITMTeacher(str(tiny_models.blip))
    images = {"pixel_values": torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE)}
    ids = torch.randint(5, len(BERT_VOCAB), (6, 10))
    captions = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    difference, spread = compare(teacher, images, captions)
    assert 0 < difference < 0.1 * spread, (difference, spread)


@pytest.mark.parametrize(("written", "expected"), [("32", "32"), ("'32'", "32"), ("bf16", "bf16"), ("16", "16")])
def test_recipe_precision_as_a_number_or_a_string(written: str, expected: str, tmp_path: Path,
                                                  tiny_teacher_dir: Path) -> None:
    """YAML reads ``teacher_precision: 32`` as an integer; the recipe takes it as it takes ``"32"``."""
    from distill.cli.recipe import DistillCLI

    extra = tmp_path / "precision.yaml"
    extra.write_text(f"model:\n  init_args:\n    teacher_precision: {written}\n")
    args = fit_args("shapes-kl.yaml", tmp_path, f"--model.init_args.teacher.init_args.weights={tiny_teacher_dir}",
                    "--config", str(extra))
    cli = DistillCLI(args=args[1:], run=False)
    assert cli.model.scorer.precision == expected
