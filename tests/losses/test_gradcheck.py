"""Analytical gradients agree with finite differences (float64)."""

from __future__ import annotations

import torch
from torch.autograd import gradcheck

from distill.losses import (
    cosine_embedding_loss,
    cprd_loss,
    dcd_loss,
    flops_loss,
    infonce_loss,
    logit_kl_loss,
    margin_mse_loss,
    symmetric_infonce_loss,
)

G = torch.Generator().manual_seed(7)


def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=G, dtype=torch.float64) * scale).requires_grad_()


def mask(*shape: int) -> torch.Tensor:
    m = torch.rand(*shape, generator=G) > 0.3
    m[:, 0] = True
    return m


def test_gradcheck_infonce() -> None:
    pos = torch.eye(4, 5, dtype=torch.bool)
    pos[1, 3] = True
    assert gradcheck(lambda x: infonce_loss(x, pos), (rand(4, 5),))
    sq = torch.eye(4, dtype=torch.bool)
    sq[0, 2] = True
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda s, c: symmetric_infonce_loss(s, sq, c), (rand(4, 4, scale=0.3), scale))


def test_gradcheck_cprd() -> None:
    teacher = torch.randn(4, 6, generator=G, dtype=torch.float64)
    valid = torch.rand(4, 6, generator=G) > 0.3
    assert gradcheck(lambda s: cprd_loss(s, teacher, valid, 0.5), (rand(4, 6),))


def test_gradcheck_dcd() -> None:
    teacher = torch.randn(3, 5, generator=G, dtype=torch.float64)
    valid = mask(3, 5)
    for soft in ("kl", "mse"):
        assert gradcheck(lambda s: dcd_loss(s, teacher, valid, 0.5, 1.0, 0.7, soft), (rand(3, 5),))


def test_gradcheck_logit_kl() -> None:
    teacher = torch.randn(3, 5, generator=G, dtype=torch.float64)
    valid = mask(3, 5)
    assert gradcheck(lambda s: logit_kl_loss(s, teacher, valid, 0.5, 2.0, True), (rand(3, 5),))


def test_gradcheck_margin_mse() -> None:
    t_pos = torch.randn(3, generator=G, dtype=torch.float64)
    t_neg = torch.randn(3, 4, generator=G, dtype=torch.float64)
    valid = torch.rand(3, 4, generator=G) > 0.3
    assert gradcheck(lambda p, n: margin_mse_loss(p, n, t_pos, t_neg, valid), (rand(3), rand(3, 4)))


def test_gradcheck_cosine() -> None:
    teacher = torch.randn(4, 6, generator=G, dtype=torch.float64)
    assert gradcheck(lambda s: cosine_embedding_loss(s, teacher), (rand(4, 6),))


def test_gradcheck_flops() -> None:
    w = rand(4, 6)
    with torch.no_grad():  # keep away from the kink of |w| at 0
        w.copy_(w.sign() * (w.abs() + 0.1))
    assert gradcheck(flops_loss, (w,))
