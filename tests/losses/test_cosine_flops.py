from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distill.losses import FLOPS, CosineEmbedding, LossInputs, cosine_embedding_loss, flops_loss, quadratic_warmup


def _inputs(student: tuple[torch.Tensor, torch.Tensor], teacher: tuple[torch.Tensor, torch.Tensor] | None) -> LossInputs:
    n = student[0].shape[0]
    return LossInputs(torch.zeros(n, n), torch.eye(n, dtype=torch.bool), torch.tensor(1.0), None, None, student, teacher)


def test_cosine_hand_value() -> None:
    s = torch.tensor([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0]], dtype=torch.float64)
    t = torch.tensor([[0.0, 1.0], [2.0, 2.0], [4.0, 3.0]], dtype=torch.float64)
    # cosines: 0, 1, 24/25
    expected = ((1 - 0.0) + (1 - 1.0) + (1 - 24 / 25)) / 3
    assert cosine_embedding_loss(s, t).item() == pytest.approx(expected, abs=1e-12)


def test_cosine_module_identity_and_projection() -> None:
    same = CosineEmbedding(student_dim=2, teacher_dim=2)
    assert isinstance(same.proj_a, nn.Identity) and not list(same.parameters())
    assert same.requires_teacher_embeddings is True
    a = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    ta = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    tb = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    # side a: 1 - 0 = 1; side b: 1 - 1/sqrt(2)
    both = (1.0 + (1 - 1 / math.sqrt(2))) / 2
    assert same(_inputs((a, b), (ta, tb))).item() == pytest.approx(both, abs=1e-12)
    only_b = CosineEmbedding(2, 2, sides="b")
    assert only_b(_inputs((a, b), (ta, tb))).item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-12)

    proj = CosineEmbedding(student_dim=2, teacher_dim=3).double()
    assert isinstance(proj.proj_a, nn.Linear) and proj.proj_a.weight.shape == (3, 2)
    with torch.no_grad():
        proj.proj_a.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        proj.proj_b.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    ta3 = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    tb3 = torch.tensor([[0.0, 1.0, 1.0]], dtype=torch.float64)
    # a -> [1, 0, 0] (cos 1); b -> [0, 1, 1] (cos 1)
    loss = proj(_inputs((a, b), (ta3, tb3)))
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    loss.backward()
    assert proj.proj_a.weight.grad is not None


def test_cosine_module_without_teacher_embeddings() -> None:
    module = CosineEmbedding(2, 2)
    x = torch.ones(1, 2)
    with pytest.raises(ValueError, match=r"needs a teacher that exposes embeddings \(embed_a/embed_b\)"):
        module(_inputs((x, x), None))
    module.teacher_name = "BlipItmTeacher"
    with pytest.raises(ValueError, match="BlipItmTeacher has none: remove this loss"):
        module(_inputs((x, x), None))


def test_cosine_module_checks_dims() -> None:
    module = CosineEmbedding(student_dim=2, teacher_dim=3)
    with pytest.raises(ValueError, match=r"teacher_embeddings\[0\] must have shape \[B, 3\] \(B=1\), got \[1, 2\]"):
        module(_inputs((torch.ones(1, 2), torch.ones(1, 2)), (torch.ones(1, 2), torch.ones(1, 3))))


def test_flops_hand_value() -> None:
    w = torch.tensor([[1.0, -2.0, 0.0], [3.0, 0.0, 0.5]], dtype=torch.float64)
    # column means of |w|: 2, 1, 0.25
    assert flops_loss(w).item() == pytest.approx(2.0**2 + 1.0**2 + 0.25**2, abs=1e-12)


def test_quadratic_warmup() -> None:
    assert quadratic_warmup(0, 10, 2.0) == 0.0
    assert quadratic_warmup(5, 10, 2.0) == pytest.approx(2.0 * 0.5**2)
    assert quadratic_warmup(20, 10, 2.0) == 2.0
    assert quadratic_warmup(3, 0, 2.0) == 2.0


def test_flops_module_warmup_counts_training_steps() -> None:
    w = torch.tensor([[1.0, -2.0, 0.0], [3.0, 0.0, 0.5]], dtype=torch.float64)
    full = 2.0**2 + 1.0**2 + 0.25**2
    module = FLOPS(warmup_steps=2, sides="a")
    inputs = _inputs((w, torch.zeros_like(w)), None)
    assert module(inputs).item() == pytest.approx(0.0)
    assert module(inputs).item() == pytest.approx(full * 0.25)
    module.eval()
    assert module(inputs).item() == pytest.approx(full)  # step 2, not advanced in eval
    assert module(inputs).item() == pytest.approx(full)
    assert int(module.step) == 2
    assert "step" in module.state_dict()
    both = FLOPS()
    assert both(inputs).item() == pytest.approx(full / 2)
