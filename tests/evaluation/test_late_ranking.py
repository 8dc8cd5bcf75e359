"""Evaluation of a late-interaction student: ragged token storage, chunked exhaustive ranking, recall."""

from __future__ import annotations

import pytest
import torch

from distill.errors import InputError
from distill.evaluation import RecallEvaluator
from distill.evaluation.evaluator import EvalContext
from distill.evaluation.late import TokenRows, TokenTable, late_top_k
from distill.evaluation.ranking import pairs_mask
from distill.evaluation.recall import retrieval_metrics
from distill.students import TokenEmbeddings
from distill.students.late_interaction import late_scores


def random_tokens(n: int, length: int, dim: int, seed: int) -> TokenEmbeddings:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.nn.functional.normalize(torch.randn(n, length, dim, generator=generator), dim=-1)
    valid = torch.randint(1, length + 1, (n,), generator=generator)
    mask = torch.arange(length).unsqueeze(0) < valid.unsqueeze(1)
    return TokenEmbeddings(torch.where(mask.unsqueeze(-1), tokens, torch.full_like(tokens, 7.0)), mask)


def table_of(parts: list[TokenEmbeddings], dtype: torch.dtype = torch.float32) -> TokenTable:
    rows = TokenRows(dtype)
    for part in parts:
        rows.append(part)
    return rows.finish()


def test_token_table_keeps_valid_tokens_only_and_gives_them_back() -> None:
    parts = [random_tokens(3, 5, 4, seed=0), random_tokens(4, 2, 4, seed=1)]
    table = table_of(parts, torch.float16)
    lengths = torch.cat([p.mask.sum(1) for p in parts])
    assert len(table) == 7 and torch.equal(table.lengths, lengths)
    assert table.nbytes == int(lengths.sum()) * 4 * 2 + 7 * 8  # tokens x D x 2 bytes in float16, plus a length
    block = table.block(1, 5)  # crosses the two appended batches
    expected = TokenEmbeddings.cat(parts).rows(slice(1, 5))
    length = int(block.tokens.shape[1])
    assert torch.equal(block.mask, expected.mask[:, :length])
    assert torch.allclose(block.tokens[block.mask].float(), expected.tokens[expected.mask], atol=1e-3)
    picked = table[torch.tensor([4, 0, 6])]
    assert torch.equal(picked.lengths, lengths[[4, 0, 6]])
    for position, row in enumerate((4, 0, 6)):
        count = int(lengths[row])
        got = picked.block(position, position + 1).tokens[0, :count]
        assert torch.equal(got, table.block(row, row + 1).tokens[0, :count])
    assert torch.equal(table[lengths > 2].lengths, lengths[lengths > 2])


@pytest.mark.parametrize("chunks", [(256, 2048), (3, 4), (1, 1)])
def test_late_top_k_equals_sorting_the_brute_force_scores(chunks: tuple[int, int]) -> None:
    queries, keys = random_tokens(11, 6, 8, seed=2), random_tokens(17, 5, 8, seed=3)
    full = late_scores(queries.to(torch.float64), keys.to(torch.float64))
    rows, cols = torch.tensor([0, 0, 5]), torch.tensor([3, 7, 0])  # excluded pairs
    masked = full.clone()
    masked[rows, cols] = float("-inf")
    ranking = late_top_k(table_of([queries]), [table_of([keys.rows(slice(0, 9))]), table_of([keys.rows(slice(9, 17))])],
                         5, lambda q, c: late_scores(q, c), mask=pairs_mask(rows, cols), query_chunk=chunks[0],
                         key_chunk=chunks[1])
    expected = masked.topk(5, dim=1)
    assert torch.equal(ranking.index, expected.indices)
    assert torch.allclose(ranking.scores.double(), expected.values, rtol=0, atol=1e-6)


def test_evaluator_recall_of_token_embeddings_equals_brute_force() -> None:
    """Images with 2 captions each, streamed in batches of different token lengths; Recall@K both ways and RSUM
    equal those of the full late-interaction score matrix."""
    num_a = 9
    images = random_tokens(num_a, 4, 8, seed=4)
    captions = random_tokens(2 * num_a, 7, 8, seed=5)
    evaluator = RecallEvaluator(two_stage_k=0, diagnostics=False, query_chunk=4, key_chunk=5)

    def encode_images(inputs: dict[str, torch.Tensor]) -> TokenEmbeddings:
        return images.rows(inputs["row"])

    def encode_captions(inputs: dict[str, torch.Tensor]) -> TokenEmbeddings:
        picked = captions.rows(inputs["row"])
        longest = int(picked.mask.sum(1).max())
        return TokenEmbeddings(picked.tokens[:, :longest], picked.mask[:, :longest])  # per-batch padding

    for start in range(0, 2 * num_a, 4):
        b_rows = torch.arange(start, min(start + 4, 2 * num_a))
        a_rows = b_rows // 2
        batch = {"a": {"row": a_rows}, "b": {"row": b_rows}, "a_id": a_rows, "b_id": b_rows}
        evaluator.update("student", batch, encode_images, encode_captions)
    results = evaluator.compute(EvalContext(stage="test", score=late_scores))
    expected = retrieval_metrics(late_scores(images, captions), torch.arange(2 * num_a) // 2)
    for key, value in expected.items():
        assert results["student"][key] == pytest.approx(value, abs=1e-9), key


def test_memory_mapped_embeddings_are_refused_for_tokens_in_one_line(tmp_path) -> None:
    evaluator = RecallEvaluator(two_stage_k=0, diagnostics=False, embeddings_dir=str(tmp_path))
    tokens = random_tokens(2, 3, 4, seed=6)
    batch = {"b": {"row": torch.arange(2)}, "b_id": torch.arange(2)}
    with pytest.raises(InputError, match="embeddings_dir streams pooled"):
        evaluator.update("student", batch, lambda x: tokens, lambda x: tokens.rows(x["row"]))
