"""Candidate sources: which pairs of a training step the teacher scores and the losses compare.

A recipe composes them under ``model.init_args.candidates`` (one ``class_path`` or a list; a list joins
each source's negatives after one positive per anchor):

* :class:`InBatchNegatives` (default): the student's top-K columns of the batch;
* :class:`MemoryQueue`: the student's top-K over the batch plus items kept from earlier batches;
* :class:`CachedCandidates`: candidates and teacher scores from ``python -m distill cache-teacher``;
* :class:`ListedNegatives`: the data's listed negatives (e.g. MS MARCO training triples), scored by the
  live teacher or by scores shipped with the data.

K is the module's ``num_hard_negatives``; each source clamps it once (:func:`distill.training.mining.clamp_k`).
Teacher scoring of the chosen pairs (each distinct pair once, bounded per forward) happens in one place,
:meth:`distill.training.DistillationModule.candidate_scores`.
"""

from distill.training.candidates.base import CandidateSource, DirectionCandidates, Extra, Side, StepView, combine
from distill.training.candidates.cached import CachedCandidates, resolve_cached_candidates
from distill.training.candidates.in_batch import InBatchNegatives, MemoryQueue
from distill.training.candidates.listed import ListedNegatives

__all__ = [
    "CachedCandidates",
    "CandidateSource",
    "DirectionCandidates",
    "Extra",
    "InBatchNegatives",
    "ListedNegatives",
    "MemoryQueue",
    "Side",
    "StepView",
    "combine",
    "resolve_cached_candidates",
]
