"""Evaluators: stream a split's embeddings, rank exhaustively in chunks, re-rank with the teacher, diagnose.

One evaluator serves a whole ``validate`` / ``test`` epoch of :class:`~distill.training.DistillationModule`
(and of the teacher's own pre-training): :meth:`RetrievalEvaluator.update` buffers each batch's
embeddings and ids (:class:`~distill.evaluation.buffer.SplitBuffer`, never raw inputs) and
:meth:`RetrievalEvaluator.compute` returns groups of metrics:

* ``student``: the first-stage ranking of the whole split (:func:`~distill.evaluation.ranking.top_k`);
* ``two_stage``: each query's top ``two_stage_k`` re-ordered by the teacher (stages in ``two_stage_at``);
* ``teacher`` / ``teacher_itc`` (``evaluate_teacher``): the teacher's own ranking, its embedding (ITC) top
  ``two_stage_k`` re-ordered by its pair score, and its embeddings alone;
* ``diagnostics`` (validation): for the first ``diagnostic_anchors`` queries, the Spearman correlation of
  the teacher's and the student's orders over the student's top-K hard negatives, and their spreads.

The teacher only ever sees the items it scores, fetched by id through the data module's
:class:`~distill.data.items.ItemStore` a bounded chunk at a time. What differs between tasks is the
relevance and the metrics: :class:`RecallEvaluator` (image-text, several positives per query, both
directions) and :class:`QrelsEvaluator` (query-passage, graded judgments, BEIR's conventions).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from distill.data.items import ItemStore
from distill.evaluation.buffer import EMBEDDING_DTYPES, EncodedSplit, SplitBuffer
from distill.evaluation.diagnostics import score_distribution_figure, spearman_per_row, standardised_spread
from distill.evaluation.late import TokenTable, late_top_k
from distill.evaluation.ranking import KeyMask, Ranking, top_k
from distill.evaluation.rerank import rerank
from distill.inputs import Inputs, select_rows
from distill.teachers.scoring import TeacherScorer

__all__ = ["EvalContext", "Results", "RetrievalEvaluator"]

Results = dict[str, dict[str, float]]
Encoder = Callable[[Inputs], Tensor]


@dataclass
class EvalContext:
    """What :meth:`RetrievalEvaluator.compute` may use besides the buffered embeddings.

    ``scorer``: the teacher (``None``: no two-stage, teacher rows or diagnostics); ``items``: builds the data
    module's item store (called only when the teacher scores something); ``relevance``: the stage's
    judgments (qrels evaluators); ``num_negatives``: K of the diagnostics; ``log_figure(tag, figure)``;
    ``embedding_stats(embeddings) -> {name: value}`` (sparse students: non-zeros per vector); ``partial``: only
    some batches of the split were encoded (Lightning's sanity check, ``limit_*_batches``, ``fast_dev_run``),
    so metrics cover the encoded queries only; ``b_tie_keys(b ids [n]) -> [n]``: keys ordered as the b items'
    document ids are (score ties go to the larger key, as trec_eval's to the larger id; default: the ids);
    ``score(a, b) -> [Na, Nb]``: the student's score, which ranks token embeddings (a late-interaction student;
    pooled embeddings are ranked by their dot product).
    """

    stage: str
    scorer: TeacherScorer | None = None
    items: Callable[[], ItemStore] | None = None
    relevance: Callable[[], Mapping[int, Mapping[int, float]]] | None = None
    num_negatives: int = 8
    log_figure: Callable[[str, Any], None] | None = None
    embedding_stats: Callable[[Tensor], Mapping[str, Any]] | None = None
    device: torch.device | str = "cpu"
    partial: bool = False
    b_tie_keys: Callable[[Tensor], Tensor] | None = None
    score: Callable[[Any, Any], Tensor] | None = None


class RetrievalEvaluator:
    """Base class; subclasses set the directions, list depth, metrics and relevance.

    Args:
        two_stage_k: re-rank each query's top-k with the teacher (0: off).
        two_stage_at: the stages (``val``, ``test``) that run two-stage re-ranking.
        diagnostics: at validation, the teacher-student agreement over hard negatives.
        diagnostic_anchors: queries the diagnostics look at.
        evaluate_teacher: also rank with the teacher's own embeddings (teachers with ``embed_a/embed_b``).
        embedding_dtype: ``float32`` or ``float16`` for the buffered embeddings.
        embeddings_dir: stream the b side's embeddings to memory-mapped files in this folder (large corpora;
            under DDP a folder every process can read).
        query_chunk / key_chunk: block sizes of the exhaustive ranking (memory ``query_chunk x key_chunk``).
    """

    directions: tuple[str, ...] = ("a2b", "b2a")

    def __init__(self, two_stage_k: int = 16, two_stage_at: Sequence[str] = ("test",), diagnostics: bool = True,
                 diagnostic_anchors: int = 256, evaluate_teacher: bool = False, embedding_dtype: str = "float32",
                 embeddings_dir: str | None = None, query_chunk: int = 1024, key_chunk: int = 16384) -> None:
        for name, value, least in (("two_stage_k", two_stage_k, 0), ("diagnostic_anchors", diagnostic_anchors, 0),
                                   ("query_chunk", query_chunk, 1), ("key_chunk", key_chunk, 1)):
            if value < least:
                raise ValueError(f"model.init_args.evaluator.init_args.{name} must be >= {least}, got {value}")
        if embedding_dtype not in EMBEDDING_DTYPES:
            raise ValueError(f"model.init_args.evaluator.init_args.embedding_dtype must be one of {sorted(EMBEDDING_DTYPES)}, "
                             f"got {embedding_dtype!r}")
        unknown = set(two_stage_at) - {"val", "test"}
        if unknown:
            raise ValueError(f"model.init_args.evaluator.init_args.two_stage_at lists {sorted(unknown)}; use val and/or test")
        self.two_stage_k = two_stage_k
        self.two_stage_at = tuple(two_stage_at)
        self.diagnostics = diagnostics
        self.diagnostic_anchors = diagnostic_anchors
        self.evaluate_teacher = evaluate_teacher
        self.embedding_dtype = embedding_dtype
        self.embeddings_dir = embeddings_dir
        self.query_chunk, self.key_chunk = query_chunk, key_chunk
        self._buffers: dict[str, SplitBuffer] = {}

    # ------------------------------------------------------------------ to implement
    @property
    def main_metric(self) -> str:
        """The metric shown in the progress bar (and a sensible ``ModelCheckpoint`` monitor)."""
        raise NotImplementedError

    def depth(self) -> int:
        """How many ranked items the metrics read per query."""
        raise NotImplementedError

    def metrics(self, split: EncodedSplit, lists: Mapping[str, Tensor], ctx: EvalContext) -> dict[str, float]:
        """Metrics of ranked lists (positions) per direction."""
        raise NotImplementedError

    def positives(self, split: EncodedSplit, ctx: EvalContext) -> KeyMask:
        """Which b items are positives of a items (diagnostics exclude them from the negatives)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ streaming
    def reset(self) -> None:
        for buffer in self._buffers.values():
            buffer.remove_files()
        self._buffers = {}

    def __len__(self) -> int:
        return sum(len(buffer) for buffer in self._buffers.values())

    @torch.no_grad()
    def update(self, name: str, batch: Mapping[str, Any], encode_a: Encoder, encode_b: Encoder,
               a_inputs: Inputs | None = None, b_inputs: Inputs | None = None) -> None:
        """Buffer one batch's embeddings under ``name`` (``student``, ``teacher``); ``a_inputs`` / ``b_inputs``
        default to the batch's ``a`` / ``b``. Each a item is encoded once per split."""
        buffer = self._buffers.get(name)
        if buffer is None:
            folder = self.embeddings_dir if name == "student" else None
            buffer = self._buffers[name] = SplitBuffer(EMBEDDING_DTYPES[self.embedding_dtype], folder)
        if "a" in batch:
            inputs = batch["a"] if a_inputs is None else a_inputs
            rows = buffer.new_a(batch["a_id"])
            if rows.numel():
                buffer.add_a(batch["a_id"].cpu()[rows], encode_a(select_rows(inputs, rows)))
        if "b" in batch:
            if "b_id" not in batch:
                raise KeyError("evaluation batches with 'b' need 'b_id' (the b items' ids)")
            buffer.add_b(batch["b_id"], encode_b(batch["b"] if b_inputs is None else b_inputs))
            if "a" in batch:
                buffer.add_pairs(batch["a_id"], batch["b_id"])

    def wants_teacher_embeddings(self, scorer: TeacherScorer | None) -> bool:
        return self.evaluate_teacher and scorer is not None and bool(getattr(scorer.teacher, "has_embeddings", False))

    # ------------------------------------------------------------------ computing
    def _top_k(self, queries: Any, keys: Any, k: int, key_ids: Tensor | None, mask: KeyMask | None,
               device: torch.device | str, score: Callable[[Any, Any], Tensor] | None, queries_are_a: bool) -> Ranking:
        """:func:`top_k` of pooled rows, :func:`late_top_k` of token tables (by the student's ``score``)."""
        if not isinstance(queries, TokenTable):
            return top_k(queries.to(device), keys, k, key_ids, mask, self.query_chunk, self.key_chunk)
        if score is None:
            raise ValueError("ranking token embeddings needs the student's score (EvalContext.score)")
        oriented = score if queries_are_a else (lambda q, c: score(c, q).T)
        return late_top_k(queries, keys, k, oriented, key_ids, mask, self.query_chunk, self.key_chunk, device)

    def rank(self, split: EncodedSplit, depth: int, device: torch.device | str = "cpu",
             b_tie_keys: Callable[[Tensor], Tensor] | None = None,
             score: Callable[[Any, Any], Tensor] | None = None) -> dict[str, Tensor]:
        """Each direction's top-``depth`` positions, exhaustive over the split, in chunks; b items tied on score
        are ordered by ``b_tie_keys(b_ids)`` (default: their ids), larger first. Token embeddings (a
        late-interaction student) are ranked by ``score`` (:mod:`distill.evaluation.late`)."""
        lists: dict[str, Tensor] = {}
        duplicates = ~split.b_keep
        mask = (lambda rows, start, stop: duplicates[start:stop].unsqueeze(0).expand(rows.numel(), -1)) \
            if bool(duplicates.any()) else None
        for direction in self.directions:
            if direction == "a2b":
                keys = split.b_ids if b_tie_keys is None else b_tie_keys(split.b_ids)
                ranking = self._top_k(split.a, split.b, depth, keys, mask, device, score, True)
            else:
                keep = torch.nonzero(split.b_keep).flatten()
                queries = TokenTable.cat(split.b) if isinstance(split.a, TokenTable) else \
                    torch.cat([torch.as_tensor(shard) for shard in split.b])
                ranking = self._top_k(queries, split.a, depth, split.a_ids, None, device, score, False)
                full = torch.full((split.num_b, depth), -1, dtype=torch.long)
                full[keep] = ranking.index[keep]
                ranking.index = full
            lists[direction] = ranking.index
        return lists

    def rerank_lists(self, split: EncodedSplit, lists: Mapping[str, Tensor], ctx: EvalContext) -> tuple[dict[str, Tensor], int]:
        """Each direction's top ``two_stage_k`` re-ordered by the teacher; returns the lists and pairs scored."""
        assert ctx.scorer is not None and ctx.items is not None
        store = ctx.items()
        scorer = ctx.scorer
        out: dict[str, Tensor] = {}
        pairs = 0
        for direction, ranked in lists.items():
            if direction == "a2b":
                def score(rows: Tensor, cols: Tensor) -> Tensor:
                    return scorer.score_loaded(store.load_a, store.load_b, split.a_ids[rows], split.b_ids[cols])
            else:
                def score(rows: Tensor, cols: Tensor) -> Tensor:
                    return scorer.score_loaded(store.load_a, store.load_b, split.a_ids[cols], split.b_ids[rows])
            keep = split.b_keep if direction == "b2a" else torch.ones(ranked.shape[0], dtype=torch.bool)
            reranked, scored = rerank(ranked.masked_fill(~keep.unsqueeze(1), -1), self.two_stage_k, score)
            out[direction] = reranked
            pairs += scored
        return out, pairs

    def compute(self, ctx: EvalContext) -> Results:
        """Every metric group of the epoch (see the module docstring); clears the buffers."""
        try:
            return self._compute(ctx)
        finally:
            self.reset()

    def _compute(self, ctx: EvalContext) -> Results:
        if "student" not in self._buffers or not len(self._buffers["student"]):
            return {}
        split = self._buffers["student"].finalize()
        two_stage = self.two_stage_k > 0 and ctx.stage in self.two_stage_at and ctx.scorer is not None
        depth = max(self.depth(), self.two_stage_k if two_stage else 0)
        lists = self.rank(split, depth, ctx.device, ctx.b_tie_keys, ctx.score)
        results: Results = {"student": {**self.metrics(split, lists, ctx), **self._stats(split, ctx)}}
        if two_stage:
            reranked, pairs = self.rerank_lists(split, lists, ctx)
            exhaustive = float(split.a_ids.numel() * int(split.b_keep.sum()))
            results["two_stage"] = {**self.metrics(split, reranked, ctx), "teacher_pairs": float(pairs),
                                    "exhaustive_pairs": exhaustive}
        if ctx.stage == "val" and self.diagnostics and ctx.scorer is not None and self.diagnostic_anchors:
            results["diagnostics"] = self.hard_negative_agreement(split, ctx)
        if "teacher" in self._buffers and ctx.scorer is not None:
            teacher_split = self._buffers["teacher"].finalize()
            teacher_lists = self.rank(teacher_split, max(self.depth(), self.two_stage_k), ctx.device, ctx.b_tie_keys)
            results["teacher_itc"] = self.metrics(teacher_split, teacher_lists, ctx)
            if self.two_stage_k:
                reranked, pairs = self.rerank_lists(teacher_split, teacher_lists, ctx)
                results["teacher"] = {**self.metrics(teacher_split, reranked, ctx), "teacher_pairs": float(pairs)}
        return results

    def _stats(self, split: EncodedSplit, ctx: EvalContext) -> dict[str, float]:
        if ctx.embedding_stats is None:
            return {}
        b = torch.cat([torch.as_tensor(shard) for shard in split.b]).float()
        return {f"{side}_{key}": float(value) for side, embeddings in (("a", split.a.float()), ("b", b))
                for key, value in ctx.embedding_stats(embeddings).items()}

    @torch.no_grad()
    def hard_negative_agreement(self, split: EncodedSplit, ctx: EvalContext) -> dict[str, float]:
        """Spearman(teacher, student) over the student's top-K negatives of the first anchors, and spreads."""
        assert ctx.scorer is not None and ctx.items is not None
        anchors = min(self.diagnostic_anchors, int(split.a_ids.numel()))
        positives = self.positives(split, ctx)
        duplicates = ~split.b_keep

        def mask(rows: Tensor, start: int, stop: int) -> Tensor:
            return positives(rows, start, stop) | duplicates[start:stop].unsqueeze(0)

        k = ctx.num_negatives
        ranking = self._top_k(split.a[:anchors], split.b, k, split.b_ids, mask, ctx.device, ctx.score, True)
        if k < 2 or not bool((ranking.index >= 0).all()):
            return {}
        rows = torch.arange(anchors).repeat_interleave(k)
        store = ctx.items()
        teacher = ctx.scorer.score_loaded(store.load_a, store.load_b, split.a_ids[rows],
                                          split.b_ids[ranking.index.reshape(-1)]).view(anchors, k)
        student = ranking.scores.float()
        values = {"spearman": float(spearman_per_row(teacher, student).mean())}
        values.update({f"teacher_{key}": v for key, v in standardised_spread(teacher).items()})
        values.update({f"student_{key}": v for key, v in standardised_spread(student).items()})
        if ctx.log_figure is not None:
            ctx.log_figure("hard_negative_scores", score_distribution_figure(teacher, student))
        return values
