"""Embedding-level distillation with a cosine objective (DCLIP-style).

Reference: Csizmadia et al., "Distill CLIP (DCLIP): Enhancing Image-Text Retrieval via
Cross-Modal Transformer Distillation", arXiv:2505.21549, 2025 (a contrastive loss combined
with a cosine-similarity objective that pulls each student embedding towards the teacher's
embedding of the same item). A learned linear projection bridges different embedding sizes.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import DistillationLoss, LossInputs, as_float
from .guards import check_finite, check_shapes, require_choice, require_int_at_least

__all__ = ["COSINE_SIDES", "cosine_embedding_loss", "CosineEmbedding"]

COSINE_SIDES: tuple[str, ...] = ("both", "a", "b")


def cosine_embedding_loss(student: Tensor, teacher: Tensor, eps: float = 1e-8) -> Tensor:
    """``mean_i (1 - cos(student_i, teacher_i))``.

    Shapes: ``student [B, D]`` (differentiable), ``teacher [B, D]`` -> scalar. The teacher is
    detached; ``eps`` guards zero-norm rows.
    """
    check_shapes({"student": (student, ("B", "D")), "teacher": (teacher, ("B", "D"))})
    student = as_float(student)
    teacher = teacher.detach().to(student.dtype)
    check_finite("student", student)
    check_finite("teacher", teacher)
    return (1.0 - F.cosine_similarity(student, teacher, dim=1, eps=eps)).mean()


class CosineEmbedding(DistillationLoss):
    """Cosine distance between (projected) student embeddings and teacher embeddings.

    For each side ``x`` in ``sides`` (``"a"``, ``"b"`` or both, averaged):
    ``cosine_embedding_loss(proj_x(student_x), teacher_x)`` where ``proj_x`` is a learned
    ``nn.Linear(student_dim, teacher_dim, bias=False)`` when the sizes differ and the
    identity when they are equal. The projections are parameters of this module, so the
    optimiser must include the loss modules' parameters.

    Needs ``inputs.student_embeddings`` and ``inputs.teacher_embeddings``.
    ``teacher_name`` (optional attribute) is only used in error messages.
    """

    requires_teacher_scores: ClassVar[bool] = False
    requires_teacher: ClassVar[bool] = True
    requires_teacher_embeddings: ClassVar[bool] = True

    def __init__(self, student_dim: int, teacher_dim: int, sides: str = "both") -> None:
        super().__init__()
        self.student_dim = require_int_at_least("student_dim", student_dim, 1)
        self.teacher_dim = require_int_at_least("teacher_dim", teacher_dim, 1)
        self.sides = require_choice("sides", sides, COSINE_SIDES)
        self.teacher_name: str | None = None

        def make() -> nn.Module:
            if student_dim == teacher_dim:
                return nn.Identity()
            return nn.Linear(student_dim, teacher_dim, bias=False)

        self.proj_a = make()
        self.proj_b = make()

    def forward(self, inputs: LossInputs) -> Tensor:
        if inputs.teacher_embeddings is None:
            teacher = self.teacher_name or "the configured teacher"
            raise ValueError(
                f"CosineEmbedding needs a teacher that exposes embeddings (embed_a/embed_b); "
                f"{teacher} has none: remove this loss or use a teacher with embeddings"
            )
        if inputs.student_embeddings is None:
            raise ValueError("CosineEmbedding needs inputs.student_embeddings, got None")
        (s_a, s_b), (t_a, t_b) = inputs.student_embeddings, inputs.teacher_embeddings
        check_shapes(
            {
                "student_embeddings[0]": (s_a, ("B", self.student_dim)),
                "student_embeddings[1]": (s_b, ("B", self.student_dim)),
                "teacher_embeddings[0]": (t_a, ("B", self.teacher_dim)),
                "teacher_embeddings[1]": (t_b, ("B", self.teacher_dim)),
            }
        )
        terms: list[Tensor] = []
        if self.sides in ("both", "a"):
            terms.append(cosine_embedding_loss(self.proj_a(as_float(s_a)), t_a))
        if self.sides in ("both", "b"):
            terms.append(cosine_embedding_loss(self.proj_b(as_float(s_b)), t_b))
        return terms[0] if len(terms) == 1 else torch.stack(terms).mean()

    def extra_repr(self) -> str:
        return f"student_dim={self.student_dim}, teacher_dim={self.teacher_dim}, sides={self.sides!r}"
