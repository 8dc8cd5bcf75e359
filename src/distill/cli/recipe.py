"""The one recipe loader: parse a recipe (or a run's saved ``config.yaml``) for every subcommand.

:class:`DistillCLI` is LightningCLI with ``class_path`` as the registry and one-line recipe errors; it
runs ``fit`` / ``validate`` / ``test`` / ``predict`` and builds the model and data for ``cache-teacher``
and ``mine``. :func:`read_recipe` parses without building anything (export, model cards);
:func:`load_datamodule` builds only the data module of a recipe or of a data YAML (index, mine).
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI

from distill.cli.fit_note import BatchCounter, nothing_trained_note
from distill.cli.safe_yaml import check_recipe_files, install, load_yaml
from distill.cli.settings import check_optimization, check_trainer
from distill.errors import DistillError, RecipeError, one_line, root_cause
from distill.instantiate import instantiate
from distill.serving.card import RecipeSpec
from distill.training.checkpoint import check_ckpt_path

RUN_CONFIG_NAME = "config.yaml"

__all__ = ["DistillCLI", "RUN_CONFIG_NAME", "find_run_config", "load_datamodule", "read_recipe", "recipe_key"]


class DistillCLI(LightningCLI):
    """LightningCLI with the model and data given by ``class_path`` and one-line recipe errors."""

    def __init__(self, args: Sequence[str] | None = None, run: bool = True, **kwargs: object) -> None:
        kwargs.setdefault("parser_kwargs", {"exit_on_error": False, "default_env": False})
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        # A progress bar in a terminal; in logs and CI the ProgressLog callback prints lines instead.
        kwargs.setdefault("trainer_defaults", {"enable_progress_bar": sys.stderr.isatty()})
        check_config_files(list(sys.argv[1:] if args is None else args))
        install()  # jsonargparse's YAML loader refuses unbounded aliases in every value it parses
        # Arguments given in Python replace the process's own (LightningCLI would warn about both).
        argv, sys.argv = sys.argv, sys.argv[:1] if args is not None else sys.argv
        try:
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
        finally:
            sys.argv = argv

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument("--teacher_check", type=bool, default=True,
                            help="fit: before the first step, stop when the teacher re-ranks a sample of validation "
                                 "queries no better than the student ranks them (distill.training.callbacks.TeacherCheck)")

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except (ValueError, MisconfigurationException) as error:
            if isinstance(error, DistillError) or not _raised_by_lightning_settings(error):
                raise
            raise RecipeError(f"trainer: {one_line(error)}") from error

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        # validate / test: distill prints one results table (Lightning's has a repeated column per loader
        # and cuts metric names at 80 columns).
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        self._results_table = subcommand in ("validate", "test") and bool(kwargs.get("verbose", True))
        if "verbose" in kwargs:
            kwargs["verbose"] = False
        return kwargs

    def after_validate(self) -> None:
        self._print_results("val")

    def after_test(self) -> None:
        self._print_results("test")

    def _print_results(self, stage: str) -> None:
        from distill.cli.report import stage_results_table

        if getattr(self, "_results_table", False) and self.trainer.is_global_zero:
            table = stage_results_table(self.trainer.callback_metrics, stage)
            if table:
                print(table, flush=True)

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads --ckpt_path for its hyperparameters before anything is built: check it first.
        if self.config.get("subcommand"):
            check_ckpt_path(self.config[self.config.subcommand].get("ckpt_path"))
        super()._parse_ckpt_path()

    def before_fit(self) -> None:
        self._batch_counter = BatchCounter()
        self.trainer.callbacks.append(self._batch_counter)  # type: ignore[attr-defined]

    def after_fit(self) -> None:
        note = nothing_trained_note(self.trainer, self._batch_counter, self.trainer.ckpt_path)
        if note is not None:  # e.g. a resumed run that had already reached max_epochs: say so, not just exit 0
            print(note, file=sys.stderr)

    def before_instantiate_classes(self) -> None:
        # Lightning's Trainer raises tracebacks on these (or, for max_epochs=0, trains nothing): check them first.
        # Only where a Trainer is built: export reads a GPU run's config.yaml on a machine without one.
        config = self.config.get(self.subcommand) if self.subcommand else None
        trainer = config.get("trainer") if config is not None else None
        if trainer is not None:
            check_trainer(_as_dict(trainer), self.subcommand)
        if self.subcommand in ("validate", "test") and config is not None:
            self._log_beside_checkpoint(config)

    def _log_beside_checkpoint(self, config: Any) -> None:
        """``test`` / ``validate`` of a run's checkpoint log into that run's folder (``export`` reads its test
        metrics for the model card there; the checkpoint callback keeps its folder), and save their own
        config as ``config-<command>.yaml`` beside the run's ``config.yaml``."""
        from jsonargparse import Namespace

        ckpt, trainer = config.get("ckpt_path"), config.get("trainer")
        if not ckpt or str(ckpt) in ("last", "best", "hpc", "registry") or trainer is None:
            return
        try:
            run = find_run_config(ckpt).parent
        except RecipeError:
            return
        logger = trainer.get("logger")
        class_path = str(logger.get("class_path", "")) if isinstance(logger, Namespace) else ""
        if logger is False or (class_path and not class_path.endswith("TensorBoardLogger")) or \
                isinstance(logger, list) or not (run / "checkpoints").is_dir() and not any(run.glob("events.out.*")):
            return
        init_args = logger.get("init_args") if class_path else None
        settings = {**(_as_dict(init_args) if init_args is not None else {}),
                    "save_dir": str(run.parent.parent), "name": run.parent.name, "version": run.name}
        trainer.logger = Namespace(class_path="lightning.pytorch.loggers.TensorBoardLogger",
                                   init_args=Namespace(**settings))
        self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": f"config-{self.subcommand}.yaml"}

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (FileNotFoundError, ValueError, KeyError, TypeError, ImportError, RuntimeError,
                MisconfigurationException) as error:
            if isinstance(error, DistillError):
                raise
            if isinstance(error, MisconfigurationException):  # the Trainer's own settings
                raise RecipeError(f"trainer: {one_line(error)}") from error
            message = one_line(root_cause(error))
            config = self.config.get(self.config.subcommand) if self.config.get("subcommand") else self.config
            key = recipe_key(config, message)
            raise RecipeError(f"{key}: {message}" if key else message) from error
        for part, owner in ((getattr(self, "datamodule", None), "data"), (getattr(self, "model", None), "model")):
            if part is not None:
                _report_setup_errors(part, owner)
        if self.subcommand == "fit":
            check_optimization(self.model)
        self._switch_teacher_check()

    def _switch_teacher_check(self) -> None:
        """``--teacher_check false`` turns the recipe's TeacherCheck callbacks off."""
        from distill.training.callbacks import TeacherCheck

        config = self.config.get(self.config.subcommand) if self.config.get("subcommand") else self.config
        trainer = getattr(self, "trainer", None)
        if config is None or config.get("teacher_check", True) or trainer is None:
            return
        for callback in trainer.callbacks:
            if isinstance(callback, TeacherCheck):
                callback.enabled = False


