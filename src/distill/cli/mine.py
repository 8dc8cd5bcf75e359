"""``python -m distill mine``: build a text recipe's training file from a BEIR folder with the student.

    python -m distill mine --config configs/msmarco/cross-encoder-to-minilm-margin-mse.yaml \\
        --out data/msmarco/train_triples.jsonl [--negatives 8] [--depth 100] [--skip-top 3] \\
        [--teacher-scores] [--student-ckpt <run>.ckpt] [--data.init_args.data_dir=...]   # recipe overrides

The recipe's student (its initial weights, or ``--student-ckpt``: a checkpoint or an export folder) mines
each training query's hard negatives over the whole corpus, alone: the recipe's teacher is not loaded.
``--teacher-scores`` also loads the teacher and stores its score of every pair. See :mod:`distill.cache.mine`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from distill.cache.mine import MineSettings, mine_training_file
from distill.cli.args import CommandParser, positive_int
from distill.errors import InputError
from distill.outputs import claim_output
from distill.students.weights import load_student_weights

__all__ = ["build_parser", "main", "mined_file"]


def build_parser() -> CommandParser:
    defaults = MineSettings()
    parser = CommandParser(prog="distill mine", description=__doc__.split("\n\n")[0],
                           epilog="Other --key=value arguments override the recipe, as in `distill fit`.")
    parser.add_argument("--config", required=True, help="a text recipe (its student mines, its data names the folder)")
    parser.add_argument("--out", required=True, help="the training file to write (JSONL, written atomically)")
    parser.add_argument("--negatives", type=positive_int, default=defaults.negatives, help="negatives per query")
    parser.add_argument("--depth", type=positive_int, default=defaults.depth, help="ranks the negatives come from")
    parser.add_argument("--skip-top", type=int, default=defaults.skip_top,
                        help="leave out the student's first ranks (likely unjudged positives)")
    parser.add_argument("--split", default=defaults.split, help="the qrels file of the training queries")
    parser.add_argument("--teacher-scores", action="store_true", help="store the teacher's score of every pair")
    parser.add_argument("--teacher-max-pairs", type=positive_int, default=1024, help="pairs per teacher forward")
    parser.add_argument("--student-ckpt", default=None, help="checkpoint or export folder of the mining student")
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size, help="texts per forward")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seeds the draw of negatives")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    return parser


def main(argv: list[str]) -> None:
    args, overrides = build_parser().parse_known_args(argv)
    if not os.path.isfile(args.config):
        raise InputError(f"--config: recipe '{args.config}' does not exist")
    inputs = {"--config": args.config, "--student-ckpt": args.student_ckpt}
    with claim_output(args.out, "training file", "--out", inputs, file=mined_file):
        _mine(args, overrides)


def mined_file(path: Path) -> bool:
    """True when ``path`` starts as the training files this command writes: a JSON object with the query's id and
    its positive and negative passage ids."""
    try:
        with open(path, "rb") as handle:
            first = json.loads(handle.readline(1 << 20))
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and {"query_id", "positive_ids", "negative_ids"} <= set(first)


def _mine(args: argparse.Namespace, overrides: list[str]) -> None:
    from distill.cli.recipe import read_recipe

    recipe = read_recipe(args.config, overrides)
    data = (recipe.data or {}).get("class_path", "")
    if not str(data).endswith("BeirTextDataModule"):
        raise InputError(f"mining needs a BEIR text data module, not {str(data).rsplit('.', 1)[-1] or 'none'} "
                         f"('{args.config}' data.class_path): use a query-passage recipe such as configs/msmarco/")
    if args.teacher_scores:
        student, teacher, datamodule = _with_teacher(args, overrides)
    else:  # the student alone: the recipe's teacher (and its tokenizer) are never loaded
        student, teacher, datamodule = _student_only(recipe), None, _data_without_teacher(recipe.data)
    if args.student_ckpt:
        load_student_weights(student, args.student_ckpt, option="--student-ckpt")
    datamodule.setup("fit")
    settings = MineSettings(negatives=args.negatives, depth=args.depth, skip_top=args.skip_top, split=args.split,
                            batch_size=args.batch_size, seed=args.seed)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    counts = mine_training_file(student, datamodule, args.out, settings, teacher, args.teacher_max_pairs, device)
    print(f"wrote {counts['queries']:,} training queries with {counts['negatives']:,} mined negatives "
          f"(over {counts['passages']:,} passages) to {args.out}", file=sys.stderr)


def _with_teacher(args: argparse.Namespace, overrides: list[str]) -> tuple[Any, Any, Any]:
    """The recipe's student, teacher and data module, built as ``fit`` builds them."""
    from distill.cli.recipe import DistillCLI

    cli = DistillCLI(args=["--config", args.config, *overrides, "--data.init_args.train_file=null"], run=False)
    student, teacher = getattr(cli.model, "student", None), getattr(cli.model, "teacher", None)
    if student is None:
        raise InputError(f"--config '{args.config}' has no model.init_args.student to mine with")
    if teacher is None:
        raise InputError(f"--teacher-scores needs model.init_args.teacher in '{args.config}'")
    return student, teacher, cli.datamodule


def _student_only(recipe: Any) -> Any:
    """The recipe's student (with its ``student_init`` weights), built alone."""
    from distill.errors import RecipeError, one_line, root_cause
    from distill.instantiate import instantiate

    try:
        student = instantiate(recipe.student)
    except (ValueError, OSError) as error:
        raise RecipeError(f"model.init_args.student: {one_line(root_cause(error))}") from error
    if recipe.student_init:
        load_student_weights(student, recipe.student_init, option="model.init_args.student_init")
    return student


def _data_without_teacher(data: dict[str, Any]) -> Any:
    """The recipe's data module without the teacher's tokenizer (nothing here feeds the teacher) and without the
    training file (the file being mined may not exist yet: the training queries come from the qrels)."""
    import lightning as L

    from distill.errors import RecipeError, one_line, root_cause
    from distill.instantiate import instantiate

    spec = {**data, "init_args": {**data.get("init_args", {}), "teacher_tokenizer": None, "train_file": None}}
    try:
        return instantiate(spec, L.LightningDataModule)
    except (ValueError, OSError) as error:
        raise RecipeError(f"data: {one_line(root_cause(error))}") from error
