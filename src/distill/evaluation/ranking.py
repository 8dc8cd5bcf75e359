"""Exhaustive dot-product ranking in bounded memory: a running top-k over chunks of queries and keys.

``top_k(queries [Nq, D], keys, k)`` never builds the ``Nq x Nk`` score matrix: it scores a block of
``query_chunk x key_chunk`` at a time and merges each block's top-k into a running ``[Nq, k]`` list, so
memory is ``O(query_chunk * key_chunk + Nq * k)`` beyond the embeddings themselves. Keys may be given
as several shards (e.g. memory-mapped files of a corpus larger than host memory, one per process).

Ties are broken deterministically as trec_eval does: by score (descending), then by key id (descending),
including at the k-th place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["KeyMask", "Ranking", "order_by_score_then_id", "pairs_mask", "top_k"]

KeyMask = Callable[[Tensor, int, int], Tensor]
"""``mask(query_rows [q], key_start, key_stop) -> bool [q, key_stop - key_start]``: True excludes the key.
``query_rows`` are consecutive positions among the queries given to :func:`top_k`."""


def pairs_mask(rows: Tensor, cols: Tensor) -> KeyMask:
    """A :data:`KeyMask` excluding the listed ``(query row, key position)`` pairs (e.g. each query's positives),
    built block by block: memory ``O(pairs + block)``, never ``Nq x Nk``."""
    rows, cols = rows.long().cpu(), cols.long().cpu()

    def mask(query_rows: Tensor, start: int, stop: int) -> Tensor:
        out = torch.zeros(query_rows.numel(), stop - start, dtype=torch.bool)
        if query_rows.numel() == 0 or rows.numel() == 0:
            return out
        first = int(query_rows[0])
        inside = (rows >= first) & (rows < first + query_rows.numel()) & (cols >= start) & (cols < stop)
        out[rows[inside] - first, cols[inside] - start] = True
        return out

    return mask


@dataclass
class Ranking:
    """Each query's top keys: ``index [Nq, k]`` (positions among all keys, ``-1`` where fewer exist),
    ``scores [Nq, k]`` (``-inf`` there), best first."""

    index: Tensor
    scores: Tensor


def order_by_score_then_id(scores: Tensor, ids: Tensor) -> Tensor:
    """Per row, the permutation that sorts ``[N, m]`` entries by score (desc), then id (desc)."""
    by_id = torch.sort(ids, dim=1, descending=True, stable=True).indices
    by_score = torch.sort(scores.gather(1, by_id), dim=1, descending=True, stable=True).indices
    return by_id.gather(1, by_score)


def _block_top_k(scores: Tensor, ids: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-``k`` positions and scores per row of ``scores [q, c]`` with ties at the k-th place broken by
    ``ids [c]`` (descending)."""
    take = min(k, scores.shape[1])
    values, index = scores.topk(take, dim=1)
    if take == scores.shape[1]:
        return index, values
    kth = values[:, -1:]
    crossing = (scores >= kth).sum(1) > take  # ties straddle the cut: which of them stay depends on their ids
    for row in torch.nonzero(crossing & torch.isfinite(kth.squeeze(1))).flatten().tolist():
        candidates = torch.nonzero(scores[row] >= kth[row]).flatten()
        order = order_by_score_then_id(scores[row, candidates].unsqueeze(0), ids[candidates].unsqueeze(0))[0]
        index[row] = candidates[order[:take]]
        values[row] = scores[row, index[row]]
    return index, values


def _merge(running: Ranking, block_index: Tensor, block_scores: Tensor, key_ids: Tensor, k: int) -> Ranking:
    index = torch.cat([running.index, block_index], dim=1)
    scores = torch.cat([running.scores, block_scores], dim=1)
    ids = torch.where(index >= 0, key_ids[index.clamp(min=0)], torch.full_like(index, torch.iinfo(torch.long).min))
    order = order_by_score_then_id(scores, ids)[:, :k]
    return Ranking(index.gather(1, order), scores.gather(1, order))


@torch.no_grad()
def top_k(queries: Tensor, keys: Tensor | Sequence[Tensor], k: int, key_ids: Tensor | None = None,
          mask: KeyMask | None = None, query_chunk: int = 1024, key_chunk: int = 16384) -> Ranking:
    """The ``k`` highest-scoring keys of every query by dot product, in bounded memory.

    Args:
        queries: ``[Nq, D]``.
        keys: ``[Nk, D]``, or shards ``[N_s, D]`` read in order as one ``Nk``-row table (memory-mapped ok).
        k: list length; rows with fewer eligible keys are padded with index ``-1`` and score ``-inf``.
        key_ids: ``[Nk]`` long ids for tie-breaking (default: the positions).
        mask: excludes keys per query block (see :data:`KeyMask`).
        query_chunk / key_chunk: block size; the block of scores is ``query_chunk x key_chunk``.
    """
    shards = [keys] if isinstance(keys, Tensor) else list(keys)
    total = sum(int(shard.shape[0]) for shard in shards)
    ids = torch.arange(total) if key_ids is None else key_ids.long().cpu()
    if ids.numel() != total:
        raise ValueError(f"key_ids has {ids.numel()} entries for {total} keys")
    rows = queries.shape[0]
    device = queries.device
    ids_here = ids.to(device)
    index = torch.full((rows, k), -1, dtype=torch.long)
    scores = torch.full((rows, k), float("-inf"))
    for q_start in range(0, rows, query_chunk):
        block = queries[q_start:q_start + query_chunk].float()
        count = block.shape[0]
        query_rows = torch.arange(q_start, q_start + count)
        running = Ranking(torch.full((count, k), -1, dtype=torch.long, device=device),
                          torch.full((count, k), float("-inf"), device=device))
        offset = 0
        for shard in shards:
            for s_start in range(0, int(shard.shape[0]), key_chunk):
                part = torch.as_tensor(shard[s_start:s_start + key_chunk]).to(device, torch.float32)
                start = offset + s_start
                block_scores = block @ part.T
                if mask is not None:
                    excluded = mask(query_rows, start, start + part.shape[0]).to(device)
                    block_scores = block_scores.masked_fill(excluded, float("-inf"))
                part_index, part_scores = _block_top_k(block_scores, ids_here[start:start + part.shape[0]], k)
                part_index = torch.where(torch.isfinite(part_scores), part_index + start, -1)
                running = _merge(running, part_index, part_scores, ids_here, k)
            offset += int(shard.shape[0])
        index[q_start:q_start + count] = running.index.cpu()
        scores[q_start:q_start + count] = running.scores.cpu()
    return Ranking(index, scores)
