"""Training recipe for the demo cross-encoder teacher (ALBEF-style ITC + ITM on hard negatives).

Loss per batch = ``itc_weight * ITC + itm_weight * ITM`` where
* ITC is the symmetric multi-positive InfoNCE over the unimodal embeddings;
* ITM trains the fusion head on every positive pair, one hard negative caption per image and one
  hard negative image per caption, each sampled in proportion to ``softmax(ITC similarity)``
  over the anchor's negatives (as in ALBEF), and, when the data provides them, binding negatives
  (a caption with the same words in another arrangement). ``itm_loss="bce"`` is ALBEF's binary
  matching loss; ``itm_loss="grouped"`` (default) is a listwise cross-entropy per anchor over its
  positive and its negatives (localised contrastive estimation, Gao et al., ECIR 2021), which
  ranks directly and cannot collapse to "always no match" the way class-imbalanced BCE can.
Validation and test rank by ITC top-``rerank_k`` re-ranked by the teacher's score, through the same
:class:`~distill.evaluation.RecallEvaluator` as distillation runs (the teacher's ITC towers play the
first stage). At the end of ``fit`` the teacher is written with ``save_pretrained`` to ``output_dir``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from distill.data.items import item_store
from distill.evaluation import DEFAULT_KS, EvalContext, RecallEvaluator, Results
from distill.losses import symmetric_infonce_loss
from distill.teachers.scoring import TeacherScorer
from distill.teachers.shapes import ShapesCrossEncoder
from distill.training.optim import optimizer_config, resolve_run_length


def default_teacher_optimizer(params: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=5e-4, weight_decay=0.01)


@torch.no_grad()
def sample_negatives(similarity: Tensor, positive_mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One negative column per row, drawn with probability ``softmax(similarity)`` over non-positives.

    ``[N, M], [N, M] -> [N]``. Rows without a negative fall back to their highest-scoring column.
    """
    logits = similarity.float().masked_fill(positive_mask, float("-inf"))
    has_negative = torch.isfinite(logits).any(1, keepdim=True)
    logits = torch.where(has_negative, logits, similarity.float())
    probs = logits.softmax(dim=1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def grouped_itm_loss(logits: Tensor, size: int) -> Tensor:
    """Listwise ITM loss over logits laid out as ``[pos | neg_text | neg_image | (binding)]``, each ``size`` long.

    Per image: cross-entropy of ``[pos, neg_text, (binding)]`` with target 0; per caption:
    cross-entropy of ``[pos, neg_image]`` with target 0; the two averages are summed.
    """
    blocks = logits.view(-1, size)
    image_group = torch.stack([blocks[0], blocks[1], *blocks[3:]], dim=1)
    text_group = torch.stack([blocks[0], blocks[2]], dim=1)
    target = torch.zeros(size, dtype=torch.long, device=logits.device)
    return F.cross_entropy(image_group, target) + F.cross_entropy(text_group, target)


class CrossEncoderPretraining(L.LightningModule):
    """Trains a :class:`ShapesCrossEncoder` from scratch and saves it for distillation."""

    def __init__(
        self,
        teacher: ShapesCrossEncoder,
        itc_weight: float = 1.0,
        itm_weight: float = 1.0,
        rerank_k: int = 16,
        itm_loss: str = "grouped",
        output_dir: str | None = None,
        optimizer: OptimizerCallable = default_teacher_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        eval_ks: tuple[int, ...] = DEFAULT_KS,
    ) -> None:
        super().__init__()
        for name, value in (("itc_weight", itc_weight), ("itm_weight", itm_weight)):
            if value < 0:
                raise ValueError(f"model.{name} must be >= 0, got {value}")
        if itm_loss not in ("grouped", "bce"):
            raise ValueError(f"model.itm_loss must be 'grouped' or 'bce', got {itm_loss!r}")
        self.itm_loss = itm_loss
        if rerank_k < 1:
            raise ValueError(f"model.rerank_k must be >= 1, got {rerank_k}")
        self.teacher = teacher
        self.itc_weight = itc_weight
        self.itm_weight = itm_weight
        self.rerank_k = rerank_k
        self.output_dir = output_dir
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.evaluator = RecallEvaluator(ks=eval_ks, two_stage_k=rerank_k, two_stage_at=("val", "test"),
                                         diagnostics=False)
        self.test_results: Results = {}

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        teacher = self.teacher
        pixel_values = batch["a"]["pixel_values"]
        input_ids, attention_mask = batch["b"]["input_ids"], batch["b"]["attention_mask"]
        image_tokens = teacher.encode_image_tokens(pixel_values)
        text_tokens = teacher.encode_text_tokens(input_ids, attention_mask)
        emb_a, emb_b = teacher.embed_image_tokens(image_tokens), teacher.embed_text_tokens(text_tokens)
        similarity = emb_a @ emb_b.T
        positives = batch["a_id"].unsqueeze(1) == batch["a_id"].unsqueeze(0)
        itc = symmetric_infonce_loss(similarity, positives, teacher.logit_scale)

        size = similarity.shape[0]
        rows = torch.arange(size, device=similarity.device)
        neg_text = sample_negatives(similarity.detach() * teacher.logit_scale.detach(), positives)
        neg_image = sample_negatives(similarity.detach().T * teacher.logit_scale.detach(), positives.T)
        image_index = torch.cat([rows, rows, neg_image])
        text_index = torch.cat([rows, neg_text, rows])
        logits = teacher.fuse(image_tokens[image_index], text_tokens[text_index], attention_mask[text_index])
        labels = torch.cat([torch.ones(size), torch.zeros(2 * size)]).to(logits)
        if "b_neg" in batch:
            neg_ids, neg_mask = batch["b_neg"]["input_ids"], batch["b_neg"]["attention_mask"]
            binding_tokens = teacher.encode_text_tokens(neg_ids, neg_mask)
            logits = torch.cat([logits, teacher.fuse(image_tokens, binding_tokens, neg_mask)])
            labels = torch.cat([labels, torch.zeros(size).to(labels)])
        if self.itm_loss == "bce":
            itm = F.binary_cross_entropy_with_logits(logits, labels)
        else:
            itm = grouped_itm_loss(logits, size)
        total = self.itc_weight * itc + self.itm_weight * itm
        self.log_dict({"train/loss/itc": itc, "train/loss/itm": itm}, batch_size=size)
        self.log("train/loss", total, prog_bar=True, batch_size=size)
        with torch.no_grad():
            accuracy = ((logits > 0).float() == labels).float().mean()
        self.log("train/itm_accuracy", accuracy, batch_size=size)
        return total

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self.evaluator.update("student", batch, self.teacher.embed_a, self.teacher.embed_b)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self.evaluator.update("student", batch, self.teacher.embed_a, self.teacher.embed_b)

    def on_validation_epoch_start(self) -> None:
        self.evaluator.reset()

    def on_test_epoch_start(self) -> None:
        self.evaluator.reset()

    def _eval_epoch_end(self, stage: str) -> None:
        """``teacher``: ITC top-``rerank_k`` re-ranked by the teacher's score; ``itc``: the ITC towers alone."""
        datamodule = getattr(self.trainer, "datamodule", None)
        context = EvalContext(stage=stage, scorer=TeacherScorer(self.teacher),
                              items=lambda: item_store(datamodule, stage), device=self.device)
        computed = self.evaluator.compute(context)
        if not computed:
            return
        results = {"teacher": computed["two_stage"], "itc": computed["student"]}
        for name, values in results.items():
            prefix = stage if name == "teacher" else f"{stage}/{name}"
            for key, value in values.items():
                self.log(f"{prefix}/{key}", value, prog_bar=key == "rsum" and name == "teacher", sync_dist=True)
        self.log(f"{stage}/score", results["teacher"]["rsum"], sync_dist=True)
        if stage == "test":
            self.test_results = results

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def on_train_end(self) -> None:
        if self.output_dir and self.trainer.is_global_zero:
            path = self.teacher.save_pretrained(Path(self.output_dir))
            print(f"saved teacher to {path}")

    def configure_optimizers(self) -> Any:
        return optimizer_config(self.optimizer_factory, self.scheduler_factory, self.teacher.parameters())

    def on_train_start(self) -> None:
        resolve_run_length(self.trainer)
