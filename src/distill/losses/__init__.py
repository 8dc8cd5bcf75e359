"""Retrieval and distillation losses.

Every loss module subclasses :class:`DistillationLoss`, is built from plain keyword
arguments, and wraps a pure function of tensors that can be called directly.
"""

from . import base, cosine, cprd, dcd, flops, guards, infonce, logit
from .base import DIRECTIONS, DirectionalLoss, DirectionScores, DistillationLoss, LossInputs
from .cosine import CosineEmbedding, cosine_embedding_loss
from .cprd import CPRD, cprd_loss, cprd_valid_mask
from .dcd import DCD, dcd_difficulty, dcd_loss, dcd_sample_weights, select_teacher_hard_negatives
from .flops import FLOPS, flops_loss, quadratic_warmup
from .guards import (
    NonFiniteError,
    check_finite,
    check_same_shape,
    check_shape,
    check_shapes,
    checks_enabled,
    set_checks_enabled,
    warn_if_collapsed,
    warn_if_scale_mismatch,
)
from .infonce import InfoNCE, infonce_loss, infonce_with_extras_loss, symmetric_infonce_loss
from .logit import LogitKL, MarginMSE, logit_kl_loss, margin_mse_loss

__all__ = [
    # modules
    "base",
    "cosine",
    "cprd",
    "dcd",
    "flops",
    "guards",
    "infonce",
    "logit",
    # inputs and base classes
    "DIRECTIONS",
    "DirectionScores",
    "LossInputs",
    "DistillationLoss",
    "DirectionalLoss",
    # losses
    "InfoNCE",
    "infonce_loss",
    "symmetric_infonce_loss",
    "infonce_with_extras_loss",
    "CPRD",
    "cprd_loss",
    "cprd_valid_mask",
    "DCD",
    "dcd_loss",
    "dcd_difficulty",
    "dcd_sample_weights",
    "select_teacher_hard_negatives",
    "LogitKL",
    "logit_kl_loss",
    "MarginMSE",
    "margin_mse_loss",
    "CosineEmbedding",
    "cosine_embedding_loss",
    "FLOPS",
    "flops_loss",
    "quadratic_warmup",
    # guards
    "NonFiniteError",
    "check_finite",
    "check_shape",
    "check_same_shape",
    "check_shapes",
    "checks_enabled",
    "set_checks_enabled",
    "warn_if_collapsed",
    "warn_if_scale_mismatch",
]
