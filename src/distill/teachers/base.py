"""The teacher protocol: a frozen model that scores aligned (a, b) pairs."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from distill.inputs import Inputs, select_rows


class Teacher(nn.Module):
    """Base class of teachers.

    A teacher reads an ``a`` item and a ``b`` item together (cross-attention) and returns one
    relevance score per aligned pair. Subclasses implement :meth:`score`; teachers that also
    expose embeddings implement :meth:`embed_a` / :meth:`embed_b` and set ``has_embeddings``.
    """

    has_embeddings: bool = False

    def score(self, a: Inputs, b: Inputs) -> Tensor:
        """Score N aligned pairs: ``a[i]`` with ``b[i]``. Returns ``Tensor[N]``."""
        raise NotImplementedError

    def score_pairs(self, a: Inputs, b: Inputs, a_index: Tensor, b_index: Tensor) -> Tensor:
        """Score the pairs ``(a[a_index[n]], b[b_index[n]])`` for n < N. Returns ``Tensor[N]``.

        The default gathers the inputs and calls :meth:`score`; teachers with separate unimodal
        encoders override it to encode each item once.
        """
        return self.score(select_rows(a, a_index), select_rows(b, b_index))

    def embed_a(self, a: Inputs) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not expose embeddings")

    def embed_b(self, b: Inputs) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not expose embeddings")

    def freeze(self) -> "Teacher":
        """Put the teacher in eval mode and stop gradients through its parameters."""
        self.eval()
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        return self

    def describe(self) -> dict[str, Any]:
        """A short, JSON-serialisable description used in logs and model cards."""
        return {"class": f"{type(self).__module__}.{type(self).__qualname__}"}


def is_frozen(module: nn.Module) -> bool:
    """True when no parameter of ``module`` requires a gradient."""
    return not any(parameter.requires_grad for parameter in module.parameters())
