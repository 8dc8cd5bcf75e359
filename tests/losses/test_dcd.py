from __future__ import annotations

import math

import pytest
import torch

from distill.losses import (
    DCD,
    DirectionScores,
    LossInputs,
    dcd_difficulty,
    dcd_loss,
    dcd_sample_weights,
    select_teacher_hard_negatives,
)


def softmax(*values: float) -> list[float]:
    z = sum(math.exp(v) for v in values)
    return [math.exp(v) / z for v in values]


def kl(q: list[float], p: list[float]) -> float:
    return sum(qi * (math.log(qi) - math.log(pi)) for qi, pi in zip(q, p))


def entropy(q: list[float]) -> float:
    return -sum(qi * math.log(qi) for qi in q)


STUDENT = [[0.5, 0.2, 0.1], [0.3, 0.4, 0.0]]
TEACHER = [[2.0, 1.0, 0.0], [1.0, 1.0, -5.0]]
VALID = [[True, True, True], [True, True, False]]


def _tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.tensor(STUDENT, dtype=torch.float64),
        torch.tensor(TEACHER, dtype=torch.float64),
        torch.tensor(VALID),
    )


def test_dcd_hand_value_kl() -> None:
    s, t, v = _tensors()
    # T_s = 0.5, T_t = 1, hard_weight = 0.5
    p0, q0 = softmax(1.0, 0.4, 0.2), softmax(2.0, 1.0, 0.0)
    p1, q1 = softmax(0.6, 0.8), softmax(1.0, 1.0)  # third candidate invalid
    soft = [kl(q0, p0), kl(q1, p1)]
    hard = [-math.log(p0[0]), -math.log(p1[0])]
    h = [entropy(q0) / math.log(3), entropy(q1) / math.log(2)]  # h1 = 1 (uniform)
    w = [hi / ((h[0] + h[1]) / 2) for hi in h]
    expected = (w[0] * soft[0] + w[1] * soft[1]) / 2 + 0.5 * (hard[0] + hard[1]) / 2
    got = dcd_loss(s, t, v, student_temperature=0.5, teacher_temperature=1.0, hard_weight=0.5, soft="kl")
    assert got.item() == pytest.approx(expected, abs=1e-12)
    weights = dcd_sample_weights(t, v, 1.0)
    assert weights.tolist() == pytest.approx(w, abs=1e-12)
    assert dcd_difficulty(t, v, 1.0).tolist() == pytest.approx(h, abs=1e-12)


def test_dcd_hand_value_mse() -> None:
    s, t, v = _tensors()
    p0, q0 = softmax(1.0, 0.4, 0.2), softmax(2.0, 1.0, 0.0)
    p1, q1 = softmax(0.6, 0.8), softmax(1.0, 1.0)
    soft = [sum((a - b) ** 2 for a, b in zip(p0, q0)) / 3, sum((a - b) ** 2 for a, b in zip(p1, q1)) / 2]
    hard = [-math.log(p0[0]), -math.log(p1[0])]
    h = [entropy(q0) / math.log(3), 1.0]
    w = [hi / ((h[0] + h[1]) / 2) for hi in h]
    expected = (w[0] * soft[0] + w[1] * soft[1]) / 2 + 2.0 * (hard[0] + hard[1]) / 2
    got = dcd_loss(s, t, v, 0.5, 1.0, hard_weight=2.0, soft="mse")
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_dcd_static_weights_are_one() -> None:
    s, t, v = _tensors()
    p0, q0 = softmax(1.0, 0.4, 0.2), softmax(2.0, 1.0, 0.0)
    p1, q1 = softmax(0.6, 0.8), softmax(1.0, 1.0)
    expected = (kl(q0, p0) + kl(q1, p1)) / 2
    got = dcd_loss(s, t, v, 0.5, 1.0, hard_weight=0.0, dynamic_weighting=False)
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_dcd_weights_differ_per_sample_and_average_one() -> None:
    _, t, v = _tensors()
    w = dcd_sample_weights(t, v, 1.0)
    assert w.mean().item() == pytest.approx(1.0, abs=1e-12)
    assert abs(w[0].item() - w[1].item()) > 0.05
    s, _, _ = _tensors()
    dynamic = dcd_loss(s, t, v, 0.5, 1.0, hard_weight=0.0, dynamic_weighting=True)
    static = dcd_loss(s, t, v, 0.5, 1.0, hard_weight=0.0, dynamic_weighting=False)
    # A reduce-then-multiply implementation gives mean(w) * mean(soft) == mean(soft) == static.
    assert abs(dynamic.item() - static.item()) > 1e-3


