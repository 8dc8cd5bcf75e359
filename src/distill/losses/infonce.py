"""Contrastive InfoNCE loss with support for several positives per row.

Reference: van den Oord et al., "Representation Learning with Contrastive Predictive
Coding", 2018; symmetric image-text form as in Radford et al., "Learning Transferable
Visual Models From Natural Language Supervision" (CLIP), ICML 2021.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .base import DistillationLoss, LossInputs, as_float
from .guards import check_finite, check_shape, check_same_shape

__all__ = ["infonce_loss", "symmetric_infonce_loss", "InfoNCE"]


def infonce_loss(logits: Tensor, positive_mask: Tensor) -> Tensor:
    """Multi-positive InfoNCE over the rows of ``logits``.

    Shapes: ``logits [N, M]``, ``positive_mask [N, M]`` (bool) -> scalar.

    With ``P_i`` the positives of row ``i``:
    ``L = (1/N) sum_i -(1/|P_i|) sum_{j in P_i} log softmax(logits_i)_j``,
    i.e. the cross-entropy against a target that spreads its mass uniformly over the
    row's positives. Every row needs at least one positive.
    """
    check_shape("logits", logits, (None, None))
    check_same_shape(logits=logits, positive_mask=positive_mask)
    check_finite("logits", logits)
    pos = positive_mask.bool()
    counts = pos.sum(dim=1)
    if bool((counts == 0).any()):
        rows = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(
            f"positive_mask has {len(rows)} row(s) without a positive (rows {rows[:10]}); "
            f"every row needs at least one positive for InfoNCE"
        )
    logits = as_float(logits)
    logp = torch.log_softmax(logits, dim=1)
    row_loss = -torch.where(pos, logp, torch.zeros_like(logp)).sum(dim=1) / counts.to(logp.dtype)
    return row_loss.mean()


def symmetric_infonce_loss(similarity: Tensor, positive_mask: Tensor, logit_scale: Tensor) -> Tensor:
    """``0.5 * (infonce(s * S, P) + infonce(s * S^T, P^T))`` with ``s = logit_scale``.

    Shapes: ``similarity [B, B]``, ``positive_mask [B, B]``, ``logit_scale []`` -> scalar.
    """
    check_shape("similarity", similarity, (None, None))
    check_same_shape(similarity=similarity, positive_mask=positive_mask)
    check_finite("logit_scale", torch.as_tensor(logit_scale))
    logits = logit_scale * as_float(similarity)
    return 0.5 * (infonce_loss(logits, positive_mask) + infonce_loss(logits.t(), positive_mask.t()))


class InfoNCE(DistillationLoss):
    """Symmetric multi-positive InfoNCE on the in-batch similarity matrix (no teacher).

    ``forward`` returns ``symmetric_infonce_loss(inputs.similarity, inputs.positive_mask,
    inputs.logit_scale)``.
    """

    requires_teacher_scores: ClassVar[bool] = False
    requires_teacher: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()

    def forward(self, inputs: LossInputs) -> Tensor:
        return symmetric_infonce_loss(inputs.similarity, inputs.positive_mask, inputs.logit_scale)
