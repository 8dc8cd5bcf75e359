"""Evaluation of late-interaction students: per-item token vectors in bounded memory, exhaustive ranking in chunks.

A late-interaction student (:class:`~distill.students.LateInteractionEncoder`) embeds an item as a set of token
vectors; the split keeps them ragged: only each item's valid tokens, concatenated (``[S, D]``, ``S`` the split's
total valid tokens) with one length per item. Bytes per item::

    tokens x D x 2 (embedding_dtype float16; x 4 in float32) + 8 (its length) + 8 (its id)

e.g. a grid-split caption of 36 tokens at D = 64: 4,608 bytes in float16, against 128 for one pooled float16
vector; an image of 9 patches: 1,152 bytes. Padding is never stored.

:func:`late_top_k` ranks exhaustively as :func:`~distill.evaluation.ranking.top_k` does, with the student's own
score instead of a dot product: blocks of ``query_chunk x key_chunk`` items are padded to their longest item,
scored by ``score(queries, keys) -> [q, c]`` (which bounds its own ``[q, c, Tq, Tk]`` work, see
:func:`~distill.students.late_interaction.late_scores`) and merged into a running top-k with the same
deterministic tie-breaking (score, then key id, descending).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from distill import distributed
from distill.evaluation.ranking import KeyMask, Ranking, _block_top_k, _merge
from distill.students.late_interaction import TokenEmbeddings

__all__ = ["TokenRows", "TokenTable", "late_top_k"]

LATE_QUERY_CHUNK = 256   # items per block of late_top_k at most: a block holds chunk x T x D padded tokens
LATE_KEY_CHUNK = 2048


class TokenTable:
    """Ragged token vectors of ``N`` items: ``flat [S, D]`` (the valid tokens, item after item) and
    ``lengths [N]`` long (each item's count, >= 1)."""

    def __init__(self, flat: Tensor, lengths: Tensor) -> None:
        if flat.dim() != 2 or lengths.dim() != 1 or int(lengths.sum()) != int(flat.shape[0]):
            raise ValueError(f"a token table needs flat [S, D] and lengths [N] summing to S, got {tuple(flat.shape)} "
                             f"and lengths summing to {int(lengths.sum())}")
        self.flat, self.lengths = flat, lengths.long()
        self.offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).long()

    def __len__(self) -> int:
        return int(self.lengths.numel())

    @property
    def shape(self) -> tuple[int, int]:
        """``(N, D)``: items and token width (what ranking code reads of a table of rows)."""
        return len(self), int(self.flat.shape[1])

    @property
    def nbytes(self) -> int:
        return self.flat.numel() * self.flat.element_size() + self.lengths.numel() * 8

    def block(self, start: int, stop: int) -> TokenEmbeddings:
        """Items ``[start, stop)`` as padded :class:`TokenEmbeddings` (``T`` = the longest of them)."""
        stop = min(stop, len(self))
        lengths = self.lengths[start:stop]
        longest = int(lengths.max()) if lengths.numel() else 1
        position = torch.arange(longest)
        mask = position.unsqueeze(0) < lengths.unsqueeze(1)
        index = (self.offsets[start:stop].unsqueeze(1) + position).clamp(max=max(int(self.flat.shape[0]) - 1, 0))
        tokens = self.flat[index].masked_fill(~mask.unsqueeze(-1), 0)
        return TokenEmbeddings(tokens, mask)

    def __getitem__(self, index: Tensor | slice) -> "TokenTable":
        """The items ``index`` picks (a slice, a bool mask or positions), in that order."""
        rows = torch.arange(len(self))[index]
        lengths = self.lengths[rows]
        starts = self.offsets[rows]
        within = torch.arange(int(lengths.sum())) - torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)
        return TokenTable(self.flat[torch.repeat_interleave(starts, lengths) + within], lengths)

    @staticmethod
    def cat(parts: Sequence["TokenTable"]) -> "TokenTable":
        return TokenTable(torch.cat([p.flat for p in parts]), torch.cat([p.lengths for p in parts]))

    def gather(self) -> "TokenTable":
        """Every process's items in rank order (no-op without a process group)."""
        return TokenTable(distributed.gather_tensor(self.flat), distributed.gather_tensor(self.lengths))


