"""Dynamic Contrastive Distillation (DCD).

Reference: Rao et al., "Dynamic Contrastive Distillation for Image-Text Retrieval",
IEEE Transactions on Multimedia, 2023 (arXiv:2207.01426).

Two ingredients: (1) the teacher picks the hard negatives each anchor is contrasted with,
and (2) a *dynamic*, per-sample weight derived from how uncertain the teacher is about
the anchor (normalised entropy of its softened candidate distribution), so that samples
the teacher finds hard get more of the distillation signal.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import DirectionalLoss, DirectionScores, LossInputs, as_float, masked_log_softmax
from .guards import (
    check_finite,
    check_shapes,
    require_choice,
    require_int_at_least,
    require_non_negative,
    require_positive,
    warn_if_collapsed,
    warn_if_scale_mismatch,
)

__all__ = [
    "DCD_SOFT",
    "select_teacher_hard_negatives",
    "dcd_difficulty",
    "dcd_sample_weights",
    "dcd_loss",
    "DCD",
]

DCD_SOFT: tuple[str, ...] = ("kl", "mse")
_EPS = 1e-12


def select_teacher_hard_negatives(teacher: Tensor, valid: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Column 0 plus the teacher's ``k`` highest-scored valid negatives among columns ``1..K``.

    Shapes: ``teacher [N, 1+K]``, ``valid [N, 1+K]`` -> ``(index [N, 1+k'], valid [N, 1+k'])``
    with ``k' = min(k, K)``. ``index`` gathers the selected columns (column 0 first, then
    negatives by teacher score descending); the returned mask is False where an anchor had
    fewer than ``k'`` valid negatives. Ties are broken by column index.
    """
    require_int_at_least("k", k, 0)
    check_shapes({"teacher": (teacher, ("N", "1+K")), "valid": (valid, ("N", "1+K"))})
    valid = valid.bool()
    n, c = teacher.shape
    kk = min(k, c - 1)
    keyed = teacher[:, 1:].detach().masked_fill(~valid[:, 1:], float("-inf"))
    order = torch.sort(keyed, dim=1, descending=True, stable=True).indices[:, :kk] + 1
    index = torch.cat([torch.zeros(n, 1, dtype=order.dtype, device=order.device), order], dim=1)
    return index, torch.gather(valid, 1, index)


def dcd_difficulty(teacher: Tensor, valid: Tensor, teacher_temperature: float) -> Tensor:
    """Normalised teacher entropy ``h_i = H(softmax(t_i / T_t)) / log(n_i)`` in ``[0, 1]``.

    Shapes: ``teacher [N, C]``, ``valid [N, C]`` -> ``[N]`` (no gradient). The softmax and
    the entropy run over the ``n_i`` valid entries; rows with ``n_i < 2`` get ``h_i = 0``.
    """
    require_positive("teacher_temperature", teacher_temperature)
    valid = valid.bool()
    t = as_float(teacher.detach())
    logq = masked_log_softmax(t / teacher_temperature, valid)
    q = torch.where(valid, logq.exp(), torch.zeros_like(logq))
    entropy = -(q * logq).sum(dim=1)
    n = valid.sum(dim=1)
    log_n = torch.log(n.clamp(min=2).to(t.dtype))
    return torch.where(n >= 2, entropy / log_n, torch.zeros_like(entropy)).clamp(0.0, 1.0)


def dcd_sample_weights(teacher: Tensor, valid: Tensor, teacher_temperature: float) -> Tensor:
    """Per-sample weights ``w_i = h_i / mean_batch(h)`` (mean 1; no gradient).

    Shapes: ``teacher [N, C]``, ``valid [N, C]`` -> ``[N]``. ``h`` is
    :func:`dcd_difficulty`. When every ``h_i`` is 0 (all teacher distributions one-hot)
    all weights are 1.
    """
    h = dcd_difficulty(teacher, valid, teacher_temperature)
    mean_h = h.mean()
    return torch.where(mean_h > _EPS, h / mean_h.clamp(min=_EPS), torch.ones_like(h))


def _checked_inputs(student: Tensor, teacher: Tensor, valid: Tensor, student_temperature: float,
                    teacher_temperature: float, hard_weight: float, soft: str) -> tuple[Tensor, Tensor, Tensor]:
    """Validate :func:`dcd_loss`'s arguments; ``(student float, teacher detached in its dtype, valid bool)``."""
    require_positive("student_temperature", student_temperature)
    require_positive("teacher_temperature", teacher_temperature)
    require_non_negative("hard_weight", hard_weight)
    require_choice("soft", soft, DCD_SOFT)
    check_shapes({"student": (student, ("N", "C")), "teacher": (teacher, ("N", "C")), "valid": (valid, ("N", "C"))})
    if student.shape[1] < 1:
        raise ValueError("student must have at least one candidate column (the positive)")
    valid = valid.bool()
    student = as_float(student)
    teacher = teacher.detach().to(student.dtype)
    check_finite("student", student.masked_fill(~valid, 0.0))
    check_finite("teacher", teacher.masked_fill(~valid, 0.0))
    return student, teacher, valid


