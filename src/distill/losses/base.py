"""Inputs shared by all losses and the ``DistillationLoss`` base class."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .guards import check_finite, checks_enabled, check_shapes, require_choice

__all__ = [
    "DIRECTIONS",
    "DirectionScores",
    "LossInputs",
    "DistillationLoss",
    "DirectionalLoss",
    "masked_log_softmax",
    "as_float",
]

DIRECTIONS: tuple[str, ...] = ("both", "a2b", "b2a")


@dataclass
class DirectionScores:
    """One retrieval direction of a batch (a->b: anchors are a-items; b->a: anchors are b-items).

    Column 0 of the candidate tensors is the anchor's own positive; columns 1..K are hard negatives.
    """

    student: Tensor  # [N, 1+K] student cosine similarities of the candidates (differentiable)
    teacher: Tensor  # [N, 1+K] teacher scores of the same pairs (no grad; any real scale)
    valid: Tensor  # [N, 1+K] bool; False where a slot is padding. Column 0 always True.

    def check(self, name: str) -> None:
        """Validate shapes, dtypes and (when checks are enabled) values; ``name`` prefixes messages."""
        check_shapes(
            {
                f"{name}.student": (self.student, ("N", "1+K")),
                f"{name}.teacher": (self.teacher, ("N", "1+K")),
                f"{name}.valid": (self.valid, ("N", "1+K")),
            }
        )
        if self.student.shape[1] < 1:
            raise ValueError(f"{name} must have at least one candidate column (the positive)")
        if self.valid.dtype != torch.bool:
            raise ValueError(f"{name}.valid must be a bool tensor, got {self.valid.dtype}")
        # Padding slots may hold anything (e.g. -inf teacher scores); only valid ones are checked.
        check_finite(f"{name}.student", self.student.masked_fill(~self.valid, 0.0))
        check_finite(f"{name}.teacher", self.teacher.masked_fill(~self.valid, 0.0))
        if checks_enabled() and self.valid.numel() and not bool(self.valid[:, 0].all()):
            raise ValueError(f"{name}.valid[:, 0] (the positives) must be all True")


@dataclass
class LossInputs:
    """Everything a loss may need for one batch of B aligned (a, b) pairs."""

    similarity: Tensor  # [B, B] student cosine similarity a @ b.T (rows: a, cols: b), differentiable
    positive_mask: Tensor  # [B, B] bool, True where a_i and b_j are a positive pair (diagonal True)
    logit_scale: Tensor  # [] student's inverse temperature, differentiable
    a2b: DirectionScores | None  # None when no teacher candidates were computed
    b2a: DirectionScores | None
    student_embeddings: tuple[Tensor, Tensor] | None = None  # ([B, D], [B, D]) normalised (a, b)
    teacher_embeddings: tuple[Tensor, Tensor] | None = None  # ([B, Dt], [B, Dt]) or None
    # The step's extra b items (listed negatives, cached candidates), scored against every a anchor:
    extra_similarity: Tensor | None = None  # [B, E] student scores, differentiable; None when the step has none
    extra_valid: Tensor | None = None  # [B, E] bool; False where the extra item is the anchor's own positive


def as_float(t: Tensor) -> Tensor:
    """Upcast half/bfloat16 tensors to float32; leave float32/float64 untouched."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def masked_log_softmax(x: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """``log_softmax`` over the entries where ``mask`` is True, with 0 at masked entries.

    Masked entries get zero gradient. Every slice along ``dim`` needs at least one True entry.
    The zero fill keeps products such as ``p * log p`` finite (``p`` is 0 there).
    """
    logp = torch.log_softmax(x.masked_fill(~mask, float("-inf")), dim=dim)
    return logp.masked_fill(~mask, 0.0)


class DistillationLoss(nn.Module):
    """Base class: ``forward(inputs: LossInputs) -> Tensor`` (a scalar).

    Subclasses are built from plain keyword arguments so that a LightningCLI recipe can
    instantiate them with ``class_path``/``init_args``.
    """

    requires_teacher: ClassVar[bool] = True
    requires_teacher_scores: ClassVar[bool] = True  # reads ``inputs.a2b`` / ``inputs.b2a``
    requires_teacher_embeddings: ClassVar[bool] = False
    # Directions whose candidates (the step's extra items) the loss reads without their teacher scores.
    candidate_directions: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self._warned: set[str] = set()

    def forward(self, inputs: LossInputs) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _warn_once(self, kind: str, guard: Callable[..., bool], *args: Any, **kwargs: Any) -> None:
        """Run a ``warn_if_*`` guard until it has fired once for this module instance."""
        if kind in self._warned:
            return
        if guard(*args, **kwargs):
            self._warned.add(kind)


class DirectionalLoss(DistillationLoss):
    """A loss computed per retrieval direction from ``DirectionScores`` and averaged.

    ``directions``: ``"both"`` (mean of the a2b and b2a terms), ``"a2b"`` or ``"b2a"``.
    """

    def __init__(self, directions: str = "both") -> None:
        super().__init__()
        self.directions = require_choice("directions", directions, DIRECTIONS)

    def direction_loss(self, scores: DirectionScores, inputs: LossInputs) -> Tensor:
        """Loss for one direction (scalar)."""
        raise NotImplementedError

    def selected(self, inputs: LossInputs) -> list[tuple[str, DirectionScores]]:
        """The (name, scores) pairs this loss uses; raise if a needed direction is missing."""
        names = ("a2b", "b2a") if self.directions == "both" else (self.directions,)
        out: list[tuple[str, DirectionScores]] = []
        for name in names:
            scores = getattr(inputs, name)
            if scores is None:
                raise ValueError(
                    f"{type(self).__name__} needs teacher candidate scores for direction "
                    f"{name!r} but inputs.{name} is None; configure a teacher or set "
                    f"directions to a direction that is computed"
                )
            scores.check(f"inputs.{name}")
            out.append((name, scores))
        return out

    def forward(self, inputs: LossInputs) -> Tensor:
        terms = [self.direction_loss(scores, inputs) for _, scores in self.selected(inputs)]
        return terms[0] if len(terms) == 1 else torch.stack(terms).mean()

    def extra_repr(self) -> str:
        return f"directions={self.directions!r}"
