"""One training step's candidate scores: sources pick the pairs, the student and the teacher score them.

:func:`candidate_scores` is the only place where candidates from several sources are combined, where the
student's scores of the chosen (anchor, column) pairs are gathered, and where the live teacher scores the
pairs no source already knows a score for: both directions together, each distinct pair once, at most
``teacher_max_pairs`` per forward (:class:`~distill.teachers.TeacherScorer`). Under DDP every process
mines over the global batch and scores the pairs of its own anchor rows; the scores are then gathered.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from distill import distributed
from distill.errors import RecipeError
from distill.inputs import Inputs, concat_inputs
from distill.losses import DirectionScores
from distill.teachers.scoring import TeacherScorer
from distill.training.candidates import CandidateSource, DirectionCandidates, StepView, combine
from distill.training.embeddings import direction_scores

__all__ = ["candidate_scores", "select_candidates"]


def select_candidates(sources: Sequence[CandidateSource], step: StepView, directions: Sequence[str],
                      ) -> dict[str, DirectionCandidates]:
    """Each needed direction's candidates, combined over the sources that supply it."""
    selected = {}
    for direction in directions:
        parts = [source.select(step, direction) for source in sources if direction in source.directions]
        if not parts:
            names = ", ".join(source.describe() for source in sources)
            raise RecipeError(f"a loss needs {direction} candidates, but model.init_args.candidates ({names}) supplies "
                             f"none: add distill.training.candidates.InBatchNegatives or set the loss's directions")
        selected[direction] = combine(parts, step.size)
    return selected


def _column_scores(step: StepView, direction: str, candidates: DirectionCandidates) -> Tensor:
    """``[N, B + E]`` student scores of each anchor against a direction's columns: the batch's (the step's
    score matrix), then the extra items' (scored by the student's ``score``)."""
    batch = step.similarity if direction == "a2b" else step.similarity.T
    if candidates.extra is None:
        return batch
    anchors = step.a.embeddings if direction == "a2b" else step.b.embeddings
    extra = candidates.extra.embeddings.to(anchors.dtype)
    return torch.cat([batch, direction_scores(step.score, anchors, extra, direction)], dim=1)


def _pool(step: StepView, side: str, extra_of: DirectionCandidates | None) -> Inputs:
    """The teacher's view of one side's columns: the batch's items, then the extra items of the direction
    whose columns are on this side."""
    view = (step.a if side == "a" else step.b).teacher_inputs
    if extra_of is None or extra_of.extra is None:
        return view
    if extra_of.extra.teacher_inputs is None:
        raise ValueError("a candidate source added items without the teacher's inputs, but the live teacher must "
                         "score them")
    return concat_inputs([view, extra_of.extra.teacher_inputs])


@torch.no_grad()
def fill_teacher_scores(scorer: TeacherScorer, step: StepView, selected: dict[str, DirectionCandidates]) -> int:
    """Score, in place, every valid candidate pair without a known teacher score; returns distinct pairs scored.

    Pairs of both directions share one de-duplicated request: an a2b pair (anchor a_i, column b_j) and a b2a
    pair (anchor b_j, column a_i) are the same (a, b) pair.
    """
    rows = distributed.local_rows(step.size, step.similarity.device) if distributed.is_distributed() \
        else slice(0, step.size)
    a_parts, b_parts, owners = [], [], []
    for direction, candidates in selected.items():
        local = candidates.index[rows]
        missing = candidates.valid[rows] & torch.isnan(candidates.teacher[rows])
        anchor = torch.arange(rows.start or 0, (rows.start or 0) + local.shape[0], device=local.device)
        anchor = anchor.unsqueeze(1).expand_as(local)
        a_side, b_side = (anchor, local) if direction == "a2b" else (local, anchor)
        a_parts.append(a_side[missing])
        b_parts.append(b_side[missing])
        owners.append((direction, missing))
    a_index, b_index = torch.cat(a_parts), torch.cat(b_parts)
    a_pool = _pool(step, "a", selected.get("b2a"))  # gathers across processes: every process takes part
    b_pool = _pool(step, "b", selected.get("a2b"))
    if a_index.numel():
        scores, pairs = scorer.score_unique(a_pool, b_pool, a_index, b_index)
    else:
        scores, pairs = a_index.new_zeros(0, dtype=torch.float32), 0
    start = 0
    for direction, missing in owners:
        local = selected[direction].teacher[rows].clone()
        count = int(missing.sum())
        local[missing] = scores[start:start + count].to(local.dtype)
        start += count
        selected[direction].teacher = distributed.gather_tensor(local) if distributed.is_distributed() else local
    if distributed.is_distributed():
        pairs = int(distributed.gather_tensor(torch.tensor([pairs], device=step.similarity.device)).sum())
    return pairs


def candidate_scores(sources: Sequence[CandidateSource], step: StepView, directions: Sequence[str],
                     scorer: TeacherScorer | None, scored: Sequence[str] | None = None,
                     ) -> tuple[dict[str, DirectionScores], dict[str, float], tuple[Tensor, Tensor] | None]:
    """The loss inputs of each needed direction (student and teacher scores of the candidates, validity), step
    statistics (distinct teacher pairs scored, source statistics) and the a->b extra columns.

    ``scored`` lists the directions whose teacher scores a loss reads (default: all of ``directions``); only they
    get loss inputs. The others' candidates are selected for their extra items alone, which the teacher never
    scores. The extra columns are ``(scores [B, E], valid [B, E])``: every anchor's student scores of the
    step's extra b items (listed negatives, cached candidates), valid where the item is not the anchor's own
    positive; ``None`` without a2b candidates or extra items.
    """
    selected = select_candidates(sources, step, directions)
    scored = list(directions if scored is None else scored)
    stats: dict[str, float] = {}
    for candidates in selected.values():
        stats.update(candidates.stats)
    to_score = {d: c for d, c in selected.items() if d in scored}
    unknown = any(bool((c.valid & torch.isnan(c.teacher)).any()) for c in to_score.values())
    if unknown:
        if scorer is None:
            raise ValueError("the candidates need teacher scores, but model.init_args.teacher is not set: set a "
                             "teacher, or use candidates that carry their scores (CachedCandidates, "
                             "ListedNegatives(scores_from_data: true))")
        stats["teacher_pairs"] = float(fill_teacher_scores(scorer, step, to_score))
    else:
        stats["teacher_pairs"] = 0.0
    out: dict[str, DirectionScores] = {}
    extra_columns = None
    for direction, candidates in selected.items():
        columns = _column_scores(step, direction, candidates)
        if direction in scored:
            teacher = candidates.teacher.float().masked_fill(~candidates.valid, 0.0)
            out[direction] = DirectionScores(columns.gather(1, candidates.index), teacher, candidates.valid)
        if direction == "a2b" and candidates.extra is not None:
            extra_ids = candidates.extra.ids.to(step.b.ids.device)
            extra_columns = (columns[:, step.size:], extra_ids.unsqueeze(0) != step.b.ids.unsqueeze(1))
    return out, stats, extra_columns
