"""Command line: ``python -m distill fit|validate|test|predict --config recipe.yaml`` and extras.

The Lightning subcommands go through :class:`DistillCLI` (a ``LightningCLI``): ``class_path`` in a
recipe is the registry, ``--print_config`` prints the resolved recipe. Extra subcommands:

* ``demo``: train the shapes teacher if its weights are missing, distil two students, print the table.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import lightning as L
from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningCLI

EXTRA_COMMANDS = {
    "demo": ("distill.demo", "main", "train the demo teacher and students, print the recall table"),
}


class RecipeError(RuntimeError):
    """A recipe could be parsed but not built (missing weights, bad argument values...)."""


class DistillCLI(LightningCLI):
    """LightningCLI with the model and data given by ``class_path`` and one-line recipe errors."""

    def __init__(self, args: Sequence[str] | None = None, run: bool = True, **kwargs: object) -> None:
        kwargs.setdefault("parser_kwargs", {"exit_on_error": False, "default_env": False})
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            run=run,
            auto_configure_optimizers=False,
            **kwargs,  # type: ignore[arg-type]
        )

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (FileNotFoundError, ValueError, KeyError, TypeError, ImportError) as error:
            raise RecipeError(one_line(error)) from error


def one_line(error: BaseException) -> str:
    """Condense an exception (possibly nested jsonargparse messages) into one readable line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    # jsonargparse nests the real cause last; keep the outermost key and the innermost reason.
    if len(lines) > 1:
        head, tail = lines[0], lines[-1]
        return f"{head.rstrip(':')} -> {tail.lstrip('- ')}"
    return lines[0]


def _run_extra(command: str, argv: list[str]) -> None:
    import importlib

    module_name, function_name, _ = EXTRA_COMMANDS[command]
    getattr(importlib.import_module(module_name), function_name)(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in EXTRA_COMMANDS:
        _run_extra(args[0], args[1:])
        return
    if args and args[0] in ("-h", "--help"):
        extras = "\n".join(f"  {name:<10} {help_}" for name, (_, _, help_) in EXTRA_COMMANDS.items())
        print(f"distill extra commands:\n{extras}\n")
    try:
        DistillCLI(args=None if argv is None else args)
    except ArgumentError as error:
        print(f"distill: error: {one_line(error)}", file=sys.stderr)
        raise SystemExit(2) from None
    except RecipeError as error:
        print(f"distill: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
