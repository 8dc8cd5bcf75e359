"""Dual-encoder student: two towers, linear projections, L2-normalised embeddings."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.students.towers import Inputs, Tower


class DualEncoder(nn.Module):
    """Encodes ``a`` and ``b`` items separately into a shared space.

    ``encode_a(a) -> [B, D]`` and ``encode_b(b) -> [B, D]`` are L2-normalised, so a @ b.T is the
    cosine similarity: :meth:`score`, the score training and evaluation rank by. ``logit_scale =
    exp(log_inv_temperature)`` is the inverse temperature (clamped at 100, as in CLIP); it is learnable
    unless ``learn_temperature`` is False.
    """

    def __init__(
        self,
        tower_a: Tower,
        tower_b: Tower,
        embed_dim: int = 128,
        temperature: float = 0.07,
        learn_temperature: bool = True,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"student temperature must be > 0, got {temperature}")
        if embed_dim <= 0:
            raise ValueError(f"embed_dim must be > 0, got {embed_dim}")
        self.tower_a = tower_a
        self.tower_b = tower_b
        self.proj_a = nn.Linear(tower_a.width, embed_dim)
        self.proj_b = nn.Linear(tower_b.width, embed_dim)
        self.embed_dim = embed_dim
        self.log_inv_temperature = nn.Parameter(
            torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature
        )

    @property
    def logit_scale(self) -> Tensor:
        return self.log_inv_temperature.clamp(max=math.log(100.0)).exp()

    def encode_a(self, a: Inputs) -> Tensor:
        return F.normalize(self.proj_a(self.tower_a(a)), dim=-1)

    def encode_b(self, b: Inputs) -> Tensor:
        return F.normalize(self.proj_b(self.tower_b(b)), dim=-1)

    def score(self, a: Tensor, b: Tensor) -> Tensor:
        """``[Na, Nb]`` student scores of every a item against every b item: the dot product ``a @ b.T``."""
        return a @ b.T

    def forward(self, a: Inputs, b: Inputs) -> tuple[Tensor, Tensor]:
        return self.encode_a(a), self.encode_b(b)