def test_dcd_weights_act_per_sample() -> None:
    """Changing only a zero-loss sample's teacher entropy changes the loss through the weights.

    Row 2's student equals its teacher (scaled by the temperatures), so its own soft term is 0
    whatever its entropy. With the hard term off, the loss depends on row 2 only through
    mean_batch(h), i.e. through the per-sample weights of rows 0 and 1. A reduce-first
    implementation (mean(w) * mean(soft) = mean(soft)) would not change at all.
    """
    ts, tt = 0.5, 1.0
    s01 = [[0.5, 0.2, 0.1], [0.3, 0.4, 0.0]]
    t01 = [[2.0, 1.0, 0.0], [0.0, 1.0, 0.5]]
    valid = torch.ones(3, 3, dtype=torch.bool)

    def loss_for(row2_teacher: list[float]) -> float:
        student = torch.tensor(s01 + [[x * ts / tt for x in row2_teacher]], dtype=torch.float64)
        teacher = torch.tensor(t01 + [row2_teacher], dtype=torch.float64)
        return dcd_loss(student, teacher, valid, ts, tt, hard_weight=0.0).item()

    def hand(row2_teacher: list[float]) -> float:
        soft = [
            kl(softmax(*t01[0]), softmax(*[x / ts for x in s01[0]])),
            kl(softmax(*t01[1]), softmax(*[x / ts for x in s01[1]])),
            0.0,
        ]
        h = [entropy(softmax(*row)) / math.log(3) for row in (t01[0], t01[1], row2_teacher)]
        mean_h = sum(h) / 3
        return sum(hi / mean_h * si for hi, si in zip(h, soft)) / 3

    peaked, flat = [6.0, 0.0, 0.0], [0.1, 0.0, 0.05]
    assert loss_for(peaked) == pytest.approx(hand(peaked), abs=1e-12)
    assert loss_for(flat) == pytest.approx(hand(flat), abs=1e-12)
    assert abs(loss_for(peaked) - loss_for(flat)) > 1e-2


def test_select_teacher_hard_negatives() -> None:
    teacher = torch.tensor([[9.0, 1.0, 5.0, 3.0, 7.0]])
    valid = torch.tensor([[True, True, True, False, True]])
    index, sel = select_teacher_hard_negatives(teacher, valid, 2)
    assert index.tolist() == [[0, 4, 2]]
    assert sel.tolist() == [[True, True, True]]
    index, sel = select_teacher_hard_negatives(teacher, valid, 10)
    assert index.tolist() == [[0, 4, 2, 1, 3]]
    assert sel.tolist() == [[True, True, True, True, False]]


def test_dcd_module_selects_then_applies_loss() -> None:
    student = torch.tensor([[0.5, 0.1, 0.3, -0.2, 0.0]], dtype=torch.float64)
    teacher = torch.tensor([[2.0, 0.5, 1.5, -1.0, 1.0]], dtype=torch.float64)
    valid = torch.ones(1, 5, dtype=torch.bool)
    scores = DirectionScores(student, teacher, valid)
    inputs = LossInputs(torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool), torch.tensor(1.0), scores, scores)
    module = DCD(num_hard_negatives=2, student_temperature=0.1, teacher_temperature=1.0, hard_weight=0.3)
    # Hardest negatives by teacher: columns 2 (1.5) and 4 (1.0).
    expected = dcd_loss(student[:, [0, 2, 4]], teacher[:, [0, 2, 4]], valid[:, :3], 0.1, 1.0, 0.3)
    assert module(inputs).item() == pytest.approx(expected.item(), abs=1e-12)
