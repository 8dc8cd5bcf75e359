"""Recall tables for the terminal (rich) and for markdown files."""

from __future__ import annotations

from collections.abc import Sequence

COLUMNS = ("a2b_R@1", "a2b_R@5", "a2b_R@10", "b2a_R@1", "b2a_R@5", "b2a_R@10", "rsum")
HEADERS = ("i->t R@1", "i->t R@5", "i->t R@10", "t->i R@1", "t->i R@5", "t->i R@10", "RSUM")

Row = tuple[str, dict[str, float]]


def _cell(value: float | str | None) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else f"{value:.1f}"


def print_table(rows: Sequence[Row], title: str = "") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("model")
    for header in HEADERS:
        table.add_column(header, justify="right")
    for name, metrics in rows:
        table.add_row(name, *(_cell(metrics.get(key)) for key in COLUMNS))
    Console().print(table)


def format_markdown_table(rows: Sequence[Row], command: str = "", extra: Sequence[str] = ()) -> str:
    lines = ["| model | " + " | ".join(HEADERS) + " |", "|---" * (len(HEADERS) + 1) + "|"]
    for name, metrics in rows:
        lines.append(f"| {name} | " + " | ".join(_cell(metrics.get(key)) for key in COLUMNS) + " |")
    body = "\n".join(lines) + "\n"
    if command:
        body = f"Command: `{command}`\n\n" + body
    return body + "".join(f"\n{line}" for line in extra)
