"""``python -m distill demo``: the whole pipeline on the embedded shapes benchmark.

1. train the cross-encoder teacher (``configs/demo/shapes-teacher.yaml``) unless its weights exist;
2. evaluate the teacher on the test split (its ITC top-k re-ranked by its ITM head);
3. distil two students: InfoNCE only, and InfoNCE + logit KL from the teacher;
4. print Recall@1/5/10 both ways and RSUM for each, and optionally write them as markdown.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

from distill.cli.recipe import DistillCLI
from distill.cli.report import format_markdown_table, print_table, update_markdown_section

# (row label, recipe file, whether the recipe has a teacher whose weights folder must be set)
STUDENT_RECIPES = (
    ("student: InfoNCE only", "shapes-infonce.yaml", False),
    ("student: InfoNCE + logit KL", "shapes-kl.yaml", True),
)


@dataclass
class DemoResult:
    rows: list[tuple[str, dict[str, float]]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def _overrides(args: argparse.Namespace, run_dir: Path, name: str) -> list[str]:
    out = [
        "--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger",
        "--trainer.logger.init_args.save_dir", str(run_dir), "--trainer.logger.init_args.name", name,
        "--trainer.default_root_dir", str(run_dir / name),
    ]
    if not args.progress:
        out += ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    if args.smoke:
        out += [
            "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
            "--data.init_args.num_train", "64", "--data.init_args.num_val", "16", "--data.init_args.num_test", "16",
            "--data.init_args.batch_size", "8",
        ]
    return out + list(args.override)


def run_demo(args: argparse.Namespace) -> DemoResult:
    configs = Path(args.configs)
    if not (configs / "shapes-teacher.yaml").is_file():
        raise SystemExit(f"distill demo: no recipes in '{configs}': run from the repository root or pass --configs")
    teacher_dir = Path(args.teacher_dir)
    run_dir = Path(args.run_dir)
    result = DemoResult()
    teacher_recipe = str(configs / "shapes-teacher.yaml")
    have_teacher = (teacher_dir / "model.safetensors").is_file() and (teacher_dir / "config.json").is_file()
    common = _overrides(args, run_dir, "shapes-teacher")
    start = time.perf_counter()
    if args.retrain_teacher or not have_teacher:
        print(f"[demo] training the teacher -> {teacher_dir}")
        cli = DistillCLI(args=["fit", "--config", teacher_recipe, *common,
                               "--model.init_args.output_dir", str(teacher_dir)])
        cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    else:
        print(f"[demo] using the trained teacher in {teacher_dir} (pass --retrain-teacher to train it again)")
        cli = DistillCLI(args=["--config", teacher_recipe, *common,
                               "--model.init_args.teacher.init_args.weights", str(teacher_dir),
                               "--model.init_args.output_dir", "null"], run=False)
        cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    result.seconds["teacher"] = time.perf_counter() - start
    result.rows.append(("teacher: ITC top-16 + ITM re-rank", cli.model.test_results["teacher"]))
    result.rows.append(("teacher: ITC only", cli.model.test_results["itc"]))

    for label, recipe, uses_teacher in STUDENT_RECIPES:
        name = Path(recipe).stem
        start = time.perf_counter()
        print(f"[demo] training {label} ({configs / recipe})")
        student_args = ["fit", "--config", str(configs / recipe), *_overrides(args, run_dir, name)]
        if uses_teacher:
            student_args += ["--model.init_args.teacher.init_args.weights", str(teacher_dir)]
        cli = DistillCLI(args=student_args)
        cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
        result.seconds[name] = time.perf_counter() - start
        result.rows.append((label, cli.model.test_results["student"]))
        if "two_stage" in cli.model.test_results:
            result.rows.append((f"{label}, top-16 re-ranked by teacher", cli.model.test_results["two_stage"]))
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m distill demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="configs/demo", help="folder of the demo recipes")
    parser.add_argument("--teacher-dir", default="artifacts/shapes-teacher", help="teacher weights folder")
    parser.add_argument("--retrain-teacher", action="store_true", help="train the teacher even if its weights exist")
    parser.add_argument("--run-dir", default="runs", help="TensorBoard logs and checkpoints")
    parser.add_argument("--markdown", default=None, help="also write the table to this markdown file")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument("--smoke", action="store_true", help="a few steps on tiny data (a wiring check, not a result)")
    parser.add_argument("override", nargs="*", help="extra LightningCLI overrides applied to every run")
    return parser


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    result = run_demo(args)
    total = time.perf_counter() - start
    print_table(result.rows, title="Shapes test split: Recall@K (%)")
    print(f"[demo] finished in {total / 60:.1f} min ({', '.join(f'{k} {v:.0f}s' for k, v in result.seconds.items())})")
    if args.markdown:
        command = ("python -m distill demo " + " ".join(argv)).strip()
        notes = [f"Wall time on this machine: {total / 60:.1f} min ("
                 + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items()) + ")."]
        section = "## Demo: teacher vs students (shapes test split)\n\n" + format_markdown_table(
            result.rows, command=command, extra=notes)
        update_markdown_section(args.markdown, "demo", section)
        print(f"[demo] wrote {args.markdown}")
