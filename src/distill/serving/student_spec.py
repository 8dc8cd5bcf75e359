"""What an export needs to know about a student: a self-contained spec, each tower's modality and vocabulary."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

__all__ = ["embedding_kind", "self_contained_spec", "shares_encoder", "text_vocab_size", "tower_modality"]


def self_contained_spec(spec: Mapping[str, Any], module: nn.Module) -> dict[str, Any]:
    """Rewrite a student spec so rebuilding it needs no download or external file.

    timm towers get ``pretrained: false`` / ``checkpoint_path: null``; a class built from a Hugging
    Face ``pretrained`` name that also accepts ``config`` gets the loaded model's config instead.
    The exported weights replace what either would have loaded.
    """
    args = dict(spec.get("init_args") or {})
    for key, value in args.items():
        child = getattr(module, key, None)
        if isinstance(value, Mapping) and "class_path" in value and isinstance(child, nn.Module):
            args[key] = self_contained_spec(value, child)
    if args.get("pretrained") is True:
        args["pretrained"] = False
    if args.get("checkpoint_path"):
        args["checkpoint_path"] = None
    hf_model = _hf_model(module)
    if isinstance(args.get("pretrained"), str) and hf_model is not None and _accepts(spec["class_path"], "config"):
        hf_config = hf_model.config.to_diff_dict()
        for key in ("transformers_version", "_name_or_path", "architectures"):
            hf_config.pop(key, None)
        hf_config["model_type"] = hf_model.config.model_type
        args["pretrained"], args["config"] = None, hf_config
    return {"class_path": spec["class_path"], "init_args": args}


def _hf_model(module: nn.Module) -> nn.Module | None:
    """The outermost ``transformers.PreTrainedModel`` inside ``module`` (itself included), if any."""
    from transformers import PreTrainedModel

    return next((inner for inner in module.modules() if isinstance(inner, PreTrainedModel)), None)


def _accepts(class_path: str, argument: str) -> bool:
    import importlib
    import inspect

    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return False
    return argument in inspect.signature(cls).parameters


def _tower(student: nn.Module, side: str) -> nn.Module | None:
    tower = getattr(student, f"tower_{side}", None)
    return getattr(student, "tower_a", None) if tower is None and side == "b" else tower  # shared encoder


def tower_modality(student: nn.Module, side: str) -> str:
    """``"image"`` or ``"text"``: what ``student.encode_<side>`` reads."""
    from distill.students import TimmImageTower, TransformersTextTower

    tower = _tower(student, side)
    modality = getattr(tower, "modality", None)
    if modality in ("image", "text"):
        return modality
    if isinstance(tower, TimmImageTower):
        return "image"
    if isinstance(tower, TransformersTextTower):
        return "text"
    if tower is None and hasattr(getattr(student, "model", None), "get_image_features"):
        return "image" if side == "a" else "text"  # a CLIP-style model: images are a, captions b
    raise ValueError(
        f"cannot tell whether {type(student).__name__}.encode_{side} reads images or text: give its tower class a "
        "`modality = 'image' | 'text'` attribute"
    )


def text_vocab_size(student: nn.Module, side: str) -> int:
    """Vocabulary size of the text model behind ``student.encode_<side>``."""
    tower = _tower(student, side)
    size = getattr(tower, "vocab_size", None)
    if size is None:
        config = getattr(_hf_model(tower if tower is not None else student), "config", None)
        config = getattr(config, "text_config", config)
        size = getattr(config, "vocab_size", None)
    if size is None:
        raise ValueError(f"cannot find the vocabulary size of {type(student).__name__}.encode_{side}")
    return int(size)


def shares_encoder(student: nn.Module) -> bool:
    """Whether ``encode_a`` and ``encode_b`` are one function: a text student with one shared encoder."""
    return bool(getattr(student, "shared", False)) and getattr(student, "tower_b", False) is None \
        and tower_modality(student, "a") == tower_modality(student, "b") == "text"


def embedding_kind(student: nn.Module) -> str:
    """``"sparse"``, ``"late-interaction"`` (token embeddings, :class:`~distill.students.LateInteractionEncoder`)
    or ``"dense"``."""
    from distill.students.late_interaction import LateInteractionEncoder
    from distill.students.sparse import SparseDualEncoder

    if isinstance(student, LateInteractionEncoder):
        return "late-interaction"
    return "sparse" if isinstance(student, SparseDualEncoder) else "dense"
