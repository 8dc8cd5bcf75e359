"""One ONNX graph per student tower, traced from ``student.encode_a`` / ``encode_b``.

A pooled student's graph outputs ``embedding [batch, D]``; a late-interaction student's
(:class:`~distill.students.LateInteractionEncoder`) outputs ``tokens [batch, tokens, D]`` (L2-normalised token
vectors; rows where the mask is false are padding, their values arbitrary) and ``mask [batch, tokens]`` (bool:
the text tower's ``attention_mask``, all true for image patches).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill.io import atomic_path

DEFAULT_OPSET = 17
# The opsets the tower graphs are exported at: scaled dot-product attention needs 14; 20 is the newest
# the TorchScript exporter writes.
SUPPORTED_OPSETS = range(14, 21)

__all__ = ["DEFAULT_OPSET", "SUPPORTED_OPSETS", "export_onnx", "sample_inputs"]


def _outputs(encoded: Any) -> Tensor | tuple[Tensor, Tensor]:
    """A pooled ``[B, D]`` embedding as it is; token embeddings as ``(tokens [B, T, D], mask [B, T] bool)``."""
    tokens = getattr(encoded, "tokens", None)
    return encoded if tokens is None else (tokens, encoded.mask)


class _ImageTower(nn.Module):
    def __init__(self, student: nn.Module, side: str) -> None:
        super().__init__()
        self.student, self.side = student, side

    def forward(self, pixel_values: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return _outputs(getattr(self.student, f"encode_{self.side}")({"pixel_values": pixel_values}))


class _TextTower(nn.Module):
    def __init__(self, student: nn.Module, side: str) -> None:
        super().__init__()
        self.student, self.side = student, side

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return _outputs(getattr(self.student, f"encode_{self.side}")({"input_ids": input_ids,
                                                                     "attention_mask": attention_mask}))


def sample_inputs(spec: Mapping[str, Any], batch: int = 2) -> dict[str, Tensor]:
    """Example inputs of a tower spec (as written in ``student_config.json``), for tracing and tests."""
    generator = torch.Generator().manual_seed(0)
    if spec["modality"] == "image":
        size = int(spec["image_size"])
        return {"pixel_values": torch.randn(batch, 3, size, size, generator=generator)}
    length = min(8, int(spec["max_length"]))
    ids = torch.randint(0, int(spec["vocab_size"]), (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[-1, length // 2:] = 0  # a padded row, so the traced graph keeps the attention mask
    return {"input_ids": ids, "attention_mask": mask}


def export_onnx(student: nn.Module, side: str, spec: Mapping[str, Any], path: Path, opset: int = DEFAULT_OPSET) -> None:
    """Trace ``student.encode_<side>`` into an ONNX graph at ``path`` (atomically).

    Inputs: ``pixel_values [batch, 3, H, W]`` or ``input_ids, attention_mask [batch, sequence]``;
    output ``embedding [batch, D]``, or ``tokens [batch, tokens, D]`` and ``mask [batch, tokens]`` for a
    late-interaction student (module docstring). Uses the TorchScript exporter (``dynamo=False``).
    """
    image = spec["modality"] == "image"
    wrapper = (_ImageTower if image else _TextTower)(student, side).eval()
    example = sample_inputs(spec, batch=2)
    names = list(example)
    axes = {name: {0: "batch"} if image else {0: "batch", 1: "sequence"} for name in names}
    with torch.no_grad():
        late = isinstance(wrapper(*(example[name] for name in names)), tuple)
    outputs = ["tokens", "mask"] if late else ["embedding"]
    for name in outputs:
        axes[name] = {0: "batch"} if name == "embedding" else {0: "batch", 1: "tokens"}
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, tuple(example[name] for name in names), str(tmp), input_names=names,
            output_names=outputs, dynamic_axes=axes, opset_version=opset, dynamo=False,
        )
