from __future__ import annotations

import math

import pytest
import torch

from distill.losses import CPRD, DirectionScores, LossInputs, cprd_loss, cprd_valid_mask


def lse(*values: float) -> float:
    return math.log(sum(math.exp(v) for v in values))


def _inputs(scores: DirectionScores, b2a: DirectionScores | None = None) -> LossInputs:
    n = scores.student.shape[0]
    return LossInputs(
        similarity=torch.zeros(n, n),
        positive_mask=torch.eye(n, dtype=torch.bool),
        logit_scale=torch.tensor(1.0),
        a2b=scores,
        b2a=b2a if b2a is not None else scores,
    )


def test_cprd_hand_value() -> None:
    student = torch.tensor([[0.2, 0.5, 0.1], [0.3, -0.1, 0.4], [0.7, 0.1, 0.2]], dtype=torch.float64)
    teacher = torch.tensor([[3.0, 1.0, 2.0], [0.5, 2.0, -1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    valid = torch.tensor([[True, True, True], [True, True, False], [True, False, False]])
    # T = 0.1. Row 0 teacher order: columns 0, 2, 1 -> x = [2, 1, 5]; n = 3 -> 2 terms.
    row0 = ((lse(2.0, 1.0, 5.0) - 2.0) + (lse(1.0, 5.0) - 1.0)) / 2
    # Row 1 (column 2 invalid) teacher order: columns 1, 0 -> x = [-1, 3]; n = 2 -> 1 term.
    row1 = lse(-1.0, 3.0) - (-1.0)
    # Row 2 has a single valid negative and contributes nothing.
    expected = (row0 + row1) / 2
    assert cprd_loss(student, teacher, valid, 0.1).item() == pytest.approx(expected, abs=1e-12)


def test_cprd_valid_mask_rules() -> None:
    teacher_pos = torch.tensor([4.0])
    teacher_neg = torch.tensor([[5.0, 1.0, 3.0, 4.0]])
    valid = torch.tensor([[True, True, True, False]])
    top2 = cprd_valid_mask(teacher_pos, teacher_neg, valid, "top_m", top_m=2)
    assert top2.tolist() == [[True, False, True, False]]
    rel = cprd_valid_mask(teacher_pos, teacher_neg, valid, "relative_threshold", threshold=1.5)
    assert rel.tolist() == [[True, False, True, False]]  # >= 2.5 and valid
    assert cprd_valid_mask(teacher_pos, teacher_neg, valid, "all").tolist() == valid.tolist()


def test_cprd_permutation_invariant() -> None:
    g = torch.Generator().manual_seed(1)
    s = torch.randn(4, 6, generator=g, dtype=torch.float64)
    t = torch.randn(4, 6, generator=g, dtype=torch.float64)
    v = torch.rand(4, 6, generator=g) > 0.3
    perm = torch.randperm(6, generator=g)
    a = cprd_loss(s, t, v, 0.07)
    b = cprd_loss(s[:, perm], t[:, perm], v[:, perm], 0.07)
    assert a.item() == pytest.approx(b.item(), abs=1e-12)


def test_cprd_ignores_invalid_entries() -> None:
    g = torch.Generator().manual_seed(2)
    s = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 5, generator=g, dtype=torch.float64)
    v = torch.tensor([[True, False, True, True, False], [True, True, False, True, True], [False] * 4 + [True]])
    base = cprd_loss(s, t, v, 0.05)
    s2 = s.detach().clone()
    t2 = t.clone()
    assert int((~v).sum()) == 7
    s2[~v] = torch.tensor([100.0, -50.0, float("nan"), 3.0, 7.0, 9.0, 0.5], dtype=torch.float64)
    t2[~v] = torch.tensor([1e6, -1e6, float("inf"), 0.0, 2.0, 4.0, -3.0], dtype=torch.float64)
    assert cprd_loss(s2, t2, v, 0.05).item() == pytest.approx(base.item(), abs=1e-12)
    base.backward()
    assert s.grad is not None
    assert torch.all(s.grad[~v] == 0)
    assert torch.all(torch.isfinite(s.grad))


def test_cprd_module_ignores_negatives_outside_rule() -> None:
    g = torch.Generator().manual_seed(3)
    student = torch.rand(3, 6, generator=g, dtype=torch.float64)
    teacher = torch.randn(3, 6, generator=g, dtype=torch.float64)
    valid = torch.ones(3, 6, dtype=torch.bool)
    module = CPRD(temperature=0.05, rule="top_m", top_m=3)
    base = module(_inputs(DirectionScores(student, teacher, valid)))
    # Negatives ranked 4th and 5th by the teacher (columns 1.. of each row) do not matter.
    order = torch.argsort(teacher[:, 1:], dim=1, descending=True) + 1
    changed = student.clone()
    for i in range(3):
        changed[i, order[i, 3:]] = torch.tensor([0.99, -0.99], dtype=torch.float64)
    assert module(_inputs(DirectionScores(changed, teacher, valid))).item() == pytest.approx(base.item(), abs=1e-12)
    # ... whereas a negative inside the top 3 does.
    inside = student.clone()
    inside[0, order[0, 0]] += 0.3
    assert module(_inputs(DirectionScores(inside, teacher, valid))).item() != pytest.approx(base.item(), abs=1e-9)


def test_cprd_module_matches_function_and_averages_directions() -> None:
    g = torch.Generator().manual_seed(4)
    mk = lambda: DirectionScores(  # noqa: E731
        torch.rand(4, 5, generator=g, dtype=torch.float64),
        torch.randn(4, 5, generator=g, dtype=torch.float64),
        torch.ones(4, 5, dtype=torch.bool),
    )
    a2b, b2a = mk(), mk()
    inputs = _inputs(a2b, b2a)
    fa = cprd_loss(a2b.student[:, 1:], a2b.teacher[:, 1:], a2b.valid[:, 1:], 0.1)
    fb = cprd_loss(b2a.student[:, 1:], b2a.teacher[:, 1:], b2a.valid[:, 1:], 0.1)
    assert CPRD(temperature=0.1, rule="all", directions="a2b")(inputs).item() == pytest.approx(fa.item())
    assert CPRD(temperature=0.1, rule="all", directions="b2a")(inputs).item() == pytest.approx(fb.item())
    assert CPRD(temperature=0.1, rule="all")(inputs).item() == pytest.approx(0.5 * (fa + fb).item())


def test_cprd_fewer_than_two_valid_contributes_nothing() -> None:
    s = torch.tensor([[0.3, 0.1, 0.2], [0.5, 0.4, 0.0]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[1.0, 2.0, 3.0], [1.0, 0.0, 2.0]], dtype=torch.float64)
    v = torch.tensor([[True, False, False], [False, False, False]])
    loss = cprd_loss(s, t, v, 0.05)
    assert loss.item() == 0.0
    loss.backward()
    assert s.grad is not None and torch.all(s.grad == 0)
    # Adding such a row to a batch leaves the loss of the other rows unchanged.
    good_s = torch.tensor([[0.2, 0.5, 0.1]], dtype=torch.float64)
    good_t = torch.tensor([[3.0, 1.0, 2.0]], dtype=torch.float64)
    good_v = torch.ones(1, 3, dtype=torch.bool)
    alone = cprd_loss(good_s, good_t, good_v, 0.05)
    mixed = cprd_loss(torch.cat([good_s, s.detach()]), torch.cat([good_t, t]), torch.cat([good_v, v]), 0.05)
    assert mixed.item() == pytest.approx(alone.item(), abs=1e-12)


def test_cprd_perfect_student_order_has_lower_loss() -> None:
    teacher = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    agree = torch.tensor([[0.8, 0.6, 0.4, 0.2]])
    disagree = agree.flip(1)
    valid = torch.ones(1, 4, dtype=torch.bool)
    assert cprd_loss(agree, teacher, valid, 0.05) < cprd_loss(disagree, teacher, valid, 0.05)
