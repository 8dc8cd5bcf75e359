"""The text cross-encoder scores pairs sorted by length in bounded forwards, and returns them in their order."""

from __future__ import annotations

import pytest
import torch

from distill.teachers import TeacherScorer, TextCrossEncoderTeacher
from tests.helpers import WORDS

QUERIES = ["what is the capital of france", "who wrote hamlet", "the nile", "largest planet",
           "highest mountain in the world", "paris"]


def _side(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    encoded = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    return {"text_ids": encoded["input_ids"], "text_mask": encoded["attention_mask"]}


def _passages(count: int) -> list[str]:
    """Passages of 1 to ``count`` words, in a mixed order of lengths."""
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(1 + (7 * i) % count)) for i in range(count)]


def test_scores_are_each_pairs_own_score_in_the_given_order(tiny_models) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models.cross_encoder)
    teacher = TextCrossEncoderTeacher(str(tiny_models.cross_encoder), tokens_per_forward=60)
    passages = _passages(24)
    queries = [QUERIES[i % len(QUERIES)] for i in range(len(passages))]
    widths: list[tuple[int, int, int]] = []  # (rows, width, longest unpadded row) of each forward

    def record(_module, _args, kwargs) -> None:
        mask = kwargs["attention_mask"]
        widths.append((mask.shape[0], mask.shape[1], int(mask.sum(1).max())))

    handle = teacher.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        scores = teacher.score(_side(tokenizer, queries), _side(tokenizer, passages))
    finally:
        handle.remove()
    with torch.no_grad():  # each pair alone, unpadded: the reference
        alone = torch.stack([teacher.model(**tokenizer(q, p, return_tensors="pt")).logits[0, 0]
                             for q, p in zip(queries, passages)])
    assert scores.dtype == torch.float32 and scores.shape == (len(passages),)
    assert torch.allclose(scores, alone, atol=1e-5)
    assert len(widths) > 1 and sum(rows for rows, _, _ in widths) == len(passages)
    assert all(width == longest and rows * width <= 60 for rows, width, longest in widths)
    assert [width for _, width, _ in widths] == sorted((width for _, width, _ in widths), reverse=True)


def test_scorer_chunks_give_the_same_scores_as_one_forward(tiny_models) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models.cross_encoder)
    bounded = TextCrossEncoderTeacher(str(tiny_models.cross_encoder), tokens_per_forward=40)
    unbounded = TextCrossEncoderTeacher(str(tiny_models.cross_encoder), tokens_per_forward=10 ** 9)
    a, b = _side(tokenizer, QUERIES), _side(tokenizer, _passages(10))
    a_index = torch.tensor([0, 5, 1, 1, 2, 3, 4, 0, 5, 2, 3, 4])
    b_index = torch.tensor([9, 0, 3, 8, 1, 2, 7, 4, 5, 6, 0, 9])
    ours = TeacherScorer(bounded, max_pairs=5).score_pairs(a, b, a_index, b_index)
    reference = TeacherScorer(unbounded).score_pairs(a, b, a_index, b_index)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_tokens_per_forward_must_be_positive(tiny_models) -> None:
    with pytest.raises(ValueError, match="tokens_per_forward must be >= 1"):
        TextCrossEncoderTeacher(str(tiny_models.cross_encoder), tokens_per_forward=0)
