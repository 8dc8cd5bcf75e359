"""Progress lines for logs: done / total, rate and time left, at most one per interval."""

from __future__ import annotations

import logging

import pytest

from distill.progress import LineProgress, progress
from tests.helpers import LogLines


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_line_when_the_interval_has_passed() -> None:
    clock = Clock()
    bar = LineProgress(1000, "encoding b", "texts", every=30.0, clock=clock)
    handler, logger = LogLines(), logging.getLogger("distill.progress")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        clock.now = 10.0
        bar.update(100)  # 10 s: too early
        clock.now = 40.0
        bar.update(300)  # 40 s: 400 done at 10 per second
        clock.now = 50.0
        bar.update(100)  # 10 s after the last line
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    lines = handler.lines
    assert lines == ["encoding b: 400/1,000 texts (40%) | 10.0 texts/s | 40s elapsed, ~1m00s left"]
    assert bar.lines == 1


def test_a_terminal_gets_a_bar_and_a_log_file_gets_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert isinstance(progress(10, "x"), LineProgress)
    assert not isinstance(progress(10, "x", enabled=False), LineProgress)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert not isinstance(progress(10, "x"), LineProgress)
