"""Two training steps of distillation for each teacher/student pair, on tiny models and data."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from distill.data import BeirTextDataModule, PairedImageTextDataModule
from distill.losses import CPRD, DCD, InfoNCE, MarginMSE, infonce_with_extras_loss
from distill.evaluation import QrelsEvaluator, RecallEvaluator
from distill.students import CLIPDualEncoder, DualEncoder, TextDualEncoder, TimmImageTower, TransformersTextTower
from distill.teachers import BlipITMTeacher, TextCrossEncoderTeacher, ViltRetrievalTeacher
from distill.training import DistillationModule
from distill.training.candidates import InBatchNegatives, ListedNegatives

# Tiny randomly initialised teachers score every pair almost alike; the loss guard says so, as it should.
pytestmark = pytest.mark.filterwarnings("ignore:student/teacher scale mismatch:UserWarning")



def _trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    settings = dict(max_steps=2, limit_val_batches=2, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu")
    settings.update(kwargs)
    return L.Trainer(**settings)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items() if v.dtype.is_floating_point)


def test_blip_itm_to_clip_cprd(tmp_path: Path, tiny_models, image_text_data) -> None:
    data = PairedImageTextDataModule(annotations=str(image_text_data["karpathy"]),
                                     image_root=str(image_text_data["image_root"]),
                                     student_processor=str(tiny_models.clip), teacher_processor=str(tiny_models.blip),
                                     batch_size=4, eval_batch_size=6)
    module = DistillationModule(
        student=CLIPDualEncoder(pretrained=str(tiny_models.clip)), teacher=BlipITMTeacher(str(tiny_models.blip)),
        losses={"infonce": InfoNCE(), "cprd": CPRD(temperature=0.05, top_m=2)}, num_hard_negatives=3,
        evaluator=RecallEvaluator(two_stage_k=3, diagnostics=False),
    )
    student, teacher = _snapshot(module.student), _snapshot(module.teacher)
    trainer = _trainer(tmp_path)
    trainer.fit(module, datamodule=data)
    assert _changed(student, module.student) and not _changed(teacher, module.teacher)
    assert torch.isfinite(trainer.callback_metrics["train/loss/cprd"])
    trainer.test(module, datamodule=data, verbose=False)
    assert {"student", "two_stage"} <= set(module.test_results)


def test_vilt_to_timm_bert_dcd(tmp_path: Path, tiny_models, image_text_data) -> None:
    data = PairedImageTextDataModule(annotations=str(image_text_data["jsonl"]),
                                     image_root=str(image_text_data["image_root"]),
                                     student_tokenizer=str(tiny_models.bert), image_size=32,
                                     teacher_processor=str(tiny_models.vilt), batch_size=4, eval_batch_size=6)
    student = DualEncoder(TimmImageTower("resnet10t"), TransformersTextTower(pretrained=str(tiny_models.bert)),
                          embed_dim=16)
    module = DistillationModule(
        student=student, teacher=ViltRetrievalTeacher(str(tiny_models.vilt)),
        losses={"infonce": InfoNCE(), "dcd": DCD(num_hard_negatives=2)}, num_hard_negatives=3,
        evaluator=RecallEvaluator(two_stage_k=0, diagnostics=False),
    )
    before = _snapshot(module.student)
    trainer = _trainer(tmp_path, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    assert _changed(before, module.student)
    assert torch.isfinite(trainer.callback_metrics["train/loss/dcd"])


def _text_data(beir_dir: Path, tiny_models, **kwargs) -> BeirTextDataModule:
    args = dict(data_dir=str(beir_dir), student_tokenizer=str(tiny_models.bert), train_file="train_triples.jsonl",
                teacher_tokenizer=str(tiny_models.cross_encoder), batch_size=4, eval_batch_size=4, num_negatives=1)
    args.update(kwargs)
    return BeirTextDataModule(**args)


def test_cross_encoder_to_text_dual_encoder_margin_mse(tmp_path: Path, tiny_models, beir_dir: Path) -> None:
    module = DistillationModule(
        student=TextDualEncoder(pretrained=str(tiny_models.bert)),
        teacher=TextCrossEncoderTeacher(str(tiny_models.cross_encoder)),
        losses={"infonce": InfoNCE(), "margin_mse": MarginMSE(directions="a2b")}, num_hard_negatives=2,
        candidates=[InBatchNegatives(), ListedNegatives()], evaluator=QrelsEvaluator(two_stage_k=3),
    )
    data = _text_data(beir_dir, tiny_models)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    inputs, stats = module.build_loss_inputs(batch)
    assert inputs.a2b.student.shape == (4, 1 + 2 + 1) and inputs.b2a is None  # positive, 2 mined, 1 listed
    assert stats["teacher_pairs"] <= 4 * 4
    before = _snapshot(module.student)
    trainer = _trainer(tmp_path)
    trainer.fit(module, datamodule=data)
    assert _changed(before, module.student)
    assert {"val/mrr@10", "val/ndcg@10", "val/recall@100"} <= set(trainer.callback_metrics)
    assert "val/diagnostics/spearman" in trainer.callback_metrics  # diagnostics work for text too
    trainer.test(module, datamodule=data, verbose=False)
    assert module.test_results["student"]["queries"] == 4
    assert module.test_results["two_stage"]["teacher_pairs"] == 4 * 3  # each query's top-3 re-ranked


def test_margin_mse_from_cached_teacher_scores(tmp_path: Path, tiny_models, beir_dir: Path) -> None:
    module = DistillationModule(
        student=TextDualEncoder(pretrained=str(tiny_models.bert)), teacher=None,
        candidates=ListedNegatives(scores_from_data=True), evaluator=QrelsEvaluator(),
        losses={"margin_mse": MarginMSE(directions="a2b")},
    )
    data = _text_data(beir_dir, tiny_models, teacher_tokenizer=None, num_negatives=2)
    data.setup("fit")
    inputs, _ = module.build_loss_inputs(next(iter(data.train_dataloader())))
    assert inputs.a2b.student.shape == inputs.a2b.teacher.shape == (4, 3)
    assert torch.all(inputs.a2b.teacher[:, 0] == 8.0)
    trainer = _trainer(tmp_path, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    with pytest.raises(ValueError, match="needs a teacher"):
        DistillationModule(student=TextDualEncoder(pretrained=str(tiny_models.bert)),
                           losses={"margin_mse": MarginMSE()})


def test_infonce_over_listed_hard_negatives_needs_no_teacher(tmp_path: Path, tiny_models, beir_dir: Path) -> None:
    """InfoNCE(hard_negatives) ranks each query against the batch's passages and every listed negative."""
    module = DistillationModule(
        student=TextDualEncoder(pretrained=str(tiny_models.bert)), teacher=None, candidates=ListedNegatives(),
        evaluator=QrelsEvaluator(), losses={"infonce": InfoNCE(hard_negatives=True)},
    )
    assert module.directions == ["a2b"] and not module.needs_teacher_scores
    data = _text_data(beir_dir, tiny_models, teacher_tokenizer=None, num_negatives=2)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module.eval()  # no dropout: the hand computation below sees the same embeddings
    inputs, stats = module.build_loss_inputs(batch)
    assert inputs.a2b is None and stats["teacher_pairs"] == 0
    with torch.no_grad():
        a, b = module.student.encode_a(batch["a"]), module.student.encode_b(batch["b"])
        negatives = module.student.encode_b(batch["b_neg"])  # [B * 2, D], each query's 2 listed negatives
    assert inputs.extra_similarity.shape == (4, 8)
    torch.testing.assert_close(inputs.extra_similarity.detach(), a @ negatives.T, atol=1e-5, rtol=0)
    own = batch["b_neg_id"].reshape(-1).unsqueeze(0) == batch["b_id"].unsqueeze(1)
    assert torch.equal(inputs.extra_valid, ~own)
    positives = batch["b_id"].unsqueeze(1) == batch["b_id"].unsqueeze(0)
    expected = infonce_with_extras_loss(a @ b.T, positives | torch.eye(4, dtype=torch.bool), a @ negatives.T, ~own,
                                        module.student.logit_scale.detach())
    assert module.losses["infonce"](inputs).item() == pytest.approx(expected.item(), abs=1e-4)
    before = _snapshot(module.student)
    _trainer(tmp_path, limit_val_batches=0).fit(module, datamodule=data)
    assert _changed(before, module.student)


