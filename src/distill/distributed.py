"""Cross-process gathers for in-batch negatives over the global batch (DDP, FSDP, multi-node).

With ``W`` processes each holding a local batch of ``B`` pairs, :class:`~distill.training.DistillationModule`
computes its losses on every rank over the *global* batch of ``W * B`` pairs, as open_clip does with
``gather_with_grad`` and ``local_loss=False``:

* student embeddings are gathered **with** gradient (:func:`gather_with_grad`): the forward pass
  concatenates every rank's rows in rank order; the backward pass sums, over ranks, the gradients that
  reach each rank's own rows (the semantics of ``torch.distributed.nn.functional.all_gather``);
* ids, cached teacher scores and the teacher's raw inputs are gathered **without** gradient
  (:func:`gather_tensor`, :func:`gather_inputs`).

Why the gradients match a single process with batch ``W * B``: every rank computes the same global loss
``L``, so rank ``s`` receives ``sum_r dL/de_s = W * dL/de_s`` for its rows ``e_s``; DDP averages the
parameter gradients over the ``W`` ranks, which gives ``dL/dtheta`` exactly. Parameters used directly by
the loss (the student's ``logit_scale``) get ``dL/dtheta`` on every rank and are unchanged by the average.

All helpers are no-ops (return their input) when ``torch.distributed`` is not initialised or the world
size is 1. Local batches may differ in size along dim 0 and, for :func:`gather_inputs`, along the
trailing dims (e.g. right-padded token ids), which are zero-padded to the largest rank's shape.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "gather_inputs",
    "gather_strings",
    "gather_tensor",
    "gather_with_grad",
    "is_distributed",
    "local_rows",
    "rank",
    "world_size",
]


def is_distributed() -> bool:
    """True when ``torch.distributed`` is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def _gather_sizes(size: int, device: torch.device) -> list[int]:
    """Every rank's local size along dim 0, in rank order."""
    local = torch.tensor([size], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, local)
    return [int(s) for s in sizes]


def _all_gather_padded(tensor: Tensor, sizes: list[int]) -> Tensor:
    """``all_gather`` of tensors whose dim 0 differs per rank (``sizes``); returns their concatenation."""
    largest = max(sizes)
    padded = tensor
    if tensor.shape[0] < largest:
        padded = torch.cat([tensor, tensor.new_zeros((largest - tensor.shape[0], *tensor.shape[1:]))])
    buffers = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(buffers, padded.contiguous())
    return torch.cat([buffer[:size] for buffer, size in zip(buffers, sizes)])


class _GatherWithGrad(torch.autograd.Function):
    """Forward: concatenate every rank's ``[B_r, ...]`` rows. Backward: sum the incoming gradient over
    ranks (``all_reduce``) and return this rank's rows."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:  # type: ignore[override]
        sizes = _gather_sizes(tensor.shape[0], tensor.device)
        ctx.sizes = sizes
        ctx.rank = dist.get_rank()
        return _all_gather_padded(tensor, sizes)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]]


def gather_with_grad(tensor: Tensor) -> Tensor:
    """``[B_r, ...]`` on each rank -> ``[sum_r B_r, ...]`` on every rank, differentiable.

    The backward pass returns ``sum over ranks`` of the gradient of this rank's rows (see the module
    docstring for why that, combined with DDP's gradient average, equals single-process training).
    """
    if not is_distributed():
        return tensor
    return _GatherWithGrad.apply(tensor)


@torch.no_grad()
def gather_tensor(tensor: Tensor) -> Tensor:
    """``[B_r, ...]`` on each rank -> ``[sum_r B_r, ...]`` on every rank, without gradient."""
    if not is_distributed():
        return tensor
    return _all_gather_padded(tensor.detach(), _gather_sizes(tensor.shape[0], tensor.device))


@torch.no_grad()
def gather_inputs(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """Gather a modality's input dict (no gradient); trailing dims are zero-padded to the largest rank's.

    Zero padding is right for right-padded ``input_ids`` / ``attention_mask`` pairs (the padded positions
    are masked) and for equally sized images; inputs whose padding value is not 0 must be padded to a
    common shape by the data module.
    """
    if not is_distributed():
        return inputs
    gathered: dict[str, Tensor] = {}
    for key in sorted(inputs):
        value = inputs[key]
        shape = torch.tensor(value.shape[1:], dtype=torch.long, device=value.device)
        shapes = [torch.zeros_like(shape) for _ in range(dist.get_world_size())]
        dist.all_gather(shapes, shape)
        target = torch.stack(shapes).amax(0).tolist()
        pad: list[int] = []
        for have, want in zip(reversed(value.shape[1:]), reversed(target)):
            pad += [0, int(want) - int(have)]
        gathered[key] = gather_tensor(F.pad(value, pad) if any(pad) else value)
    return gathered


def gather_strings(value: str) -> list[str]:
    """Every process's ``value``, in rank order (``[value]`` when not distributed)."""
    if not is_distributed():
        return [value]
    values: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return [str(v) for v in values]


def local_rows(size: int, device: torch.device | None = None) -> slice:
    """This rank's rows ``[start, start + size)`` in the global batch built by the gathers above."""
    if not is_distributed():
        return slice(0, size)
    sizes = _gather_sizes(size, device or torch.device("cpu"))
    start = sum(sizes[: dist.get_rank()])
    return slice(start, start + size)
