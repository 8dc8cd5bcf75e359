"""Candidates listed by the data: each query's negatives from a training file (``b_neg`` in the batch)."""

from __future__ import annotations

from typing import Any

import torch

from distill.data.batch import NEGATIVE_KEYS
from distill import distributed
from distill.training.embeddings import gather_embeddings
from distill.training.candidates.base import CandidateSource, DirectionCandidates, Extra, StepView

__all__ = ["ListedNegatives"]


class ListedNegatives(CandidateSource):
    """The batch's listed negatives (``b_neg`` ``[B*n, L]``, ``b_neg_id`` ``[B, n]``) as a->b candidates.

    Each anchor gets its own ``n`` listed passages after its positive; a listed passage that is the
    anchor's own positive is padding. The student encodes them with its b tower (with gradient). With
    ``scores_from_data`` the teacher scores come from the batch's ``teacher_scores`` ``[B, 1+n]``
    (positive first, as shipped with MS MARCO training files), so no teacher runs: the classic MarginMSE
    setup. Otherwise the live teacher scores the pairs from ``teacher_b_neg`` (or ``b_neg``).

    Args:
        scores_from_data: read the pairs' teacher scores from the batch instead of a live teacher.
    """

    directions = ("a2b",)

    def __init__(self, scores_from_data: bool = False) -> None:
        self.scores_from_data = bool(scores_from_data)

    @property
    def needs_live_teacher(self) -> bool:  # type: ignore[override]
        return not self.scores_from_data

    def describe(self) -> str:
        return f"ListedNegatives(scores_from_data={self.scores_from_data})"

    def setup(self, module: Any, stage: str) -> None:
        if not self.scores_from_data and module.teacher is None and module.needs_teacher_scores:
            raise ValueError("ListedNegatives needs a teacher to score the listed pairs: set model.init_args.teacher, "
                             "or ListedNegatives(scores_from_data: true) with teacher_scores in the training file")
        trainer = getattr(module, "_trainer", None)
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        if stage == "fit" and datamodule is not None and not getattr(datamodule, "num_negatives", 0):
            # Only data that lists each anchor's negatives by id (b_neg + b_neg_id) can feed this source.
            what = " (its binding_negatives are captions without ids)" if getattr(datamodule, "binding_negatives",
                                                                                     False) else ""
            raise ValueError(
                f"model.init_args.candidates: ListedNegatives reads each anchor's listed negatives and their ids "
                f"({', '.join(NEGATIVE_KEYS)}), which {type(datamodule).__name__} does not give{what}: use data "
                "that lists them (a BEIR train_file with data.init_args.num_negatives >= 1), or another candidate "
                "source (InBatchNegatives, MemoryQueue)")

    def select(self, step: StepView, direction: str) -> DirectionCandidates:
        batch = step.batch
        missing = [key for key in NEGATIVE_KEYS if key not in batch]
        if missing:
            raise ValueError(
                f"ListedNegatives reads {list(NEGATIVE_KEYS)} from the batch, but it has no {missing}: give the "
                "data module listed negatives (e.g. data.init_args.num_negatives >= 1 with a train_file)"
            )
        negative_ids = distributed.gather_tensor(batch["b_neg_id"])  # [B, n]
        size, count = negative_ids.shape
        embeddings = gather_embeddings(step.encode_b(batch["b_neg"]))  # [B*n, D]
        rows = torch.arange(size, device=negative_ids.device).unsqueeze(1)
        columns = size + rows * count + torch.arange(count, device=negative_ids.device)
        index = torch.cat([rows, columns], dim=1)
        valid = torch.cat([torch.ones_like(rows, dtype=torch.bool), negative_ids != step.b.ids.unsqueeze(1)], dim=1)
        inputs = None
        if step.live_teacher and not self.scores_from_data:
            inputs = distributed.gather_inputs(batch.get("teacher_b_neg", batch["b_neg"]))
        extra = Extra(embeddings, negative_ids.reshape(-1), inputs)
        if not self.scores_from_data:
            return DirectionCandidates.unscored(index, valid, extra)
        scores = self._data_scores(batch, valid)
        valid = valid & torch.isfinite(scores)  # a listed negative without a score in the file is dropped
        return DirectionCandidates(index, valid, scores.masked_fill(~valid, 0.0), extra)

    @staticmethod
    def _data_scores(batch: Any, valid: torch.Tensor) -> torch.Tensor:
        scores = batch.get("teacher_scores")
        if scores is None:
            raise ValueError("ListedNegatives(scores_from_data: true) needs teacher_scores in the batch: give every "
                             "train_file row teacher_scores for its positive and negative ids")
        scores = distributed.gather_tensor(scores).float()
        if scores.shape != valid.shape:
            raise ValueError(f"the batch's teacher_scores are {tuple(scores.shape)}, expected {tuple(valid.shape)} "
                             "(positive, then one per listed negative)")
        if not bool(torch.isfinite(scores[:, 0]).all()):
            raise ValueError("a train_file row has no teacher_scores entry for its positive passage")
        return scores
