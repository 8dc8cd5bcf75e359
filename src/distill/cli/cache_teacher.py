"""``python -m distill cache-teacher``: score each training anchor's top-K student candidates once, into a cache.

    python -m distill cache-teacher --config configs/demo/cached-shapes-cprd.yaml --out caches/shapes-k16 \\
        [--k 16] [--student-ckpt runs/x/checkpoints/last.ckpt] [--shard-size 4096] [--split train] \\
        [--teacher-max-pairs 1024] [--teacher-precision bf16] [--rank R --world-size W] \\
        [--refresh-from caches/earlier-cache] \\
        [--data.init_args.num_train=...]         # any further LightningCLI overrides of the recipe

The recipe's model and data are built through :class:`~distill.cli.recipe.DistillCLI` (``run=False``; its
``seed_everything`` fixes the student's initial weights); :func:`distill.cache.build.build_teacher_cache`
does the rest. ``--refresh-from`` (repeatable) re-mines with ``--student-ckpt`` into a new ``--out`` and scores only
the pairs the earlier caches lack (:mod:`distill.cache.refresh`). Under torchrun or a SLURM array each process
takes its share of the shards (``RANK`` / ``WORLD_SIZE``, ``SLURM_ARRAY_TASK_ID`` / ``SLURM_ARRAY_TASK_COUNT``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from distill.cache.build import BuildSettings, build_teacher_cache
from distill.cli.args import CommandParser, positive_int
from distill.errors import InputError
from distill.outputs import check_output
from distill.students.weights import load_student_weights

__all__ = ["build_parser", "main", "process_share"]


def process_share(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``(rank, world_size)``: the flags, else torchrun's ``RANK`` / ``WORLD_SIZE``, else a SLURM array's task."""
    if rank is not None or world_size is not None:
        return rank or 0, world_size or 1
    if "WORLD_SIZE" in os.environ:
        return int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"])
    if "SLURM_ARRAY_TASK_COUNT" in os.environ:
        first = int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
        return int(os.environ["SLURM_ARRAY_TASK_ID"]) - first, int(os.environ["SLURM_ARRAY_TASK_COUNT"])
    return 0, 1


def build_parser() -> CommandParser:
    defaults = BuildSettings()
    parser = CommandParser(
        prog="distill cache-teacher",
        description="Score every training anchor's top-K student candidates with the teacher, once, into a "
                    "resumable cache folder. Unknown --key=value arguments override the recipe (LightningCLI).",
    )
    parser.add_argument("--config", required=True, help="the distillation recipe (its model.teacher scores the pairs)")
    parser.add_argument("--out", default=None, help="cache folder (default: the recipe's CachedCandidates path)")
    parser.add_argument("--k", type=positive_int, default=defaults.k, help="candidates per anchor and direction")
    parser.add_argument("--student-ckpt", default=None,
                        help="checkpoint (or export folder) whose student mines the candidates (default: the recipe's "
                             "initial student)")
    parser.add_argument("--refresh-from", action="append", default=[], metavar="CACHE",
                        help="an earlier cache of the same teacher and data: its scores are reused, the teacher scores "
                             "only new pairs (repeatable; needs --out)")
    parser.add_argument("--shard-size", type=positive_int, default=defaults.shard_size, help="anchors per shard file")
    parser.add_argument("--split", default=defaults.split, choices=("train", "val", "test"))
    parser.add_argument("--teacher-max-pairs", "--chunk-size", dest="teacher_max_pairs", type=positive_int,
                        default=defaults.teacher_max_pairs, help="pairs per teacher forward")
    parser.add_argument("--teacher-precision", default=defaults.teacher_precision, choices=("32", "bf16", "16"),
                        help="the teacher's weights and forwards")
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size, help="items per student call")
    parser.add_argument("--rank", type=int, default=None, help="this process's share (default: RANK or SLURM array)")
    parser.add_argument("--world-size", type=positive_int, default=None, help="processes sharing the build")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def teacher_cache(folder: Path) -> bool:
    """True when ``folder`` holds a teacher cache build (complete or partial), which a build resumes in place."""
    import json

    from distill.cache.format import FORMAT, MANIFEST_NAME
    from distill.cache.shards import PLAN_NAME

    for name in (MANIFEST_NAME, PLAN_NAME):
        try:
            header = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(header, dict) and header.get("format") == FORMAT:
            return True
    return False


def _build_from_recipe(config: str, overrides: Sequence[str]) -> tuple[Any, Any]:
    from distill.cli.recipe import DistillCLI

    if not os.path.isfile(config):
        raise InputError(f"--config: recipe '{config}' does not exist")
    cli = DistillCLI(args=["--config", config, *overrides], run=False)
    return cli.model, cli.datamodule


def main(argv: list[str]) -> None:
    from distill.data.items import unwrap_datamodule

    args, overrides = build_parser().parse_known_args(argv)
    inputs = {"--config": args.config, "--student-ckpt": args.student_ckpt,
              **{f"--refresh-from {folder}": folder for folder in args.refresh_from}}
    if args.refresh_from and args.out is None:
        raise InputError("--refresh-from needs --out: a new folder for the refreshed cache (the earlier one is kept)")
    if args.out is not None:
        check_output(args.out, "teacher cache", "--out", inputs, recognise=teacher_cache)
    model, datamodule = _build_from_recipe(args.config, overrides)
    teacher, student = getattr(model, "teacher", None), getattr(model, "student", None)
    if student is None or teacher is None:
        raise InputError(f"--config '{args.config}' needs model.init_args.student and model.init_args.teacher: the "
                         "teacher scores the cached pairs")
    out = args.out or getattr(model, "teacher_cache", None)
    if out is None:
        raise InputError("--out is required (the recipe's candidates read no teacher cache)")
    check_output(out, "teacher cache", "--out" if args.out else "the recipe's teacher cache path", inputs,
                 recognise=teacher_cache)
    if args.student_ckpt:
        load_student_weights(student, args.student_ckpt, option="--student-ckpt")
    rank, world_size = process_share(args.rank, args.world_size)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = args.device or (f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    # A cached recipe's data module wraps the real one and would read the very cache being built: set up the inner one.
    datamodule = unwrap_datamodule(datamodule)
    datamodule.setup("fit")
    settings = BuildSettings(k=args.k, split=args.split, shard_size=args.shard_size,
                             teacher_max_pairs=args.teacher_max_pairs, batch_size=args.batch_size,
                             teacher_precision=args.teacher_precision, rank=rank, world_size=world_size)
    build_teacher_cache(student, teacher, datamodule, out, settings, args.student_ckpt, device,
                        progress=False if args.no_progress else None, refresh_from=args.refresh_from)
