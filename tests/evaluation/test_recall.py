"""Retrieval metrics against a brute-force count, and two-stage re-ranking."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.functional.retrieval import retrieval_hit_rate

from distill.evaluation import recall_metrics, rerank, retrieval_metrics


def brute_force_recall(scores: torch.Tensor, b_to_a: torch.Tensor, k: int) -> tuple[float, float]:
    num_a, num_b = scores.shape
    a2b_hits = 0
    for i in range(num_a):
        order = sorted(range(num_b), key=lambda j: -float(scores[i, j]))
        a2b_hits += any(int(b_to_a[j]) == i for j in order[:k])
    b2a_hits = 0
    for j in range(num_b):
        order = sorted(range(num_a), key=lambda i: -float(scores[i, j]))
        b2a_hits += int(b_to_a[j]) in order[:k]
    return 100.0 * a2b_hits / num_a, 100.0 * b2a_hits / num_b


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_matches_brute_force_with_five_captions_per_image(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    num_a, per_a = 12, 5
    b_to_a = torch.arange(num_a).repeat_interleave(per_a)
    b_to_a = b_to_a[torch.randperm(b_to_a.numel(), generator=generator)]
    scores = torch.randn(num_a, num_a * per_a, generator=generator)
    scores[b_to_a, torch.arange(b_to_a.numel())] += 1.0  # make it neither trivial nor hopeless
    metrics = retrieval_metrics(scores, b_to_a)
    for k in (1, 5, 10):
        a2b, b2a = brute_force_recall(scores, b_to_a, k)
        assert metrics[f"a2b_R@{k}"] == pytest.approx(a2b)
        assert metrics[f"b2a_R@{k}"] == pytest.approx(b2a)
    assert metrics["rsum"] == pytest.approx(sum(v for key, v in metrics.items() if "@" in key))
    assert 0 < metrics["a2b_R@1"] < 100


def test_recall_agrees_with_torchmetrics_hit_rate() -> None:
    generator = torch.Generator().manual_seed(3)
    b_to_a = torch.arange(6).repeat_interleave(3)
    scores = torch.randn(6, 18, generator=generator)
    metrics = retrieval_metrics(scores, b_to_a, ks=(1, 5))
    for k in (1, 5):
        hits = [retrieval_hit_rate(scores[i], b_to_a == i, top_k=k) for i in range(6)]
        assert metrics[f"a2b_R@{k}"] == pytest.approx(100 * float(torch.stack(hits).mean()))
        hits = [retrieval_hit_rate(scores[:, j], torch.arange(6) == b_to_a[j], top_k=k) for j in range(18)]
        assert metrics[f"b2a_R@{k}"] == pytest.approx(100 * float(torch.stack(hits).mean()))


def test_perfect_and_missing_positive() -> None:
    b_to_a = torch.tensor([0, 0, 1, 1])
    scores = torch.full((2, 4), -1.0)
    scores[b_to_a, torch.arange(4)] = 1.0
    assert retrieval_metrics(scores, b_to_a)["rsum"] == pytest.approx(600.0)
    with pytest.raises(ValueError, match="no positive"):
        retrieval_metrics(torch.zeros(3, 4), b_to_a)


def test_recall_from_short_lists_never_counts_a_missing_hit() -> None:
    """Lists shorter than the largest cut-off (tiny splits): a query without a hit is a miss at every K."""
    b_owner = torch.tensor([0, 1, 2])
    a2b = torch.tensor([[1, 2], [1, 2], [2, 0]])  # image 0 never finds its caption
    b2a = torch.tensor([[0, 1], [0, 2], [2, 1]])
    metrics = recall_metrics(a2b, b2a, b_owner, ks=(1, 5, 10))
    assert metrics["a2b_R@10"] == pytest.approx(200 / 3)
    assert metrics["b2a_R@1"] == pytest.approx(200 / 3) and metrics["b2a_R@10"] == pytest.approx(200 / 3)


def test_rerank_orders_the_top_by_second_stage_and_counts_pairs() -> None:
    first = torch.tensor([[0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.4]])
    second = torch.tensor([[0.0, 5.0, 1.0, 100.0], [9.0, 9.0, 2.0, 3.0]])
    ranked = first.argsort(dim=1, descending=True)
    out, pairs = rerank(ranked, 3, lambda rows, cols: second[rows, cols])
    assert pairs == 6
    assert out[0].tolist() == [1, 2, 0, 3]  # column 3 was outside the top-3 and stays after it
    assert out[1].tolist() == [1, 3, 2, 0]


def test_two_stage_with_an_oracle_second_stage_is_perfect() -> None:
    generator = torch.Generator().manual_seed(0)
    first = torch.randn(4, 8, generator=generator)
    oracle = torch.full((4, 8), -5.0)
    b_owner = torch.arange(4).repeat_interleave(2)
    oracle[b_owner, torch.arange(8)] = 5.0
    a2b, pairs_a = rerank(first.argsort(dim=1, descending=True), 8, lambda a, b: oracle[a, b])
    b2a, pairs_b = rerank(first.T.argsort(dim=1, descending=True), 8, lambda b, a: oracle[a, b])
    assert pairs_a + pairs_b == 4 * 8 + 8 * 4
    assert recall_metrics(a2b, b2a, b_owner)["rsum"] == pytest.approx(600.0)
