"""FLOPS regulariser for sparse (lexical) students.

References: Paria et al., "Minimizing FLOPs to Learn Efficient Sparse Representations",
ICLR 2020; Formal et al., "SPLADE: Sparse Lexical and Expansion Model for First Stage
Ranking", SIGIR 2021 (quadratic warm-up of the regularisation weight).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .base import DistillationLoss, LossInputs, as_float
from .guards import check_finite, check_shape, require_choice, require_int_at_least, require_non_negative

__all__ = ["FLOPS_SIDES", "flops_loss", "quadratic_warmup", "FLOPS"]

FLOPS_SIDES: tuple[str, ...] = ("both", "a", "b")


def flops_loss(weights: Tensor) -> Tensor:
    """``sum_j (mean_i |w_ij|)^2``.

    Shapes: ``weights [B, V]`` (per-item term weights, differentiable) -> scalar. Penalises
    the expected number of floating-point operations of a sparse dot product, pushing each
    vocabulary dimension ``j`` to be rarely active across the batch.
    """
    check_shape("weights", weights, (None, None))
    weights = as_float(weights)
    check_finite("weights", weights)
    return (weights.abs().mean(dim=0) ** 2).sum()


def quadratic_warmup(step: int, warmup_steps: int, max_weight: float) -> float:
    """``max_weight * min(1, step / warmup_steps)^2`` (``max_weight`` when ``warmup_steps == 0``)."""
    require_int_at_least("warmup_steps", warmup_steps, 0)
    require_non_negative("max_weight", max_weight)
    if warmup_steps == 0:
        return float(max_weight)
    frac = min(1.0, max(0, step) / warmup_steps)
    return float(max_weight) * frac * frac


class FLOPS(DistillationLoss):
    """FLOPS regulariser on ``inputs.student_embeddings`` with a quadratic warm-up.

    ``forward`` returns ``quadratic_warmup(step, warmup_steps, 1.0) * mean_sides
    flops_loss(student_embeddings[side])``; the overall strength is the recipe's loss
    weight. ``step`` counts the forward calls made in training mode (a persistent buffer,
    so it is restored from checkpoints). No teacher is needed.

    Args:
        warmup_steps: steps of the quadratic ramp (>= 0). Default 0 (no warm-up).
        sides: ``"both"`` (default, average of the two sides), ``"a"`` or ``"b"``.
    """

    requires_teacher_scores: ClassVar[bool] = False
    requires_teacher: ClassVar[bool] = False

    def __init__(self, warmup_steps: int = 0, sides: str = "both") -> None:
        super().__init__()
        self.warmup_steps = require_int_at_least("warmup_steps", warmup_steps, 0)
        self.sides = require_choice("sides", sides, FLOPS_SIDES)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self, inputs: LossInputs) -> Tensor:
        if inputs.student_embeddings is None:
            raise ValueError("FLOPS needs inputs.student_embeddings (the sparse term weights), got None")
        emb_a, emb_b = inputs.student_embeddings
        terms: list[Tensor] = []
        if self.sides in ("both", "a"):
            terms.append(flops_loss(emb_a))
        if self.sides in ("both", "b"):
            terms.append(flops_loss(emb_b))
        loss = terms[0] if len(terms) == 1 else torch.stack(terms).mean()
        if self.warmup_steps > 0:
            # Same as quadratic_warmup(step, warmup_steps, 1.0), kept on-device (no host sync).
            frac = (self.step.to(loss.dtype) / self.warmup_steps).clamp(max=1.0)
            loss = loss * frac * frac
        if self.training:
            self.step += 1
        return loss

    def extra_repr(self) -> str:
        return f"warmup_steps={self.warmup_steps}, sides={self.sides!r}"
