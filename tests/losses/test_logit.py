from __future__ import annotations

import math

import pytest
import torch

from distill.losses import DirectionScores, LogitKL, LossInputs, MarginMSE, logit_kl_loss, margin_mse_loss


def softmax(*values: float) -> list[float]:
    z = sum(math.exp(v) for v in values)
    return [math.exp(v) / z for v in values]


def kl(q: list[float], p: list[float]) -> float:
    return sum(qi * (math.log(qi) - math.log(pi)) for qi, pi in zip(q, p))


def _inputs(scores: DirectionScores, logit_scale: torch.Tensor | None = None) -> LossInputs:
    n = scores.student.shape[0]
    scale = torch.tensor(1.0) if logit_scale is None else logit_scale
    return LossInputs(torch.zeros(n, n), torch.eye(n, dtype=torch.bool), scale, scores, scores)


def test_logit_kl_hand_value() -> None:
    s = torch.tensor([[0.1, 0.0, -0.1], [0.2, 0.3, 0.0]], dtype=torch.float64)
    t = torch.tensor([[1.0, 0.0, 2.0], [0.5, 0.5, 9.0]], dtype=torch.float64)
    v = torch.tensor([[True, True, True], [True, True, False]])
    # T_s = 0.1, T_t = 2
    row0 = kl(softmax(0.5, 0.0, 1.0), softmax(1.0, 0.0, -1.0))
    row1 = kl(softmax(0.25, 0.25), softmax(2.0, 3.0))
    expected = (row0 + row1) / 2
    assert logit_kl_loss(s, t, v, 0.1, 2.0).item() == pytest.approx(expected, abs=1e-12)
    assert logit_kl_loss(s, t, v, 0.1, 2.0, scale_by_t2=True).item() == pytest.approx(0.01 * expected, abs=1e-12)


def test_logit_kl_zero_when_distributions_match() -> None:
    g = torch.Generator().manual_seed(5)
    t = torch.randn(4, 6, generator=g, dtype=torch.float64) * 3
    v = torch.rand(4, 6, generator=g) > 0.3
    v[:, 0] = True
    s = t * 0.05 / 2.0  # student / T_s == teacher / T_t
    assert logit_kl_loss(s, t, v, 0.05, 2.0).item() == pytest.approx(0.0, abs=1e-12)


def test_logit_kl_module() -> None:
    g = torch.Generator().manual_seed(6)
    s = torch.rand(3, 4, generator=g, dtype=torch.float64)
    t = torch.randn(3, 4, generator=g, dtype=torch.float64)
    v = torch.ones(3, 4, dtype=torch.bool)
    module = LogitKL(student_temperature=0.1, teacher_temperature=1.0, scale_by_t2=True)
    expected = logit_kl_loss(s, t, v, 0.1, 1.0, True)
    assert module(_inputs(DirectionScores(s, t, v))).item() == pytest.approx(expected.item(), abs=1e-12)


def test_margin_mse_hand_value() -> None:
    s_pos = torch.tensor([0.5, 0.2], dtype=torch.float64)
    s_neg = torch.tensor([[0.1, 0.3], [0.0, 0.4]], dtype=torch.float64)
    t_pos = torch.tensor([2.0, 1.0], dtype=torch.float64)
    t_neg = torch.tensor([[1.0, 3.0], [0.5, 0.0]], dtype=torch.float64)
    valid = torch.tensor([[True, True], [True, False]])
    # valid pairs: (0.4 - 1.0)^2, (0.2 - (-1.0))^2, (0.2 - 0.5)^2
    expected = ((0.4 - 1.0) ** 2 + (0.2 + 1.0) ** 2 + (0.2 - 0.5) ** 2) / 3
    assert margin_mse_loss(s_pos, s_neg, t_pos, t_neg, valid).item() == pytest.approx(expected, abs=1e-12)


def test_margin_mse_module_scales() -> None:
    student = torch.tensor([[0.5, 0.1, 0.3]], dtype=torch.float64, requires_grad=True)
    teacher = torch.tensor([[2.0, 1.0, 3.0]], dtype=torch.float64)
    valid = torch.ones(1, 3, dtype=torch.bool)
    log_scale = torch.tensor(math.log(4.0), dtype=torch.float64, requires_grad=True)
    inputs = _inputs(DirectionScores(student, teacher, valid), log_scale.exp())
    # student scale = logit_scale = 4: margins 1.6 and 0.8 vs teacher 1 and -1
    expected = ((1.6 - 1.0) ** 2 + (0.8 + 1.0) ** 2) / 2
    loss = MarginMSE()(inputs)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    loss.backward()
    assert log_scale.grad is None  # the logit scale is used detached
    assert student.grad is not None
    fixed = ((10 * 0.4 - 1.0) ** 2 + (10 * 0.2 + 1.0) ** 2) / 2
    assert MarginMSE(student_scale=10.0)(inputs).item() == pytest.approx(fixed, abs=1e-12)
