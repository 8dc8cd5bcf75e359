"""DistillationModule: wires a frozen teacher, a trainable student and weighted losses.

The module holds no loss math and no model code. Each training step:
1. the student encodes both sides; ``S = a @ b.T`` (cosine similarities);
2. per anchor (both directions) the top-K student-scored negatives are mined (positives masked);
3. the teacher scores only those ``B x (1+K)`` pairs per direction (duplicates scored once), or, with
   ``teacher_cache``, the candidates and their scores come from the batch (see :mod:`distill.cache`)
   and the teacher is not called;
4. every loss term gets the same :class:`~distill.losses.LossInputs`; the module sums
   ``weight * term`` and logs each term.

Under DDP / FSDP (``torch.distributed`` initialised, world size W > 1) steps 1-4 run over the *global*
batch of ``W * B`` pairs: student embeddings are gathered with gradient, ids and cached scores without
(:mod:`distill.distributed`). For a live teacher the teacher's raw inputs are gathered too and each rank
scores the candidates of its own ``B`` anchor rows (``2 * B * (1+K)`` pairs at most), whose scores are
then gathered; a 2-process run at batch B thus computes the loss and gradients of a 1-process run at 2B.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from distill import distributed
from distill.cache.candidates import CACHE_BATCH_KEY, resolve_cached_candidates
from distill.diagnostics import score_distribution_figure, spearman_per_row, standardised_spread
from distill.eval_buffer import RetrievalEvalBuffer, RetrievalSplit, concat_inputs
from distill.evaluation import DEFAULT_KS, ranking_scores, retrieval_metrics
from distill.losses import DirectionScores, DistillationLoss, InfoNCE, LossInputs
from distill.mining import (
    Candidates,
    NegativeQueue,
    QueueSide,
    mine_hard_negatives,
    positive_mask_from_ids,
    repeated_columns,
)
from distill.schedules import resolve_total_steps
from distill.students.towers import set_gradient_checkpointing
from distill.students.weights import load_student_weights
from distill.teachers import Teacher
from distill.teachers.base import Inputs, select_rows

TEACHER_PREFIX = "teacher."


def teacher_views(batch: Mapping[str, Any]) -> tuple[Inputs, Inputs]:
    """The teacher's inputs: ``batch["teacher_a"/"teacher_b"]`` when the data module preprocesses
    separately for the teacher (other tokenizer, image size or normalisation), else the student's."""
    return batch.get("teacher_a", batch["a"]), batch.get("teacher_b", batch["b"])


def optimizer_config(optimizer_factory: OptimizerCallable, scheduler_factory: LRSchedulerCallable | None,
                     params: Any) -> Any:
    """What ``configure_optimizers`` returns: the optimizer, and its scheduler stepped per batch."""
    optimizer = optimizer_factory(params)
    if scheduler_factory is None:
        return optimizer
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler_factory(optimizer), "interval": "step"}}


def resolve_run_length(trainer: L.Trainer) -> None:
    """At train start, give schedulers built with ``total_steps=None`` the run's optimizer steps.

    Called from ``on_train_start``, after the data is set up and a resumed run's scheduler state is
    restored (which already holds its length), so it reads nothing and draws no random numbers.
    """
    for config in trainer.lr_scheduler_configs:
        resolve_total_steps(config.scheduler, trainer.estimated_stepping_batches)


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)


