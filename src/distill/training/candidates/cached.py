"""Turn a batch's cached candidate ids into in-batch candidate columns (no teacher call).

Mining semantics of cache-based training. The cache holds, per anchor, the top-K negatives that the
*building* student ranked highest over the *whole training split* (offline corpus mining, as in ANCE or
TAS-B), each with its teacher score. :class:`~distill.cache.CachedCandidatesDataModule` composes
every batch so that anchors arrive together with their cached candidates: by default as *extra* items
(``batch["teacher_cache_extra"]``, random batching), which the student encodes here with its own towers
(with gradient) and appends after the batch's columns, or as members of the batch itself (grouped
batching). Each anchor keeps the cached candidates present among the (global) columns, in cached order,
and the current student scores them. Cached candidates that are absent are padding (``valid=False``),
exactly like the padding of :func:`distill.mining.mine_hard_negatives`. Column 0 is the anchor's own
pair, scored by the cached pair score.

Compared with live mining, the candidates are chosen by the building student over the whole split
(not by the current student over the batch) and image duplicates cannot occur: an image that appears
in several rows of a batch (one per caption) is one candidate, scored at its first column.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from distill.cache.format import CACHE_BATCH_KEY, CACHE_EXTRA_KEY, read_manifest, verify_manifest
from distill import distributed
from distill.training.embeddings import gather_embeddings
from distill.training.candidates.base import CandidateSource, DirectionCandidates, Extra, StepView
from distill.training.mining import Candidates, clamp_k

__all__ = ["CachedCandidates", "resolve_cached_candidates"]


class CachedCandidates(CandidateSource):
    """Candidates and teacher scores from a teacher-score cache (``python -m distill cache-teacher``).

    Training never calls the teacher (which may then be ``null``): the data must be wrapped in
    :class:`distill.cache.CachedCandidatesDataModule`, which batches anchors with their cached candidates
    and attaches the cached scores. At setup the cache is checked against the teacher (class, config,
    weight hash) when one is set, and against K (``num_hard_negatives`` at most the cache's K).

    Args:
        path: the cache folder.
        extra_gradient: encode the extra items (random batching) with gradient (default), or without it, as
            MoCo's queue and other memory-bank negatives are: the anchors' towers still learn from every score,
            the candidates' embeddings are constants, and an extra item costs one forward instead of a forward
            and a backward (docs/benchmarks.md, training-step section, measures both).
    """

    needs_live_teacher = False

    def __init__(self, path: str, extra_gradient: bool = True) -> None:
        self.path = str(path)
        self.extra_gradient = bool(extra_gradient)

    def describe(self) -> str:
        return f"CachedCandidates({self.path}{'' if self.extra_gradient else ', extra_gradient=False'})"

    def setup(self, module: Any, stage: str) -> None:
        if stage != "fit":
            return
        manifest = read_manifest(self.path)
        verify_manifest(manifest, self.path, teacher=module.teacher, k=module.num_hard_negatives)
        trainer = getattr(module, "_trainer", None)
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        if datamodule is not None and getattr(datamodule, "wrapped_datamodule", None) is None:
            raise ValueError(
                f"model.init_args.candidates uses the teacher cache '{self.path}', but data is "
                f"{type(datamodule).__name__}, which does not bring the cached candidates into its batches: wrap "
                "it, data: {class_path: distill.cache.CachedCandidatesDataModule, init_args: {data: <your data>}}"
            )

    def select(self, step: StepView, direction: str) -> DirectionCandidates:
        cached = step.batch.get(CACHE_BATCH_KEY)
        if cached is None:
            raise ValueError(
                f"model.init_args.candidates reads the teacher cache '{self.path}', but the batch has no cached "
                "teacher scores: wrap the data module in distill.cache.CachedCandidatesDataModule"
            )
        fields = {key: distributed.gather_tensor(cached[key]) for key in
                  (f"{direction}_ids", f"{direction}_scores", "pair_scores")}
        columns = step.b.ids if direction == "a2b" else step.a.ids
        extra = self._extra(step, direction, self.extra_gradient)
        k = clamp_k(step.k, step.size) if extra is None else step.k
        if extra is not None:
            columns = torch.cat([columns, extra.ids])
        candidates, teacher = resolve_cached_candidates(fields[f"{direction}_ids"], fields[f"{direction}_scores"],
                                                        fields["pair_scores"], columns, k)
        present = float(candidates.valid[:, 1:].sum()) / max(step.size, 1)
        return DirectionCandidates(candidates.index, candidates.valid, teacher, extra,
                                   stats={f"cached_negatives_{direction}": present})

    @staticmethod
    def _extra(step: StepView, direction: str, gradient: bool = True) -> Extra | None:
        """The extra items the batch's anchors brought for ``direction``, encoded by the student (with gradient
        unless ``gradient`` is false): b items (a2b columns) or a items (b2a columns); ``None`` for grouped
        batches."""
        extras = step.batch.get(CACHE_EXTRA_KEY)
        if extras is None:
            return None
        side = "b" if direction == "a2b" else "a"
        encode = step.encode_b if side == "b" else step.encode_a
        with torch.set_grad_enabled(gradient and torch.is_grad_enabled()):
            embeddings = gather_embeddings(encode(extras[side]))
        return Extra(embeddings, distributed.gather_tensor(extras[f"{side}_id"]))


@torch.no_grad()
def resolve_cached_candidates(candidate_ids: Tensor, candidate_scores: Tensor, pair_scores: Tensor,
                              column_ids: Tensor, k: int) -> tuple[Candidates, Tensor]:
    """In-batch candidate columns and teacher scores of anchors with cached candidates.

    Args:
        candidate_ids: ``[N, K]`` long, each anchor's cached candidate ids on the other side (-1: none).
        candidate_scores: ``[N, K]`` teacher scores of those (anchor, candidate) pairs.
        pair_scores: ``[N]`` teacher score of each anchor's own pair (anchor ``i`` is paired with column ``i``).
        column_ids: ``[M]`` long, the id of each column of the batch's other side (``M >= N``).
        k: negatives per anchor in the output.

    Returns:
        ``Candidates(index [N, 1+k], valid [N, 1+k])`` in the convention of
        :func:`~distill.mining.mine_hard_negatives` (column 0 = ``i``; padding points at ``i``), and the
        teacher scores ``[N, 1+k]`` float32 (0 at padding). The first ``k`` cached candidates present in the
        batch are kept, in cached order; a candidate id held by several columns maps to the first of them.
    """
    if candidate_ids.shape != candidate_scores.shape or candidate_ids.ndim != 2:
        raise ValueError(f"cached candidate ids {tuple(candidate_ids.shape)} and scores "
                         f"{tuple(candidate_scores.shape)} must be equal [N, K] shapes")
    rows, width = candidate_ids.shape
    if pair_scores.shape != (rows,):
        raise ValueError(f"pair_scores must be [{rows}], got {tuple(pair_scores.shape)}")
    if column_ids.ndim != 1 or column_ids.shape[0] < rows:
        raise ValueError(f"column_ids must be [M] with M >= {rows}, got {tuple(column_ids.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    device = candidate_ids.device
    sorted_ids, order = torch.sort(column_ids, stable=True)
    slot = torch.searchsorted(sorted_ids, candidate_ids).clamp(max=sorted_ids.numel() - 1)
    present = (sorted_ids[slot] == candidate_ids) & (candidate_ids >= 0)
    column = order[slot]
    # Present candidates first, each group in cached order; keep k of them.
    keep = torch.sort((~present).to(torch.uint8), dim=1, stable=True).indices[:, :k]
    valid = present.gather(1, keep)
    diagonal = torch.arange(rows, device=device).unsqueeze(1)
    index = torch.where(valid, column.gather(1, keep), diagonal)
    scores = torch.where(valid, candidate_scores.gather(1, keep).float(), torch.zeros((), device=device))
    if width < k:  # fewer cached candidates than k: pad like mine_hard_negatives
        pad = k - width
        index = torch.cat([index, diagonal.expand(rows, pad)], dim=1)
        valid = torch.cat([valid, valid.new_zeros(rows, pad)], dim=1)
        scores = torch.cat([scores, scores.new_zeros(rows, pad)], dim=1)
    candidates = Candidates(index=torch.cat([diagonal, index], dim=1),
                            valid=torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1))
    return candidates, torch.cat([pair_scores.float().unsqueeze(1), scores], dim=1)
