"""DistillationModule for query-passage retrieval (BEIR / MS MARCO layout).

Differences from :class:`~distill.module.DistillationModule`:

* training: a passage that is the positive of two queries of a batch is a positive for both; the
  data's listed negatives (``b_neg``) join each query's candidates after its K in-batch hard
  negatives, so a live teacher scores ``positive + K mined + n listed`` per query; with
  ``teacher_scores_from_data`` and no teacher, the a->b candidates are ``positive + n listed``
  scored by the rows' ``teacher_scores`` (the classic MarginMSE setup, no teacher in the loop);
* evaluation: the val/test loaders yield query batches ``{"a", "a_id"}`` and corpus batches
  ``{"b", "b_id"}``; at the end of the epoch every query is ranked against the whole corpus and
  MRR@10, nDCG@10 and Recall@100 are computed against ``datamodule.relevance(stage)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from distill.eval_buffer import concat_inputs
from distill.losses import DirectionScores, DistillationLoss, LossInputs
from distill.mining import Candidates, mine_hard_negatives, positive_mask_from_ids
from distill.module import DistillationModule, default_optimizer, teacher_views
from distill.students import DualEncoder
from distill.teachers import Teacher
from distill.teachers.base import Inputs
from distill.text_evaluation import text_retrieval_metrics


class TextRetrievalDistillationModule(DistillationModule):
    """Distils a text cross-encoder into a query/passage dual encoder; evaluates MRR/nDCG/Recall.

    Args (beyond :class:`~distill.module.DistillationModule`'s):
        use_listed_negatives: add the batch's ``b_neg`` passages to each query's teacher-scored candidates.
        teacher_scores_from_data: allow ``teacher: null`` with teacher-score losses, reading the
            scores from the batch's ``teacher_scores`` (a->b direction only: use ``directions: a2b``).
        mrr_k / ndcg_k / recall_k: metric cut-offs.
    """

    def __init__(
        self,
        student: DualEncoder,
        teacher: Teacher | None = None,
        losses: dict[str, DistillationLoss] | None = None,
        loss_weights: dict[str, float] | None = None,
        num_hard_negatives: int = 8,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        use_listed_negatives: bool = True,
        teacher_scores_from_data: bool = False,
        mrr_k: int = 10,
        ndcg_k: int = 10,
        recall_k: int = 100,
    ) -> None:
        self.teacher_scores_from_data = teacher_scores_from_data  # read by _check_losses during __init__
        super().__init__(student=student, teacher=teacher, losses=losses, loss_weights=loss_weights,
                         num_hard_negatives=num_hard_negatives, optimizer=optimizer, lr_scheduler=lr_scheduler,
                         two_stage_k=0)
        self.use_listed_negatives = use_listed_negatives
        self.mrr_k, self.ndcg_k, self.recall_k = mrr_k, ndcg_k, recall_k
        self._text_buffers: dict[str, dict[str, list[Tensor]]] = {}
        self._checked_views = False

    def _check_losses(self) -> None:
        if self.teacher is None and self.teacher_scores_from_data:
            for name, loss in self.losses.items():
                if getattr(loss, "requires_teacher_embeddings", False):
                    raise ValueError(f"loss '{name}' ({type(loss).__name__}) needs a live teacher's embeddings")
            return
        super()._check_losses()

    # ------------------------------------------------------------------ training
    @property
    def needs_b2a(self) -> bool:
        """Whether a teacher-score loss reads the passage -> query direction."""
        return any(
            getattr(loss, "directions", "both") in ("both", "b2a")
            for loss in self.losses.values()
            if getattr(loss, "requires_teacher_scores", getattr(loss, "requires_teacher", False))
        )

    def _check_views(self, batch: Mapping[str, Any]) -> None:
        """Fail early, naming the data field, when the teacher reads inputs the batch lacks."""
        if self._checked_views or self.teacher is None or not self.needs_teacher_scores:
            return
        from distill.teachers.hf_cross_encoder import TEXT_KEYS, TextCrossEncoderTeacher

        teacher_a, teacher_b = teacher_views(batch)
        reads = TEXT_KEYS if isinstance(self.teacher, TextCrossEncoderTeacher) else ()
        missing = [key for key in reads if key not in teacher_a or key not in teacher_b]
        if missing:
            raise ValueError(
                f"{type(self.teacher).__name__} needs {list(reads)} in the batch's teacher_a / teacher_b, but the "
                f"data module provides {sorted(teacher_b)}: set data.init_args.teacher_tokenizer to the "
                "teacher's folder"
            )
        self._checked_views = True

    def build_loss_inputs(self, batch: Mapping[str, Any]) -> tuple[LossInputs, dict[str, float]]:
        self._check_views(batch)
        emb_a = self.student.encode_a(batch["a"])
        emb_b = self.student.encode_b(batch["b"])
        a_id, b_id = batch["a_id"], batch["b_id"]
        similarity = emb_a @ emb_b.T
        positives = positive_mask_from_ids(a_id, a_id) | (b_id.unsqueeze(1) == b_id.unsqueeze(0))
        listed = self.use_listed_negatives and "b_neg" in batch
        emb_neg = self.student.encode_b(batch["b_neg"]) if listed else None
        stats: dict[str, float] = {}
        a2b = b2a = None
        if self.needs_teacher_scores and self.teacher is None:
            a2b = self._cached_direction(batch, emb_a, emb_b, emb_neg)
        elif self.needs_teacher_scores:
            a2b, b2a, pairs = self._teacher_directions(batch, similarity, positives, emb_a, emb_neg)
            stats["teacher_pairs"] = float(pairs)
        inputs = LossInputs(similarity=similarity, positive_mask=positives, logit_scale=self.student.logit_scale,
                            a2b=a2b, b2a=b2a, student_embeddings=(emb_a, emb_b))
        return inputs, stats

    def _listed(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        """Column ids ``[B, n]`` of each query's listed negatives in ``cat(b, b_neg)`` and their validity."""
        neg_id = batch["b_neg_id"]
        size, n = neg_id.shape
        rows = torch.arange(size, device=neg_id.device).unsqueeze(1)
        columns = size + rows * n + torch.arange(n, device=neg_id.device)
        return columns, neg_id != batch["b_id"].unsqueeze(1)

    def _teacher_directions(self, batch: Mapping[str, Any], similarity: Tensor, positives: Tensor, emb_a: Tensor,
                            emb_neg: Tensor | None) -> tuple[DirectionScores, DirectionScores | None, int]:
        k = min(self.num_hard_negatives, similarity.shape[1] - 1)
        cand_a2b = mine_hard_negatives(similarity, positives, k)
        teacher_a, teacher_b = teacher_views(batch)
        full = similarity
        if emb_neg is not None:
            columns, valid = self._listed(batch)
            cand_a2b = Candidates(torch.cat([cand_a2b.index, columns], 1), torch.cat([cand_a2b.valid, valid], 1))
            full = torch.cat([similarity, emb_a @ emb_neg.T], dim=1)
            teacher_b = concat_inputs([teacher_b, batch.get("teacher_b_neg", batch["b_neg"])])
        b2a = None
        if self.needs_b2a:
            cand_b2a = mine_hard_negatives(similarity.T, positives.T, k)
            teacher_a2b, teacher_b2a, pairs = self.teacher_candidate_scores(teacher_a, teacher_b, cand_a2b, cand_b2a)
            b2a = DirectionScores(similarity.T.gather(1, cand_b2a.index), teacher_b2a, cand_b2a.valid)
        else:  # no loss reads passage -> query scores: the teacher scores the a->b candidates only
            teacher_a2b, pairs = self._score_candidates(teacher_a, teacher_b, cand_a2b)
        a2b = DirectionScores(full.gather(1, cand_a2b.index), teacher_a2b, cand_a2b.valid)
        return a2b, b2a, pairs

    @torch.no_grad()
    def _score_candidates(self, a: Inputs, b: Inputs, candidates: Candidates) -> tuple[Tensor, int]:
        """Teacher scores ``[N, C]`` of each anchor's candidate columns, each distinct pair once."""
        assert self.teacher is not None
        rows = torch.arange(candidates.index.shape[0], device=candidates.index.device).unsqueeze(1)
        a_index = rows.expand_as(candidates.index).reshape(-1)
        b_index = candidates.index.reshape(-1)
        width = int(b_index.max()) + 1
        unique, inverse = torch.unique(a_index * width + b_index, return_inverse=True)
        scores = self.teacher.score_pairs(a, b, unique // width, unique % width).float()
        return scores[inverse].view_as(candidates.index), unique.numel()

    def _cached_direction(self, batch: Mapping[str, Any], emb_a: Tensor, emb_b: Tensor,
                          emb_neg: Tensor | None) -> DirectionScores:
        cached = batch.get("teacher_scores")
        if cached is None or emb_neg is None:
            raise ValueError(
                "model.teacher is null and teacher_scores_from_data is set, but the batch has no teacher_scores / "
                "b_neg: give every train_file row teacher_scores for its positive and negative ids, and "
                "data.init_args.num_negatives >= 1"
            )
        size = emb_a.shape[0]
        negatives = emb_neg.view(size, -1, emb_neg.shape[-1])
        student = torch.cat([(emb_a * emb_b).sum(-1, keepdim=True), torch.einsum("bd,bnd->bn", emb_a, negatives)], 1)
        _, valid_neg = self._listed(batch)
        valid = torch.cat([torch.ones_like(valid_neg[:, :1]), valid_neg], 1) & torch.isfinite(cached)
        if not bool(valid[:, 0].all()):
            raise ValueError("a train_file row has no teacher_scores entry for its positive passage")
        return DirectionScores(student, cached.float().masked_fill(~valid, 0.0), valid)

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, stage: str, batch: Mapping[str, Any]) -> None:
        buffer = self._text_buffers.setdefault(stage, {"q": [], "q_id": [], "c": [], "c_id": []})
        if "a" in batch:
            buffer["q"].append(self.student.encode_a(batch["a"]).detach().float().cpu())
            buffer["q_id"].append(batch["a_id"].detach().cpu())
        if "b" in batch:
            if "b_id" not in batch:
                raise KeyError("corpus batches need 'b_id' (passage ids) for text retrieval evaluation")
            buffer["c"].append(self.student.encode_b(batch["b"]).detach().float().cpu())
            buffer["c_id"].append(batch["b_id"].detach().cpu())

    def _relevance(self, stage: str) -> Mapping[int, Mapping[int, float]]:
        datamodule = getattr(self.trainer, "datamodule", None)
        relevance = getattr(datamodule, "relevance", None)
        if relevance is None:
            raise RuntimeError(
                f"{type(self).__name__} evaluates with the data module's relevance(stage) "
                f"({{query id: {{passage id: grade}}}}), which {type(datamodule).__name__} lacks: use "
                "distill.data.beir.BeirTextDataModule"
            )
        return relevance(stage)

    def _eval_epoch_end(self, stage: str) -> dict[str, float]:
        buffer = self._text_buffers.pop(stage, None)
        if not buffer or not buffer["q"] or not buffer["c"]:
            return {}
        query_ids, first = _first_occurrence(torch.cat(buffer["q_id"]))
        corpus_ids, first_c = _first_occurrence(torch.cat(buffer["c_id"]))
        metrics = text_retrieval_metrics(
            torch.cat(buffer["q"])[first], torch.cat(buffer["c"])[first_c], query_ids, corpus_ids,
            self._relevance(stage), self.mrr_k, self.ndcg_k, self.recall_k,
        )
        for key, value in metrics.items():
            self.log(f"{stage}/{key}", value, prog_bar=key == f"ndcg@{self.ndcg_k}")
        if stage == "test":
            self.test_results = {"student": metrics}
        return metrics

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        if "a" in batch:
            out.update(a_id=batch["a_id"], a=self.student.encode_a(batch["a"]))
        if "b" in batch:
            out.update(b_id=batch["b_id"], b=self.student.encode_b(batch["b"]))
        return out


def _first_occurrence(ids: Tensor) -> tuple[Tensor, Tensor]:
    """Distinct ids (sorted) and the position of each one's first occurrence in ``ids``."""
    unique, inverse = torch.unique(ids, sorted=True, return_inverse=True)
    first = torch.full((unique.numel(),), ids.numel(), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(ids.numel()), reduce="amin")
    return unique, first
