"""DistillationModule: wires a frozen teacher, a trainable student, candidate sources, losses and an evaluator.

The module holds no loss math, no model code, no mining and no metrics. Each training step:

1. the student encodes both sides and scores them: ``S = student.score(a, b)``, ``a @ b.T`` for a pooled
   student, its own late-interaction score for one with token embeddings (under DDP over the global batch:
   embeddings, token masks included, are gathered with gradient, ids without, :mod:`distill.training.embeddings`);
2. the candidate sources (``candidates``) pick each anchor's candidate pairs, and the teacher scores the
   ones no source knows a score for (:func:`distill.training.step.candidate_scores`);
3. every loss term gets the same :class:`~distill.losses.LossInputs`; the module sums ``weight * term`` and
   logs each term.

Validation and test stream the split's embeddings into the evaluator (``evaluator``), which ranks,
re-ranks with the teacher and diagnoses at the epoch's end. Image-text and query-passage retrieval differ
only in the candidate sources and the evaluator a recipe composes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from distill import distributed
from distill.data.items import item_store
from distill.evaluation import EvalContext, RecallEvaluator, Results, RetrievalEvaluator
from distill.inputs import Inputs
from distill.losses import DistillationLoss, InfoNCE, LossInputs
from distill.students.towers import enable_gradient_checkpointing
from distill.students.weights import load_student_weights
from distill.teachers import Teacher, TeacherScorer
from distill.teachers.scoring import check_precision
from distill.training.candidates import CachedCandidates, CandidateSource, InBatchNegatives, Side, StepView
from distill.training.embeddings import gather_embeddings, student_scorer
from distill.training.optim import default_optimizer, optimizer_config, resolve_run_length
from distill.training.step import candidate_scores
from distill.training.val_interval import fit_validation_interval

TEACHER_PREFIX = "teacher."
logger = logging.getLogger("distill.training")

__all__ = ["DistillationModule", "TEACHER_PREFIX"]


def _view(batch: Mapping[str, Any], side: str) -> Inputs:
    """The teacher's view of one side of a batch (``teacher_a`` / ``teacher_b``, else the student's)."""
    return batch.get(f"teacher_{side}", batch[side])


def loss_directions(losses: Mapping[str, nn.Module], teacher_scores_only: bool = False) -> list[str]:
    """The directions (``a2b``, ``b2a``) whose candidates some loss reads: for their teacher scores, or (unless
    ``teacher_scores_only``) for the student's scores alone (a loss's ``candidate_directions``)."""
    needed: set[str] = set()
    for loss in losses.values():
        if getattr(loss, "requires_teacher_scores", False):
            directions = getattr(loss, "directions", "both")
            needed.update(("a2b", "b2a") if directions == "both" else (directions,))
        if not teacher_scores_only:
            needed.update(getattr(loss, "candidate_directions", ()))
    return [d for d in ("a2b", "b2a") if d in needed]


class DistillationModule(L.LightningModule):
    """Distils ``teacher`` into ``student`` with a weighted sum of ``losses``.

    Args:
        student: the trainable student: an ``nn.Module`` with ``encode_a(a) -> [B, D]``,
            ``encode_b(b) -> [B, D]`` and a ``logit_scale`` tensor (e.g. :class:`~distill.students.DualEncoder`);
            its ``score(a, b) -> [Na, Nb]`` (default ``a @ b.T``) is the score matrix every step uses, so a
            late-interaction student (:class:`~distill.students.LateInteractionEncoder`, token embeddings) fits.
        teacher: a frozen cross-encoder; ``None`` trains the student alone, or from scores that the
            candidates carry (teacher cache, scores in the training file).
        losses: named loss terms (``class_path`` entries); default ``{"infonce": InfoNCE()}``.
        loss_weights: weight per loss name (default 1.0 each); names must match ``losses``.
        num_hard_negatives: K, the candidates per anchor a source picks (clamped once by each source).
        candidates: one candidate source or a list (their negatives are joined after one positive);
            default :class:`~distill.training.candidates.InBatchNegatives`.
        evaluator: default :class:`~distill.evaluation.RecallEvaluator`; text retrieval uses
            :class:`~distill.evaluation.QrelsEvaluator`.
        teacher_max_pairs: at most this many pairs per teacher forward, in training and evaluation.
        teacher_precision: ``32``, ``bf16`` or ``16`` (a number or a string): the teacher's weights and forwards,
            whatever the trainer's precision.
        optimizer / lr_scheduler: callables receiving the trainable parameters / the optimizer.
        gradient_checkpointing: recompute the student towers' activations in the backward pass.
        student_init: start from trained student weights: a checkpoint of an earlier run (its ``student.*``
            weights) or a ``distill export`` folder.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        losses: dict[str, DistillationLoss] | None = None,
        loss_weights: dict[str, float] | None = None,
        num_hard_negatives: int = 8,
        candidates: CandidateSource | list[CandidateSource] | None = None,
        evaluator: RetrievalEvaluator | None = None,
        teacher_max_pairs: int | None = None,
        teacher_precision: str | int = "32",
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        gradient_checkpointing: bool = False,
        student_init: str | None = None,
    ) -> None:
        super().__init__()
        if student_init is not None:
            load_student_weights(student, student_init, option="model.init_args.student_init")
        self.student = student
        self.teacher = teacher.freeze() if teacher is not None else None
        teacher_precision = check_precision(teacher_precision, "model.init_args.teacher_precision")
        if teacher_max_pairs is not None and teacher_max_pairs < 1:
            raise ValueError(f"model.init_args.teacher_max_pairs must be >= 1 or null, got {teacher_max_pairs}")
        self.scorer = TeacherScorer(teacher, teacher_max_pairs, teacher_precision) if teacher is not None else None
        if gradient_checkpointing:
            enable_gradient_checkpointing(student)
        self.gradient_checkpointing = gradient_checkpointing
        if num_hard_negatives < 1:
            raise ValueError(f"model.init_args.num_hard_negatives must be >= 1, got {num_hard_negatives}")
        self.num_hard_negatives = num_hard_negatives
        if candidates is None:
            candidates = InBatchNegatives()
        sources = candidates if isinstance(candidates, (list, tuple)) else [candidates]
        self.candidates: list[CandidateSource] = list(sources)
        self.evaluator = evaluator if evaluator is not None else RecallEvaluator()
        self.losses = nn.ModuleDict(losses if losses is not None else {"infonce": InfoNCE()})
        self.loss_weights = self._check_weights(dict(loss_weights or {}))
        self.directions = loss_directions(self.losses)
        self.scored_directions = loss_directions(self.losses, teacher_scores_only=True)
        self._check_losses()
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.test_results: Results = {}
        self.teacher_pairs_scored = 0  # distinct pairs the live teacher scored in training, in this process's run

    # ------------------------------------------------------------------ checks of the recipe
    def _check_weights(self, weights: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(weights) - set(self.losses))
        if unknown:
            raise ValueError(f"model.init_args.loss_weights names {unknown}, which are not in model.init_args.losses {sorted(self.losses)}")
        resolved = {name: float(weights.get(name, 1.0)) for name in self.losses}
        for name, weight in resolved.items():
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"model.init_args.loss_weights.{name} must be a finite number >= 0, got {weight}")
        return resolved

    def _check_losses(self) -> None:
        if not self.losses:
            raise ValueError("model.init_args.losses is empty: add at least one loss (e.g. distill.losses.InfoNCE)")
        live = any(source.needs_live_teacher for source in self.candidates)
        for name, loss in self.losses.items():
            if getattr(loss, "requires_teacher_embeddings", False) and not (
                    self.teacher is not None and self.teacher.has_embeddings):
                raise ValueError(f"loss '{name}' ({type(loss).__name__}) needs teacher embeddings, but "
                                 f"{type(self.teacher).__name__} exposes none: remove it or use a teacher with "
                                 "embed_a/embed_b")
            if getattr(loss, "requires_teacher", False) and self.teacher is None and live:
                raise ValueError(f"loss '{name}' ({type(loss).__name__}) needs a teacher, but model.teacher is not "
                                 "set (and the candidates carry no teacher scores)")

    @property
    def needs_teacher_scores(self) -> bool:
        return bool(self.scored_directions)

    @property
    def needs_teacher_embeddings(self) -> bool:
        return any(getattr(loss, "requires_teacher_embeddings", False) for loss in self.losses.values())

    @property
    def teacher_cache(self) -> str | None:
        """The folder of the teacher-score cache the candidates read, if any."""
        return next((s.path for s in self.candidates if isinstance(s, CachedCandidates)), None)

    # ------------------------------------------------------------------ the frozen teacher
    def train(self, mode: bool = True) -> "DistillationModule":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def _teacher_precision(self) -> None:
        if self.scorer is not None:
            self.scorer.apply_precision()

    def on_fit_start(self) -> None:
        self._teacher_precision()
        fit_validation_interval(self.trainer)
        if self.teacher is not None and self.trainer.is_global_zero:
            modules = sum(1 for _ in self.teacher.modules())
            logger.info("the teacher (%s, %d modules, %s) is frozen: it stays in eval mode, out of the optimizer "
                        "and out of the checkpoints; only the student trains", type(self.teacher).__name__, modules,
                        "fp32" if self.scorer is None or self.scorer.precision == "32" else self.scorer.precision)

    def on_validation_start(self) -> None:
        self._teacher_precision()

    def on_test_start(self) -> None:
        self._teacher_precision()

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

    def setup(self, stage: str) -> None:
        for source in self.candidates:
            source.setup(self, stage)

    # ------------------------------------------------------------------ training
    def encode_step(self, batch: Mapping[str, Any]) -> StepView:
        """The student's embeddings of both sides over the (global) batch, as the candidate sources see them."""
        emb_a = gather_embeddings(self.student.encode_a(batch["a"]))
        emb_b = gather_embeddings(self.student.encode_b(batch["b"]))
        score = student_scorer(self.student)
        a_id = distributed.gather_tensor(batch["a_id"])
        b_id = distributed.gather_tensor(batch["b_id"])
        return StepView(
            a=Side(emb_a, a_id, b_id, lambda: distributed.gather_inputs(_view(batch, "a"))),
            b=Side(emb_b, b_id, a_id, lambda: distributed.gather_inputs(_view(batch, "b"))),
            similarity=score(emb_a, emb_b), batch=batch, k=self.num_hard_negatives,
            live_teacher=self.scorer is not None, encode_b=self.student.encode_b, encode_a=self.student.encode_a,
            score=score,
        )

    def build_loss_inputs(self, batch: Mapping[str, Any]) -> tuple[LossInputs, dict[str, float]]:
        step = self.encode_step(batch)
        scores, stats, extra = {}, {}, None
        if self.directions:
            scores, stats, extra = candidate_scores(self.candidates, step, self.directions, self.scorer,
                                                    self.scored_directions)
        for source in self.candidates:
            source.after_step(step)
        teacher_embeddings = None
        if self.needs_teacher_embeddings:
            assert self.scorer is not None
            teacher_embeddings = (distributed.gather_tensor(self.scorer.embed("a", _view(batch, "a"))),
                                  distributed.gather_tensor(self.scorer.embed("b", _view(batch, "b"))))
        positives = (step.a.ids.unsqueeze(1) == step.a.ids.unsqueeze(0)) | \
            (step.b.ids.unsqueeze(1) == step.b.ids.unsqueeze(0))
        pooled = isinstance(step.a.embeddings, Tensor)  # token embeddings have no pooled vector for a loss to read
        inputs = LossInputs(similarity=step.similarity, positive_mask=positives, logit_scale=self.student.logit_scale,
                            a2b=scores.get("a2b"), b2a=scores.get("b2a"),
                            student_embeddings=(step.a.embeddings, step.b.embeddings) if pooled else None,
                            teacher_embeddings=teacher_embeddings,
                            extra_similarity=None if extra is None else extra[0],
                            extra_valid=None if extra is None else extra[1])
        return inputs, stats

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
        self.teacher_pairs_scored += int(stats.get("teacher_pairs", 0))
        self.log("train/teacher_pairs_total", float(self.teacher_pairs_scored), batch_size=batch_size)
        embedding_stats = getattr(self.student, "embedding_stats", None)
        if embedding_stats is not None and inputs.student_embeddings is not None:
            for side, embeddings in zip(("a", "b"), inputs.student_embeddings):
                for key, value in embedding_stats(embeddings.detach()).items():
                    self.log(f"train/{side}_{key}", value, batch_size=batch_size)
        return total

    # ------------------------------------------------------------------ evaluation
    @property
    def evaluates_teacher_embeddings(self) -> bool:
        """Whether evaluation batches must carry the teacher's inputs (the teacher's own first stage); data
        modules read it to leave the teacher's view out of evaluation batches otherwise."""
        return self.evaluator.wants_teacher_embeddings(self.scorer)

    def _eval_update(self, batch: Mapping[str, Any]) -> None:
        self.evaluator.update("student", batch, self.student.encode_a, self.student.encode_b)
        if self.evaluates_teacher_embeddings:
            assert self.scorer is not None
            scorer = self.scorer
            self.evaluator.update("teacher", batch, lambda x: scorer.embed("a", x), lambda x: scorer.embed("b", x),
                                  _view(batch, "a") if "a" in batch else None,
                                  _view(batch, "b") if "b" in batch else None)

    def eval_context(self, stage: str) -> EvalContext:
        """What the evaluator may use: the teacher, the data's items and judgments, K, the logger."""
        datamodule = getattr(self.trainer, "datamodule", None)
        relevance = getattr(datamodule, "relevance", None)
        experiment = getattr(self.logger, "experiment", None)

        def log_figure(tag: str, figure: Any) -> None:
            import matplotlib.pyplot as plt

            try:
                experiment.add_figure(f"{stage}/{tag}", figure, global_step=self.global_step, close=False)
            finally:
                plt.close(figure)

        return EvalContext(
            stage=stage, scorer=self.scorer, items=lambda: item_store(datamodule, stage),
            relevance=(lambda: relevance(stage)) if callable(relevance) else None,
            num_negatives=self.num_hard_negatives,
            log_figure=log_figure if hasattr(experiment, "add_figure") else None,
            embedding_stats=getattr(self.student, "embedding_stats", None), device=self.device,
            score=student_scorer(self.student),
            partial=self._evaluates_part_of(stage), b_tie_keys=getattr(datamodule, "tie_keys", None),
        )

    def _evaluates_part_of(self, stage: str) -> bool:
        """Whether this evaluation encodes only some batches: the sanity check, ``fast_dev_run`` or a limit."""
        trainer = self._trainer
        if trainer is None:
            return False
        limit = trainer.limit_test_batches if stage == "test" else trainer.limit_val_batches
        return bool(trainer.sanity_checking or trainer.fast_dev_run) or limit != 1.0

    def _eval_epoch_end(self, stage: str) -> Results:
        results = self.evaluator.compute(self.eval_context(stage))
        main = self.evaluator.main_metric
        for group, values in results.items():
            prefix = stage if group == "student" else f"{stage}/{group}"
            for key, value in values.items():
                self.log(f"{prefix}/{key}", float(value), prog_bar=group == "student" and key == main, sync_dist=True)
        if "student" in results and main in results["student"]:  # the metric checkpoints monitor (val/score)
            self.log(f"{stage}/score", float(results["student"][main]), sync_dist=True)
        if stage == "test":
            self.test_results = results
        return results

    def on_validation_epoch_start(self) -> None:
        self.evaluator.reset()

    def on_test_epoch_start(self) -> None:
        self.evaluator.reset()

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_update(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_update(batch)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        if "a" in batch:
            out.update(a_id=batch["a_id"], a=self.student.encode_a(batch["a"]))
        if "b" in batch:
            out.update(b_id=batch["b_id"], b=self.student.encode_b(batch["b"]))
        return out

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
