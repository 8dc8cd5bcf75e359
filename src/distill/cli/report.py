"""Recall tables for the terminal (rich) and for markdown files; the results table of ``validate`` / ``test``."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

COLUMNS = ("a2b_R@1", "a2b_R@5", "a2b_R@10", "b2a_R@1", "b2a_R@5", "b2a_R@10", "rsum")
HEADERS = ("i->t R@1", "i->t R@5", "i->t R@10", "t->i R@1", "t->i R@5", "t->i R@10", "RSUM")

Row = tuple[str, dict[str, float]]


def _cell(value: float | str | None) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else f"{value:.1f}"


def print_table(rows: Sequence[tuple[str, dict[str, Any]]], title: str = "") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("model", no_wrap=True)
    for header in HEADERS:
        table.add_column(header, justify="right")
    for name, metrics in rows:
        table.add_row(name, *(_cell(metrics.get(key)) for key in COLUMNS))
    console = Console()
    if not console.is_terminal:  # logs and CI: do not squeeze the table into 80 columns
        console = Console(width=160)
    console.print(table)


def format_markdown_table(rows: Sequence[tuple[str, dict[str, Any]]], command: str = "", extra: Sequence[str] = ()) -> str:
    lines = ["| model | " + " | ".join(HEADERS) + " |", "|---" * (len(HEADERS) + 1) + "|"]
    for name, metrics in rows:
        lines.append(f"| {name} | " + " | ".join(_cell(metrics.get(key)) for key in COLUMNS) + " |")
    body = "\n".join(lines) + "\n"
    if command:
        body = f"Command: `{command}`\n\n" + body
    return body + "".join(f"\n{line}" for line in extra)


def update_markdown_section(path: str, name: str, content: str, title: str = "# Benchmarks\n") -> None:
    """Replace (or append) the section between ``<!-- name:start -->`` and ``<!-- name:end -->``.

    Several benchmark scripts share one ``docs/benchmarks.md``; each owns its section. The file is
    rewritten atomically.
    """
    from pathlib import Path

    from distill.io import atomic_write_bytes

    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    target = Path(path)
    text = target.read_text(encoding="utf-8") if target.is_file() else title
    block = f"{start}\n{content.rstrip()}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    atomic_write_bytes(target, text.encode("utf-8"))


def mean_std_rows(runs: dict[str, list[dict[str, float]]]) -> list[tuple[str, dict[str, str]]]:
    """Aggregate per-seed metric dicts into ``mean ± sd`` cells (sample sd; '-' for one seed)."""
    import statistics

    rows: list[tuple[str, dict[str, str]]] = []
    for name, results in runs.items():
        cells: dict[str, str] = {}
        for key in COLUMNS:
            values = [r[key] for r in results if key in r]
            if not values:
                continue
            mean = statistics.fmean(values)
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells[key] = f"{mean:.1f} ± {sd:.1f}"
        rows.append((name, cells))
    return rows


def stage_results_table(metrics: Mapping[str, Any], stage: str) -> str:
    """The metrics a ``validate`` / ``test`` run logged under ``<stage>/``, one line each, full names, one value
    column (every loader of the stage feeds one evaluation, so Lightning's one column per loader repeats itself)."""
    values: dict[str, float] = {}
    for key, value in metrics.items():
        name = re.sub(r"/dataloader_idx_\d+$", "", str(key))
        if name.startswith(f"{stage}/") and name not in values:
            try:
                values[name] = float(value)
            except (TypeError, ValueError):
                continue
    if not values:
        return ""
    width = max(len(name) for name in values)
    header = f"{stage + ' metric':<{width}}  {'value':>12}"
    lines = [header, "-" * len(header)]
    lines += [f"{name:<{width}}  {_number(values[name]):>12}" for name in sorted(values)]
    return "\n".join(lines)


def _number(value: float) -> str:
    """Counts as integers (``12,000``), metrics with two decimals, small values with four digits."""
    if value.is_integer():
        return f"{value:,.0f}"
    return f"{value:.4g}" if abs(value) < 1 else f"{value:,.2f}"
