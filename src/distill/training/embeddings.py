"""A student's embeddings as training sees them: pooled ``[N, D]`` tensors or late-interaction tokens.

A pooled student's embeddings are one tensor per side and its score matrix is ``a @ b.T``; a late-interaction
student's are :class:`~distill.students.late_interaction.TokenEmbeddings` (``tokens [N, T, D]``, ``mask [N, T]``)
and its ``score(a, b)`` defines the matrix. These helpers let the module, the candidate sources and the
DDP gather treat both alike: :func:`student_scorer`, :func:`gather_embeddings`, :func:`cat_embeddings`,
:func:`direction_scores`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Union

import torch
from torch import Tensor, nn

from distill import distributed
from distill.students.late_interaction import TokenEmbeddings

__all__ = ["Embeddings", "Scorer", "cat_embeddings", "direction_scores", "dot_scores",
           "gather_embeddings", "student_scorer"]

Embeddings = Union[Tensor, TokenEmbeddings]
Scorer = Callable[[Any, Any], Tensor]


def dot_scores(a: Tensor, b: Tensor) -> Tensor:
    """The pooled score matrix ``a @ b.T`` ``[Na, Nb]``."""
    return a @ b.T


def student_scorer(student: nn.Module) -> Scorer:
    """``score(a, b) -> [Na, Nb]``: the student's own ``score`` method, else the dot product."""
    score = getattr(student, "score", None)
    return score if callable(score) else dot_scores


def direction_scores(score: Scorer, anchors: Embeddings, columns: Embeddings, direction: str) -> Tensor:
    """``[N, M]`` scores of anchors against columns; a ``b2a`` anchor is a b item, so the student scores
    ``(column, anchor)`` (asymmetric scores such as ColBERT's keep ``a`` as the query)."""
    return score(anchors, columns) if direction == "a2b" else score(columns, anchors).T


def cat_embeddings(parts: Sequence[Embeddings]) -> Embeddings:
    """Rows of several parts in order (token parts are right-padded to the longest ``T``)."""
    if isinstance(parts[0], TokenEmbeddings):
        return TokenEmbeddings.cat(parts)  # type: ignore[arg-type]
    return torch.cat(list(parts))  # type: ignore[arg-type]


def gather_embeddings(embeddings: Embeddings) -> Embeddings:
    """Every process's rows in rank order, differentiable (:func:`distill.distributed.gather_with_grad`).

    Token embeddings are first right-padded to the longest ``T`` over the processes (padding tokens are
    invalid); tokens are gathered with gradient, masks without. Identity without a process group.
    """
    if not isinstance(embeddings, TokenEmbeddings):
        return distributed.gather_with_grad(embeddings)
    if not distributed.is_distributed():
        return embeddings
    length = torch.tensor([int(embeddings.tokens.shape[1])], device=embeddings.device)
    longest = int(distributed.gather_tensor(length).max())
    padded = embeddings.pad_to(longest)
    return TokenEmbeddings(distributed.gather_with_grad(padded.tokens), distributed.gather_tensor(padded.mask))
