"""``argparse`` for distill's own commands: a usage mistake is one ``InputError`` line (exit status 2)."""

from __future__ import annotations

import argparse
from typing import NoReturn

from distill.errors import InputError

__all__ = ["CommandParser", "positive_int"]


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are :class:`~distill.errors.InputError` instead of usage + exit."""

    def error(self, message: str) -> NoReturn:
        raise InputError(f"{self.prog}: {message} (see {self.prog} --help)")


def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value
