from __future__ import annotations

import math

import pytest
import torch

from distill.losses import InfoNCE, LossInputs, infonce_loss, infonce_with_extras_loss, symmetric_infonce_loss


def lse(*values: float) -> float:
    return math.log(sum(math.exp(v) for v in values))


def test_infonce_multi_positive_hand_value() -> None:
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 1.0]], dtype=torch.float64)
    positives = torch.tensor([[True, True, False], [False, False, True]])
    # row 0: target 1/2 on columns 0 and 1 -> lse - (1 + 2) / 2; row 1: lse - 1
    row0 = lse(1.0, 2.0, 0.0) - 0.5 * (1.0 + 2.0)
    row1 = lse(0.5, -1.0, 1.0) - 1.0
    assert infonce_loss(logits, positives).item() == pytest.approx((row0 + row1) / 2, abs=1e-12)


def test_symmetric_infonce_hand_value_and_symmetry() -> None:
    sim = torch.tensor([[0.9, 0.1], [0.2, 0.8]], dtype=torch.float64)
    pos = torch.tensor([[True, True], [False, True]])
    scale = torch.tensor(10.0, dtype=torch.float64)
    rows = (lse(9.0, 1.0) - (9.0 + 1.0) / 2 + lse(2.0, 8.0) - 8.0) / 2
    cols = (lse(9.0, 2.0) - 9.0 + lse(1.0, 8.0) - (1.0 + 8.0) / 2) / 2
    expected = 0.5 * (rows + cols)
    assert symmetric_infonce_loss(sim, pos, scale).item() == pytest.approx(expected, abs=1e-12)
    # Swapping the roles of a and b leaves the symmetric loss unchanged.
    assert symmetric_infonce_loss(sim.t(), pos.t(), scale).item() == pytest.approx(expected, abs=1e-12)


def test_infonce_single_positive_matches_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, generator=g, dtype=torch.float64)
    target = torch.tensor([0, 3, 6, 2, 2])
    mask = torch.nn.functional.one_hot(target, 7).bool()
    ref = torch.nn.functional.cross_entropy(logits, target)
    assert infonce_loss(logits, mask).item() == pytest.approx(ref.item(), abs=1e-12)


def test_infonce_row_without_positive_raises() -> None:
    logits = torch.zeros(2, 3)
    mask = torch.tensor([[True, False, False], [False, False, False]])
    with pytest.raises(ValueError, match="without a positive"):
        infonce_loss(logits, mask)


def test_infonce_module_uses_similarity_and_scale() -> None:
    sim = torch.tensor([[0.9, 0.1], [0.2, 0.8]], dtype=torch.float64, requires_grad=True)
    log_scale = torch.tensor(math.log(10.0), dtype=torch.float64, requires_grad=True)
    pos = torch.eye(2, dtype=torch.bool)
    inputs = LossInputs(similarity=sim, positive_mask=pos, logit_scale=log_scale.exp(), a2b=None, b2a=None)
    module = InfoNCE()
    assert module.requires_teacher is False
    loss = module(inputs)
    assert loss.item() == pytest.approx(symmetric_infonce_loss(sim, pos, log_scale.exp()).item())
    loss.backward()
    assert sim.grad is not None and log_scale.grad is not None


def test_infonce_with_extras_hand_value_and_masked_extras() -> None:
    sim = torch.tensor([[0.9, 0.1], [0.2, 0.8]], dtype=torch.float64)
    extra = torch.tensor([[0.5, 0.3], [0.7, 0.4]], dtype=torch.float64, requires_grad=True)
    valid = torch.tensor([[True, False], [False, True]])
    scale = torch.tensor(10.0, dtype=torch.float64)
    # a->b rows rank the batch and their valid extras; b->a columns see the batch only.
    rows = (lse(9.0, 1.0, 5.0) - 9.0 + lse(2.0, 8.0, 4.0) - 8.0) / 2
    cols = (lse(9.0, 2.0) - 9.0 + lse(1.0, 8.0) - 8.0) / 2
    loss = infonce_with_extras_loss(sim, torch.eye(2, dtype=torch.bool), extra, valid, scale)
    assert loss.item() == pytest.approx(0.5 * (rows + cols), abs=1e-12)
    loss.backward()
    assert extra.grad[0, 1] == 0 and extra.grad[1, 0] == 0  # masked extras take no part
    assert extra.grad[0, 0] > 0 and extra.grad[1, 1] > 0  # a negative's score pushes the loss up
    # No valid extra: the plain symmetric loss.
    none = torch.zeros_like(valid)
    plain = symmetric_infonce_loss(sim, torch.eye(2, dtype=torch.bool), scale)
    assert infonce_with_extras_loss(sim, torch.eye(2, dtype=torch.bool), extra.detach(), none, scale).item() == \
        pytest.approx(plain.item(), abs=1e-12)


def test_infonce_hard_negatives_module_reads_the_extras_or_says_what_is_missing() -> None:
    sim = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    inputs = LossInputs(similarity=sim, positive_mask=torch.eye(2, dtype=torch.bool), logit_scale=torch.tensor(10.0),
                        a2b=None, b2a=None)
    module = InfoNCE(hard_negatives=True)
    assert module.candidate_directions == ("a2b",) and InfoNCE().candidate_directions == ()
    assert module.requires_teacher_scores is False and module.requires_teacher is False
    with pytest.raises(ValueError, match=r"hard_negatives: true\) ranks the step's extra passages.*ListedNegatives"):
        module(inputs)
    inputs.extra_similarity, inputs.extra_valid = torch.tensor([[0.5], [0.7]]), torch.tensor([[True], [True]])
    expected = infonce_with_extras_loss(sim, inputs.positive_mask, inputs.extra_similarity, inputs.extra_valid,
                                        inputs.logit_scale)
    assert module(inputs).item() == pytest.approx(expected.item(), abs=1e-6)
    assert module(inputs).item() > InfoNCE()(inputs).item()  # the extras only add negatives


def test_infonce_valid_mask_leaves_entries_out() -> None:
    logits = torch.tensor([[1.0, 2.0, float("nan")], [0.5, -1.0, 1.0]], dtype=torch.float64, requires_grad=True)
    positives = torch.tensor([[True, False, False], [False, False, True]])
    valid = torch.tensor([[True, True, False], [True, False, True]])
    expected = (lse(1.0, 2.0) - 1.0 + lse(0.5, 1.0) - 1.0) / 2
    loss = infonce_loss(logits, positives, valid)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    loss.backward()
    assert logits.grad[0, 2] == 0 and logits.grad[1, 1] == 0
    with pytest.raises(ValueError, match="a positive must be valid"):
        infonce_loss(logits.detach(), positives, torch.tensor([[False, True, True], [True, True, True]]))
