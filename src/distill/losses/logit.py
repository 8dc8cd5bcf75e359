"""Score-level distillation: listwise KL on candidate logits and pairwise Margin-MSE.

References:
* Hinton et al., "Distilling the Knowledge in a Neural Network", 2015 (softened KL).
* Hofstaetter et al., "Improving Efficient Neural Ranking Models with Cross-Architecture
  Knowledge Distillation", 2020 (Margin-MSE).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import DirectionalLoss, DirectionScores, LossInputs, as_float, masked_log_softmax
from .guards import (
    check_finite,
    check_shapes,
    checks_enabled,
    require_positive,
    warn_if_collapsed,
    warn_if_scale_mismatch,
)

__all__ = ["logit_kl_loss", "margin_mse_loss", "LogitKL", "MarginMSE"]


def logit_kl_loss(
    student: Tensor,
    teacher: Tensor,
    valid: Tensor,
    student_temperature: float = 0.05,
    teacher_temperature: float = 1.0,
    scale_by_t2: bool = False,
) -> Tensor:
    """Row-wise ``KL(softmax(t / T_t) || softmax(s / T_s))`` over valid candidates, mean over rows.

    Shapes: ``student [N, C]`` (differentiable), ``teacher [N, C]``, ``valid [N, C]`` (bool,
    at least one True per row) -> scalar.

    ``L = (1/N) sum_i sum_{j valid} q_ij (log q_ij - log p_ij)`` with ``q_i = softmax(t_i/T_t)``
    and ``p_i = softmax(s_i/T_s)`` restricted to the valid entries; multiplied by ``T_s^2``
    when ``scale_by_t2`` (Hinton's gradient-magnitude correction).
    """
    require_positive("student_temperature", student_temperature)
    require_positive("teacher_temperature", teacher_temperature)
    check_shapes(
        {
            "student": (student, ("N", "C")),
            "teacher": (teacher, ("N", "C")),
            "valid": (valid, ("N", "C")),
        }
    )
    valid = valid.bool()
    if checks_enabled() and bool((valid.sum(dim=1) == 0).any()):
        raise ValueError("valid must have at least one True entry per row")
    student = as_float(student)
    teacher = teacher.detach().to(student.dtype)
    check_finite("student", student.masked_fill(~valid, 0.0))
    check_finite("teacher", teacher.masked_fill(~valid, 0.0))
    logp = masked_log_softmax(student / student_temperature, valid)
    logq = masked_log_softmax(teacher / teacher_temperature, valid)
    q = torch.where(valid, logq.exp(), torch.zeros_like(logq))
    loss = (q * (logq - logp)).sum(dim=1).mean()
    return loss * student_temperature**2 if scale_by_t2 else loss


def margin_mse_loss(
    student_pos: Tensor,
    student_neg: Tensor,
    teacher_pos: Tensor,
    teacher_neg: Tensor,
    valid: Tensor,
) -> Tensor:
    """Margin-MSE: ``mean over valid (i, j) of ((s+_i - s-_ij) - (t+_i - t-_ij))^2``.

    Shapes: ``student_pos [N]``, ``student_neg [N, K]``, ``teacher_pos [N]``,
    ``teacher_neg [N, K]``, ``valid [N, K]`` -> scalar. The mean runs over all valid
    (anchor, negative) pairs of the batch; with no valid pair the loss is 0 (attached).
    """
    check_shapes(
        {
            "student_pos": (student_pos, ("N",)),
            "student_neg": (student_neg, ("N", "K")),
            "teacher_pos": (teacher_pos, ("N",)),
            "teacher_neg": (teacher_neg, ("N", "K")),
            "valid": (valid, ("N", "K")),
        }
    )
    valid = valid.bool()
    student_pos = as_float(student_pos)
    # Zero the padding first so that non-finite padding cannot leak NaN into the gradient.
    student_neg = as_float(student_neg).masked_fill(~valid, 0.0)
    teacher_pos = teacher_pos.detach().to(student_neg.dtype)
    teacher_neg = teacher_neg.detach().to(student_neg.dtype).masked_fill(~valid, 0.0)
    check_finite("student_pos", student_pos)
    check_finite("teacher_pos", teacher_pos)
    check_finite("student_neg", student_neg)
    check_finite("teacher_neg", teacher_neg)
    student_margin = student_pos.unsqueeze(1) - student_neg
    teacher_margin = teacher_pos.unsqueeze(1) - teacher_neg
    sq = torch.where(valid, (student_margin - teacher_margin) ** 2, torch.zeros_like(student_margin))
    count = valid.sum()
    return sq.sum() / count.clamp(min=1).to(sq.dtype)


class LogitKL(DirectionalLoss):
    """Softened KL between teacher and student over all candidates (columns ``0..K``).

    Per direction: ``logit_kl_loss(student, teacher, valid, student_temperature,
    teacher_temperature, scale_by_t2)``; directions are averaged.

    Args:
        student_temperature: divides student cosine similarities (> 0). Default 0.05.
        teacher_temperature: divides teacher scores (> 0). Default 1.0.
        scale_by_t2: multiply by ``student_temperature**2``. Default False.
        directions: ``"both"``, ``"a2b"`` or ``"b2a"``.
    """

    def __init__(
        self,
        student_temperature: float = 0.05,
        teacher_temperature: float = 1.0,
        scale_by_t2: bool = False,
        directions: str = "both",
    ) -> None:
        super().__init__(directions)
        self.student_temperature = require_positive("student_temperature", student_temperature)
        self.teacher_temperature = require_positive("teacher_temperature", teacher_temperature)
        if not isinstance(scale_by_t2, bool):
            raise ValueError(f"scale_by_t2 must be a bool, got {scale_by_t2!r}")
        self.scale_by_t2 = scale_by_t2

    def direction_loss(self, scores: DirectionScores, inputs: LossInputs) -> Tensor:
        teacher = scores.teacher.detach()
        self._warn_once("collapse", warn_if_collapsed, teacher, self.teacher_temperature, scores.valid)
        self._warn_once(
            "scale",
            warn_if_scale_mismatch,
            scores.student.detach() / self.student_temperature,
            teacher / self.teacher_temperature,
            scores.valid,
        )
        return logit_kl_loss(
            scores.student,
            teacher,
            scores.valid,
            self.student_temperature,
            self.teacher_temperature,
            self.scale_by_t2,
        )

    def extra_repr(self) -> str:
        return (
            f"student_temperature={self.student_temperature}, "
            f"teacher_temperature={self.teacher_temperature}, scale_by_t2={self.scale_by_t2}, "
            f"directions={self.directions!r}"
        )


class MarginMSE(DirectionalLoss):
    """Margin-MSE between the student's and the teacher's positive-negative margins.

    Student cosine scores are multiplied by ``student_scale`` or, when it is ``None``, by
    the detached ``inputs.logit_scale``, to bring them to a logit scale comparable with the
    teacher's. Per direction: ``margin_mse_loss(c*s[:, 0], c*s[:, 1:], t[:, 0], t[:, 1:],
    valid[:, 1:])``; directions are averaged.

    Args:
        student_scale: fixed multiplier (> 0) or ``None`` (use the logit scale). Default None.
        directions: ``"both"``, ``"a2b"`` or ``"b2a"``.
    """

    def __init__(self, student_scale: float | None = None, directions: str = "both") -> None:
        super().__init__(directions)
        self.student_scale = None if student_scale is None else require_positive("student_scale", student_scale)

    def direction_loss(self, scores: DirectionScores, inputs: LossInputs) -> Tensor:
        if self.student_scale is None:
            scale = inputs.logit_scale.detach()
        else:
            scale = torch.as_tensor(self.student_scale, device=scores.student.device)
        student = as_float(scores.student) * scale
        teacher = scores.teacher.detach()
        self._warn_once("scale", warn_if_scale_mismatch, student.detach(), teacher, scores.valid)
        return margin_mse_loss(
            student[:, 0], student[:, 1:], teacher[:, 0], teacher[:, 1:], scores.valid[:, 1:]
        )

    def extra_repr(self) -> str:
        return f"student_scale={self.student_scale}, directions={self.directions!r}"
