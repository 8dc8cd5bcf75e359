"""Module-level behaviour: class attributes, mixed precision, construction from a recipe."""

from __future__ import annotations

import pytest
import torch

import distill.losses as losses
from distill.losses import (
    CPRD,
    DCD,
    FLOPS,
    CosineEmbedding,
    DirectionScores,
    DistillationLoss,
    InfoNCE,
    LogitKL,
    LossInputs,
    MarginMSE,
)


def test_class_attributes() -> None:
    assert InfoNCE.requires_teacher is False and FLOPS.requires_teacher is False
    for cls in (CPRD, DCD, LogitKL, MarginMSE, CosineEmbedding):
        assert cls.requires_teacher is True
    assert CosineEmbedding.requires_teacher_embeddings is True
    for cls in (InfoNCE, CPRD, DCD, LogitKL, MarginMSE, FLOPS):
        assert cls.requires_teacher_embeddings is False
        assert issubclass(cls, DistillationLoss)


def test_public_names() -> None:
    for name in losses.__all__:
        assert hasattr(losses, name), name


@pytest.mark.parametrize("module", [CPRD(), DCD(), LogitKL(teacher_temperature=4.0), MarginMSE(), InfoNCE()])
def test_low_precision_inputs_give_float32_losses(module: DistillationLoss) -> None:
    g = torch.Generator().manual_seed(9)
    student = (torch.rand(4, 6, generator=g) * 2 - 1).to(torch.bfloat16).requires_grad_()
    teacher = torch.randn(4, 6, generator=g).to(torch.float16)
    valid = torch.ones(4, 6, dtype=torch.bool)
    scores = DirectionScores(student, teacher, valid)
    sim = (torch.rand(4, 4, generator=g) * 2 - 1).to(torch.bfloat16)
    inputs = LossInputs(sim, torch.eye(4, dtype=torch.bool), torch.tensor(14.0), scores, scores)
    loss = module(inputs)
    assert loss.dtype == torch.float32 and loss.ndim == 0 and torch.isfinite(loss)


def test_modules_build_from_recipe_yaml() -> None:
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--losses", type=dict[str, DistillationLoss])
    parser.add_argument("--loss_weights", type=dict[str, float])
    cfg = parser.parse_string(
        """
losses:
  infonce: {class_path: distill.losses.InfoNCE, init_args: {}}
  cprd: {class_path: distill.losses.CPRD, init_args: {temperature: 0.05, top_m: 8}}
  dcd: {class_path: distill.losses.DCD, init_args: {num_hard_negatives: 4, soft: mse}}
loss_weights: {infonce: 1.0, cprd: 1.0, dcd: 0.5}
"""
    )
    build = getattr(parser, "instantiate", None) or parser.instantiate_classes
    built = build(cfg)
    assert isinstance(built.losses["infonce"], InfoNCE)
    assert isinstance(built.losses["cprd"], CPRD) and built.losses["cprd"].top_m == 8
    assert isinstance(built.losses["dcd"], DCD) and built.losses["dcd"].soft == "mse"


@pytest.mark.parametrize(
    "module", [CPRD(top_m=3), CPRD(rule="all"), DCD(num_hard_negatives=2), LogitKL(teacher_temperature=3.0), MarginMSE()]
)
def test_padding_values_are_ignored(module: DistillationLoss) -> None:
    g = torch.Generator().manual_seed(11)
    student = torch.rand(3, 5, generator=g, dtype=torch.float64) * 2 - 1
    teacher = torch.randn(3, 5, generator=g, dtype=torch.float64)
    valid = torch.tensor([[True, True, True, True, False], [True, False, True, True, True], [True] * 5])
    padded_s, padded_t = student.clone(), teacher.clone()
    padded_s[~valid] = float("nan")
    padded_t[~valid] = float("-inf")
    zero_s, zero_t = student.masked_fill(~valid, 0.0), teacher.masked_fill(~valid, 0.0)

    def run(s: torch.Tensor, t: torch.Tensor) -> tuple[float, torch.Tensor]:
        s = s.clone().requires_grad_()
        scores = DirectionScores(s, t, valid)
        inputs = LossInputs(torch.zeros(3, 3), torch.eye(3, dtype=torch.bool), torch.tensor(10.0), scores, scores)
        loss = module(inputs)
        loss.backward()
        assert s.grad is not None
        return loss.item(), s.grad

    padded_loss, padded_grad = run(padded_s, padded_t)
    zero_loss, zero_grad = run(zero_s, zero_t)
    assert padded_loss == pytest.approx(zero_loss, abs=1e-12)
    assert torch.isfinite(padded_grad).all()
    assert torch.equal(padded_grad[~valid], torch.zeros_like(padded_grad[~valid]))
    assert torch.allclose(padded_grad, zero_grad, atol=1e-12)
