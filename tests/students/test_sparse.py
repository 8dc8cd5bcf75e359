"""Sparse student: shapes, non-negativity, masking, pruning, scale, and the sparse recipes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distill.students.sparse import SparseDualEncoder, prune_top_k, saturated_max_pool
from tests.helpers import REPO_ROOT
from tests.helpers import QUIET_TRAINER, SPARSE_SPEC, TINY_DATA_OVERRIDES, TINY_STUDENT_OVERRIDES, build


def _batch(datamodule) -> dict:
    return next(iter(datamodule.test_dataloader()))


def test_encodings_are_non_negative_and_vocabulary_sized(tiny_datamodule) -> None:
    student = build(SPARSE_SPEC)
    batch = _batch(tiny_datamodule)
    with torch.no_grad():
        a, b = student.encode_a(batch["a"]), student.encode_b(batch["b"])
    size = batch["a"]["pixel_values"].shape[0]
    assert a.shape == (size, 64) and b.shape == (size, 64)
    assert (a >= 0).all() and (b >= 0).all()
    assert isinstance(student.logit_scale, torch.Tensor) and float(student.logit_scale) == pytest.approx(1.0)
    assert not any(name.endswith("log_scale") for name, _ in student.named_parameters())


def test_padding_tokens_do_not_contribute(tiny_datamodule) -> None:
    student = build(SPARSE_SPEC)
    b = _batch(tiny_datamodule)["b"]
    assert (b["attention_mask"] == 0).any()
    padded = b["attention_mask"] == 0
    changed = {"input_ids": b["input_ids"].masked_fill(padded, 7), "attention_mask": b["attention_mask"]}
    with torch.no_grad():
        torch.testing.assert_close(student.encode_b(changed), student.encode_b(b))


def test_saturated_max_pool_formula() -> None:
    logits = torch.tensor([[[1.0, -2.0], [3.0, 0.5], [10.0, 10.0]]])
    mask = torch.tensor([[1, 1, 0]])
    expected = torch.log1p(torch.tensor([[3.0, 0.5]]))
    torch.testing.assert_close(saturated_max_pool(logits, mask), expected)


def test_prune_top_k_keeps_the_k_largest() -> None:
    weights = torch.rand(6, 50)
    pruned = prune_top_k(weights, 5)
    assert ((pruned > 0).sum(1) == 5).all()
    kept = pruned.topk(5, dim=1)
    torch.testing.assert_close(kept.values, weights.topk(5, dim=1).values)
    assert torch.equal(pruned.gather(1, kept.indices), weights.gather(1, kept.indices))
    assert torch.equal(prune_top_k(weights, 80), weights)
    with pytest.raises(ValueError, match="k >= 1"):
        prune_top_k(weights, 0)


def test_pruning_applies_in_eval_mode_only(tiny_datamodule) -> None:
    spec = {**SPARSE_SPEC, "init_args": {**SPARSE_SPEC["init_args"], "top_k_b": 3, "learn_scale": True}}
    student = build(spec)
    b = _batch(tiny_datamodule)["b"]
    with torch.no_grad():
        assert ((student.encode_b(b) > 0).sum(1) <= 3).all()
        student.train()
        assert ((student.encode_b(b) > 0).sum(1) > 3).any()
    assert isinstance(student.log_scale, torch.nn.Parameter)
    stats = SparseDualEncoder.embedding_stats(torch.tensor([[0.0, 1.0, 2.0, 0.0]]))
    assert float(stats["nnz"]) == 2.0 and float(stats["density"]) == 0.5


@pytest.mark.parametrize("recipe", ["shapes-sparse-infonce.yaml", "shapes-sparse-kl.yaml"])
def test_sparse_recipes_train_one_step(recipe: str, tiny_teacher_dir: Path) -> None:
    from distill.cli.recipe import DistillCLI

    args = ["fit", "--config", str(REPO_ROOT / "configs/demo" / recipe), *TINY_STUDENT_OVERRIDES,
            *TINY_DATA_OVERRIDES, *QUIET_TRAINER, "--trainer.fast_dev_run", "true"]
    if "kl" in recipe:
        args += ["--model.init_args.teacher.init_args.weights", str(tiny_teacher_dir)]
    cli = DistillCLI(args=args)
    assert isinstance(cli.model.student, SparseDualEncoder)
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and "train/loss/flops" in metrics
    if "kl" in recipe:
        assert "train/loss/kl" in metrics


def test_collapsed_sparse_student_stops_with_what_to_do(tmp_path: Path) -> None:
    from distill.training.callbacks import SparseCollapseError, SparseCollapseGuard
    from distill.cli.recipe import DistillCLI

    args = ["--config", str(REPO_ROOT / "configs/demo/shapes-sparse-infonce.yaml"), *TINY_STUDENT_OVERRIDES,
            *TINY_DATA_OVERRIDES, *QUIET_TRAINER, "--trainer.max_steps", "12", "--trainer.logger", "false",
            "--trainer.default_root_dir", str(tmp_path)]
    cli = DistillCLI(args=args, run=False)
    guards = [c for c in cli.trainer.callbacks if isinstance(c, SparseCollapseGuard)]
    assert len(guards) == 1 and guards[0].patience == 5  # configs/demo/trainer.yaml installs it
    with torch.no_grad():  # every caption logit far below 0: relu passes neither weight nor gradient
        cli.model.student.tower_b.encoder.get_output_embeddings().bias.fill_(-1e4)
    with pytest.raises(SparseCollapseError, match=r"side-b vectors have had no non-zero weight for 5 steps "
                                                  r"\(global step 5\).*student_init"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 5


def test_sparse_collapse_guard_ignores_dense_students_and_checks_patience() -> None:
    from types import SimpleNamespace

    from distill.training.callbacks import SparseCollapseGuard

    guard = SparseCollapseGuard(patience=2)
    trainer = SimpleNamespace(callback_metrics={"train/loss": torch.tensor(1.0)}, global_step=3)
    for _ in range(4):  # no nnz metric: a dense student
        guard.on_train_batch_end(trainer, None, None, None, 0)
    trainer.callback_metrics["train/a_nnz"] = torch.tensor(0.0)
    guard.on_train_batch_end(trainer, None, None, None, 0)
    trainer.callback_metrics["train/a_nnz"] = torch.tensor(0.5)  # recovered: the count starts again
    guard.on_train_batch_end(trainer, None, None, None, 0)
    trainer.callback_metrics["train/a_nnz"] = torch.tensor(0.0)
    guard.on_train_batch_end(trainer, None, None, None, 0)
    assert guard._zero_steps["a"] == 1
    with pytest.raises(ValueError, match="patience must be >= 1"):
        SparseCollapseGuard(patience=0)
