"""Teacher-student agreement over hard negatives: rank correlation and score distributions.

The CPRD paper's first observation is that a cross-encoder's scores over an anchor's hard
negatives are concentrated while a dual encoder's are spread roughly normally; these helpers
let a run watch that, and how well the student reproduces the teacher's order.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _ranks(values: Tensor) -> Tensor:
    """Ranks (0 = smallest) along the last dimension; ties get distinct ranks by position."""
    return values.argsort(dim=-1, stable=True).argsort(dim=-1, stable=True).to(torch.float64)


def spearman_per_row(x: Tensor, y: Tensor) -> Tensor:
    """Spearman rank correlation of each row of ``x [N, K]`` with the same row of ``y [N, K]`` -> ``[N]``.

    rho = pearson(rank(x), rank(y)); rows where either side is constant give 0.
    """
    if x.shape != y.shape or x.dim() != 2:
        raise ValueError(f"expected two [N, K] tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    rx, ry = _ranks(x), _ranks(y)
    rx = rx - rx.mean(-1, keepdim=True)
    ry = ry - ry.mean(-1, keepdim=True)
    denominator = (rx.square().sum(-1) * ry.square().sum(-1)).sqrt()
    return torch.where(denominator > 0, (rx * ry).sum(-1) / denominator.clamp(min=1e-12), torch.zeros_like(denominator))


def standardised_spread(scores: Tensor) -> dict[str, float]:
    """Per-row spread of scores ``[N, K]``: mean row std and mean row (max - min)."""
    return {
        "row_std": float(scores.std(dim=1).mean()),
        "row_range": float((scores.max(1).values - scores.min(1).values).mean()),
    }


def score_distribution_figure(teacher: Tensor, student: Tensor) -> Any:
    """Histograms of per-anchor z-scored teacher and student scores over hard negatives ``[N, K]``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def zscore(values: Tensor) -> Tensor:
        centred = values - values.mean(1, keepdim=True)
        return (centred / values.std(1, keepdim=True).clamp(min=1e-6)).flatten()

    figure, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    axes[0].hist(teacher.flatten().cpu().numpy(), bins=40, color="tab:red")
    axes[0].set_title("teacher scores (raw)")
    axes[1].hist(student.flatten().cpu().numpy(), bins=40, color="tab:blue")
    axes[1].set_title("student scores (cosine)")
    axes[2].hist(zscore(teacher).cpu().numpy(), bins=40, alpha=0.6, label="teacher", color="tab:red")
    axes[2].hist(zscore(student).cpu().numpy(), bins=40, alpha=0.6, label="student", color="tab:blue")
    axes[2].set_title("per-anchor z-scores over hard negatives")
    axes[2].legend()
    figure.tight_layout()
    return figure
