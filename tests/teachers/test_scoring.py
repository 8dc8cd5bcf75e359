"""TeacherScorer: each distinct pair once, bounded pairs per forward, items loaded per chunk and grouped."""

from __future__ import annotations

import pytest
import torch

from distill.errors import RunError
from distill.inputs import Inputs
from distill.teachers import ShapesCrossEncoder, TeacherScorer
from tests.helpers import TINY_TEACHER


def test_teacher_scorer_scores_each_distinct_pair_once() -> None:
    teacher = ShapesCrossEncoder(**TINY_TEACHER).freeze()
    scorer = TeacherScorer(teacher, max_pairs=3)
    pixels = {"pixel_values": torch.randn(2, 3, 32, 32)}
    text = {"input_ids": torch.randint(4, 60, (3, 6)), "attention_mask": torch.ones(3, 6, dtype=torch.long)}
    a_index, b_index = torch.tensor([0, 1, 0, 1, 0, 0]), torch.tensor([2, 0, 2, 1, 1, 2])
    scores, distinct = scorer.score_unique(pixels, text, a_index, b_index)
    assert distinct == 4 and scorer.calls == [3, 1]
    direct = teacher.score({"pixel_values": pixels["pixel_values"][a_index]}, {k: v[b_index] for k, v in text.items()})
    assert torch.allclose(scores, direct, atol=1e-5)


def test_score_loaded_groups_pairs_by_image_and_loads_each_chunks_items() -> None:
    """Caption->image lists (caption-major pairs, every caption ranking the same 4 images) are scored in
    chunks that each hold one or two images, not four; the scores come back in the requested order."""
    torch.manual_seed(0)
    teacher = ShapesCrossEncoder(**TINY_TEACHER).freeze()
    images = torch.randn(4, 3, 32, 32)
    captions = {"input_ids": torch.randint(4, 60, (6, 6)), "attention_mask": torch.ones(6, 6, dtype=torch.long)}
    loaded: dict[str, list[int]] = {"a": [], "b": []}

    def load(side: str, source: Inputs):
        def fetch(ids: torch.Tensor) -> Inputs:
            loaded[side].append(ids.numel())
            return {key: value[ids] for key, value in source.items()}
        return fetch

    caption_items = torch.arange(6).repeat_interleave(4)          # caption 0 x images 0..3, caption 1 x ...
    image_items = torch.tensor([3, 1, 0, 2]).repeat(6)
    scorer = TeacherScorer(teacher, max_pairs=6)
    scores = scorer.score_loaded(load("a", {"pixel_values": images}), load("b", captions), image_items, caption_items)
    assert scorer.calls == [6, 6, 6, 6] and loaded["a"] == [1, 1, 1, 1] and loaded["b"] == [6, 6, 6, 6]
    direct = teacher.score({"pixel_values": images[image_items]}, {k: v[caption_items] for k, v in captions.items()})
    assert torch.allclose(scores, direct, atol=1e-5)


def test_non_finite_scores_in_reduced_precision_name_the_setting() -> None:
    """fp16 scores that overflow (weights scaled past fp16's range) stop with a line naming teacher_precision;
    the same teacher in float32 scores them as they are."""
    torch.manual_seed(0)
    teacher = ShapesCrossEncoder(**TINY_TEACHER).freeze()
    with torch.no_grad():
        for parameter in teacher.parameters():
            parameter.mul_(1e3)
    pixels = {"pixel_values": torch.randn(2, 3, 32, 32)}
    text = {"input_ids": torch.randint(4, 60, (2, 6)), "attention_mask": torch.ones(2, 6, dtype=torch.long)}
    pairs = torch.tensor([0, 1]), torch.tensor([0, 1])
    assert torch.isfinite(TeacherScorer(teacher).score_pairs(pixels, text, *pairs)).all()
    half = TeacherScorer(teacher, precision="16")
    half.apply_precision()
    with pytest.raises(RunError, match=r"teacher_precision 16 .* set model\.init_args\.teacher_precision to bf16"):
        half.score_pairs(pixels, text, *pairs)
