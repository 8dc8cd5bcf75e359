"""Encoder towers: each maps one modality's inputs to a pooled feature ``[B, width]``."""

from __future__ import annotations

from typing import Any, Literal

import timm
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel

Inputs = dict[str, Tensor]


class Tower(nn.Module):
    """A tower reads one modality's input dict and returns pooled features ``[B, width]``."""

    width: int

    def forward(self, inputs: Inputs) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class TimmImageTower(Tower):
    """Any timm backbone, pooled (``num_classes=0``). Reads ``inputs["pixel_values"]`` ``[B, 3, H, W]``.

    ``pretrained`` loads timm's weights (needs the hub or a local cache); ``checkpoint_path`` loads a
    local file. ``model_kwargs`` pass through to ``timm.create_model`` (e.g. ``img_size`` for ViTs).
    """

    def __init__(
        self,
        model_name: str = "resnet10t",
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        try:
            self.backbone = timm.create_model(
                model_name, pretrained=pretrained, num_classes=0, checkpoint_path=checkpoint_path or "",
                **(model_kwargs or {}),
            )
        except RuntimeError as error:
            raise ValueError(f"timm could not build image tower '{model_name}' ({error}): check model_name against "
                             "timm.list_models()") from None
        self.width = self.output_width()

    def output_width(self) -> int:
        """Pooled output width: models with a pre-logits head (e.g. MobileNetV3) report it separately."""
        return int(getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features)

    def forward(self, inputs: Inputs) -> Tensor:
        return self.backbone(inputs["pixel_values"])


class TransformersTextTower(Tower):
    """A Hugging Face encoder (``AutoModel``) with CLS or mean pooling.

    Reads ``inputs["input_ids"]`` and ``inputs["attention_mask"]`` ``[B, L]``. Either
    ``pretrained`` (a local ``save_pretrained`` folder or a hub id) or ``config`` (a dict with
    ``model_type`` and the config fields, for a randomly initialised model) is given.
    ``trust_remote_code`` stays off unless the recipe sets it.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        config: dict[str, Any] | None = None,
        pooling: Literal["cls", "mean"] = "cls",
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = build_transformers_model(AutoModel, "TransformersTextTower", pretrained, config,
                                                trust_remote_code)
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        self.pooling = pooling
        self.width = int(self.encoder.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.encoder.config.vocab_size)

    def forward(self, inputs: Inputs) -> Tensor:
        mask = inputs["attention_mask"]
        hidden = self.encoder(input_ids=inputs["input_ids"], attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def build_transformers_model(auto_class: Any, owner: str, pretrained: str | None, config: dict[str, Any] | None,
                             trust_remote_code: bool = False) -> nn.Module:
    """``auto_class.from_pretrained(pretrained)`` (safetensors only) or ``auto_class.from_config(config)``.

    Exactly one of ``pretrained`` (a local ``save_pretrained`` folder or a hub id) or ``config`` (a
    dict with ``model_type`` and config fields: random weights) is given; the model is returned in
    train mode (``from_pretrained`` returns eval mode and Lightning does not switch it back).
    BERT-style poolers are skipped: towers pool themselves, and an unused pooler breaks plain DDP.
    """
    if (pretrained is None) == (config is None):
        raise ValueError(f"{owner} needs exactly one of `pretrained` or `config`")
    if pretrained is not None:
        model = auto_class.from_pretrained(pretrained, trust_remote_code=trust_remote_code, use_safetensors=True,
                                           **(_no_pooler(pretrained) if auto_class is AutoModel else {}))
        return model.train()
    settings = dict(config or {})
    model_type = settings.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"{owner} `config` needs a `model_type` key (e.g. 'bert')")
    model_config = AutoConfig.for_model(model_type, **settings)
    return auto_class.from_config(model_config, **(_no_pooler(model_config) if auto_class is AutoModel else {}))


def _no_pooler(source: Any) -> dict[str, Any]:
    """Skip BERT-style poolers: towers pool themselves, and an unused pooler breaks plain DDP."""
    config = source if not isinstance(source, str) else AutoConfig.from_pretrained(source)
    return {"add_pooling_layer": False} if getattr(config, "model_type", "") in POOLER_MODEL_TYPES else {}


POOLER_MODEL_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "camembert"})


def count_parameters(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def set_gradient_checkpointing(tower: nn.Module, enabled: bool) -> None:
    """Turn on activation checkpointing where the wrapped library supports it."""
    inner = getattr(tower, "backbone", None) or getattr(tower, "encoder", None)
    if inner is None or not enabled:
        return
    if hasattr(inner, "set_grad_checkpointing"):
        inner.set_grad_checkpointing(True)
    elif hasattr(inner, "gradient_checkpointing_enable"):
        # transformers >= 5 calls it activation_checkpointing_enable (the old name is deprecated)
        getattr(inner, "activation_checkpointing_enable", inner.gradient_checkpointing_enable)()


def enable_gradient_checkpointing(student: nn.Module) -> list[str]:
    """Turn on activation checkpointing in the student's towers; returns the names of the parts switched on.

    Towers are ``student.tower_a`` / ``student.tower_b`` (or the student itself, e.g. a CLIP model); each
    goes through :func:`set_gradient_checkpointing`, which supports timm backbones (``set_grad_checkpointing``)
    and transformers encoders (``gradient_checkpointing_enable``).
    """
    parts = {name: getattr(student, name) for name in ("tower_a", "tower_b") if getattr(student, name, None) is not None}
    if not parts and hasattr(student, "model"):
        parts = {"model": student.model}
    enabled = []
    for name, part in parts.items():
        inner = getattr(part, "backbone", None) or getattr(part, "encoder", None)
        if inner is None and hasattr(part, "gradient_checkpointing_enable"):
            # transformers >= 5 names it activation_checkpointing_enable (the old name is deprecated)
            getattr(part, "activation_checkpointing_enable", part.gradient_checkpointing_enable)()
            enabled.append(name)
        elif inner is not None and (hasattr(inner, "set_grad_checkpointing")
                                    or hasattr(inner, "gradient_checkpointing_enable")):
            set_gradient_checkpointing(part, True)
            enabled.append(name)
    if not enabled:
        raise ValueError(
            f"model.init_args.gradient_checkpointing: {type(student).__name__} has no tower that supports "
            "activation checkpointing (timm backbones or transformers encoders under tower_a / tower_b); set it "
            "to false"
        )
    return enabled


__all__ = ["TimmImageTower", "Tower", "TransformersTextTower", "count_parameters", "enable_gradient_checkpointing",
           "set_gradient_checkpointing"]
