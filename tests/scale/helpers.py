"""Tiny, deterministic builders shared by the scale tests (also imported by spawned worker processes)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from distill.data import ShapesDataModule, collate_pairs
from distill.losses import CPRD, DCD, InfoNCE, LogitKL, MarginMSE
from distill.module import DistillationModule
from distill.students import DualEncoder, TransformersTextTower
from distill.students.towers import Tower
from distill.teachers import ShapesCrossEncoder

TINY_TEACHER = dict(vocab_size=64, max_length=32, image_size=32, patch_size=16, width=32, heads=2,
                    image_layers=1, text_layers=1, fusion_layers=1, embed_dim=16, mlp_ratio=2)
BERT_NO_DROPOUT = dict(model_type="bert", vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0)
DATA = dict(num_val=8, num_test=8, image_size=32, eval_batch_size=16)


class PooledConvTower(Tower):
    """A batch-independent image tower (no BatchNorm, no dropout): conv, GELU, global mean pool."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.width = width
        self.conv = nn.Conv2d(3, width, kernel_size=4, stride=4)

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        return nn.functional.gelu(self.conv(inputs["pixel_values"])).mean(dim=(2, 3))


def batch_independent_student() -> DualEncoder:
    """A student whose embeddings of an item do not depend on the rest of the batch."""
    return DualEncoder(PooledConvTower(), TransformersTextTower(config=dict(BERT_NO_DROPOUT)), embed_dim=16)


def all_losses() -> dict[str, Any]:
    return {
        "infonce": InfoNCE(),
        "cprd": CPRD(temperature=0.1, rule="top_m", top_m=3),
        "dcd": DCD(student_temperature=0.1, num_hard_negatives=2),
        "kl": LogitKL(student_temperature=0.1),
        "margin_mse": MarginMSE(),
    }


class FirstCaptionShapes(ShapesDataModule):
    """The shapes data with one train item per image (its first caption), so that a batch holding the
    whole split has every image once, in both directions."""

    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train")
        keep = [row for row in range(len(dataset)) if int(dataset.caption_ids[row]) % self.captions_per_image == 0]
        loader = super().train_dataloader()
        return DataLoader(Subset(dataset, keep), batch_size=self.batch_size, shuffle=True, drop_last=True,
                          generator=torch.Generator().manual_seed(self.seed), collate_fn=loader.collate_fn)


def tiny_shapes(num_train: int, batch_size: int, cls: type[ShapesDataModule] = ShapesDataModule) -> ShapesDataModule:
    datamodule = cls(num_train=num_train, batch_size=batch_size, **DATA)
    datamodule.setup("fit")
    return datamodule


def pair_batch(datamodule: ShapesDataModule, size: int) -> dict[str, Any]:
    """The first ``size`` train items, collated, pixels in float64."""
    dataset = datamodule.dataset("train")
    batch: dict[str, Any] = dict(collate_pairs([dataset[i] for i in range(size)], datamodule.pad_token_id))
    batch["a"] = {"pixel_values": batch["a"]["pixel_values"].double()}
    return batch


def synthetic_cache_fields(batch: dict[str, Any], k: int, seed: int = 0) -> dict[str, Tensor]:
    """Deterministic ``batch["teacher_cache"]`` fields: each row lists k ids, most of them present in the batch
    (other rows' b / a ids), some absent (ids no item has), with random teacher scores."""
    generator = torch.Generator().manual_seed(seed)
    size = batch["a_id"].shape[0]
    fields: dict[str, Tensor] = {}
    for direction, ids in (("a2b", batch["b_id"]), ("b2a", batch["a_id"])):
        other = torch.stack([torch.roll(torch.arange(size), -(shift + 1)) for shift in range(k)], dim=1)
        candidate = ids[other]
        absent = torch.rand(size, k, generator=generator) < 0.2
        candidate = torch.where(absent, torch.full_like(candidate, 10_000_000), candidate)
        fields[f"{direction}_ids"] = candidate
        fields[f"{direction}_scores"] = torch.randn(size, k, generator=generator)
    fields["pair_scores"] = torch.randn(size, generator=generator) + 2.0
    return fields


def distributed_module(teacher_cache: str | None = None) -> DistillationModule:
    """The module of the distributed test: seeded, float64, no dropout, batch-independent student."""
    torch.manual_seed(0)
    student = batch_independent_student()
    teacher = ShapesCrossEncoder(**TINY_TEACHER)
    losses = {"infonce": InfoNCE(), "cprd": CPRD(temperature=0.1, top_m=3), "kl": LogitKL(student_temperature=0.1)}
    module = DistillationModule(student=student, teacher=teacher, losses=losses, num_hard_negatives=3,
                                teacher_cache=teacher_cache, diagnostics=False)
    return module.double()


def local_rows(batch: dict[str, Any], rows: slice) -> dict[str, Any]:
    """Rows of a batch (nested dicts of tensors); text inputs are re-trimmed to the rows' longest item."""
    def take(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: take(item) for key, item in value.items()}
        return value[rows]

    local = take(batch)
    length = int(local["b"]["attention_mask"].sum(1).max())
    local["b"] = {key: value[:, :length] for key, value in local["b"].items()}
    return local


class StepModule(nn.Module):
    """``forward(batch) = module.training_step(batch)``: the wrapping Lightning's DDP strategy also uses."""

    def __init__(self, module: DistillationModule) -> None:
        super().__init__()
        self.module = module

    def forward(self, batch: dict[str, Any]) -> Tensor:
        return self.module.training_step(batch, 0)


def student_gradients(module: DistillationModule) -> dict[str, Tensor]:
    return {name: param.grad.detach().clone() for name, param in module.student.named_parameters()
            if param.grad is not None}


def ddp_worker(rank: int, world: int, port: int, out_dir: str, full_size: int) -> None:
    """One rank of the distributed test: local batch = rows ``[rank*B, (rank+1)*B)`` of the full batch; a DDP
    step per mode ("live" teacher, "cached" scores); rank 0 saves the loss and student gradients."""
    import warnings

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        datamodule = tiny_shapes(num_train=full_size, batch_size=full_size)
        full = pair_batch(datamodule, full_size)
        full["teacher_cache"] = synthetic_cache_fields(full, k=4)
        size = full_size // world
        local = local_rows(full, slice(rank * size, (rank + 1) * size))
        results: dict[str, Any] = {}
        for mode in ("live", "cached"):
            module = distributed_module(teacher_cache="unused" if mode == "cached" else None)
            wrapped = DistributedDataParallel(StepModule(module), find_unused_parameters=True)
            loss = wrapped(local)
            loss.backward()
            results[mode] = {"loss": loss.detach(), "grads": student_gradients(module),
                             "ddp_parameters": sum(1 for p in wrapped.parameters() if p.requires_grad)}
        if rank == 0:
            torch.save(results, Path(out_dir) / "rank0.pt")
    finally:
        dist.destroy_process_group()
