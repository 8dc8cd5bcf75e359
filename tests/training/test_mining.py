from __future__ import annotations

import pytest
import torch

from distill.training.mining import mine_hard_negatives, pair_positives


def positive_mask_from_ids(a_ids: torch.Tensor, owners: torch.Tensor) -> torch.Tensor:
    return a_ids.unsqueeze(1) == owners.unsqueeze(0)


def test_hard_negatives_skip_positives_and_sort_by_score() -> None:
    ids = torch.tensor([0, 0, 1, 2])
    positives = positive_mask_from_ids(ids, ids)
    similarity = torch.tensor([
        [0.9, 0.95, 0.1, 0.5],
        [0.99, 0.9, 0.3, 0.2],
        [0.7, 0.6, 0.9, 0.8],
        [0.1, 0.2, 0.3, 0.9],
    ])
    candidates = mine_hard_negatives(similarity, positives, k=2)
    assert candidates.index[:, 0].tolist() == [0, 1, 2, 3]
    assert candidates.index[0, 1:].tolist() == [3, 2]  # column 1 is the same image: never a negative
    assert candidates.index[1, 1:].tolist() == [2, 3]
    assert candidates.index[2, 1:].tolist() == [3, 0]
    assert candidates.valid.all()


def test_padding_when_too_few_negatives() -> None:
    ids = torch.tensor([0, 0, 1])
    candidates = mine_hard_negatives(torch.rand(3, 3), positive_mask_from_ids(ids, ids), k=2)
    assert candidates.valid[0].tolist() == [True, True, False]
    assert candidates.valid[2].tolist() == [True, True, True]
    assert candidates.index[0, 2] == 0  # padding points at the positive, masked by `valid`


def test_rejects_bad_k_and_missing_diagonal() -> None:
    with pytest.raises(ValueError, match="k must be >= 1"):
        mine_hard_negatives(torch.rand(2, 2), torch.eye(2, dtype=torch.bool), k=0)
    with pytest.raises(ValueError, match="diagonal"):
        mine_hard_negatives(torch.rand(2, 2), torch.zeros(2, 2, dtype=torch.bool), k=1)


def test_repeated_images_fill_one_negative_slot() -> None:
    from distill.training.mining import repeated_columns

    a_id = torch.tensor([0, 1, 1, 2])  # image 1 appears twice (two of its captions are in the batch)
    assert repeated_columns(a_id).tolist() == [False, False, True, False]
    positives = positive_mask_from_ids(a_id, a_id)
    similarity = torch.tensor([  # rows: captions (b->a anchors), columns: images
        [0.9, 0.8, 0.8, 0.1],
        [0.1, 0.9, 0.9, 0.2],
        [0.1, 0.9, 0.9, 0.2],
        [0.3, 0.7, 0.7, 0.9],
    ])
    mask = positives | repeated_columns(a_id).unsqueeze(0)
    candidates = mine_hard_negatives(similarity, mask, k=2)
    assert candidates.index[0, 1:].tolist() == [1, 3]  # image 1 once, then image 2
    assert candidates.index[3, 1:].tolist() == [1, 0]


def test_pair_positives_cover_shared_items_on_either_side() -> None:
    query_ids = torch.tensor([0, 0, 1, 2])      # query 0 has two positive passages (rows 0 and 1)
    passage_ids = torch.tensor([10, 11, 10, 12])  # passage 10 is the positive of queries 0 and 1
    mask = pair_positives(query_ids, passage_ids, query_ids, passage_ids)  # a2b: anchors queries, columns passages
    assert mask.tolist() == [[True, True, True, False], [True, True, False, False],
                             [True, False, True, False], [False, False, False, True]]
    b2a = pair_positives(passage_ids, query_ids, passage_ids, query_ids)  # anchors passages, columns queries
    assert b2a.tolist() == mask.T.tolist()
