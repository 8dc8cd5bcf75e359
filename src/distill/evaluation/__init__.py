"""Evaluation: streaming embedding buffers, chunked exhaustive ranking, metrics, two-stage re-ranking and
teacher-student diagnostics, behind one evaluator per task (``model.init_args.evaluator`` in a recipe)."""

from distill.evaluation.buffer import EncodedSplit, SplitBuffer
from distill.evaluation.evaluator import EvalContext, Results, RetrievalEvaluator
from distill.evaluation.qrels import qrels_metrics
from distill.evaluation.ranking import Ranking, top_k
from distill.evaluation.recall import DEFAULT_KS, recall_metrics, retrieval_metrics
from distill.evaluation.rerank import rerank
from distill.evaluation.tasks import QrelsEvaluator, RecallEvaluator

__all__ = [
    "DEFAULT_KS",
    "EncodedSplit",
    "EvalContext",
    "QrelsEvaluator",
    "Ranking",
    "RecallEvaluator",
    "Results",
    "RetrievalEvaluator",
    "SplitBuffer",
    "qrels_metrics",
    "recall_metrics",
    "rerank",
    "retrieval_metrics",
    "top_k",
]
