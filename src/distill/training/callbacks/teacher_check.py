"""TeacherCheck: before distilling, check on a sample of validation queries that the teacher re-ranks better
than the student ranks alone.

Distillation can only move the student toward its teacher. A teacher that re-orders the student's own top k
worse than the student orders it (a weak or untrained cross-encoder, a teacher from another domain) makes the
student worse over hours of training. At the start of ``fit`` this callback encodes a bounded sample of the
validation split with the student, ranks it, re-ranks each query's top ``k`` with the teacher (the
evaluator's own two-stage code) and compares the evaluator's main metric (RSUM, nDCG@10). A teacher that does
not beat the student stops the run in one line with both numbers; the pairs scored and the seconds are logged.

Skipped when the module has no teacher (a teacher-score cache, InfoNCE alone), the recipe has no validation
data, ``limit_val_batches`` is 0, under ``fast_dev_run`` (a smoke run), and when ``fit`` resumes a checkpoint
(the check ran at the run's start). Off with ``fit --teacher_check false`` or ``DISTILL_TEACHER_CHECK=0``.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.seed import isolate_rng
from torch.utils.data import DataLoader, Subset

from distill.errors import TrainingError
from distill.progress import format_seconds, line_interval

__all__ = ["CheckResult", "TeacherCheck", "TeacherCheckError", "ENV_SWITCH", "refusal", "run_teacher_check", "val_loaders"]

ENV_SWITCH = "DISTILL_TEACHER_CHECK"
SWITCH = "--teacher_check false"
logger = logging.getLogger("distill.teacher_check")


class TeacherCheckError(TrainingError):
    """The teacher re-ranked the sample no better than the student ranked it alone."""


@dataclass
class CheckResult:
    """What the check measured: the metric, its value for the student alone and re-ranked by the teacher."""

    metric: str
    student: float
    two_stage: float
    queries: int
    k: int
    pairs: int
    seconds: float

    @property
    def passed(self) -> bool:
        return self.two_stage > self.student

    def summary(self) -> str:
        return (f"on {self.queries} validation queries the student alone scores {self.metric} {self.student:.2f}, "
                f"re-ranked by the teacher (its top {self.k}) {self.two_stage:.2f} "
                f"({self.pairs:,} teacher pairs, {self.seconds:.1f} s)")


class TeacherCheck(Callback):
    """Refuses to distil from a teacher that does not improve the student's own ranking (see the module docstring).

    Args:
        enabled: run the check (``fit --teacher_check false`` or ``DISTILL_TEACHER_CHECK=0`` turn it off).
        queries: validation queries (image-text: anchors) in the sample.
        passages: for query/corpus data, the corpus passages besides those judged for the sampled queries.
        k: each query's student top k the teacher re-ranks (default: the evaluator's ``two_stage_k``, else 10).
    """

    def __init__(self, enabled: bool = True, queries: int = 200, passages: int = 5000, k: int | None = None) -> None:
        for name, value in (("queries", queries), ("passages", passages), ("k", k if k is not None else 1)):
            if value < 1:
                raise ValueError(f"TeacherCheck {name} must be >= 1, got {value}")
        self.enabled = enabled
        self.queries, self.passages, self.k = queries, passages, k
        self.result: CheckResult | None = None

    def skip_reason(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str | None:
        """Why the check does not run here, or ``None``."""
        if not self.enabled or os.environ.get(ENV_SWITCH, "1") in ("0", "false", "False"):
            return "turned off"
        if any(getattr(pl_module, name, None) is None for name in ("scorer", "evaluator", "student")):
            return "no teacher"  # nor a student: the demo teacher's own pre-training
        if trainer.fast_dev_run:
            return "fast_dev_run"
        if trainer.ckpt_path is not None:
            return "resumed run"
        if trainer.limit_val_batches == 0:
            return "limit_val_batches is 0"
        return None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.skip_reason(trainer, pl_module) is not None:
            return
        loaders = val_loaders(trainer.datamodule)
        if not loaders:
            return
        with isolate_rng():  # the loaders' iterators draw seeds: training starts from the state it had without the check
            result = run_teacher_check(pl_module, trainer.datamodule, loaders, self.queries, self.passages, self.k)
        if result is None:
            return
        self.result = result
        if not result.passed:
            raise TeacherCheckError(refusal(result))
        if trainer.is_global_zero:
            logger.info("teacher check passed: %s", result.summary())


def refusal(result: CheckResult, anyway: str = f"pass {SWITCH} to train anyway") -> str:
    """The one line that stops a run whose teacher failed the check; ``anyway`` says how to train regardless."""
    return (f"teacher check: {result.summary()}: the teacher does not improve on the student, so distilling from it "
            f"would not help; use a stronger teacher (model.init_args.teacher), or {anyway}")


def val_loaders(datamodule: Any) -> list[DataLoader]:
    """The data module's validation loaders (a list, empty when it has no validation split)."""
    make = getattr(datamodule, "val_dataloader", None)
    if not callable(make):
        return []
    try:
        loaders = make()
    except (NotImplementedError, RuntimeError):  # LightningDataModule's default, or no val split set up
        return []
    if loaders is None:
        return []
    return list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]


