"""Fixed, seeded inputs for the losses and the golden-value file they are checked against.

Regenerate ``golden_values.json`` after an intended change of a loss with::

    PYTHONPATH=src python -m tests.losses.make_golden

(run from the repository root). ``test_golden.py`` recomputes every value and compares.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import Tensor

from distill.losses import (
    CPRD,
    DCD,
    FLOPS,
    CosineEmbedding,
    DirectionScores,
    InfoNCE,
    LogitKL,
    LossInputs,
    MarginMSE,
    cosine_embedding_loss,
    cprd_loss,
    cprd_valid_mask,
    dcd_loss,
    flops_loss,
    infonce_loss,
    logit_kl_loss,
    margin_mse_loss,
    quadratic_warmup,
    symmetric_infonce_loss,
)

GOLDEN_PATH = Path(__file__).with_name("golden_values.json")
SEED = 20240601
B, K, D, DT, V = 6, 5, 8, 12, 30


def _direction(g: torch.Generator) -> DirectionScores:
    student = torch.rand(B, 1 + K, generator=g, dtype=torch.float64) * 1.6 - 0.8
    teacher = torch.randn(B, 1 + K, generator=g, dtype=torch.float64) * 3.0
    valid = torch.rand(B, 1 + K, generator=g) > 0.25
    valid[:, 0] = True
    valid[0, 1:] = True  # one fully valid row
    valid[1, 2:] = False  # one row with a single valid negative
    return DirectionScores(student=student, teacher=teacher, valid=valid)


def golden_inputs() -> LossInputs:
    """Deterministic float64 batch used for the golden values."""
    g = torch.Generator().manual_seed(SEED)
    a = torch.nn.functional.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=1)
    b = torch.nn.functional.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=1)
    positive = torch.eye(B, dtype=torch.bool)
    positive[0, 1] = positive[3, 2] = True
    a2b = _direction(g)
    b2a = _direction(g)
    t_a = torch.randn(B, DT, generator=g, dtype=torch.float64)
    t_b = torch.randn(B, DT, generator=g, dtype=torch.float64)
    return LossInputs(
        similarity=a @ b.t(),
        positive_mask=positive,
        logit_scale=torch.tensor(1.0 / 0.07, dtype=torch.float64),
        a2b=a2b,
        b2a=b2a,
        student_embeddings=(a, b),
        teacher_embeddings=(t_a, t_b),
    )


def sparse_weights() -> Tensor:
    g = torch.Generator().manual_seed(SEED + 1)
    w = torch.relu(torch.randn(B, V, generator=g, dtype=torch.float64))
    return w


def projection_weights() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(SEED + 2)
    return (
        torch.randn(DT, D, generator=g, dtype=torch.float64) / D**0.5,
        torch.randn(DT, D, generator=g, dtype=torch.float64) / D**0.5,
    )


def compute_golden() -> dict[str, float]:
    """Every loss (functions and modules) on :func:`golden_inputs`."""
    x = golden_inputs()
    d = x.a2b
    assert d is not None
    out: dict[str, Tensor] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["infonce_loss"] = infonce_loss(x.logit_scale * x.similarity, x.positive_mask)
        out["symmetric_infonce_loss"] = symmetric_infonce_loss(x.similarity, x.positive_mask, x.logit_scale)
        for rule in ("all", "top_m", "relative_threshold"):
            mask = cprd_valid_mask(d.teacher[:, 0], d.teacher[:, 1:], d.valid[:, 1:], rule, 2.0, 3)
            out[f"cprd_loss[{rule}]"] = cprd_loss(d.student[:, 1:], d.teacher[:, 1:], mask, 0.05)
        for soft in ("kl", "mse"):
            out[f"dcd_loss[{soft}]"] = dcd_loss(d.student, d.teacher, d.valid, 0.05, 1.0, 0.5, soft, True)
        out["dcd_loss[static]"] = dcd_loss(d.student, d.teacher, d.valid, 0.05, 1.0, 0.5, "kl", False)
        out["logit_kl_loss"] = logit_kl_loss(d.student, d.teacher, d.valid, 0.05, 2.0, False)
        out["logit_kl_loss[t2]"] = logit_kl_loss(d.student, d.teacher, d.valid, 0.05, 2.0, True)
        out["margin_mse_loss"] = margin_mse_loss(
            10.0 * d.student[:, 0], 10.0 * d.student[:, 1:], d.teacher[:, 0], d.teacher[:, 1:], d.valid[:, 1:]
        )
        assert x.student_embeddings is not None and x.teacher_embeddings is not None
        out["cosine_embedding_loss"] = cosine_embedding_loss(x.student_embeddings[0], x.student_embeddings[1])
        out["flops_loss"] = flops_loss(sparse_weights())
        out["quadratic_warmup"] = torch.tensor(quadratic_warmup(3, 7, 0.8), dtype=torch.float64)

        out["InfoNCE"] = InfoNCE()(x)
        out["CPRD"] = CPRD(temperature=0.05, top_m=3)(x)
        out["CPRD[relative_threshold,a2b]"] = CPRD(rule="relative_threshold", threshold=2.0, directions="a2b")(x)
        out["DCD"] = DCD(num_hard_negatives=3, hard_weight=0.5)(x)
        out["LogitKL"] = LogitKL(teacher_temperature=2.0)(x)
        out["MarginMSE"] = MarginMSE()(x)
        out["MarginMSE[scale=10]"] = MarginMSE(student_scale=10.0)(x)
        cos = CosineEmbedding(student_dim=D, teacher_dim=DT).double()
        w_a, w_b = projection_weights()
        with torch.no_grad():
            cos.proj_a.weight.copy_(w_a)
            cos.proj_b.weight.copy_(w_b)
        out["CosineEmbedding"] = cos(x)
        flops = FLOPS()
        sparse = sparse_weights()
        sparse_inputs = LossInputs(
            x.similarity, x.positive_mask, x.logit_scale, None, None, (sparse, 0.5 * sparse.flip(1))
        )
        out["FLOPS"] = flops(sparse_inputs)
    return {k: float(v.detach()) for k, v in out.items()}


def main() -> None:
    values = compute_golden()
    GOLDEN_PATH.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
    print(f"wrote {len(values)} values to {GOLDEN_PATH}")


if __name__ == "__main__":
    main()
