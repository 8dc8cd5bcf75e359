"""The error contract: every failure a user can cause is one line that names the file, key or setting and
what to do, with a stable exit status.

``python -m distill`` prints a :class:`DistillError` as ``distill: error: <message>`` without a traceback
(``--debug``, or ``DISTILL_DEBUG=1``, shows it) and exits with its ``exit_code``:

* :class:`InputError` (2): bad input: a recipe value, a missing or damaged file, a folder another process
  is writing. :class:`RecipeError` is the recipe's kind; data and checkpoint errors subclass it too;
* :class:`TrainingError` (1): a run stopped on purpose because continuing would waste it (non-finite
  loss, a collapsed sparse student);
* :class:`RunError` (1): a failure at run time that is not the input's fault (a full disk, a read-only
  output folder).
"""

from __future__ import annotations

import re

__all__ = ["DistillError", "FolderBusyError", "InputError", "RecipeError", "RunError", "TrainingError", "UnsafeFileError",
           "one_line", "root_cause"]


class DistillError(Exception):
    """Base of the errors the command line reports as one line."""

    exit_code = 1


class InputError(DistillError, ValueError):
    """The user's input is wrong: a file, a key or a setting; the message says which and what to do."""

    exit_code = 2


class RecipeError(InputError):
    """A recipe could be parsed but not built or run (missing weights, bad argument values...)."""


class UnsafeFileError(InputError):
    """A file that only an unrestricted unpickler could read (it may run code) was refused."""


class FolderBusyError(InputError):
    """Another process is writing the same artefact folder (index, export, cache)."""


class TrainingError(DistillError, RuntimeError):
    """Training was stopped by a guard; the message says where (epoch, step, batch) and what to do."""


class RunError(DistillError, RuntimeError):
    """A failure at run time that is not the input's fault (disk full, permission denied)."""


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of a chain (jsonargparse wraps constructor errors in union errors)."""
    seen = {id(error)}
    while (inner := error.__cause__ or (None if error.__suppress_context__ else error.__context__)) is not None \
            and id(inner) not in seen:
        seen.add(id(inner))
        error = inner
    return error


_BOILERPLATE = re.compile(
    r"^(- )?(Does not validate against any of the Union subtypes|Subtypes:|Errors:|Expected a <class 'NoneType'>|"
    r"Given value type:|Given value:|Parser key )"
)


def one_line(error: BaseException) -> str:
    """Condense an exception (possibly a nested jsonargparse report) into one readable line.

    jsonargparse nests the real reason deep inside union-type reports; keep the chain of parser
    keys, the innermost ``class_path`` and the most deeply nested reason.
    """
    raw = [line for line in str(error).splitlines() if line.strip()]
    if not raw:
        return type(error).__name__
    if len(raw) == 1:
        return raw[0].strip()
    keys = [match.group(1) for line in raw if (match := re.search(r'Parser key "([^"]+)"', line))]
    given = next((m.group(1).strip() for line in raw if (m := re.search(r"Given value: (.*)$", line.strip()))), None)
    classes = [match.group(1) for line in raw if (match := re.search(r"Problem with given class_path '([^']+)'", line))]
    reasons = [(len(line) - len(line.lstrip()), line.strip().lstrip("- ")) for line in raw
               if not _BOILERPLATE.match(line.strip()) and "Problem with given class_path" not in line]
    if not reasons:
        return " ".join(line.strip() for line in raw)
    depth = max(indent for indent, _ in reasons)
    reason = next(text for indent, text in reasons if indent == depth)
    where = ".".join(keys)
    context = f" (in {classes[-1]})" if classes and classes[-1] not in reason else ""
    if given is not None and given not in reason:
        context += f" (given: {given})"
    return f"{where}: {reason}{context}" if where else f"{reason}{context}"
