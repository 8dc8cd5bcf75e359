"""Progress of long loops: a bar on a terminal, a line at least every 30 s in a log file.

``mine``, ``index``, ``cache-teacher`` and ``test`` count work they know the size of (texts encoded, teacher
pairs, batches). On a terminal :func:`progress` is a tqdm bar; when stderr is not a terminal (a log file, CI,
``nohup``) it is :class:`LineProgress`, which logs through ``distill.progress``::

    distill: encoding b: 1,536/6,000 texts (26%) | 41.3 texts/s | 3m05s elapsed, ~1m48s left

``DISTILL_PROGRESS_SECONDS`` sets the interval between lines (default 30).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["LineProgress", "format_seconds", "line_interval", "progress"]

logger = logging.getLogger("distill.progress")
INTERVAL_ENV = "DISTILL_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 30.0


def format_seconds(seconds: float) -> str:
    """``75 -> "1m15s"``, ``3725 -> "1h02m"``."""
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def line_interval() -> float:
    """Seconds between progress lines (``DISTILL_PROGRESS_SECONDS``, default 30)."""
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


class LineProgress:
    """Counts done of ``total`` units and logs a line when ``every`` seconds have passed since the last one.

    The same calls as a tqdm bar (``update``, ``close``, a context manager), so a loop takes either.
    """

    def __init__(self, total: int | float, desc: str, unit: str = "it", initial: int | float = 0,
                 every: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.start_n = initial
        self.every = line_interval() if every is None else every
        self.clock = clock
        self.start = self.last = clock()
        self.lines = 0

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int | float = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self.lines += 1
            logger.info(self.line(now))

    def close(self) -> None:
        pass

    def line(self, now: float | None = None) -> str:
        """``<desc>: done/total unit (pct) | rate | elapsed, ~left``."""
        now = self.clock() if now is None else now
        elapsed = now - self.start
        done = self.n - self.start_n
        rate = done / elapsed if elapsed > 0 else 0.0
        count = f"{self.n:,.0f}/{self.total:,.0f} {self.unit}"
        if self.total:
            count += f" ({100.0 * self.n / self.total:.0f}%)"
        parts = [f"{self.desc}: {count}", f"{rate:,.1f} {self.unit}/s", f"{format_seconds(elapsed)} elapsed"]
        if rate > 0 and self.total and self.total > self.n:
            parts[-1] += f", ~{format_seconds((self.total - self.n) / rate)} left"
        return " | ".join(parts)


def progress(total: int | float, desc: str, unit: str = "it", enabled: bool | None = None,
             initial: int | float = 0) -> Any:
    """A tqdm bar on a terminal, else :class:`LineProgress`; ``enabled=False`` shows nothing either way."""
    from tqdm.auto import tqdm

    if enabled is False:
        return tqdm(total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True)
    return LineProgress(total, desc, unit, initial)
