"""CLIP as a dual-encoder student (``transformers.CLIPModel``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from distill.pretrained import load_pretrained
from distill.students.dual_encoder import DualEncoder

Inputs = dict[str, Tensor]


def _pooled(output: Any) -> Tensor:
    """``get_*_features`` returns a tensor or, in recent transformers, an output with ``pooler_output``."""
    return output if isinstance(output, Tensor) else output.pooler_output


class CLIPDualEncoder(DualEncoder):
    """A CLIP model with the student interface: images are the ``a`` side, captions the ``b`` side.

    ``encode_a({"pixel_values": [B, 3, S, S]}) -> [B, D]`` and
    ``encode_b({"input_ids", "attention_mask": [B, L]}) -> [B, D]`` are CLIP's projected features,
    L2-normalised (``D = projection_dim``). ``logit_scale`` is CLIP's own learnt inverse temperature,
    ``exp(model.logit_scale)`` clamped at 100.

    Args:
        pretrained: a ``save_pretrained`` folder of ``CLIPModel`` (e.g. a local copy of
            ``openai/clip-vit-base-patch32``) or a hub id when online.
        config: instead of ``pretrained``, ``CLIPConfig`` keyword arguments (``text_config``,
            ``vision_config`` dicts, ``projection_dim``...) for a randomly initialised model.
        learn_temperature: train ``logit_scale`` (CLIP's default) or keep it fixed.

    It subclasses :class:`DualEncoder` only so recipes typed ``student: DualEncoder`` accept it;
    CLIP brings its own projections and temperature.
    """

    def __init__(self, pretrained: str | None = None, config: dict[str, Any] | None = None,
                 learn_temperature: bool = True) -> None:
        nn.Module.__init__(self)  # DualEncoder's towers, projections and temperature do not apply here.
        from transformers import CLIPConfig, CLIPModel

        if (pretrained is None) == (config is None):
            raise ValueError("CLIPDualEncoder needs exactly one of `pretrained` (a folder or hub id) or `config`")
        if pretrained is not None:
            field = "model.init_args.student.init_args.pretrained (CLIPDualEncoder)"
            self.model = load_pretrained(CLIPModel, pretrained, field)
        else:
            self.model = CLIPModel(CLIPConfig(**dict(config or {})))
        self.model.train()  # from_pretrained returns eval mode; a student trains like any new module
        self.model.logit_scale.requires_grad_(learn_temperature)
        self.embed_dim = int(self.model.config.projection_dim)
        self.image_size = int(self.model.config.vision_config.image_size)

    @property
    def logit_scale(self) -> Tensor:
        return self.model.logit_scale.clamp(max=math.log(100.0)).exp()

    def encode_a(self, a: Inputs) -> Tensor:
        pixel_values = a["pixel_values"]
        if tuple(pixel_values.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"CLIPDualEncoder expects {self.image_size}x{self.image_size} images, got "
                f"{tuple(pixel_values.shape[-2:])}: set data.init_args.student_processor to the CLIP folder"
            )
        return F.normalize(_pooled(self.model.get_image_features(pixel_values=pixel_values)), dim=-1)

    def encode_b(self, b: Inputs) -> Tensor:
        features = self.model.get_text_features(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        return F.normalize(_pooled(features), dim=-1)

    def forward(self, a: Inputs, b: Inputs) -> tuple[Tensor, Tensor]:
        return self.encode_a(a), self.encode_b(b)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the CLIP model as ``config.json`` + ``model.safetensors`` (loadable with ``pretrained``)."""
        target = Path(folder)
        self.model.save_pretrained(target, safe_serialization=True)
        return target


__all__ = ["CLIPDualEncoder"]
