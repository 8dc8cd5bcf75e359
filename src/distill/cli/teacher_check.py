"""``python -m distill teacher-check``: before a long ``fit``, check that the teacher re-ranks better than the
student ranks alone.

    python -m distill teacher-check --config configs/msmarco/cross-encoder-to-minilm-margin-mse.yaml \\
        [--ckpt_path <run>/checkpoints/last.ckpt] [--queries 200] [--passages 5000] [--k 10] \\
        [--data.init_args.data_dir=...]          # any further overrides of the recipe, as in `distill fit`

The recipe's model and data are built as ``fit`` builds them (:class:`~distill.cli.recipe.DistillCLI`,
``run=False``); the check is the one ``fit`` runs before its first step
(:func:`distill.training.callbacks.teacher_check.run_teacher_check`): the student (the recipe's initial one, or
``--ckpt_path``: a checkpoint or an export folder) ranks a sample of validation queries, the teacher re-ranks each
query's top ``k``, and the evaluator's main metric (nDCG@10, RSUM) compares the two. Prints one line and exits 0
when the teacher improves on the student; otherwise one line saying what to do, exit status 1.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from distill.cli.args import CommandParser, positive_int
from distill.errors import InputError
from distill.students.weights import load_student_weights
from distill.training.callbacks.teacher_check import (
    SWITCH,
    TeacherCheck,
    TeacherCheckError,
    refusal,
    run_teacher_check,
    val_loaders,
)

__all__ = ["build_parser", "main"]


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="distill teacher-check",
        description="Check on a sample of validation queries that the recipe's teacher re-ranks the student's top k "
                    "better than the student ranks them alone. Unknown --key=value arguments override the recipe, as "
                    "in `distill fit`.")
    parser.add_argument("--config", required=True, help="the distillation recipe (its student, teacher and data)")
    parser.add_argument("--ckpt_path", "--ckpt-path", dest="ckpt_path", default=None,
                        help="checkpoint (or export folder) of the student to check (default: the recipe's initial "
                             "student)")
    parser.add_argument("--queries", type=positive_int, default=None,
                        help="validation queries (image-text: images) in the sample (default: the recipe's "
                             "TeacherCheck, else 200)")
    parser.add_argument("--passages", type=positive_int, default=None,
                        help="corpus passages besides the sampled queries' judged ones (default: the recipe's "
                             "TeacherCheck, else 5000)")
    parser.add_argument("--k", type=positive_int, default=None,
                        help="each query's student top k the teacher re-ranks (default: the evaluator's two_stage_k, "
                             "else 10)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    return parser


def _settings(trainer: Any, args: Any) -> tuple[int, int, int | None]:
    """``(queries, passages, k)``: the flags, else the recipe's TeacherCheck callback, else its defaults."""
    recipe = next((c for c in getattr(trainer, "callbacks", []) if isinstance(c, TeacherCheck)), TeacherCheck())
    return (args.queries or recipe.queries, args.passages or recipe.passages,
            args.k if args.k is not None else recipe.k)


def _build(config: str, overrides: Sequence[str]) -> Any:
    from distill.cli.recipe import DistillCLI

    if not os.path.isfile(config):
        raise InputError(f"--config: recipe '{config}' does not exist")
    return DistillCLI(args=["--config", config, *overrides], run=False)


def main(argv: list[str]) -> None:
    from distill.data.items import unwrap_datamodule

    args, overrides = build_parser().parse_known_args(argv)
    cli = _build(args.config, overrides)
    module = cli.model
    if getattr(module, "student", None) is None or getattr(module, "scorer", None) is None:
        raise InputError(f"--config '{args.config}' needs model.init_args.student and model.init_args.teacher: the "
                         "check compares the student with the teacher re-ranking it")
    if args.ckpt_path:
        load_student_weights(module.student, args.ckpt_path, option="--ckpt_path")
    queries, passages, k = _settings(getattr(cli, "trainer", None), args)
    # A cached recipe's data module wraps the real one (and its cache): the check reads the validation split.
    datamodule = unwrap_datamodule(cli.datamodule)
    datamodule.setup("validate")
    loaders = val_loaders(datamodule)
    if not loaders:
        raise InputError(f"--config '{args.config}' has no validation split to check on: set data.init_args.val_split")
    module.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    result = run_teacher_check(module, datamodule, loaders, queries, passages, k)
    if result is None:
        raise InputError(f"the validation split of '{args.config}' holds no query with a judged item: check "
                         "data.init_args.val_split")
    if not result.passed:
        raise TeacherCheckError(refusal(result, f"train anyway with `distill fit {SWITCH}`"))
    print(f"teacher check passed: {result.summary()}", flush=True)
