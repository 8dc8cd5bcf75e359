"""Contrastive Partial Ranking Distillation (CPRD).

Reference: Chen et al., "How to Make Cross Encoder a Good Teacher for Efficient
Image-Text Retrieval?", CVPR 2024 (arXiv:2407.07479).

A cross-encoder teacher ranks the hard negatives of each anchor reliably only at the top,
so CPRD distils the *relative order* of a selected subset of hard negatives (not the
teacher's absolute scores): the student's scores of those negatives are trained with a
Plackett-Luce (ListMLE-style) likelihood of the teacher's order.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import DirectionalLoss, DirectionScores, LossInputs, as_float
from .guards import (
    check_finite,
    check_shapes,
    require_choice,
    require_int_at_least,
    require_non_negative,
    require_positive,
)

__all__ = ["CPRD_RULES", "cprd_loss", "cprd_valid_mask", "CPRD"]

CPRD_RULES: tuple[str, ...] = ("top_m", "relative_threshold", "all")


def _teacher_order(teacher: Tensor, valid: Tensor) -> Tensor:
    """Column indices sorted by teacher score descending, valid entries first (stable)."""
    keyed = teacher.detach().masked_fill(~valid, float("-inf"))
    return torch.sort(keyed, dim=1, descending=True, stable=True).indices


def cprd_valid_mask(
    teacher_pos: Tensor,
    teacher_neg: Tensor,
    valid: Tensor,
    rule: str = "top_m",
    threshold: float = 1.0,
    top_m: int = 8,
) -> Tensor:
    """Which negatives take part in the ranking.

    Shapes: ``teacher_pos [N]``, ``teacher_neg [N, K]``, ``valid [N, K]`` -> ``[N, K]`` bool.

    * ``"all"``: every valid negative.
    * ``"relative_threshold"``: valid negatives with ``teacher_neg >= teacher_pos - threshold``
      (those the teacher scores close to, or above, the positive).
    * ``"top_m"``: the teacher's ``top_m`` highest-scored valid negatives (ties broken by column).
    """
    require_choice("rule", rule, CPRD_RULES)
    check_shapes(
        {
            "teacher_pos": (teacher_pos, ("N",)),
            "teacher_neg": (teacher_neg, ("N", "K")),
            "valid": (valid, ("N", "K")),
        }
    )
    valid = valid.bool()
    if rule == "all":
        return valid
    if rule == "relative_threshold":
        require_non_negative("threshold", threshold)
        keep = teacher_neg.detach() >= (teacher_pos.detach().unsqueeze(1) - threshold)
        return valid & keep
    require_int_at_least("top_m", top_m, 1)
    order = _teacher_order(teacher_neg, valid)
    ranks = torch.empty_like(order)
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    ranks.scatter_(1, order, positions)
    return valid & (ranks < top_m)


def cprd_loss(student_neg: Tensor, teacher_neg: Tensor, valid: Tensor, temperature: float) -> Tensor:
    """Plackett-Luce loss of the teacher's order of the valid negatives, from student scores.

    Shapes: ``student_neg [N, K]`` (differentiable), ``teacher_neg [N, K]``, ``valid [N, K]``
    (bool) -> scalar.

    For anchor ``i`` let ``pi`` order its ``n_i`` valid negatives by teacher score
    (descending) and ``x_j = student_neg[i, pi(j)] / temperature``. Then

    ``L_i = sum_{j=1}^{n_i - 1} -log( exp(x_j) / sum_{k=j}^{n_i} exp(x_k) )``

    (the last position always contributes ``-log 1 = 0`` and is not counted).
    Normalisation: ``L = mean over anchors with n_i >= 2 of L_i / (n_i - 1)``, i.e. each
    contributing anchor weighs the same and its ranking terms are averaged. Anchors with
    fewer than two valid negatives contribute nothing; if none contributes the loss is 0
    (still attached to the graph). Invalid entries get zero gradient and their values are
    ignored. Teacher scores are only used for sorting (no gradient). Ties in the teacher
    scores are broken by column index.
    """
    require_positive("temperature", temperature)
    check_shapes(
        {
            "student_neg": (student_neg, ("N", "K")),
            "teacher_neg": (teacher_neg, ("N", "K")),
            "valid": (valid, ("N", "K")),
        }
    )
    valid = valid.bool()
    student_neg = as_float(student_neg)
    check_finite("student_neg", student_neg.masked_fill(~valid, 0.0))
    check_finite("teacher_neg", teacher_neg.masked_fill(~valid, 0.0))
    if student_neg.numel() == 0:
        return student_neg.sum() * 0.0

    order = _teacher_order(teacher_neg, valid)
    x = torch.gather(student_neg / temperature, 1, order)
    v = torch.gather(valid, 1, order)  # valid entries first, in teacher order
    # Fill invalid (trailing) slots with a value far below every valid one, so that
    # exp(fill - x_k) underflows to exactly 0 and the suffix log-sum-exp over positions
    # k >= j only sees valid entries. A finite fill keeps the backward pass NaN-free.
    with torch.no_grad():
        lowest = torch.where(v, x, torch.full_like(x, float("inf"))).min()
        lowest = torch.where(torch.isfinite(lowest), lowest, torch.zeros_like(lowest))
        fill = lowest - (1e4 + lowest.abs())
    x = torch.where(v, x, fill.to(x.dtype))
    suffix_lse = torch.logcumsumexp(x.flip(1), dim=1).flip(1)

    n = v.sum(dim=1)  # [N] valid negatives per anchor
    positions = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
    counted = v & (positions < (n - 1).unsqueeze(1))  # positions 0 .. n_i - 2
    terms = torch.where(counted, suffix_lse - x, torch.zeros_like(x))

    contributing = (n >= 2).to(x.dtype)
    per_anchor = terms.sum(dim=1) / (n - 1).clamp(min=1).to(x.dtype)
    # Mean over contributing anchors; 0 (attached to the graph) when there is none.
    return (per_anchor * contributing).sum() / contributing.sum().clamp(min=1.0)


class CPRD(DirectionalLoss):
    """Contrastive Partial Ranking Distillation over the hard negatives of ``DirectionScores``.

    Negatives are columns ``1..K``; column 0's teacher score is the ``teacher_pos`` used by
    the ``"relative_threshold"`` rule. Per direction:
    ``cprd_loss(student[:, 1:], teacher[:, 1:], cprd_valid_mask(...), temperature)``;
    directions are averaged.

    Args:
        temperature: divides the student cosine similarities (> 0). Default 0.05.
        rule: ``"top_m"`` (default), ``"relative_threshold"`` or ``"all"``.
        top_m: negatives kept by ``"top_m"`` (>= 2). Default 8.
        threshold: margin (teacher units) for ``"relative_threshold"`` (>= 0). Default 1.0.
        directions: ``"both"``, ``"a2b"`` or ``"b2a"``.
    """

    def __init__(
        self,
        temperature: float = 0.05,
        rule: str = "top_m",
        top_m: int = 8,
        threshold: float = 1.0,
        directions: str = "both",
    ) -> None:
        super().__init__(directions)
        self.temperature = require_positive("temperature", temperature)
        self.rule = require_choice("rule", rule, CPRD_RULES)
        self.top_m = require_int_at_least("top_m", top_m, 2)
        self.threshold = require_non_negative("threshold", threshold)

    def direction_loss(self, scores: DirectionScores, inputs: LossInputs) -> Tensor:
        teacher = scores.teacher.detach()
        mask = cprd_valid_mask(
            teacher[:, 0], teacher[:, 1:], scores.valid[:, 1:], self.rule, self.threshold, self.top_m
        )
        return cprd_loss(scores.student[:, 1:], teacher[:, 1:], mask, self.temperature)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, rule={self.rule!r}, top_m={self.top_m}, "
            f"threshold={self.threshold}, directions={self.directions!r}"
        )
