"""Sparse (lexical) dual encoder: both sides become non-negative vocabulary-sized vectors.

Text side (SPLADE): a masked-language-model encoder gives logits ``[B, L, V]`` and the term
weights are ``w_j = max_t mask_t * log(1 + relu(logits_tj))``. Image side (LexLIP-style): a timm
backbone's feature map is flattened into tokens ``[B, T, C]``, a linear head maps each token to
vocabulary logits ``[B, T, V]``, and the same saturated max-pool gives ``[B, V]``. Scores are plain
dot products, so documents can be served from an inverted index (:mod:`distill.index.sparse`).

References: Formal et al., "SPLADE v2", 2021; Luo et al., "LexLIP: Lexicon-Bottlenecked
Language-Image Pre-Training for Large-Scale Image-Text Retrieval", ICCV 2023.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from transformers import AutoModelForMaskedLM

from distill.students.dual_encoder import DualEncoder
from distill.students.towers import Inputs, TimmImageTower, build_transformers_model

__all__ = ["MLMTextTower", "SparseDualEncoder", "TimmTokenTower", "prune_top_k", "saturated_max_pool"]


def saturated_max_pool(logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """``[B, T, V]`` logits (and optional ``[B, T]`` 0/1 mask) -> ``[B, V]`` non-negative weights.

    ``w_bj = max_t mask_bt * log(1 + relu(logits_btj))``. Masked tokens contribute 0, which equals
    excluding them because every term is >= 0; a row with no unmasked token is all zeros.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {tuple(logits.shape)}")
    weights = torch.log1p(torch.relu(logits))
    if mask is not None:
        if mask.shape != logits.shape[:2]:
            raise ValueError(f"mask must be [B, T] = {tuple(logits.shape[:2])}, got {tuple(mask.shape)}")
        weights = weights * mask.unsqueeze(-1).to(weights.dtype)
    return weights.amax(dim=1)


def prune_top_k(weights: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest entries of each row of ``[B, V]`` weights, zero the rest.

    Ties at the k-th value are broken by ``torch.topk``; ``k >= V`` returns the input unchanged.
    """
    if k < 1:
        raise ValueError(f"top-k pruning needs k >= 1, got {k}")
    if k >= weights.shape[-1]:
        return weights
    values, index = torch.topk(weights, k, dim=-1)
    return torch.zeros_like(weights).scatter(-1, index, values)


class MLMTextTower(nn.Module):
    """A Hugging Face masked-language model (``AutoModelForMaskedLM``) returning token logits.

    Reads ``inputs["input_ids"]`` / ``inputs["attention_mask"]`` ``[B, L]``; returns ``[B, L, V]``.
    Exactly one of ``pretrained`` (a local folder or hub id) or ``config`` (a dict with ``model_type``)
    is given. ``trust_remote_code`` stays off unless set.
    """

    modality: ClassVar[str] = "text"

    def __init__(
        self,
        pretrained: str | None = None,
        config: dict[str, Any] | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = build_transformers_model(AutoModelForMaskedLM, "MLMTextTower", pretrained, config,
                                                trust_remote_code)
        self.vocab_size = int(self.encoder.config.vocab_size)

    def forward(self, inputs: Inputs) -> Tensor:
        return self.encoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits


class TimmTokenTower(TimmImageTower):
    """A timm backbone's unpooled features as a token sequence ``[B, T, C]``.

    Reads ``inputs["pixel_values"]`` ``[B, 3, H, W]``. CNN feature maps ``[B, C, h, w]`` become
    ``h * w`` tokens; transformer outputs ``[B, T, C]`` are used as they are. Built like
    :class:`~distill.students.TimmImageTower`; ``width`` is the unpooled feature width.
    """

    modality: ClassVar[str] = "image"

    def output_width(self) -> int:
        return int(self.backbone.num_features)

    def forward(self, inputs: Inputs) -> Tensor:
        features = self.backbone.forward_features(inputs["pixel_values"])
        if features.dim() == 4:
            return features.flatten(2).transpose(1, 2)
        if features.dim() == 3:
            return features
        raise ValueError(f"timm backbone returned features of shape {tuple(features.shape)}; expected 3 or 4 dims")


class SparseDualEncoder(DualEncoder):
    """Sparse student with the :class:`DualEncoder` interface; ``encode_a/encode_b -> [B, V] >= 0``.

    ``V`` is the text model's vocabulary. ``S = a @ b.T`` is an unbounded dot product of term weights,
    so the InfoNCE logits are ``logit_scale * S`` with ``logit_scale`` fixed at ``scale`` (default
    1.0: raw dot products are the logits, as in SPLADE; the FLOPS regulariser keeps their magnitude in
    check). ``learn_scale=True`` makes ``log(scale)`` a parameter (clamped at 100 like CLIP).
    Distillation losses that divide by a student temperature (``LogitKL``) should use 1.0 for the
    same reason.

    ``top_k_a`` / ``top_k_b`` prune each vector to its k largest weights in eval mode (serving and
    export); training always sees the full vectors so gradients reach every term.

    It subclasses :class:`DualEncoder` only so recipes typed ``student: DualEncoder`` accept it; it
    shares the interface, not the layers.
    """

    def __init__(
        self,
        tower_a: TimmTokenTower,
        tower_b: MLMTextTower,
        scale: float = 1.0,
        learn_scale: bool = False,
        top_k_a: int | None = None,
        top_k_b: int | None = None,
    ) -> None:
        nn.Module.__init__(self)  # DualEncoder's projections and temperature do not apply here.
        if scale <= 0:
            raise ValueError(f"SparseDualEncoder scale must be > 0, got {scale}")
        for name, k in (("top_k_a", top_k_a), ("top_k_b", top_k_b)):
            if k is not None and k < 1:
                raise ValueError(f"SparseDualEncoder {name} must be >= 1 or null, got {k}")
        self.tower_a = tower_a
        self.tower_b = tower_b
        self.vocab_size = int(tower_b.vocab_size)
        self.embed_dim = self.vocab_size
        self.head_a = nn.Sequential(nn.LayerNorm(tower_a.width), nn.Linear(tower_a.width, self.vocab_size))
        self.top_k_a = top_k_a
        self.top_k_b = top_k_b
        log_scale = torch.tensor(math.log(scale))
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def logit_scale(self) -> Tensor:
        return self.log_scale.clamp(max=math.log(100.0)).exp()

    def encode_a(self, a: Inputs) -> Tensor:
        weights = saturated_max_pool(self.head_a(self.tower_a(a)))
        return self._prune(weights, self.top_k_a)

    def encode_b(self, b: Inputs) -> Tensor:
        weights = saturated_max_pool(self.tower_b(b), b["attention_mask"])
        return self._prune(weights, self.top_k_b)

    def _prune(self, weights: Tensor, k: int | None) -> Tensor:
        return weights if k is None or self.training else prune_top_k(weights, k)

    @staticmethod
    def embedding_stats(weights: Tensor) -> dict[str, Tensor]:
        """``[B, V]`` weights -> ``{"nnz": mean non-zeros per row, "density": nnz / V}`` (no grad)."""
        nnz = (weights.detach() > 0).sum(-1).float().mean()
        return {"nnz": nnz, "density": nnz / weights.shape[-1]}
