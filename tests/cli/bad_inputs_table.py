"""Write the table of ``docs/troubleshooting.md`` from the lines ``tests/cli/test_bad_inputs.py`` recorded.

    DISTILL_RECORD_BAD_INPUTS=/tmp/bad.tsv pytest tests/cli/test_bad_inputs.py
    python -m tests.cli.bad_inputs_table /tmp/bad.tsv

Each row: the case id, the command (recipe paths relative to the repository, the test's tiny-data
overrides left out, files the case prepares shown as ``<tmp>/...`` or ``<assets>/...``), the exit status
and the one line distill printed (temporary paths shortened the same way).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from distill.cli.report import update_markdown_section
from tests.cli.test_bad_inputs import CASES, ENVIRONMENTS, TROUBLESHOOTING
from tests.helpers import REPO_ROOT, TINY

# The cases that are not rows of CASES: they need a monkeypatched disk (their own tests below the table's).
EXTRA_ROWS = [("disk-full-checkpoint", "fit ... --ckpt_path last (the disk fills while saving)", "1",
               "distill: error: no space left on the device while writing '<tmp>/run/.../last.ckpt' ..."),
              ("disk-full-export", "export --ckpt <assets>/runs/.../last.ckpt --out <tmp>/out (the disk fills)", "1",
               "distill: error: no space left on the device while writing '<tmp>/out' ..."),
              ("disk-full-index", "index --student <assets>/export --data <assets>/data.yaml --out <tmp>/out "
               "(the disk fills)", "1",
               "distill: error: no space left on the device while writing '<tmp>/out/...' ..."),
              ("disk-full-cache-teacher", "cache-teacher --config configs/demo/shapes-cprd.yaml --out <tmp>/out "
               "(the disk fills)", "1",
               "distill: error: no space left on the device while writing '<tmp>/out/...' ...")]
HIDDEN_ARGS = {*TINY, "--trainer.max_steps=1"}


class _Placeholder:
    """Stands in for the test's ``Assets``: ``{assets.export}`` formats as ``<assets>/export``."""

    def __getattr__(self, name: str) -> _Folder:
        return _Folder(f"<assets>/{name}")


class _Folder(str):
    """``{assets.images[karpathy]}`` formats as ``<assets>/images/karpathy``."""

    def __getitem__(self, key: object) -> str:  # type: ignore[override]
        return f"{self}/{key}"


def _shorten(text: str) -> str:
    text = text.replace(str(REPO_ROOT) + "/", "")
    return re.sub(r"/tmp/pytest-of-[^/]+/pytest-\d+/[^/\s']+?\d*(?=[/\s']|$)", "<tmp>", text)


def _command(case: object) -> str:
    args = case.args(_Placeholder(), Path("<tmp>"))  # type: ignore[attr-defined]
    shown = [arg if arg.isascii() and arg.isprintable() else ascii(arg)  # zero-width and control characters
             for arg in args if arg not in HIDDEN_ARGS and not arg.startswith("--trainer.default_root_dir=")
             and not arg.startswith("--model.init_args.teacher.init_args.weights=<assets>")]
    environment = [f"{name}={value}" for name, value in ENVIRONMENTS.get(case.id, {}).items()]
    return _shorten(" ".join(environment + shown))


def table(recorded: dict[str, tuple[str, str]]) -> str:
    missing = [case.id for case in CASES if case.id not in recorded]
    if missing:
        raise SystemExit(f"no line recorded for {missing}: run the whole of tests/cli/test_bad_inputs.py")
    rows = ["| case | command | exit | what distill prints |", "|---|---|---|---|"]
    cells = [(case.id, _command(case), *recorded[case.id]) for case in CASES] + EXTRA_ROWS
    for case_id, command, status, line in cells:
        message = _shorten(line).replace("|", "\\|")
        rows.append(f"| `{case_id}` | `{command}` | {status} | {message} |")
    return "\n".join(rows)


def main(argv: list[str]) -> None:
    recorded = {}
    for line in Path(argv[0]).read_text(encoding="utf-8").splitlines():
        case_id, status, message = line.split("\t", 2)
        recorded[case_id] = (status, message)
    update_markdown_section(TROUBLESHOOTING, "bad-inputs", table(recorded))
    print(f"wrote {len(recorded) + len(EXTRA_ROWS)} rows to {TROUBLESHOOTING}")


if __name__ == "__main__":
    main(sys.argv[1:])
