"""DistillationModule wiring: teacher frozen, out of the optimizer and the checkpoint."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from distill.evaluation import RecallEvaluator
from distill.inputs import concat_inputs
from distill.losses import InfoNCE, LogitKL
from distill.training import DistillationModule
from distill.training.candidates import MemoryQueue
from distill.training.mining import mine_hard_negatives


def _module(student, teacher, **kwargs) -> DistillationModule:
    losses = {"infonce": InfoNCE(), "kl": LogitKL(student_temperature=0.05, teacher_temperature=1.0)}
    return DistillationModule(student=student, teacher=teacher, losses=losses, num_hard_negatives=3, **kwargs)


def test_teacher_frozen_and_outside_optimizer(tiny_student, tiny_teacher) -> None:
    module = _module(tiny_student, tiny_teacher)
    module.train()
    assert not module.teacher.training
    assert all(not p.requires_grad for p in module.teacher.parameters())
    optimizer = module.configure_optimizers()
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized.isdisjoint({id(p) for p in module.teacher.parameters()})
    assert {id(p) for p in module.student.parameters()} <= optimized


def test_training_step_scores_only_mined_pairs(tiny_student, tiny_teacher, tiny_datamodule) -> None:
    module = _module(tiny_student, tiny_teacher)
    batch = next(iter(tiny_datamodule.train_dataloader()))
    calls: list[int] = []
    original = module.teacher.score_pairs

    def counting(a, b, a_index, b_index):
        calls.append(a_index.numel())
        return original(a, b, a_index, b_index)

    module.teacher.score_pairs = counting  # type: ignore[method-assign]
    inputs, stats = module.build_loss_inputs(batch)
    size = batch["a_id"].numel()
    assert inputs.a2b.student.shape == inputs.a2b.teacher.shape == (size, 4)
    assert sum(calls) == stats["teacher_pairs"] <= 2 * size * 4  # never B x B
    assert sum(calls) < 2 * size * size
    loss = module.training_step(batch, 0)
    loss.backward()
    assert all(p.grad is None for p in module.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.student.parameters())


def test_teacher_candidate_scores_match_direct_scoring(tiny_student, tiny_teacher, tiny_datamodule) -> None:
    module = _module(tiny_student, tiny_teacher)
    batch = next(iter(tiny_datamodule.train_dataloader()))
    inputs, _ = module.build_loss_inputs(batch)
    positives = batch["a_id"].unsqueeze(1) == batch["a_id"].unsqueeze(0)
    candidates = mine_hard_negatives(inputs.similarity, positives, 3)
    row = 2
    direct = tiny_teacher.score(
        {"pixel_values": batch["a"]["pixel_values"][[row] * 4]},
        {k: v[candidates.index[row]] for k, v in batch["b"].items()},
    )
    assert torch.allclose(inputs.a2b.teacher[row], direct, atol=1e-5)


def test_checkpoint_holds_student_only_and_reloads(tmp_path: Path, tiny_student, tiny_teacher, tiny_datamodule) -> None:
    module = _module(tiny_student, tiny_teacher)
    trainer = L.Trainer(max_steps=1, limit_val_batches=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(module, datamodule=tiny_datamodule)
    path = tmp_path / "student.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert state and not any(key.startswith("teacher.") for key in state)
    assert any(key.startswith("student.") for key in state)
    fresh = _module(type(tiny_student)(tiny_student.tower_a, tiny_student.tower_b, embed_dim=16), tiny_teacher)
    fresh.load_state_dict(module.state_dict())
    checkpoint = torch.load(path, weights_only=True)
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"], strict=True)


def test_recipe_errors_are_specific(tiny_student, tiny_teacher) -> None:
    with pytest.raises(ValueError, match="needs a teacher"):
        DistillationModule(student=tiny_student, losses={"kl": LogitKL()})
    with pytest.raises(ValueError, match=r"loss_weights names \['klx'\]"):
        DistillationModule(student=tiny_student, teacher=tiny_teacher, losses={"kl": LogitKL()}, loss_weights={"klx": 1.0})
    with pytest.raises(ValueError, match="loss_weights.kl must be"):
        DistillationModule(student=tiny_student, teacher=tiny_teacher, losses={"kl": LogitKL()}, loss_weights={"kl": -1.0})
    with pytest.raises(ValueError, match="num_hard_negatives"):
        DistillationModule(student=tiny_student, num_hard_negatives=0)


def test_test_stage_reports_student_two_stage_and_teacher(tiny_student, tiny_teacher, tiny_datamodule) -> None:
    module = _module(tiny_student, tiny_teacher, evaluator=RecallEvaluator(two_stage_k=4, evaluate_teacher=True))
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.test(module, datamodule=tiny_datamodule, verbose=False)
    results = module.test_results
    assert set(results) == {"student", "two_stage", "teacher", "teacher_itc"}
    num_images = 8
    num_captions = len(tiny_datamodule.test_dataloader().dataset)
    assert results["two_stage"]["teacher_pairs"] == num_images * 4 + num_captions * 4
    assert results["two_stage"]["exhaustive_pairs"] == num_images * num_captions
    for values in results.values():
        assert 0 <= values["rsum"] <= 600


def test_negative_queue_mines_earlier_batches(tiny_student, tiny_teacher, tiny_datamodule) -> None:
    module = _module(tiny_student, tiny_teacher, candidates=MemoryQueue(16))
    queue = module.candidates[0]
    loader = iter(tiny_datamodule.train_dataloader())
    first, second = next(loader), next(loader)
    _, stats = module.build_loss_inputs(first)
    assert stats["queue_negatives_share"] == 0.0  # nothing queued yet
    assert len(queue) == first["a_id"].numel()
    inputs, stats = module.build_loss_inputs(second)
    assert inputs.a2b.student.shape == (second["a_id"].numel(), 4)
    assert stats["queue_negatives_share"] > 0.0  # 8 queued captions compete with 7 in-batch negatives
    module.build_loss_inputs(next(loader))
    assert len(queue) <= 16


def test_negative_queue_pairs_match_direct_teacher_scores(tiny_student, tiny_teacher, tiny_datamodule) -> None:
    module = _module(tiny_student, tiny_teacher, candidates=MemoryQueue(64))
    module.eval()  # no dropout: the student's scores are reproducible
    loader = iter(tiny_datamodule.train_dataloader())
    first, second = next(loader), next(loader)
    module.build_loss_inputs(first)
    inputs, _ = module.build_loss_inputs(second)
    all_b = concat_inputs([second["b"], first["b"]])
    with torch.no_grad():
        columns = torch.cat([module.student.encode_b(second["b"]), module.student.encode_b(first["b"])])
        sim = module.student.encode_a(second["a"]) @ columns.T
    for row in range(second["a_id"].numel()):
        for slot in range(4):
            column = int((sim[row] - inputs.a2b.student[row, slot]).abs().argmin())
            direct = tiny_teacher.score({"pixel_values": second["a"]["pixel_values"][[row]]},
                                        {k: v[[column]] for k, v in all_b.items()})
            assert torch.allclose(inputs.a2b.teacher[row, slot], direct[0], atol=1e-4)


def test_negative_queue_size_is_validated() -> None:
    with pytest.raises(ValueError, match="MemoryQueue size must be >= 1"):
        MemoryQueue(0)
