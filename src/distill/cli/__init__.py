"""Command line: ``python -m distill <command>``; see :mod:`distill.cli.main`."""

from distill.cli.main import main

__all__ = ["main"]
