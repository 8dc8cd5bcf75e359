"""The entry's own failure modes: a reader that goes away is not a traceback."""

from __future__ import annotations

import subprocess
import sys

PROGRAM = ("from distill.cli.main import run_reporting_errors\n"
           "run_reporting_errors(lambda: [print('x' * 65536, flush=True) for _ in range(64)], debug=False)\n")


def test_a_closed_output_pipe_ends_quietly() -> None:
    """`distill search ... | head`: the write after the reader left ends the command with status 1, nothing on
    stderr (Python would print a BrokenPipeError traceback)."""
    with subprocess.Popen([sys.executable, "-c", PROGRAM], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        assert process.stdout is not None and process.stderr is not None
        process.stdout.read(10)
        process.stdout.close()  # the reader leaves
        err = process.stderr.read().decode()
        assert process.wait() == 1 and err == ""
