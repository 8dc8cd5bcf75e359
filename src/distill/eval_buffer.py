"""Accumulates one evaluation split, batch by batch, into deduplicated a items and all b items."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

Inputs = dict[str, Tensor]


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


@dataclass
class RetrievalSplit:
    """A whole evaluation split: ``a_embeddings [Na, D]``, ``b_embeddings [Nb, D]``, ``b_to_a [Nb]``."""

    a_embeddings: Tensor
    b_embeddings: Tensor
    b_to_a: Tensor
    a_ids: Tensor
    a_inputs: Inputs | None = None
    b_inputs: Inputs | None = None


@dataclass
class RetrievalEvalBuffer:
    """Collects per-batch embeddings (and, optionally, raw inputs for a re-ranking teacher)."""

    keep_inputs: bool = False
    a_ids: list[Tensor] = field(default_factory=list)
    a_embeddings: list[Tensor] = field(default_factory=list)
    b_embeddings: list[Tensor] = field(default_factory=list)
    a_inputs: list[Inputs] = field(default_factory=list)
    b_inputs: list[Inputs] = field(default_factory=list)

    def add(self, a_id: Tensor, a_embeddings: Tensor | None, b_embeddings: Tensor | None,
            a_inputs: Inputs | None = None, b_inputs: Inputs | None = None) -> None:
        self.a_ids.append(a_id.detach().cpu())
        if a_embeddings is not None:
            self.a_embeddings.append(a_embeddings.detach().float().cpu())
        if b_embeddings is not None:
            self.b_embeddings.append(b_embeddings.detach().float().cpu())
        if self.keep_inputs:
            assert a_inputs is not None and b_inputs is not None
            self.a_inputs.append({k: v.detach().cpu() for k, v in a_inputs.items()})
            self.b_inputs.append({k: v.detach().cpu() for k, v in b_inputs.items()})

    def __len__(self) -> int:
        return sum(t.numel() for t in self.a_ids)

    def finalize(self) -> RetrievalSplit:
        """Deduplicate a items by id (first occurrence) and map each b item to its a item."""
        if not self.a_ids:
            raise ValueError("the evaluation split is empty: the dataloader yielded no batches")
        a_id = torch.cat(self.a_ids)
        unique_ids, b_to_a = torch.unique(a_id, sorted=True, return_inverse=True)
        first = torch.full((unique_ids.numel(),), a_id.numel(), dtype=torch.long)
        first.scatter_reduce_(0, b_to_a, torch.arange(a_id.numel()), reduce="amin")
        split = RetrievalSplit(
            a_embeddings=torch.cat(self.a_embeddings)[first] if self.a_embeddings else torch.empty(0),
            b_embeddings=torch.cat(self.b_embeddings) if self.b_embeddings else torch.empty(0),
            b_to_a=b_to_a,
            a_ids=unique_ids,
        )
        if self.keep_inputs:
            a_all = concat_inputs(self.a_inputs)
            split.a_inputs = {k: v[first] for k, v in a_all.items()}
            split.b_inputs = concat_inputs(self.b_inputs)
        return split

    def clear(self) -> None:
        for items in (self.a_ids, self.a_embeddings, self.b_embeddings, self.a_inputs, self.b_inputs):
            items.clear()