class DistillationModule(L.LightningModule):
    """Distils ``teacher`` into ``student`` with a weighted sum of ``losses``.

    Args:
        student: the trainable student: any ``nn.Module`` with ``encode_a(a) -> [B, D]``,
            ``encode_b(b) -> [B, D]`` and a ``logit_scale`` tensor (e.g. :class:`DualEncoder`).
        teacher: a frozen cross-encoder; ``None`` trains the student alone (InfoNCE baseline).
        losses: named loss terms (LightningCLI ``class_path`` entries); default ``{"infonce": InfoNCE()}``.
        loss_weights: weight per loss name (default 1.0 each); names must match ``losses``.
        num_hard_negatives: K, the student-mined negatives per anchor that the teacher scores.
        negative_queue_size: mine over the batch plus about this many items per side kept from earlier
            batches (:class:`~distill.mining.NegativeQueue`; 0: in-batch only; single process, live teacher).
        optimizer / lr_scheduler: callables receiving the trainable parameters / the optimizer.
        eval_ks: Recall cut-offs.
        two_stage_k: at test time, also report the student's top-k re-ranked by the teacher (0: off).
        evaluate_teacher: at test time, also report the teacher's own ranking (its ITC top
            ``two_stage_k`` re-ranked by its score) when the teacher exposes embeddings.
        diagnostics: each validation, for up to ``diagnostic_anchors`` a items, mine the student's
            top-K negatives over the split, score them with the teacher, and log the mean Spearman
            correlation of the two orders plus a figure of both score distributions.
        teacher_cache: a folder written by ``python -m distill cache-teacher``: training reads each anchor's
            candidates and teacher scores from the batch (the data must be wrapped in
            :class:`distill.cache.CachedCandidatesDataModule`) and never calls the teacher, which may then be
            ``None``; when set, the teacher is checked against the cache (class, config, weight hash), as is
            ``num_hard_negatives`` (at most the cache's K). Losses needing teacher embeddings still need a teacher.
        gradient_checkpointing: recompute the student towers' activations in the backward pass
            (:func:`distill.students.towers.set_gradient_checkpointing`): less memory, ~30% more compute.
        student_init: start from trained student weights instead of the preset's initialisation: a
            checkpoint of an earlier run (its ``student.*`` weights) or a ``distill export`` folder
            (:func:`distill.students.weights.load_student_weights`). Distillation then fine-tunes a
            student that already retrieves, as the CPRD and DCD papers do with pre-trained CLIP students.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        losses: dict[str, DistillationLoss] | None = None,
        loss_weights: dict[str, float] | None = None,
        num_hard_negatives: int = 8,
        negative_queue_size: int = 0,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        eval_ks: tuple[int, ...] = DEFAULT_KS,
        two_stage_k: int = 16,
        evaluate_teacher: bool = False,
        diagnostics: bool = True,
        diagnostic_anchors: int = 256,
        teacher_cache: str | None = None,
        gradient_checkpointing: bool = False,
        student_init: str | None = None,
    ) -> None:
        super().__init__()
        if student_init is not None:
            load_student_weights(student, student_init, option="model.init_args.student_init")
        self.student = student
        self.teacher = teacher.freeze() if teacher is not None else None
        self.teacher_cache = teacher_cache
        self.gradient_checkpointing = gradient_checkpointing
        if gradient_checkpointing:
            enable_gradient_checkpointing(student)
        self.losses = nn.ModuleDict(losses if losses is not None else {"infonce": InfoNCE()})
        self.loss_weights = self._check_weights(dict(loss_weights or {}))
        self._check_losses()
        if num_hard_negatives < 1:
            raise ValueError(f"model.num_hard_negatives must be >= 1, got {num_hard_negatives}")
        self.num_hard_negatives = num_hard_negatives
        if negative_queue_size < 0:
            raise ValueError(f"model.negative_queue_size must be >= 0, got {negative_queue_size}")
        self.negative_queue = NegativeQueue(negative_queue_size) if negative_queue_size else None
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.eval_ks = tuple(eval_ks)
        self.two_stage_k = two_stage_k
        self.evaluate_teacher = evaluate_teacher
        self.diagnostics = diagnostics
        self.diagnostic_anchors = diagnostic_anchors
        self._buffers: dict[str, RetrievalEvalBuffer] = {}
        self.test_results: dict[str, dict[str, float]] = {}

    # ------------------------------------------------------------------ validation of the recipe
    def _check_weights(self, weights: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(weights) - set(self.losses))
        if unknown:
            raise ValueError(
                f"model.loss_weights names {unknown}, which are not in model.losses {sorted(self.losses)}"
            )
        resolved = {name: float(weights.get(name, 1.0)) for name in self.losses}
        for name, weight in resolved.items():
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"model.loss_weights.{name} must be a finite number >= 0, got {weight}")
        return resolved

    def _check_losses(self) -> None:
        if not self.losses:
            raise ValueError("model.losses is empty: add at least one loss (e.g. distill.losses.InfoNCE)")
        for name, loss in self.losses.items():
            from_cache = self.teacher_cache is not None and not getattr(loss, "requires_teacher_embeddings", False)
            if getattr(loss, "requires_teacher", False) and self.teacher is None and not from_cache:
                raise ValueError(f"loss '{name}' ({type(loss).__name__}) needs a teacher, but model.teacher is not set")
            if getattr(loss, "requires_teacher_embeddings", False) and not (
                self.teacher is not None and self.teacher.has_embeddings
            ):
                raise ValueError(
                    f"loss '{name}' ({type(loss).__name__}) needs teacher embeddings, but "
                    f"{type(self.teacher).__name__} exposes none: remove it or use a teacher with embed_a/embed_b"
                )

    @property
    def needs_teacher_scores(self) -> bool:
        return any(getattr(loss, "requires_teacher_scores", False) for loss in self.losses.values())

    @property
    def needs_teacher_embeddings(self) -> bool:
        return any(getattr(loss, "requires_teacher_embeddings", False) for loss in self.losses.values())

    # ------------------------------------------------------------------ teacher handling
    def train(self, mode: bool = True) -> "DistillationModule":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the frozen teacher out of the checkpoint: only the student (and loss heads) train."""
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith(TEACHER_PREFIX)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.teacher is not None:
            state = checkpoint.setdefault("state_dict", {})
            for key, value in self.teacher.state_dict().items():
                state.setdefault(TEACHER_PREFIX + key, value)

    # ------------------------------------------------------------------ teacher cache
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.teacher_cache is not None:
            self.verify_teacher_cache()
            datamodule = getattr(self.trainer, "datamodule", None)
            if datamodule is not None and getattr(datamodule, "wrapped_datamodule", None) is None:
                raise ValueError(
                    f"model.init_args.teacher_cache is set, but data is {type(datamodule).__name__}, which does not "
                    "bring the cached candidates into its batches: wrap it, data: {class_path: "
                    "distill.cache.CachedCandidatesDataModule, init_args: {data: <your data module>}}"
                )

    def verify_teacher_cache(self) -> dict[str, Any]:
        """Read ``teacher_cache``'s manifest and refuse it if its teacher or K does not fit this model."""
        from distill.cache.format import read_manifest, verify_manifest

        assert self.teacher_cache is not None
        manifest = read_manifest(self.teacher_cache)
        verify_manifest(manifest, self.teacher_cache, teacher=self.teacher, k=self.num_hard_negatives)
        return manifest

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def teacher_candidate_scores(self, a: Inputs, b: Inputs, cand_a2b: Candidates, cand_b2a: Candidates,
                                 rows: slice | None = None) -> tuple[Tensor, Tensor, int]:
        """Teacher scores of the mined pairs: ``[B, 1+K]`` per direction, each distinct pair once.

        ``rows`` restricts the scoring to those anchor rows of both directions (``[len(rows), 1+K]`` each),
        as each rank does for its own anchors in distributed training.
        """
        assert self.teacher is not None
        if rows is not None:
            cand_a2b = Candidates(cand_a2b.index[rows], cand_a2b.valid[rows])
            cand_b2a = Candidates(cand_b2a.index[rows], cand_b2a.valid[rows])
        start = 0 if rows is None else (rows.start or 0)
        anchors = torch.arange(start, start + cand_a2b.index.shape[0], device=cand_a2b.index.device).unsqueeze(1)
        a_index = torch.cat([anchors.expand_as(cand_a2b.index).reshape(-1), cand_b2a.index.reshape(-1)])
        b_index = torch.cat([cand_a2b.index.reshape(-1), anchors.expand_as(cand_b2a.index).reshape(-1)])
        width = int(b_index.max()) + 1
        unique_pairs, inverse = torch.unique(a_index * width + b_index, return_inverse=True)
        scores = self.teacher.score_pairs(a, b, unique_pairs // width, unique_pairs % width).float()
        per_pair = scores[inverse]
        split = cand_a2b.index.numel()
        return (per_pair[:split].view_as(cand_a2b.index), per_pair[split:].view_as(cand_b2a.index),
                unique_pairs.numel())

    def build_loss_inputs(self, batch: Mapping[str, Any]) -> tuple[LossInputs, dict[str, float]]:
        a, b = batch["a"], batch["b"]
        emb_a = self.student.encode_a(a)
        emb_b = self.student.encode_b(b)
        a_id, b_id = batch["a_id"], batch["b_id"]
        rows = slice(0, emb_a.shape[0])
        if distributed.is_distributed():  # the loss runs over the global batch on every rank
            rows = distributed.local_rows(emb_a.shape[0], emb_a.device)
            emb_a, emb_b = distributed.gather_with_grad(emb_a), distributed.gather_with_grad(emb_b)
            a_id, b_id = distributed.gather_tensor(a_id), distributed.gather_tensor(b_id)
        similarity = emb_a @ emb_b.T
        positives = positive_mask_from_ids(a_id, a_id)
        stats: dict[str, float] = {}
        a2b = b2a = None
        if self.needs_teacher_scores and self.teacher_cache is not None:
            a2b, b2a, stats = self._cached_directions(batch, similarity, a_id, b_id)
        elif self.needs_teacher_scores and self.negative_queue is not None and not distributed.is_distributed():
            a2b, b2a, stats = self._queued_directions(batch, emb_a, emb_b, a_id)
        elif self.needs_teacher_scores:
            k = min(self.num_hard_negatives, similarity.shape[1] - 1)
            cand_a2b = mine_hard_negatives(similarity, positives, k)
            # b->a columns are a items, which repeat when a batch holds several captions of one image.
            cand_b2a = mine_hard_negatives(similarity.T, positives.T | repeated_columns(a_id).unsqueeze(0), k)
            teacher_a, teacher_b = teacher_views(batch)
            if distributed.is_distributed():
                teacher_a, teacher_b = distributed.gather_inputs(teacher_a), distributed.gather_inputs(teacher_b)
                teacher_a2b, teacher_b2a, pairs = self.teacher_candidate_scores(
                    teacher_a, teacher_b, cand_a2b, cand_b2a, rows)
                teacher_a2b = distributed.gather_tensor(teacher_a2b)
                teacher_b2a = distributed.gather_tensor(teacher_b2a)
            else:
                teacher_a2b, teacher_b2a, pairs = self.teacher_candidate_scores(
                    teacher_a, teacher_b, cand_a2b, cand_b2a)
            a2b = DirectionScores(similarity.gather(1, cand_a2b.index), teacher_a2b, cand_a2b.valid)
            b2a = DirectionScores(similarity.T.gather(1, cand_b2a.index), teacher_b2a, cand_b2a.valid)
            stats["teacher_pairs"] = float(pairs)
        teacher_embeddings = None
        if self.needs_teacher_embeddings:
            assert self.teacher is not None
            teacher_a, teacher_b = teacher_views(batch)
            with torch.no_grad():
                teacher_embeddings = (distributed.gather_tensor(self.teacher.embed_a(teacher_a)),
                                      distributed.gather_tensor(self.teacher.embed_b(teacher_b)))
        inputs = LossInputs(
            similarity=similarity,
            positive_mask=positives,
            logit_scale=self.student.logit_scale,
            a2b=a2b,
            b2a=b2a,
            student_embeddings=(emb_a, emb_b),
            teacher_embeddings=teacher_embeddings,
        )
        return inputs, stats

    def _queued_directions(self, batch: Mapping[str, Any], emb_a: Tensor, emb_b: Tensor, a_id: Tensor,
                           ) -> tuple[DirectionScores, DirectionScores, dict[str, float]]:
        """Both directions mined over ``[batch | queue]`` columns; the teacher scores the chosen pairs.

        Columns ``0..B-1`` are the batch (anchor i's positive is column i), the rest are queued items.
        """
        assert self.negative_queue is not None
        teacher_a, teacher_b = teacher_views(batch)
        queued = self.negative_queue.sides()
        if queued is None:
            queue_a = QueueSide(emb_a[:0].detach(), {k: v[:0] for k, v in teacher_a.items()}, a_id[:0])
            queue_b = QueueSide(emb_b[:0].detach(), {k: v[:0] for k, v in teacher_b.items()}, a_id[:0])
        else:
            queue_a, queue_b = queued
        columns_a_ids = torch.cat([a_id, queue_a.ids])
        columns_b_owner = torch.cat([a_id, queue_b.ids])
        sim_a2b = emb_a @ torch.cat([emb_b, queue_b.embeddings]).T  # [B, B + Qb]
        sim_b2a = emb_b @ torch.cat([emb_a, queue_a.embeddings]).T  # [B, B + Qa]
        positives_a2b = a_id.unsqueeze(1) == columns_b_owner.unsqueeze(0)
        positives_b2a = (a_id.unsqueeze(1) == columns_a_ids.unsqueeze(0)) | repeated_columns(columns_a_ids)
        k = min(self.num_hard_negatives, sim_a2b.shape[1] - 1)
        cand_a2b = mine_hard_negatives(sim_a2b, positives_a2b, k)
        cand_b2a = mine_hard_negatives(sim_b2a, positives_b2a, k)
        all_a = concat_inputs([teacher_a, queue_a.inputs])
        all_b = concat_inputs([teacher_b, queue_b.inputs])
        teacher_a2b, teacher_b2a, pairs = self.teacher_candidate_scores(all_a, all_b, cand_a2b, cand_b2a)
        a2b = DirectionScores(sim_a2b.gather(1, cand_a2b.index), teacher_a2b, cand_a2b.valid)
        b2a = DirectionScores(sim_b2a.gather(1, cand_b2a.index), teacher_b2a, cand_b2a.valid)
        from_queue = ((cand_a2b.index[:, 1:] >= emb_a.shape[0]) & cand_a2b.valid[:, 1:]).float().mean()
        self.negative_queue.push(QueueSide(emb_a, teacher_a, a_id), QueueSide(emb_b, teacher_b, a_id))
        return a2b, b2a, {"teacher_pairs": float(pairs), "queue_negatives_share": float(from_queue)}

    def _cached_directions(self, batch: Mapping[str, Any], similarity: Tensor, a_id: Tensor, b_id: Tensor,
                           ) -> tuple[DirectionScores, DirectionScores, dict[str, float]]:
        """Both directions from the batch's cached candidates and teacher scores (no teacher call).

        Each anchor keeps its first ``k`` cached candidates present in the (global) batch, in cached order;
        see :mod:`distill.cache.candidates` for the mining semantics.
        """
        cached = batch.get(CACHE_BATCH_KEY)
        if cached is None:
            raise ValueError(
                "model.init_args.teacher_cache is set, but the batch has no cached teacher scores: wrap the data "
                "module in distill.cache.CachedCandidatesDataModule"
            )
        cached = {key: distributed.gather_tensor(value) for key, value in cached.items()}
        k = min(self.num_hard_negatives, similarity.shape[1] - 1)
        cand_a2b, teacher_a2b = resolve_cached_candidates(cached["a2b_ids"], cached["a2b_scores"],
                                                          cached["pair_scores"], b_id, k)
        cand_b2a, teacher_b2a = resolve_cached_candidates(cached["b2a_ids"], cached["b2a_scores"],
                                                          cached["pair_scores"], a_id, k)
        a2b = DirectionScores(similarity.gather(1, cand_a2b.index), teacher_a2b, cand_a2b.valid)
        b2a = DirectionScores(similarity.T.gather(1, cand_b2a.index), teacher_b2a, cand_b2a.valid)
        present = (cand_a2b.valid[:, 1:].sum() + cand_b2a.valid[:, 1:].sum()).item()
        stats = {"teacher_pairs": 0.0, "cached_negatives": float(present) / (2 * similarity.shape[0])}
        return a2b, b2a, stats

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        inputs, stats = self.build_loss_inputs(batch)
        batch_size = inputs.similarity.shape[0]
        total = inputs.similarity.new_zeros(())
        for name, loss in self.losses.items():
            term = loss(inputs)
            self.log(f"train/loss/{name}", term, batch_size=batch_size)
            total = total + self.loss_weights[name] * term
        self.log("train/loss", total, prog_bar=True, batch_size=batch_size)
        self.log("train/temperature", 1.0 / self.student.logit_scale.detach(), batch_size=batch_size)
        for key, value in stats.items():
            self.log(f"train/{key}", value, batch_size=batch_size)
        embedding_stats = getattr(self.student, "embedding_stats", None)
        if embedding_stats is not None and inputs.student_embeddings is not None:
            for side, embeddings in zip(("a", "b"), inputs.student_embeddings):
                for key, value in embedding_stats(embeddings.detach()).items():
                    self.log(f"train/{side}_{key}", value, batch_size=batch_size)
        return total

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, stage: str, batch: Mapping[str, Any]) -> None:
        keep_inputs = self.teacher is not None and (
            (stage == "test" and self.two_stage_k > 0) or (stage == "val" and self.diagnostics)
        )
        buffer = self._buffers.setdefault(stage, RetrievalEvalBuffer(keep_inputs=keep_inputs))
        teacher_a, teacher_b = teacher_views(batch)
        buffer.add(batch["a_id"], self.student.encode_a(batch["a"]), self.student.encode_b(batch["b"]),
                   teacher_a, teacher_b)

    def _eval_epoch_end(self, stage: str) -> dict[str, float]:
        buffer = self._buffers.pop(stage, None)
        if buffer is None or not len(buffer):
            return {}
        split = buffer.finalize()
        metrics = retrieval_metrics(split.a_embeddings @ split.b_embeddings.T, split.b_to_a, ks=self.eval_ks)
        embedding_stats = getattr(self.student, "embedding_stats", None)
        if embedding_stats is not None:
            for side, embeddings in (("a", split.a_embeddings), ("b", split.b_embeddings)):
                metrics.update({f"{side}_{key}": float(value) for key, value in embedding_stats(embeddings).items()})
        results = {"student": metrics}
        if stage == "test" and self.teacher is not None and self.two_stage_k > 0:
            results.update(self._teacher_rankings(split))
        if stage == "val" and self.teacher is not None and self.diagnostics and split.a_inputs is not None:
            results["diagnostics"] = self._diagnostics(split)
        for name, values in results.items():
            prefix = stage if name == "student" else f"{stage}/{name}"
            for key, value in values.items():
                self.log(f"{prefix}/{key}", value, prog_bar=key == "rsum" and name == "student", sync_dist=True)
        if stage == "test":
            self.test_results = results
        return metrics

    @torch.no_grad()
    def _teacher_rankings(self, split: RetrievalSplit) -> dict[str, dict[str, float]]:
        assert self.teacher is not None and split.a_inputs is not None and split.b_inputs is not None
        a_inputs = {k: v.to(self.device) for k, v in split.a_inputs.items()}
        b_inputs = {k: v.to(self.device) for k, v in split.b_inputs.items()}

        def teacher_scores(a_index: Tensor, b_index: Tensor) -> Tensor:
            return self.teacher.score_pairs(a_inputs, b_inputs, a_index.to(self.device), b_index.to(self.device)).cpu()

        results: dict[str, dict[str, float]] = {}
        first = split.a_embeddings @ split.b_embeddings.T
        a2b, b2a, pairs = ranking_scores(first, self.two_stage_k, teacher_scores)
        results["two_stage"] = {**retrieval_metrics(a2b, split.b_to_a, b2a, self.eval_ks), "teacher_pairs": float(pairs)}
        if self.evaluate_teacher and self.teacher.has_embeddings:
            results["teacher"] = teacher_ranking_metrics(self.teacher, a_inputs, b_inputs, split.b_to_a,
                                                         self.two_stage_k, self.eval_ks)
        num_a, num_b = first.shape
        results["two_stage"]["exhaustive_pairs"] = float(num_a * num_b)
        return results

    @torch.no_grad()
    def _diagnostics(self, split: RetrievalSplit) -> dict[str, float]:
        """Spearman(teacher, student) over each anchor's student-mined hard negatives, and spreads."""
        assert self.teacher is not None and split.a_inputs is not None and split.b_inputs is not None
        anchors = min(self.diagnostic_anchors, split.a_embeddings.shape[0])
        similarity = split.a_embeddings[:anchors] @ split.b_embeddings.T
        positives = split.b_to_a.unsqueeze(0) == torch.arange(anchors).unsqueeze(1)
        k = min(self.num_hard_negatives, int((~positives).sum(1).min()))
        if k < 2:
            return {}
        negatives = similarity.masked_fill(positives, float("-inf")).topk(k, dim=1).indices
        student = similarity.gather(1, negatives)
        a_inputs = {key: v.to(self.device) for key, v in split.a_inputs.items()}
        b_inputs = {key: v.to(self.device) for key, v in split.b_inputs.items()}
        rows = torch.arange(anchors).repeat_interleave(k)
        teacher = self.teacher.score_pairs(a_inputs, b_inputs, rows.to(self.device),
                                           negatives.reshape(-1).to(self.device)).float().cpu().view(anchors, k)
        values = {"spearman": float(spearman_per_row(teacher, student).mean())}
        values.update({f"teacher_{key}": v for key, v in standardised_spread(teacher).items()})
        values.update({f"student_{key}": v for key, v in standardised_spread(student).items()})
        experiment = getattr(self.logger, "experiment", None)
        if experiment is not None and hasattr(experiment, "add_figure"):
            experiment.add_figure("val/hard_negative_scores", score_distribution_figure(teacher, student),
                                  global_step=self.global_step)
        return values

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Tensor]:
        return {"a_id": batch["a_id"], "a": self.student.encode_a(batch["a"]), "b": self.student.encode_b(batch["b"])}

    # ------------------------------------------------------------------ optimisation
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Student and loss-head parameters; never the teacher's."""
        params = [p for p in self.student.parameters() if p.requires_grad]
        params += [p for p in self.losses.parameters() if p.requires_grad]
        return params

    def configure_optimizers(self) -> Any:
        return optimizer_config(self.optimizer_factory, self.scheduler_factory, self.trainable_parameters())

    def on_train_start(self) -> None:
        resolve_run_length(self.trainer)


