"""Chunked exhaustive ranking equals a full sort, ties included, over shards and with masks."""

from __future__ import annotations

import pytest
import torch

from distill.evaluation.ranking import pairs_mask, top_k


def reference(queries: torch.Tensor, keys: torch.Tensor, ids: torch.Tensor, k: int,
              excluded: set[tuple[int, int]] = frozenset()) -> list[list[int]]:
    scores = queries @ keys.T
    out = []
    for row in range(queries.shape[0]):
        eligible = [j for j in range(keys.shape[0]) if (row, j) not in excluded]
        out.append(sorted(eligible, key=lambda j: (-float(scores[row, j]), -int(ids[j])))[:k])
    return out


@pytest.mark.parametrize("query_chunk, key_chunk", [(1, 1), (3, 7), (64, 1000)])
def test_chunked_top_k_equals_a_full_sort_with_ties(query_chunk: int, key_chunk: int) -> None:
    generator = torch.Generator().manual_seed(0)
    queries = torch.randint(-2, 3, (9, 4), generator=generator).float()  # small integers: many exact ties
    keys = torch.randint(-2, 3, (40, 4), generator=generator).float()
    ids = torch.randperm(40, generator=generator) * 3
    ranking = top_k(queries, [keys[:13], keys[13:]], 6, ids, query_chunk=query_chunk, key_chunk=key_chunk)
    assert ranking.index.tolist() == reference(queries, keys, ids, 6)
    assert torch.equal(ranking.scores, (queries @ keys.T).gather(1, ranking.index))


def test_masked_keys_are_never_returned_and_short_lists_are_padded() -> None:
    generator = torch.Generator().manual_seed(1)
    queries, keys = torch.randn(5, 3, generator=generator), torch.randn(6, 3, generator=generator)
    excluded = {(0, 1), (0, 4), (3, 0), (4, 5)}
    rows, cols = zip(*sorted(excluded))
    ranking = top_k(queries, keys, 6, mask=pairs_mask(torch.tensor(rows), torch.tensor(cols)), query_chunk=2,
                    key_chunk=4)
    expected = reference(queries, keys, torch.arange(6), 6, excluded)
    for row in range(5):
        assert ranking.index[row].tolist() == expected[row] + [-1] * (6 - len(expected[row]))
    assert torch.isinf(ranking.scores[0, -2:]).all()