def dcd_loss(
    student: Tensor,
    teacher: Tensor,
    valid: Tensor,
    student_temperature: float = 0.05,
    teacher_temperature: float = 1.0,
    hard_weight: float = 1.0,
    soft: str = "kl",
    dynamic_weighting: bool = True,
) -> Tensor:
    """DCD on already selected candidates (column 0 = the positive).

    Shapes: ``student [N, C]`` (differentiable), ``teacher [N, C]``, ``valid [N, C]`` (bool,
    column 0 True) -> scalar. With ``p_i = softmax(s_i / T_s)`` and ``q_i = softmax(t_i / T_t)``
    over the ``n_i`` valid candidates of row ``i``:

    * soft ``"kl"``:  ``soft_i = KL(q_i || p_i) = sum_j q_ij (log q_ij - log p_ij)``
    * soft ``"mse"``: ``soft_i = (1/n_i) sum_j (p_ij - q_ij)^2``
    * hard: ``hard_i = -log p_i0`` (cross-entropy with the positive as target)
    * weights: ``w_i = h_i / mean_k h_k`` with ``h_i = H(q_i) / log(n_i)``
      (:func:`dcd_sample_weights`; all 1 when ``dynamic_weighting`` is False)

    ``L = (1/N) sum_i w_i * soft_i + hard_weight * (1/N) sum_i hard_i``.

    The weights multiply the per-sample soft terms *before* the batch mean, so samples the
    teacher is unsure about (high entropy: several plausible candidates) learn more from the
    teacher's soft distribution, while confident ones lean on the hard label. No ``T^2``
    factor is applied.
    """
    student, teacher, valid = _checked_inputs(student, teacher, valid, student_temperature, teacher_temperature,
                                              hard_weight, soft)
    logp = masked_log_softmax(student / student_temperature, valid)
    logq = masked_log_softmax(teacher / teacher_temperature, valid)
    q = torch.where(valid, logq.exp(), torch.zeros_like(logq))
    if soft == "kl":
        soft_i = (q * (logq - logp)).sum(dim=1)
    else:
        p = torch.where(valid, logp.exp(), torch.zeros_like(logp))
        soft_i = ((p - q) ** 2).sum(dim=1) / valid.sum(dim=1).to(p.dtype)
    hard_i = -logp[:, 0]

    if dynamic_weighting:
        weights = dcd_sample_weights(teacher, valid, teacher_temperature)
    else:
        weights = torch.ones_like(soft_i)
    return (weights * soft_i).mean() + hard_weight * hard_i.mean()


class DCD(DirectionalLoss):
    """Dynamic Contrastive Distillation over ``DirectionScores``.

    Per direction: ``select_teacher_hard_negatives(teacher, valid, num_hard_negatives)``
    picks column 0 and the teacher's hardest valid negatives, then :func:`dcd_loss` runs on
    the gathered student/teacher scores. Directions are averaged.

    Args:
        student_temperature: divides student cosine similarities (> 0). Default 0.05.
        teacher_temperature: divides teacher scores (> 0). Default 1.0.
        num_hard_negatives: teacher-selected negatives per anchor (>= 1). Default 8.
        hard_weight: weight of the hard (label) cross-entropy term (>= 0). Default 1.0.
        soft: ``"kl"`` (default) or ``"mse"``.
        dynamic_weighting: entropy-based per-sample weights on the soft term. Default True.
        directions: ``"both"``, ``"a2b"`` or ``"b2a"``.
    """

    def __init__(
        self,
        student_temperature: float = 0.05,
        teacher_temperature: float = 1.0,
        num_hard_negatives: int = 8,
        hard_weight: float = 1.0,
        soft: str = "kl",
        dynamic_weighting: bool = True,
        directions: str = "both",
    ) -> None:
        super().__init__(directions)
        self.student_temperature = require_positive("student_temperature", student_temperature)
        self.teacher_temperature = require_positive("teacher_temperature", teacher_temperature)
        self.num_hard_negatives = require_int_at_least("num_hard_negatives", num_hard_negatives, 1)
        self.hard_weight = require_non_negative("hard_weight", hard_weight)
        self.soft = require_choice("soft", soft, DCD_SOFT)
        if not isinstance(dynamic_weighting, bool):
            raise ValueError(f"dynamic_weighting must be a bool, got {dynamic_weighting!r}")
        self.dynamic_weighting = dynamic_weighting

    def direction_loss(self, scores: DirectionScores, inputs: LossInputs) -> Tensor:
        teacher = scores.teacher.detach()
        index, valid = select_teacher_hard_negatives(teacher, scores.valid, self.num_hard_negatives)
        student = torch.gather(scores.student, 1, index)
        teacher = torch.gather(teacher, 1, index)
        self._warn_once("collapse", warn_if_collapsed, teacher, self.teacher_temperature, valid)
        self._warn_once(
            "scale",
            warn_if_scale_mismatch,
            student.detach() / self.student_temperature,
            teacher / self.teacher_temperature,
            valid,
        )
        return dcd_loss(
            student,
            teacher,
            valid,
            self.student_temperature,
            self.teacher_temperature,
            self.hard_weight,
            self.soft,
            self.dynamic_weighting,
        )

    def extra_repr(self) -> str:
        return (
            f"student_temperature={self.student_temperature}, "
            f"teacher_temperature={self.teacher_temperature}, "
            f"num_hard_negatives={self.num_hard_negatives}, hard_weight={self.hard_weight}, "
            f"soft={self.soft!r}, dynamic_weighting={self.dynamic_weighting}, "
            f"directions={self.directions!r}"
        )