def enable_gradient_checkpointing(student: nn.Module) -> list[str]:
    """Turn on activation checkpointing in the student's towers; returns the names of the parts switched on.

    Towers are ``student.tower_a`` / ``student.tower_b`` (or the student itself, e.g. a CLIP model); each
    goes through :func:`distill.students.towers.set_gradient_checkpointing`, which supports timm backbones
    (``set_grad_checkpointing``) and transformers encoders (``gradient_checkpointing_enable``).
    """
    parts = {name: getattr(student, name) for name in ("tower_a", "tower_b") if hasattr(student, name)}
    if not parts and hasattr(student, "model"):
        parts = {"model": student.model}
    enabled = []
    for name, part in parts.items():
        inner = getattr(part, "backbone", None) or getattr(part, "encoder", None)
        if inner is None and hasattr(part, "gradient_checkpointing_enable"):
            # transformers >= 5 names it activation_checkpointing_enable (the old name is deprecated)
            getattr(part, "activation_checkpointing_enable", part.gradient_checkpointing_enable)()
            enabled.append(name)
        elif inner is not None and (hasattr(inner, "set_grad_checkpointing")
                                    or hasattr(inner, "gradient_checkpointing_enable")):
            set_gradient_checkpointing(part, True)
            enabled.append(name)
    if not enabled:
        raise ValueError(
            f"model.init_args.gradient_checkpointing: {type(student).__name__} has no tower that supports "
            "activation checkpointing (timm backbones or transformers encoders under tower_a / tower_b); set it "
            "to false"
        )
    return enabled


