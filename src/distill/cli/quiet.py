"""What ``python -m distill`` prints: our own lines, not Lightning's tips and banners (``--verbose`` restores them).

Quiet by default:

* Lightning's informational lines (the accelerator banner "GPU available: ...", promotional tips, "Seed
  set to ...") are hidden; warnings stay;
* Lightning's warning that the frozen teacher's modules are in eval mode is replaced by one line of ours
  (``DistillationModule.on_fit_start``): the teacher is meant to stay in eval mode;
* a deprecation warning raised inside Lightning's own code about torch's pytree API is hidden;
* transformers' load reports (the "LOAD REPORT ... UNEXPECTED" table of every model load) and its "Loading
  weights" bars are hidden (its errors stay);
* distill's own loggers (``distill.*``: progress lines, skipped data items, guards) print as
  ``distill: <message>`` on stderr.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

__all__ = ["EVAL_MODE_WARNING", "configure_output"]

EVAL_MODE_WARNING = r"Found \d+ module\(s\) in eval mode at the start of training"
LIGHTNING_INFO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed",
                          "lightning.fabric.utilities.rank_zero")


def configure_output(verbose: bool = False) -> None:
    """Set up distill's log lines and, unless ``verbose``, silence Lightning's informational output."""
    logger = logging.getLogger("distill")
    if not any(getattr(handler, "_distill", False) for handler in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("distill: %(message)s"))
        handler._distill = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO)
    if verbose:
        return
    warnings.formatwarning = _one_line_warning  # type: ignore[assignment]
    for name in LIGHTNING_INFO_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=EVAL_MODE_WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    quiet_transformers()


def quiet_transformers() -> None:
    """Hide transformers' per-load report tables ("LOAD REPORT ... UNEXPECTED", logged as warnings) and its
    "Loading weights" bars: set before transformers is imported, and on it when it already is."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()



def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      line: str | None = None) -> str:
    """A warning as one line, without the file, line number and source line Python would add."""
    return "distill: warning: " + " ".join(str(message).split()) + "\n"


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler that writes to whatever ``sys.stderr`` is when a line is logged (it may be replaced)."""

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass
