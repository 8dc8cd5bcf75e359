"""Model inputs of one modality: a dict of tensors that share their first (batch) dimension.

Images are ``{"pixel_values": [N, 3, H, W], "pixel_mask"?: [N, H, W]}``; texts
``{"input_ids", "attention_mask": [N, L]}`` (right-padded), or ``{"text_ids", "text_mask"}`` for a text
cross-encoder teacher. These helpers index, merge and move such dicts without knowing the modality.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

Inputs = dict[str, Tensor]

__all__ = ["Inputs", "batch_size", "concat_inputs", "select_rows", "to_device"]


def batch_size(inputs: Inputs) -> int:
    """The number of items N (dim 0 of the first tensor)."""
    return int(next(iter(inputs.values())).shape[0])


def select_rows(inputs: Inputs, index: Tensor) -> Inputs:
    """The items ``index`` (``[P]`` long) of every tensor, in that order."""
    return {key: value.index_select(0, index.to(value.device)) for key, value in inputs.items()}


def concat_inputs(parts: list[Inputs]) -> Inputs:
    """Concatenate input dicts along the batch, right-padding 2-D tensors (token ids, masks) with 0."""
    if not parts:
        return {}
    merged: Inputs = {}
    for key in parts[0]:
        tensors = [part[key] for part in parts]
        if tensors[0].dim() == 2:
            width = max(t.shape[1] for t in tensors)
            tensors = [F.pad(t, (0, width - t.shape[1])) for t in tensors]
        merged[key] = torch.cat(tensors)
    return merged


def to_device(inputs: Inputs, device: torch.device | str) -> Inputs:
    """Every tensor moved to ``device`` (no copy when it is already there)."""
    return {key: value.to(device, non_blocking=True) for key, value in inputs.items()}