def _raised_by_lightning_settings(error: BaseException) -> bool:
    """Whether Lightning's trainer raised ``error`` while checking its own settings (e.g. a
    ``val_check_interval`` longer than the epoch), rather than a bug deeper in a run."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and any(part in frames[-1].filename for part in (
        "lightning/pytorch/trainer/", "lightning/pytorch/loops/", "lightning/fabric/connector",
        "lightning/pytorch/trainer/connectors/"))


def check_config_files(args: Sequence[str]) -> None:
    """Refuse, naming the file and the line, a ``--config`` that is missing or is not valid YAML, and (in it or a
    YAML file it composes, or one given on the command line) aliases that expand without bound or recurse."""
    files: list[str] = []
    for flag, value in zip(args, list(args[1:]) + [""]):
        path = value if flag in ("--config", "-c") else (flag.split("=", 1)[1] if flag.startswith("--config=") else None)
        if path is None:
            continue
        source = Path(path)
        if not source.is_file():
            raise RecipeError(f"--config: recipe '{source}' does not exist")
        files.append(path)
    check_recipe_files(files, "--config: recipe")
    given = [arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg for arg in args]
    check_recipe_files([value for value in given if value.lower().endswith((".yaml", ".yml")) and value not in files
                        and Path(value).is_file()], "command-line file")


def _report_setup_errors(part: L.LightningModule | L.LightningDataModule, owner: str) -> None:
    """Make a ``setup`` that rejects its input (``ValueError``, ``KeyError``, a missing file) fail as one recipe
    line naming the recipe part, the way constructor errors do: setup reads the data and files a recipe names."""
    original = part.setup

    def setup(*args: Any, **kwargs: Any) -> Any:
        try:
            return original(*args, **kwargs)
        except DistillError:
            raise
        except (ValueError, KeyError, FileNotFoundError) as error:
            raise RecipeError(f"{owner} ({type(part).__name__}): {one_line(root_cause(error))}") from error

    part.setup = setup  # type: ignore[method-assign]


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
    if config is None or got is None or re.match(r"^[\w.]+\.[\w.]+[:\s]", message) or \
            re.search(r"\b(data|model|trainer)\.init_args\.\w", message):
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


def read_recipe(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> RecipeSpec:
    """Parse a recipe or a run's saved ``config.yaml`` without building any model or data module.

    ``overrides`` are LightningCLI-style ``--key value`` arguments applied after the file.
    """
    source = Path(path)
    if not source.is_file():
        raise RecipeError(f"recipe '{source}' does not exist: pass --config <the recipe used for training>")

    class _ParseOnly(DistillCLI):
        def add_arguments_to_parser(self, parser: Any) -> None:
            super().add_arguments_to_parser(parser)
            # Keys LightningCLI writes into a run's config.yaml that the run=False parser lacks.
            for key in ("--ckpt_path", "--weights_only"):
                try:
                    parser.add_argument(key, type=str | bool | None, default=None)
                except Exception:  # already defined by a future DistillCLI
                    pass

        def instantiate_classes(self) -> None:
            pass

    try:
        cli = _ParseOnly(args=["--config", str(source), *overrides, "--seed_everything", "false"], run=False)
    except RecipeError:
        raise
    except Exception as error:  # jsonargparse raises several types; report them in one line
        raise RecipeError(f"could not parse recipe '{source}': {one_line(error)}") from error
    config = cli.config
    model_args = _as_dict(config["model"]).get("init_args", {})
    if "student" not in model_args:
        raise RecipeError(f"recipe '{source}' has no model.init_args.student: export needs a distillation recipe")
    losses = {name: _as_dict(loss) for name, loss in (model_args.get("losses") or {}).items()}
    return RecipeSpec(
        student=_as_dict(model_args["student"]),
        teacher=_as_dict(model_args["teacher"]) if model_args.get("teacher") else None,
        losses=losses,
        loss_weights={name: float(w) for name, w in (model_args.get("loss_weights") or {}).items()},
        data=_as_dict(config["data"]) if config.get("data") else None,
        source=source,
        student_init=str(model_args["student_init"]) if model_args.get("student_init") else None,
    )


def _as_dict(value: Any) -> Any:
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, Mapping):
        return {key: _as_dict(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_dict(item) for item in value]
    return value


def find_run_config(ckpt_path: str | os.PathLike[str], levels: int = 3) -> Path:
    """The ``config.yaml`` LightningCLI saved in the log folder holding ``ckpt_path`` (searching up)."""
    folder = Path(ckpt_path).resolve().parent
    for candidate in [folder, *folder.parents][: levels + 1]:
        if (candidate / RUN_CONFIG_NAME).is_file():
            return candidate / RUN_CONFIG_NAME
    raise RecipeError(
        f"no {RUN_CONFIG_NAME} found next to or above '{ckpt_path}': pass --config <the recipe used for training>"
    )


def load_datamodule(path: str | os.PathLike[str]) -> Any:
    """A data module from a recipe (its ``data`` entry) or from a ``class_path`` data yaml."""
    source = Path(path)
    if not source.is_file():
        raise RecipeError(f"data file '{source}' does not exist: pass a recipe or a data yaml")
    check_recipe_files([source], "data file")
    raw = load_yaml(source, f"data file '{source}'") or {}
    if isinstance(raw, dict) and "class_path" in raw:
        return instantiate(raw, L.LightningDataModule)
    recipe = read_recipe(source)
    if recipe.data is None:
        raise RecipeError(f"recipe '{source}' has no `data` entry")
    return instantiate(recipe.data, L.LightningDataModule)
