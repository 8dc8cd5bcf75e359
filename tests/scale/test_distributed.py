"""In-batch negatives over the global batch: 2 gloo processes at batch B == 1 process at batch 2B."""

from __future__ import annotations

import socket
import warnings
from pathlib import Path

import torch
import torch.multiprocessing as mp

from distill import distributed
from tests.scale.helpers import (
    ddp_worker,
    distributed_module,
    pair_batch,
    student_gradients,
    synthetic_cache_fields,
    tiny_shapes,
)

FULL_BATCH = 12  # 6 pairs per rank


def _free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return int(handle.getsockname()[1])


def test_helpers_are_identities_without_a_process_group() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    assert not distributed.is_distributed() and distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.gather_with_grad(x) is x and distributed.gather_tensor(x) is x
    assert distributed.local_rows(3) == slice(0, 3)


def test_two_processes_match_one_process_at_twice_the_batch(tmp_path: Path) -> None:
    # fork: the workers reuse this process's imports (a spawned worker spends ~8 s importing torch and Lightning)
    mp.start_processes(ddp_worker, args=(2, _free_port(), str(tmp_path), FULL_BATCH), nprocs=2, join=True,
                       start_method="fork")
    distributed_results = torch.load(tmp_path / "rank0.pt", weights_only=True)

    datamodule = tiny_shapes(num_train=FULL_BATCH, batch_size=FULL_BATCH)
    full = pair_batch(datamodule, FULL_BATCH)
    full["teacher_cache"] = synthetic_cache_fields(full, k=4)
    for mode in ("live", "cached"):
        module = distributed_module(teacher_cache="unused" if mode == "cached" else None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # self.log without a Trainer
            loss = module.training_step(full, 0)
        loss.backward()
        reference = student_gradients(module)
        result = distributed_results[mode]
        assert torch.allclose(result["loss"], loss.detach(), rtol=0, atol=1e-5), (mode, result["loss"], loss)
        assert set(result["grads"]) == set(reference)
        for name, grad in reference.items():
            assert torch.allclose(result["grads"][name], grad, rtol=0, atol=1e-5), (mode, name)
        assert all(p.grad is None for p in module.teacher.parameters())