@torch.no_grad()
def teacher_ranking_metrics(teacher: Teacher, a_inputs: Inputs, b_inputs: Inputs, b_to_a: Tensor, k: int,
                            ks: tuple[int, ...] = DEFAULT_KS, chunk: int = 256) -> dict[str, float]:
    """The teacher's own retrieval: its embedding (ITC) top-``k`` re-ranked by its pair score."""
    emb_a = torch.cat([teacher.embed_a(select_rows(a_inputs, idx)) for idx in _chunks(a_inputs, chunk)])
    emb_b = torch.cat([teacher.embed_b(select_rows(b_inputs, idx)) for idx in _chunks(b_inputs, chunk)])
    first = (emb_a @ emb_b.T).cpu()
    device = emb_a.device

    def scores(a_index: Tensor, b_index: Tensor) -> Tensor:
        return teacher.score_pairs(a_inputs, b_inputs, a_index.to(device), b_index.to(device)).cpu()

    a2b, b2a, pairs = ranking_scores(first, k, scores)
    return {**retrieval_metrics(a2b, b_to_a.cpu(), b2a, ks), "teacher_pairs": float(pairs)}


def _chunks(inputs: Inputs, size: int) -> list[Tensor]:
    total = next(iter(inputs.values())).shape[0]
    device = next(iter(inputs.values())).device
    return [torch.arange(s, min(s + size, total), device=device) for s in range(0, total, size)]
