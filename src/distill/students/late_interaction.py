"""Late-interaction student (FILIP / ColBERT): one vector per image patch and per caption token.

Each side is still encoded alone (a corpus is indexed once), but an item is a set of token vectors instead of
one pooled vector, and the student defines its own score of two sets:

* ``"filip"`` (symmetric; Yao et al., "FILIP: Fine-grained Interactive Language-Image Pre-Training", ICLR 2022)::

      s(a, b) = 1/2 * [ mean_{i valid in a} max_{j valid in b} <a_i, b_j>
                      + mean_{j valid in b} max_{i valid in a} <a_i, b_j> ]

* ``"colbert"`` (asymmetric, ``a`` is the query; Khattab & Zaharia, "ColBERT", SIGIR 2020; MaxSim)::

      s(a, b) = reduce_{i valid in a} max_{j valid in b} <a_i, b_j>,   reduce = mean (default) or sum

Token vectors are L2-normalised, so with ``mean`` both scores lie in ``[-1, 1]`` like a cosine and the
student's temperature means what it means for a pooled student. Padding tokens (mask False) are never
maxed over and never averaged; every item needs at least one valid token.

:meth:`LateInteractionEncoder.score` is computed in blocks of ``ca x cb`` items whose ``[ca, cb, Ta, Tb]``
token-similarity tensor holds at most ``max_block_elements`` numbers; the backward pass of a block keeps only
the arg-max indices (``[ca, cb, Ta]`` and ``[ca, cb, Tb]``), not the block.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.errors import InputError
from distill.students.towers import Inputs, Tower, TransformersTextTower

__all__ = ["LateInteractionEncoder", "TokenEmbeddings", "TransformersTokenTower", "late_scores", "paired_late_scores"]

Similarity = Literal["filip", "colbert"]
Reduce = Literal["mean", "sum"]


@dataclass
class TokenEmbeddings:
    """A late-interaction student's embeddings of ``N`` items: ``tokens [N, T, D]`` (L2-normalised rows,
    padding rows arbitrary) and ``mask [N, T]`` bool (True: a valid token). Items of one batch share ``T``
    (right padding); :meth:`cat` pads to the longest."""

    tokens: Tensor
    mask: Tensor

    def __post_init__(self) -> None:
        if self.tokens.dim() != 3 or self.mask.shape != self.tokens.shape[:2]:
            raise ValueError(f"TokenEmbeddings needs tokens [N, T, D] and mask [N, T], got {tuple(self.tokens.shape)} "
                             f"and {tuple(self.mask.shape)}")
        self.mask = self.mask.bool()

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.tokens.dtype

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    def rows(self, index: Tensor | slice) -> "TokenEmbeddings":
        return TokenEmbeddings(self.tokens[index], self.mask[index])

    def detach(self) -> "TokenEmbeddings":
        return TokenEmbeddings(self.tokens.detach(), self.mask)

    def to(self, *args: Any, **kwargs: Any) -> "TokenEmbeddings":
        """``tokens.to(...)``; the mask follows to the same device and stays bool."""
        tokens = self.tokens.to(*args, **kwargs)
        return TokenEmbeddings(tokens, self.mask.to(tokens.device))

    def float(self) -> "TokenEmbeddings":
        return self.to(torch.float32)

    def cpu(self) -> "TokenEmbeddings":
        return self.to("cpu")

    def pad_to(self, length: int) -> "TokenEmbeddings":
        """Right-pad ``T`` to ``length`` with invalid zero tokens (differentiable)."""
        extra = length - int(self.tokens.shape[1])
        if extra < 0:
            raise ValueError(f"cannot pad {int(self.tokens.shape[1])} tokens to {length}")
        if extra == 0:
            return self
        return TokenEmbeddings(F.pad(self.tokens, (0, 0, 0, extra)), F.pad(self.mask, (0, extra), value=False))

    @staticmethod
    def cat(parts: Sequence["TokenEmbeddings"]) -> "TokenEmbeddings":
        """Rows of several parts, in order, padded to the longest ``T`` (differentiable)."""
        length = max(int(part.tokens.shape[1]) for part in parts)
        padded = [part.pad_to(length) for part in parts]
        return TokenEmbeddings(torch.cat([p.tokens for p in padded]), torch.cat([p.mask for p in padded]))

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        raise InputError(unsupported_message(getattr(func, "__name__", str(func))))

    def __matmul__(self, other: Any) -> Any:
        raise InputError(unsupported_message("a @ b.T"))

    @property
    def T(self) -> Any:  # noqa: N802 (torch's name)
        raise InputError(unsupported_message("a @ b.T"))


def unsupported_message(operation: str) -> str:
    return (f"a late-interaction student's token embeddings reached `{operation}` in a path that handles pooled "
            "[N, D] embeddings only (teacher-cache mining does for now): use a pooled "
            "student preset there (e.g. students/shapes-dual-encoder.yaml)")


def _check(similarity: str, reduce: str) -> None:
    if similarity not in ("filip", "colbert"):
        raise ValueError(f"late-interaction similarity must be 'filip' or 'colbert', got {similarity!r}")
    if reduce not in ("mean", "sum"):
        raise ValueError(f"late-interaction query_reduce must be 'mean' or 'sum', got {reduce!r}")


def _reduce(best: Tensor, mask: Tensor, reduce: str) -> Tensor:
    """``best [..., T]`` summed or averaged over the valid entries of ``mask`` (broadcast to ``best``)."""
    total = best.masked_fill(~mask, 0.0).sum(-1)
    if reduce == "sum":
        return total
    return total / mask.sum(-1).clamp(min=1).to(total.dtype)


def _block_scores(a: TokenEmbeddings, b: TokenEmbeddings, similarity: str, reduce: str) -> Tensor:
    """``[ca, cb]`` scores of one block (see the module docstring)."""
    sim = torch.einsum("itd,jsd->ijts", a.tokens, b.tokens)  # [ca, cb, Ta, Tb]
    a_mask = a.mask[:, None, :]  # [ca, 1, Ta]
    b_mask = b.mask[None, :, :]  # [1, cb, Tb]
    best_b = sim.masked_fill(~b_mask.unsqueeze(2), float("-inf")).max(-1).values  # [ca, cb, Ta]
    a_side = _reduce(best_b, a_mask.expand_as(best_b), reduce if similarity == "colbert" else "mean")
    if similarity == "colbert":
        return a_side
    best_a = sim.masked_fill(~a_mask.unsqueeze(3), float("-inf")).max(-2).values  # [ca, cb, Tb]
    return 0.5 * (a_side + _reduce(best_a, b_mask.expand_as(best_a), "mean"))


def late_scores(a: TokenEmbeddings, b: TokenEmbeddings, similarity: Similarity = "filip", query_reduce: Reduce = "mean",
                max_block_elements: int = 1 << 22) -> Tensor:
    """``[Na, Nb]`` late-interaction scores (module docstring), in blocks of at most ``max_block_elements``
    token similarities (``ca * cb * Ta * Tb``); differentiable."""
    _check(similarity, query_reduce)
    if max_block_elements < 1:
        raise ValueError(f"max_block_elements must be >= 1, got {max_block_elements}")
    na, nb = len(a), len(b)
    per_pair = max(1, int(a.tokens.shape[1]) * int(b.tokens.shape[1]))
    pairs = max(1, max_block_elements // per_pair)
    cb = max(1, min(nb, pairs))
    ca = max(1, min(na, pairs // cb))
    if na == 0 or nb == 0:
        return a.tokens.new_zeros(na, nb)
    rows = []
    for start_a in range(0, na, ca):
        part_a = a.rows(slice(start_a, start_a + ca))
        rows.append(torch.cat([_block_scores(part_a, b.rows(slice(start_b, start_b + cb)), similarity, query_reduce)
                               for start_b in range(0, nb, cb)], dim=1))
    return torch.cat(rows)


def paired_late_scores(a: TokenEmbeddings, b: TokenEmbeddings, similarity: Similarity = "filip",
                       query_reduce: Reduce = "mean") -> Tensor:
    """``[N]`` scores of the aligned pairs ``(a_n, b_n)``: the diagonal of :func:`late_scores`, in ``O(N T^2)``."""
    _check(similarity, query_reduce)
    if len(a) != len(b):
        raise ValueError(f"paired scores need as many a items as b items, got {len(a)} and {len(b)}")
    sim = torch.einsum("ntd,nsd->nts", a.tokens, b.tokens)  # [N, Ta, Tb]
    best_b = sim.masked_fill(~b.mask[:, None, :], float("-inf")).max(-1).values  # [N, Ta]
    a_side = _reduce(best_b, a.mask, query_reduce if similarity == "colbert" else "mean")
    if similarity == "colbert":
        return a_side
    best_a = sim.masked_fill(~a.mask[:, :, None], float("-inf")).max(-2).values  # [N, Tb]
    return 0.5 * (a_side + _reduce(best_a, b.mask, "mean"))


class TransformersTokenTower(TransformersTextTower):
    """A Hugging Face encoder's last hidden states ``[B, L, H]`` (no pooling); the token mask is the inputs'
    ``attention_mask``. Built like :class:`~distill.students.TransformersTextTower`."""

    def forward(self, inputs: Inputs) -> Tensor:
        return self.encoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state


class LateInteractionEncoder(nn.Module):
    """Late-interaction student: token towers, linear projections, L2-normalised token vectors.

    ``encode_a(a)`` / ``encode_b(b)`` return :class:`TokenEmbeddings` (``[B, T, D]`` and ``[B, T]``): the towers'
    token features (``[B, T, C]``: image patches of a timm feature map, e.g.
    :class:`~distill.students.sparse.TimmTokenTower`, or caption tokens, :class:`TransformersTokenTower`)
    projected to ``embed_dim`` and normalised; the mask is the inputs' ``attention_mask`` when they have one
    (text), else every token is valid (image patches). :meth:`score` is the student's score matrix
    (``similarity``: ``filip`` or ``colbert``, module docstring), which training, mining and evaluation use
    instead of ``a @ b.T``. ``logit_scale`` is the inverse temperature, as for :class:`DualEncoder`.

    Args:
        tower_a / tower_b: towers returning ``[B, T, C]`` token features.
        embed_dim: ``D`` of the token vectors.
        temperature / learn_temperature: the initial temperature of ``score / tau``, and whether it trains.
        similarity: ``filip`` (symmetric) or ``colbert`` (``a`` is the query).
        query_reduce: ColBERT's reduction over query tokens, ``mean`` or ``sum`` (FILIP always averages).
        max_block_elements: the bound on ``ca * cb * Ta * Tb`` of one block of :meth:`score`.
    """

    def __init__(self, tower_a: Tower, tower_b: Tower, embed_dim: int = 64, temperature: float = 0.07,
                 learn_temperature: bool = True, similarity: Similarity = "filip", query_reduce: Reduce = "mean",
                 max_block_elements: int = 1 << 22) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"student temperature must be > 0, got {temperature}")
        if embed_dim <= 0:
            raise ValueError(f"embed_dim must be > 0, got {embed_dim}")
        if max_block_elements < 1:
            raise ValueError(f"max_block_elements must be >= 1, got {max_block_elements}")
        _check(similarity, query_reduce)
        self.tower_a, self.tower_b = tower_a, tower_b
        self.proj_a = nn.Linear(tower_a.width, embed_dim)
        self.proj_b = nn.Linear(tower_b.width, embed_dim)
        self.embed_dim = embed_dim
        self.similarity, self.query_reduce = similarity, query_reduce
        self.max_block_elements = max_block_elements
        self.log_inv_temperature = nn.Parameter(torch.tensor(math.log(1.0 / temperature)),
                                                requires_grad=learn_temperature)

    @property
    def logit_scale(self) -> Tensor:
        return self.log_inv_temperature.clamp(max=math.log(100.0)).exp()

    @staticmethod
    def _tokens(features: Tensor, projection: nn.Linear, inputs: Inputs) -> TokenEmbeddings:
        if features.dim() != 3:
            raise ValueError(f"a late-interaction tower must return token features [B, T, C], got "
                             f"{tuple(features.shape)}")
        mask = inputs.get("attention_mask")
        mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device) if mask is None \
            else mask.bool()
        return TokenEmbeddings(F.normalize(projection(features), dim=-1), mask)

    def encode_a(self, a: Inputs) -> TokenEmbeddings:
        return self._tokens(self.tower_a(a), self.proj_a, a)

    def encode_b(self, b: Inputs) -> TokenEmbeddings:
        return self._tokens(self.tower_b(b), self.proj_b, b)

    def score(self, a: TokenEmbeddings, b: TokenEmbeddings) -> Tensor:
        """``[Na, Nb]`` scores of every a item against every b item (chunked; differentiable)."""
        return late_scores(a, b, self.similarity, self.query_reduce, self.max_block_elements)

    def score_pairs(self, a: TokenEmbeddings, b: TokenEmbeddings) -> Tensor:
        """``[N]`` scores of the aligned pairs ``(a_n, b_n)``."""
        return paired_late_scores(a, b, self.similarity, self.query_reduce)

    def forward(self, a: Inputs, b: Inputs) -> tuple[TokenEmbeddings, TokenEmbeddings]:
        return self.encode_a(a), self.encode_b(b)
