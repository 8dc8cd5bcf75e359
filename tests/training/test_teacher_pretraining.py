"""The demo teacher's training objective: ALBEF-style negative sampling and the grouped ITM loss."""

from __future__ import annotations

import math

import pytest
import torch

from distill.training.teacher_pretraining import CrossEncoderPretraining, grouped_itm_loss, sample_negatives


def test_sampled_negatives_are_never_positives() -> None:
    generator = torch.Generator().manual_seed(0)
    ids = torch.tensor([0, 0, 1, 2, 2, 3])
    positives = ids.unsqueeze(1) == ids.unsqueeze(0)
    similarity = torch.randn(6, 6, generator=generator) + 5 * positives.float()  # positives score highest
    for _ in range(20):
        negatives = sample_negatives(similarity, positives, generator=generator)
        assert not positives[torch.arange(6), negatives].any()


def test_grouped_itm_loss_matches_hand_computation() -> None:
    # Layout [pos | neg_text | neg_image | binding], two anchors.
    logits = torch.tensor([2.0, 0.0, 1.0, -1.0, 0.5, 0.0, 0.0, 1.0])
    pos, neg_text, neg_image, binding = logits.view(4, 2)
    image_terms = [-math.log(math.exp(pos[i]) / (math.exp(pos[i]) + math.exp(neg_text[i]) + math.exp(binding[i])))
                   for i in range(2)]
    text_terms = [-math.log(math.exp(pos[i]) / (math.exp(pos[i]) + math.exp(neg_image[i]))) for i in range(2)]
    expected = sum(image_terms) / 2 + sum(text_terms) / 2
    assert float(grouped_itm_loss(logits, 2)) == pytest.approx(expected, rel=1e-6)


def test_training_step_runs_with_binding_negatives(tiny_teacher) -> None:
    from distill.data import ShapesDataModule
    from tests.helpers import TINY_DATA

    data = ShapesDataModule(**TINY_DATA, binding_negatives=True)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module = CrossEncoderPretraining(teacher=tiny_teacher)
    loss = module.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss)
    assert tiny_teacher.itm_head.weight.grad is not None and tiny_teacher.itm_head.weight.grad.abs().sum() > 0


def test_rejects_bad_settings(tiny_teacher) -> None:
    with pytest.raises(ValueError, match="itm_loss"):
        CrossEncoderPretraining(teacher=tiny_teacher, itm_loss="hinge")
    with pytest.raises(ValueError, match="itm_weight"):
        CrossEncoderPretraining(teacher=tiny_teacher, itm_weight=-1.0)