class TokenRows:
    """Token vectors appended batch by batch (padding dropped), stored as ``dtype`` in host memory."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype
        self.flat: list[Tensor] = []
        self.lengths: list[Tensor] = []
        self.rows = 0
        self.width: int | None = None
        self.path = None  # never memory-mapped (SplitBuffer reads it)

    def append(self, embeddings: TokenEmbeddings) -> None:
        tokens = embeddings.tokens.detach().to("cpu", self.dtype)
        mask = embeddings.mask.cpu()
        lengths = mask.sum(1)
        if bool((lengths == 0).any()):
            raise ValueError("a late-interaction embedding has no valid token: every item needs at least one")
        self.width = int(tokens.shape[-1])
        self.flat.append(tokens[mask].contiguous())
        self.lengths.append(lengths.long())
        self.rows += int(lengths.numel())

    def finish(self) -> TokenTable:
        if not self.flat:
            return TokenTable(torch.zeros(0, self.width or 0, dtype=self.dtype), torch.zeros(0, dtype=torch.long))
        return TokenTable(torch.cat(self.flat), torch.cat(self.lengths))

    def remove(self) -> None:
        """Nothing on disk."""


@torch.no_grad()
def late_top_k(queries: TokenTable, keys: TokenTable | Sequence[TokenTable], k: int,
               score: Callable[[TokenEmbeddings, TokenEmbeddings], Tensor], key_ids: Tensor | None = None,
               mask: KeyMask | None = None, query_chunk: int = LATE_QUERY_CHUNK, key_chunk: int = LATE_KEY_CHUNK,
               device: torch.device | str = "cpu") -> Ranking:
    """The ``k`` best keys of every query by ``score(query block, key block) -> [q, c]``, exhaustive, in chunks.

    Same contract as :func:`~distill.evaluation.ranking.top_k` (``-1`` / ``-inf`` padding, ties by key id);
    blocks hold at most ``min(query_chunk, 256) x min(key_chunk, 2048)`` items, in float32 on ``device``.
    """
    shards = [keys] if isinstance(keys, TokenTable) else list(keys)
    query_chunk, key_chunk = min(query_chunk, LATE_QUERY_CHUNK), min(key_chunk, LATE_KEY_CHUNK)
    total = sum(len(shard) for shard in shards)
    ids = torch.arange(total) if key_ids is None else key_ids.long().cpu()
    if ids.numel() != total:
        raise ValueError(f"key_ids has {ids.numel()} entries for {total} keys")
    rows = len(queries)
    ids_here = ids.to(device)
    index = torch.full((rows, k), -1, dtype=torch.long)
    scores = torch.full((rows, k), float("-inf"))
    for q_start in range(0, rows, query_chunk):
        block = queries.block(q_start, q_start + query_chunk).to(device, torch.float32)
        count = len(block)
        query_rows = torch.arange(q_start, q_start + count)
        running = Ranking(torch.full((count, k), -1, dtype=torch.long, device=device),
                          torch.full((count, k), float("-inf"), device=device))
        offset = 0
        for shard in shards:
            for s_start in range(0, len(shard), key_chunk):
                part = shard.block(s_start, s_start + key_chunk).to(device, torch.float32)
                start = offset + s_start
                block_scores = score(block, part).float()
                if mask is not None:
                    excluded = mask(query_rows, start, start + len(part)).to(device)
                    block_scores = block_scores.masked_fill(excluded, float("-inf"))
                part_index, part_scores = _block_top_k(block_scores, ids_here[start:start + len(part)], k)
                part_index = torch.where(torch.isfinite(part_scores), part_index + start, -1)
                running = _merge(running, part_index, part_scores, ids_here, k)
            offset += len(shard)
        index[q_start:q_start + count] = running.index.cpu()
        scores[q_start:q_start + count] = running.scores.cpu()
    return Ranking(index, scores)
