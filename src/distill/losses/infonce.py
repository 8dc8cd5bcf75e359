"""Contrastive InfoNCE loss with support for several positives per row.

Reference: van den Oord et al., "Representation Learning with Contrastive Predictive
Coding", 2018; symmetric image-text form as in Radford et al., "Learning Transferable
Visual Models From Natural Language Supervision" (CLIP), ICML 2021.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from distill.errors import RecipeError

from .base import DistillationLoss, LossInputs, as_float, masked_log_softmax
from .guards import check_finite, check_shape, check_same_shape

__all__ = ["infonce_loss", "symmetric_infonce_loss", "infonce_with_extras_loss", "InfoNCE"]


def infonce_loss(logits: Tensor, positive_mask: Tensor, valid: Tensor | None = None) -> Tensor:
    """Multi-positive InfoNCE over the rows of ``logits``.

    Shapes: ``logits [N, M]``, ``positive_mask [N, M]`` (bool), optional ``valid [N, M]`` (bool) -> scalar.

    With ``P_i`` the positives of row ``i``:
    ``L = (1/N) sum_i -(1/|P_i|) sum_{j in P_i} log softmax(logits_i)_j``,
    i.e. the cross-entropy against a target that spreads its mass uniformly over the
    row's positives. Every row needs at least one positive. Entries where ``valid`` is False are left
    out of the softmax (any value, zero gradient) and must not be positives.
    """
    check_shape("logits", logits, (None, None))
    check_same_shape(logits=logits, positive_mask=positive_mask)
    pos = positive_mask.bool()
    if valid is not None:
        check_same_shape(logits=logits, valid=valid)
        valid = valid.bool()
        if bool((pos & ~valid).any()):
            raise ValueError("positive_mask marks an entry that valid leaves out; a positive must be valid")
    check_finite("logits", logits if valid is None else logits.masked_fill(~valid, 0.0))
    counts = pos.sum(dim=1)
    if bool((counts == 0).any()):
        rows = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(
            f"positive_mask has {len(rows)} row(s) without a positive (rows {rows[:10]}); "
            f"every row needs at least one positive for InfoNCE"
        )
    logits = as_float(logits)
    logp = torch.log_softmax(logits, dim=1) if valid is None else masked_log_softmax(logits, valid, dim=1)
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


def infonce_with_extras_loss(similarity: Tensor, positive_mask: Tensor, extra_similarity: Tensor,
                             extra_valid: Tensor, logit_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE whose a->b rows also hold the step's extra b items (hard negatives).

    Shapes: ``similarity [B, B]``, ``positive_mask [B, B]``, ``extra_similarity [B, E]``, ``extra_valid [B, E]``
    (bool), ``logit_scale []`` -> scalar. With ``s = logit_scale`` and ``X`` the extra columns (invalid ones left
    out of the softmax, never positives):

    ``L = 0.5 * ( infonce(s * [S | X], [P | 0]) + infonce(s * S^T, P^T) )``

    The a->b term is sentence-transformers' ``MultipleNegativesRankingLoss`` over (anchor, positive, negatives):
    each anchor is ranked against every positive of the batch and every listed negative, its own and the others'.
    """
    check_shape("similarity", similarity, (None, None))
    check_same_shape(similarity=similarity, positive_mask=positive_mask)
    check_shape("extra_similarity", extra_similarity, (similarity.shape[0], None))
    check_same_shape(extra_similarity=extra_similarity, extra_valid=extra_valid)
    check_finite("logit_scale", torch.as_tensor(logit_scale))
    logits = logit_scale * as_float(similarity)
    rows = torch.cat([logits, logit_scale * as_float(extra_similarity)], dim=1)
    positives = torch.cat([positive_mask.bool(), torch.zeros_like(extra_valid, dtype=torch.bool)], dim=1)
    valid = torch.cat([torch.ones_like(positive_mask, dtype=torch.bool), extra_valid.bool()], dim=1)
    return 0.5 * (infonce_loss(rows, positives, valid) + infonce_loss(logits.t(), positive_mask.t()))


class InfoNCE(DistillationLoss):
    """Symmetric multi-positive InfoNCE (no teacher).

    ``forward`` returns ``symmetric_infonce_loss(inputs.similarity, inputs.positive_mask, inputs.logit_scale)``:
    in-batch negatives only. With ``hard_negatives`` the a->b rows also rank the step's extra b items, the
    listed negatives of a training file (``ListedNegatives``) or cached candidates (``CachedCandidates``):
    :func:`infonce_with_extras_loss`; their teacher scores are not needed, so no teacher runs for them.
    """

    requires_teacher_scores: ClassVar[bool] = False
    requires_teacher: ClassVar[bool] = False

    def __init__(self, hard_negatives: bool = False) -> None:
        super().__init__()
        self.hard_negatives = bool(hard_negatives)
        self.candidate_directions = ("a2b",) if self.hard_negatives else ()

    def forward(self, inputs: LossInputs) -> Tensor:
        if not self.hard_negatives:
            return symmetric_infonce_loss(inputs.similarity, inputs.positive_mask, inputs.logit_scale)
        if inputs.extra_similarity is None or inputs.extra_valid is None:
            raise RecipeError("InfoNCE(hard_negatives: true) ranks the step's extra passages, but this step has none: "
                             "use model.init_args.candidates that add them (ListedNegatives with "
                             "data.init_args.num_negatives >= 1, or CachedCandidates), or set hard_negatives: false")
        return infonce_with_extras_loss(inputs.similarity, inputs.positive_mask, inputs.extra_similarity,
                                        inputs.extra_valid, inputs.logit_scale)

    def extra_repr(self) -> str:
        return f"hard_negatives={self.hard_negatives}"
