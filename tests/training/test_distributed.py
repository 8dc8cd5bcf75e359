"""In-batch negatives over the global batch: 2 gloo processes at batch B == 1 process at batch 2B."""

from __future__ import annotations

import socket
import warnings
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from distill import distributed
from tests.helpers import (
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_text_training_gathers_negatives_across_processes(tmp_path: Path) -> None:
    """Query-passage training (in-batch + listed negatives, live text cross-encoder) on 2 processes at batch B
    computes the loss and student gradients of one process at batch 2B."""
    from tests.helpers import save_bert, save_cross_encoder, text_batch, text_ddp_worker, text_module, write_beir

    data_dir = write_beir(tmp_path / "beir")
    tokenizer_dir, teacher_dir = save_bert(tmp_path / "bert"), save_cross_encoder(tmp_path / "teacher")
    full_size = 4
    mp.start_processes(text_ddp_worker, nprocs=2, join=True, start_method="fork",
                       args=(2, _free_port(), str(tmp_path), str(data_dir), str(tokenizer_dir), str(teacher_dir),
                             full_size))
    distributed_result = torch.load(tmp_path / "rank0.pt", weights_only=True)
    module = text_module(str(teacher_dir))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        loss = module.training_step(text_batch(str(data_dir), str(tokenizer_dir), str(teacher_dir), full_size), 0)
    loss.backward()
    reference = student_gradients(module)
    assert torch.allclose(distributed_result["loss"], loss.detach(), rtol=0, atol=1e-5)
    assert set(distributed_result["grads"]) == set(reference)
    for name, grad in reference.items():
        assert torch.allclose(distributed_result["grads"][name], grad, rtol=0, atol=1e-5), name