def test_teacher_without_its_own_views_fails_clearly(tmp_path: Path, tiny_models, image_text_data,
                                                      beir_dir: Path) -> None:
    data = PairedImageTextDataModule(annotations=str(image_text_data["karpathy"]),
                                     image_root=str(image_text_data["image_root"]),
                                     student_tokenizer=str(tiny_models.bert), image_size=24, batch_size=4)
    student = DualEncoder(TimmImageTower("resnet10t"), TransformersTextTower(pretrained=str(tiny_models.bert)),
                          embed_dim=16)
    module = DistillationModule(student=student, teacher=BlipITMTeacher(str(tiny_models.blip)),
                                losses={"cprd": CPRD(top_m=2)}, num_hard_negatives=2,
                                evaluator=RecallEvaluator(diagnostics=False))
    with pytest.raises(ValueError, match="expects 32x32 images.*teacher_processor"):
        _trainer(tmp_path, limit_val_batches=0).fit(module, datamodule=data)
    text = DistillationModule(
        student=TextDualEncoder(pretrained=str(tiny_models.bert)),
        teacher=TextCrossEncoderTeacher(str(tiny_models.cross_encoder)), losses={"margin_mse": MarginMSE()},
        evaluator=QrelsEvaluator(),
    )
    with pytest.raises(ValueError, match="text_ids.*teacher_tokenizer"):
        _trainer(tmp_path, limit_val_batches=0).fit(text, datamodule=_text_data(beir_dir, tiny_models,
                                                                                 teacher_tokenizer=None))
