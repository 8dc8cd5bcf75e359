"""Golden-value regression: every loss on fixed seeded inputs (see ``make_golden.py``)."""

from __future__ import annotations

import json

import pytest

from .make_golden import GOLDEN_PATH, compute_golden


def test_golden_values_match() -> None:
    expected = json.loads(GOLDEN_PATH.read_text())
    got = compute_golden()
    assert sorted(got) == sorted(expected), "loss set changed: regenerate with make_golden"
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-6, rel=0), name
