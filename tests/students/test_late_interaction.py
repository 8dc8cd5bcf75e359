"""Late-interaction scores (FILIP, ColBERT MaxSim) against a brute-force loop over tokens; the student's towers."""

from __future__ import annotations

import pytest
import torch

from distill.errors import InputError
from distill.students import LateInteractionEncoder, TokenEmbeddings, TransformersTokenTower
from distill.students.late_interaction import late_scores, paired_late_scores
from distill.students.sparse import TimmTokenTower
from tests.helpers import BERT_NO_DROPOUT


def random_tokens(n: int, length: int, dim: int, seed: int, min_valid: int = 1) -> TokenEmbeddings:
    """Float64 unit token vectors with a random number of valid tokens per item; padding rows hold random
    (large) values, so a score that read them would differ."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(n, length, dim, generator=generator, dtype=torch.float64)
    tokens = torch.nn.functional.normalize(tokens, dim=-1)
    valid = torch.randint(min_valid, length + 1, (n,), generator=generator)
    mask = torch.arange(length).unsqueeze(0) < valid.unsqueeze(1)
    tokens = torch.where(mask.unsqueeze(-1), tokens, 10.0 + torch.rand(n, length, dim, generator=generator,
                                                                        dtype=torch.float64))
    return TokenEmbeddings(tokens, mask)


def brute_force(a: TokenEmbeddings, b: TokenEmbeddings, similarity: str, reduce: str = "mean") -> torch.Tensor:
    """The formulas of distill.students.late_interaction, one token pair at a time."""
    def directed(x: list[list[float]], y: list[list[float]], how: str) -> float:
        best = [max(sum(p * q for p, q in zip(u, v)) for v in y) for u in x]
        return sum(best) / len(best) if how == "mean" else sum(best)

    out = torch.zeros(len(a), len(b), dtype=torch.float64)
    for i in range(len(a)):
        x = a.tokens[i][a.mask[i]].tolist()
        for j in range(len(b)):
            y = b.tokens[j][b.mask[j]].tolist()
            if similarity == "colbert":
                out[i, j] = directed(x, y, reduce)
            else:
                out[i, j] = 0.5 * (directed(x, y, "mean") + directed(y, x, "mean"))
    return out


@pytest.mark.parametrize(("similarity", "reduce"), [("filip", "mean"), ("colbert", "mean"), ("colbert", "sum")])
def test_scores_equal_a_loop_over_tokens_with_padding_ignored(similarity: str, reduce: str) -> None:
    a, b = random_tokens(5, 6, 8, seed=1), random_tokens(7, 4, 8, seed=2)
    expected = brute_force(a, b, similarity, reduce)
    assert torch.allclose(late_scores(a, b, similarity, reduce), expected, rtol=0, atol=1e-6)
    # the other direction: b items as the first argument (ColBERT's query side)
    reverse = brute_force(b, a, similarity, reduce)
    assert torch.allclose(late_scores(b, a, similarity, reduce), reverse, rtol=0, atol=1e-6)
    rows = torch.arange(5)
    assert torch.allclose(paired_late_scores(a, b.rows(rows), similarity, reduce), expected[rows, rows], rtol=0,
                          atol=1e-6)


def test_filip_is_symmetric_and_colbert_is_not() -> None:
    a, b = random_tokens(4, 5, 8, seed=3), random_tokens(6, 7, 8, seed=4)
    assert torch.allclose(late_scores(a, b, "filip"), late_scores(b, a, "filip").T, rtol=0, atol=1e-12)
    assert not torch.allclose(late_scores(a, b, "colbert"), late_scores(b, a, "colbert").T, rtol=0, atol=1e-3)


@pytest.mark.parametrize("budget", [1, 37, 5 * 6 * 4, 1 << 30])
def test_chunked_scores_and_gradients_equal_unchunked(budget: int) -> None:
    a, b = random_tokens(5, 6, 8, seed=5), random_tokens(9, 4, 8, seed=6)
    a.tokens.requires_grad_(True)
    b.tokens.requires_grad_(True)
    reference = late_scores(a, b, "filip", max_block_elements=1 << 30)
    weights = torch.randn(reference.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grads = torch.autograd.grad((reference * weights).sum(), (a.tokens, b.tokens))
    chunked = late_scores(a, b, "filip", max_block_elements=budget)
    assert torch.allclose(chunked, reference, rtol=0, atol=1e-12)
    for got, want in zip(torch.autograd.grad((chunked * weights).sum(), (a.tokens, b.tokens)), grads):
        assert torch.allclose(got, want, rtol=0, atol=1e-12)
    # padding tokens get no gradient: they never enter a score
    assert float(grads[0][~a.mask].abs().max()) == 0.0 and float(grads[1][~b.mask].abs().max()) == 0.0


def test_token_embeddings_concatenate_with_padding_and_refuse_pooled_paths() -> None:
    a, b = random_tokens(2, 3, 4, seed=7), random_tokens(3, 5, 4, seed=8)
    both = TokenEmbeddings.cat([a, b])
    assert both.tokens.shape == (5, 5, 4) and both.mask.shape == (5, 5)
    assert torch.equal(both.mask[:2, :3], a.mask) and not bool(both.mask[:2, 3:].any())
    assert torch.allclose(late_scores(both, b), torch.cat([late_scores(a, b), late_scores(b, b)]), rtol=0, atol=1e-12)
    with pytest.raises(InputError, match="late-interaction student's token embeddings reached `cat`"):
        torch.cat([a, b])  # type: ignore[list-item]
    with pytest.raises(InputError, match="pooled"):
        a @ b.tokens  # noqa: B018


def tiny_late_student(similarity: str = "filip") -> LateInteractionEncoder:
    image = TimmTokenTower("resnet10t", model_kwargs={"channels": [8, 8, 16, 16], "output_stride": 16})
    text = TransformersTokenTower(config=dict(BERT_NO_DROPOUT))
    return LateInteractionEncoder(image, text, embed_dim=16, similarity=similarity)


def test_student_encodes_patches_and_caption_tokens_with_masks() -> None:
    torch.manual_seed(0)
    student = tiny_late_student().eval().requires_grad_(False)
    images = {"pixel_values": torch.randn(3, 3, 48, 48)}
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    captions = {"input_ids": torch.randint(1, 64, (3, 5)) * mask, "attention_mask": mask}
    a, b = student.encode_a(images), student.encode_b(captions)
    assert a.tokens.shape == (3, 9, 16) and bool(a.mask.all())  # 48 px at output stride 16: one token per grid cell
    assert b.tokens.shape == (3, 5, 16) and torch.equal(b.mask, mask.bool())
    assert torch.allclose(a.tokens.norm(dim=-1), torch.ones(3, 9), atol=1e-5)
    scores = student.score(a, b)
    assert scores.shape == (3, 3) and float(scores.abs().max()) <= 1.0 + 1e-5
    assert torch.allclose(student.score_pairs(a, b), scores.diagonal(), atol=1e-6)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="'filip' or 'colbert'"):
        tiny_late_student(similarity="dot")
    with pytest.raises(ValueError, match="tokens \\[N, T, D\\] and mask \\[N, T\\]"):
        TokenEmbeddings(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool))
