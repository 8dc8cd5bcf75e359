from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

from distill.evaluation.diagnostics import score_distribution_figure, spearman_per_row


def test_spearman_matches_scipy() -> None:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 7, generator=generator), torch.randn(5, 7, generator=generator)
    ours = spearman_per_row(x, y)
    for row in range(5):
        assert float(ours[row]) == pytest.approx(spearmanr(x[row], y[row]).statistic, abs=1e-9)


def test_spearman_limits_and_shape_check() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    assert spearman_per_row(x, x * 10 + 1).tolist() == pytest.approx([1.0, 1.0])
    assert spearman_per_row(x, -x).tolist() == pytest.approx([-1.0, -1.0])
    with pytest.raises(ValueError, match="one shape"):
        spearman_per_row(x, x[:, :2])


def test_distribution_figure_has_three_panels() -> None:
    figure = score_distribution_figure(torch.randn(4, 8), torch.randn(4, 8))
    assert len(figure.axes) == 3
