"""Command line: ``python -m distill fit|validate|test|predict --config recipe.yaml`` and extras.

The Lightning subcommands go through :class:`DistillCLI` (a ``LightningCLI``): ``class_path`` in a
recipe is the registry, ``--print_config`` prints the resolved recipe. Extra subcommands:

* ``demo``: train the shapes teacher if its weights are missing, distil two students, print the table.
"""

from __future__ import annotations

import pickle
import re
import sys
from collections.abc import Sequence

import lightning as L
from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningCLI

from distill.checkpoint import unsafe_checkpoint_error
from distill.data.common import DataError
from distill.errors import RecipeError, TrainingError

EXTRA_COMMANDS = {
    "demo": ("distill.demo", "main", "train the demo teacher and students, print the recall table"),
    "cache-teacher": ("distill.cache.build", "main",
                      "score each training anchor's top-K student candidates with the teacher once, into a cache"),
    "export": ("distill.export", "main", "export a trained student: safetensors, config, tokenizer, ONNX, card"),
    "index": ("distill.index.commands", "index_main", "encode a split's b side with an exported student into an index"),
    "search": ("distill.index.commands", "search_main", "search an index with a text or image query"),
}


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

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads --ckpt_path (weights_only=True) for its hyperparameters before anything is built.
        try:
            super()._parse_ckpt_path()
        except pickle.UnpicklingError as error:
            path = self.config[self.config.subcommand].get("ckpt_path")
            raise unsafe_checkpoint_error(path, error) from None

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (FileNotFoundError, ValueError, KeyError, TypeError, ImportError) as error:
            message = one_line(root_cause(error))
            config = self.config.get(self.config.subcommand) if self.config.get("subcommand") else self.config
            key = recipe_key(config, message)
            raise RecipeError(f"{key}: {message}" if key else message) from error


def _leaves(value: object, prefix: str = "") -> dict[str, object]:
    """Dotted key -> value for every leaf of a (nested) jsonargparse namespace or dict."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()  # type: ignore[union-attr]
    if not isinstance(value, dict):
        return {prefix: value} if prefix else {}
    leaves: dict[str, object] = {}
    for name, inner in value.items():
        leaves.update(_leaves(inner, f"{prefix}.{name}" if prefix else str(name)))
    return leaves


def recipe_key(config: object, message: str) -> str | None:
    """The one recipe key an argument error is about, e.g. ``model.init_args.losses.kl.init_args.temperature``.

    A constructor only knows its own parameter name (``temperature must be > 0, got 0.0``); the key is
    the single leaf whose name the message mentions and whose value is the ``got`` value. ``None``
    when the message names a key already, or no single key matches.
    """
    got = re.search(r"got (-?[\w.+-]+)", message)
    if config is None or got is None or re.match(r"^[\w.]+\.[\w.]+[:\s]", message):
        return None
    candidates = []
    for key, value in _leaves(config).items():
        name = key.rsplit(".", 1)[-1]
        if not (re.search(rf"\b{re.escape(name)}\b", message) or name.replace("_", " ") in message):
            continue
        try:
            if float(value) != float(got.group(1)):  # type: ignore[arg-type]
                continue
        except (TypeError, ValueError):
            if str(value) != got.group(1):
                continue
        candidates.append(key)
    return candidates[0] if len(candidates) == 1 else None


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
    classes = [match.group(1) for line in raw if (match := re.search(r"Problem with given class_path '([^']+)'", line))]
    reasons = [(len(line) - len(line.lstrip()), line.strip().lstrip("- ")) for line in raw
               if not _BOILERPLATE.match(line.strip()) and "Problem with given class_path" not in line]
    if not reasons:
        return " ".join(line.strip() for line in raw)
    depth = max(indent for indent, _ in reasons)
    reason = next(text for indent, text in reasons if indent == depth)
    where = ".".join(keys)
    context = f" (in {classes[-1]})" if classes and classes[-1] not in reason else ""
    return f"{where}: {reason}{context}" if where else f"{reason}{context}"


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
        print(f"distill: error: {one_line(error)}", file=sys.stderr)
        raise SystemExit(2) from None
    except (DataError, TrainingError) as error:
        print(f"distill: error: {one_line(error)}", file=sys.stderr)
        raise SystemExit(1) from None
