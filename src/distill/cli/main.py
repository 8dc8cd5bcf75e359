"""``python -m distill``: one entry for the Lightning subcommands and distill's own.

``fit`` / ``validate`` / ``test`` / ``predict`` go through :class:`~distill.cli.recipe.DistillCLI`; the
commands in :data:`COMMANDS` are distill's. Every failure a user can cause ends as one line
``distill: error: ...`` with exit status 2 (bad input) or 1 (a failure at run time); ``--debug`` (or
``DISTILL_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence

from distill.cli.quiet import configure_output
from distill.cli.settings import check_environment
from distill.errors import DistillError, InputError, RunError, one_line

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("distill.cli.demo", "train the demo teacher and students, print the recall table"),
    "teacher-check": ("distill.cli.teacher_check",
                      "check that the recipe's teacher re-ranks a sample of validation queries better than the student"),
    "cache-teacher": ("distill.cli.cache_teacher",
                      "score each training anchor's top-K student candidates with the teacher once, into a cache"),
    "mine": ("distill.cli.mine", "build a text recipe's training file (query, positives, hard negatives) from a "
                                 "BEIR folder with the student"),
    "export": ("distill.cli.export", "export a trained student: safetensors, config, tokenizer, ONNX, card"),
    "index": ("distill.cli.index", "encode a split's b side with an exported student into an index"),
    "search": ("distill.cli.search", "search an index with a text or image query"),
}
DEBUG_ENV = "DISTILL_DEBUG"

__all__ = ["COMMANDS", "main", "run_reporting_errors"]


def _flag(args: list[str], name: str, env: str | None = None) -> bool:
    """Remove ``name`` from ``args``; True when it was there (or ``env`` is set to something else than 0)."""
    if name in args:
        args.remove(name)
        return True
    return env is not None and os.environ.get(env, "") not in ("", "0")


def classify(error: BaseException) -> DistillError | None:
    """The one-line error an exception stands for, or ``None`` for a bug (which keeps its traceback)."""
    from jsonargparse import ArgumentError

    if isinstance(error, DistillError):
        return error
    if isinstance(error, ArgumentError):
        return InputError(one_line(error))
    if isinstance(error, PermissionError):
        return InputError(f"permission denied: '{error.filename}': choose a folder you can write to")
    if isinstance(error, OSError) and error.errno == 28:  # ENOSPC
        return RunError(f"no space left on the device while writing '{error.filename or ''}': free space and run "
                        "the same command again (files written before are intact)")
    return None


def run_reporting_errors(run: Callable[[], None], debug: bool) -> None:
    """Run a command; report a user-caused failure as one line and exit with its status."""
    try:
        run()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BrokenPipeError:
        # The reader of the output went away (`distill search ... | head`): stop quietly, as `cat` does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
    except BaseException as error:  # noqa: BLE001 - classified below, re-raised when it is a bug
        reported = None if debug else classify(error)
        if reported is None:
            raise
        print(f"distill: error: {one_line(reported)}", file=sys.stderr)
        raise SystemExit(reported.exit_code) from None


def _usage() -> str:
    extras = "\n".join(f"  {name:<14} {help_}" for name, (_, help_) in COMMANDS.items())
    return (f"distill commands (python -m distill <command> --help):\n{extras}\n"
            "Lightning commands: fit, validate, test, predict (--config <recipe.yaml>)\n"
            "--debug (or DISTILL_DEBUG=1) shows tracebacks instead of one-line errors;\n"
            "--verbose shows Lightning's own informational lines (accelerator banner, tips)\n")


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _flag(args, "--debug", DEBUG_ENV)
    configure_output(verbose=_flag(args, "--verbose"))
    run_reporting_errors(check_environment, debug)  # before Lightning is imported: it reads some of them then
    if args and args[0] in COMMANDS:
        module = importlib.import_module(COMMANDS[args[0]][0])
        run_reporting_errors(lambda: module.main(args[1:]), debug)
        return
    if args and args[0] in ("-h", "--help"):
        print(_usage())

    def lightning() -> None:
        from distill.cli.recipe import DistillCLI

        DistillCLI(args=args)

    run_reporting_errors(lightning, debug)