def run_teacher_check(module: Any, datamodule: Any, loaders: list[DataLoader], queries: int, passages: int,
                      k: int | None) -> CheckResult | None:
    """Encode a sample of ``loaders`` with ``module.student``, rank it, re-rank its top ``k`` with ``module.scorer``;
    ``None`` when the sample holds no query."""
    evaluator = copy.copy(module.evaluator)
    k = k or evaluator.two_stage_k or 10
    evaluator._buffers = {}
    evaluator.two_stage_k, evaluator.two_stage_at = k, ("val",)
    evaluator.diagnostics, evaluator.evaluate_teacher, evaluator.embeddings_dir = False, False, None
    start = time.perf_counter()
    was_training = module.student.training
    module.student.eval()
    module.scorer.apply_precision()
    try:
        sampled: set[int] = set()
        done, last = 0, time.perf_counter()
        with torch.no_grad():
            for batch in _sample(loaders, datamodule, queries, passages, sampled):
                done += _items(batch)
                batch = move_data_to_device(batch, module.device)
                evaluator.update("student", batch, module.student.encode_a, module.student.encode_b)
                if time.perf_counter() - last >= line_interval():  # a line at least every 30 s in a log file
                    last = time.perf_counter()
                    logger.info("teacher check: %s items of the sample encoded, %s elapsed", f"{done:,}",
                                format_seconds(last - start))
        if not len(evaluator):
            return None
        logger.info("teacher check: the teacher re-ranks the top %d of %d sampled queries", k, len(sampled))
        with _attached(module, datamodule):
            ctx = module.eval_context("val")
        ctx.partial = True  # the metrics cover the sampled queries
        results = evaluator.compute(ctx)
    finally:
        module.student.train(was_training)
    if "student" not in results or "two_stage" not in results:
        return None
    metric = evaluator.main_metric
    return CheckResult(metric, float(results["student"][metric]), float(results["two_stage"][metric]),
                       len(sampled), k, int(results["two_stage"].get("teacher_pairs", 0)),
                       time.perf_counter() - start)


@dataclass
class _NoTrainer:
    """What :meth:`DistillationModule.eval_context` reads of a trainer, for a check run outside ``fit``
    (``distill teacher-check``): the data module, no logger, no limit on the batches."""

    datamodule: Any
    logger: None = None
    global_step: int = 0
    sanity_checking: bool = False
    fast_dev_run: bool = False
    limit_val_batches: float = 1.0
    limit_test_batches: float = 1.0


@contextmanager
def _attached(module: Any, datamodule: Any) -> Iterator[None]:
    """Attach a :class:`_NoTrainer` to a module that no trainer runs, for the duration of the block."""
    if getattr(module, "_trainer", None) is not None:
        yield
        return
    module.trainer = _NoTrainer(datamodule)
    try:
        yield
    finally:
        module.trainer = None


def _sample(loaders: list[DataLoader], datamodule: Any, queries: int, passages: int,
            sampled: set[int]) -> Iterator[Mapping[str, Any]]:
    """The sample's batches: the first ``queries`` queries (image-text: anchors), whose ids go into ``sampled``, and
    for a corpus loader the passages judged for them plus the first ``passages`` others."""
    for loader in loaders:
        dataset = loader.dataset
        rows = getattr(dataset, "rows", None)
        relevance = getattr(datamodule, "relevance", None)
        first = next(iter(_limited(loader, 1)), None)
        if first is None:
            continue
        if "a" not in first and rows is not None and callable(relevance):  # a corpus: judged passages + the first ones
            judged = {p for q, grades in relevance("val").items() if q in sampled for p in grades}
            keep = [i for i, row in enumerate(rows) if i < passages or int(row) in judged]
            yield from _subset(loader, keep)
            continue
        for batch in loader:
            if "a" not in batch:
                yield batch
                continue
            ids = batch["a_id"].tolist()
            take = next((i for i in range(len(ids)) if len(sampled | set(ids[:i + 1])) > queries), len(ids))
            if take < len(ids):
                batch = _head(batch, take)
            sampled.update(int(v) for v in ids[:take])
            if take:
                yield batch
            if len(sampled) >= queries:
                break


def _items(batch: Mapping[str, Any]) -> int:
    """Items in a batch: its query (a) or passage (b) ids."""
    ids = batch.get("a_id", batch.get("b_id"))
    return len(ids) if ids is not None else 0


def _limited(loader: DataLoader | Any, batches: int) -> Iterator[Any]:
    for index, batch in enumerate(loader):
        if index >= batches:
            return
        yield batch


def _subset(loader: DataLoader, indices: list[int]) -> DataLoader:
    return DataLoader(Subset(loader.dataset, indices), batch_size=loader.batch_size, collate_fn=loader.collate_fn)


def _head(batch: Mapping[str, Any], n: int) -> dict[str, Any]:
    """The first ``n`` items of a batch (tensors and nested input dicts cut along the first dimension)."""
    from distill.inputs import select_rows

    rows = torch.arange(n)
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            out[key] = value[:n]
        elif isinstance(value, Mapping):
            out[key] = select_rows(value, rows)
        else:
            out[key] = value
    return out
