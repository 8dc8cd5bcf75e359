"""``model.gradient_checkpointing``: same loss and gradients, recomputed activations."""

from __future__ import annotations

import warnings

import pytest
import torch

from distill.losses import InfoNCE, LogitKL
from distill.training.module import DistillationModule, enable_gradient_checkpointing
from distill.students import DualEncoder
from tests.helpers import make_student
from tests.helpers import PooledConvTower


def _loss_and_grads(module: DistillationModule, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(1)  # the same dropout masks in both runs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        loss = module.training_step(batch, 0)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in module.student.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_keeps_loss_and_gradients(tiny_teacher, tiny_datamodule) -> None:
    batch = next(iter(tiny_datamodule.train_dataloader()))
    losses = {"infonce": InfoNCE(), "kl": LogitKL(student_temperature=0.1)}
    torch.manual_seed(0)
    plain = DistillationModule(make_student(), tiny_teacher, losses, num_hard_negatives=3)
    torch.manual_seed(0)
    checkpointed = DistillationModule(make_student(), tiny_teacher, losses, num_hard_negatives=3,
                                      gradient_checkpointing=True)
    assert checkpointed.student.tower_a.backbone.grad_checkpointing
    encoder = checkpointed.student.tower_b.encoder
    assert getattr(encoder, "is_activation_checkpointing", None) or encoder.is_gradient_checkpointing
    plain.train(), checkpointed.train()
    loss, grads = _loss_and_grads(plain, batch)
    loss_ckpt, grads_ckpt = _loss_and_grads(checkpointed, batch)
    assert torch.allclose(loss, loss_ckpt, atol=1e-5)
    assert set(grads) == set(grads_ckpt)
    for name, grad in grads.items():
        assert torch.allclose(grad, grads_ckpt[name], atol=1e-5), name


def test_gradient_checkpointing_needs_a_supporting_tower() -> None:
    student = DualEncoder(PooledConvTower(), PooledConvTower())
    with pytest.raises(ValueError, match="gradient_checkpointing: DualEncoder has no tower that supports"):
        enable_gradient_checkpointing(student)
