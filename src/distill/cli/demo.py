"""``python -m distill demo``: the whole pipeline on the embedded shapes benchmark, in four stages.

1. the cross-encoder teacher: its weights from ``--teacher-dir`` (trained by the suite's teacher recipe
   when missing, or with ``--retrain-teacher``), evaluated on the test split twice: its ITC half alone (a
   dual encoder of the student's size) and ITC top-16 re-ranked by its cross-attention (ITM) head;
2. the starting student: InfoNCE alone for ``PRETRAIN_STEPS`` steps;
3. the InfoNCE-only student: ``STEPS`` more InfoNCE steps from the starting student;
4. the distilled student: ``STEPS`` steps of the suite's distillation recipe (grid: CPRD + logit KL, the best
   recipe of the loss study at 150 steps; row: CPRD) from the same start,
   then its top-16 re-ranked by the teacher (two-stage).

Each stage prints a header with an estimate of the time the demo has left, measured as it goes; the end
prints the recall table, where the runs are, and the commands to look at them, export and search.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any
from dataclasses import dataclass, field
from pathlib import Path

from distill.cli.args import CommandParser
from distill.cli.report import format_markdown_table, print_table, update_markdown_section
from distill.errors import InputError
from distill.training.callbacks.progress import format_seconds

PRETRAIN_STEPS = 300
STEPS = 150


@dataclass(frozen=True)
class Suite:
    """One demo: its recipes (in ``--configs``), teacher weights and data, and what its stages take.

    ``seconds`` are each stage's wall time measured on a 2-core CPU (one thread per run): the first
    estimate before anything has run; later estimates rescale the stages left by the measured pace.
    """

    name: str
    teacher_recipe: str
    teacher_dir: str
    data: str
    infonce: str
    distilled: str
    distilled_label: str
    seconds: dict[str, float]
    teacher_itc_label: str = "teacher: ITC only"


SUITES = {
    "grid": Suite("grid", "grid-teacher.yaml", "artifacts/shapes-grid-teacher", "configs/demo/data-grid.yaml",
                  "grid-infonce.yaml", "grid-cprd-kl.yaml", "InfoNCE + CPRD + KL",
                  {"teacher": 40, "retrain": 1250, "start": 60, "infonce": 35, "distilled": 120},
                  "teacher: ITC only (its dual-encoder half: the student's towers)"),
    "row": Suite("row", "shapes-teacher.yaml", "artifacts/shapes-teacher", "configs/demo/data.yaml",
                 "shapes-infonce.yaml", "shapes-cprd.yaml", "InfoNCE + CPRD",
                 {"teacher": 60, "retrain": 1800, "start": 180, "infonce": 100, "distilled": 300}),
}


@dataclass
class DemoResult:
    rows: list[tuple[str, dict[str, float]]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    runs: dict[str, Path] = field(default_factory=dict)
    example_image: Path | None = None  # a test image written as PNG, to search the captions with


class StageClock:
    """Stage headers with the time left: ``[demo i/n] title (est. 3m10s left)``.

    Before stage ``i`` the estimate is ``sum(reference seconds of stages i..n) * pace``, where ``pace`` is
    the measured wall time of the stages done divided by their reference seconds (1 before any is done).
    """

    def __init__(self, reference: dict[str, float]) -> None:
        self.reference = dict(reference)
        self.done: dict[str, float] = {}

    def pace(self) -> float:
        expected = sum(self.reference[key] for key in self.done)
        return sum(self.done.values()) / expected if expected > 0 else 1.0

    def estimate_left(self) -> float:
        return self.pace() * sum(seconds for key, seconds in self.reference.items() if key not in self.done)

    def run(self, key: str, title: str, work: Callable[[], None]) -> float:
        """Print the header, run ``work``, record and return its wall time."""
        index = list(self.reference).index(key) + 1
        print(f"[demo {index}/{len(self.reference)}] {title} (est. {format_seconds(self.estimate_left())} left)",
              flush=True)
        start = time.perf_counter()
        work()
        self.done[key] = time.perf_counter() - start
        return self.done[key]


def _overrides(args: argparse.Namespace, run_dir: Path, name: str, steps: int | None) -> list[str]:
    out = [
        "--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger",
        "--trainer.logger.init_args.save_dir", str(run_dir), "--trainer.logger.init_args.name", name,
        "--trainer.default_root_dir", str(run_dir / name), "--trainer.enable_model_summary=false",
    ]
    if steps is not None:  # validate once, at the last step (steps count across epochs)
        steps = 2 if args.smoke else steps
        out += [f"--trainer.max_steps={steps}", "--trainer.max_epochs=-1", f"--trainer.val_check_interval={steps}",
                "--trainer.check_val_every_n_epoch=null"]
    if args.smoke:
        out += ["--trainer.limit_val_batches", "1", "--data.init_args.num_train", "64", "--data.init_args.num_val", "16",
                "--data.init_args.num_test", "16", "--data.init_args.batch_size", "8"]
    return out + list(args.override)


def _teacher_stage(args: argparse.Namespace, suite: Suite, result: DemoResult, train: bool) -> None:
    from distill.cli.recipe import DistillCLI

    configs, run_dir, teacher_dir = Path(args.configs), Path(args.run_dir), Path(args.teacher_dir)
    name = Path(suite.teacher_recipe).stem
    common = ["--config", str(configs / suite.teacher_recipe), *_overrides(args, run_dir, name, None)]
    if args.smoke:
        common += ["--trainer.max_steps", "4", "--model.init_args.itc_steps", "2"] \
            if "itc_steps" in (configs / suite.teacher_recipe).read_text() else ["--trainer.max_steps", "4"]
    if train:
        cli = DistillCLI(args=["fit", *common, "--model.init_args.output_dir", str(teacher_dir)])
    else:
        cli = DistillCLI(args=[*common, "--model.init_args.teacher.init_args.weights", str(teacher_dir),
                               "--model.init_args.output_dir", "null"], run=False)
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    result.rows.append(("teacher: ITC top-16 + ITM re-rank", cli.model.test_results["teacher"]))
    result.rows.append((suite.teacher_itc_label, cli.model.test_results["itc"]))
    result.runs["teacher"] = teacher_dir
    result.example_image = _write_example_image(cli.datamodule.corpus, run_dir / "example-query.png")


def _write_example_image(corpus: Any, path: Path) -> Path:
    """The first test image as a PNG file (its captions are in the index the final screen suggests)."""
    from PIL import Image

    from distill.io import atomic_path

    with atomic_path(path) as scratch:
        Image.fromarray(corpus.render(corpus.test[0])).save(scratch, format="PNG")
    return path


def _student_stage(args: argparse.Namespace, suite: Suite, result: DemoResult, key: str, recipe: str,
                   steps: int, start: Path | None) -> None:
    from distill.cli.recipe import DistillCLI

    configs, run_dir = Path(args.configs), Path(args.run_dir)
    name = f"{suite.name}-{key}"
    student_args = ["fit", "--config", str(configs / recipe), *_overrides(args, run_dir, name, steps)]
    if "cross-encoder.yaml" in (configs / recipe).read_text():  # the recipe has a teacher
        # The demo reports the teacher's two-stage result itself (and --smoke trains its teacher 4 steps).
        student_args += ["--model.init_args.teacher.init_args.weights", str(args.teacher_dir),
                         "--teacher_check", "false"]
    if start is not None:
        student_args.append(f"--model.init_args.student_init={start}")
    cli = DistillCLI(args=student_args)
    checkpoint = Path(cli.trainer.log_dir or run_dir / name) / "checkpoints" / "last.ckpt"
    cli.trainer.save_checkpoint(checkpoint, weights_only=False)  # atomic (AtomicCheckpointIO), resumable
    result.runs[key] = checkpoint
    if key == "start":
        return
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    label = "student: InfoNCE only" if key == "infonce" else f"student: {suite.distilled_label}"
    total = PRETRAIN_STEPS + STEPS
    result.rows.append((f"{label} ({total} steps)" if not args.smoke else label, cli.model.test_results["student"]))
    if "two_stage" in cli.model.test_results and key == "distilled":
        result.rows.append((f"two-stage: {suite.distilled_label} student top-16 re-ranked by the teacher",
                            cli.model.test_results["two_stage"]))


def run_demo(args: argparse.Namespace) -> DemoResult:
    """Run the four stages; returns the table rows, each stage's wall time and where the runs are."""
    suite = SUITES[args.suite]
    configs = Path(args.configs)
    if not (configs / suite.teacher_recipe).is_file():
        raise InputError(f"--configs: no demo recipes in '{configs}' ({suite.teacher_recipe} not found): run from "
                         "the repository root or pass --configs <folder of the demo recipes>")
    teacher_dir = Path(args.teacher_dir)
    have_teacher = (teacher_dir / "model.safetensors").is_file() and (teacher_dir / "config.json").is_file()
    train_teacher = args.retrain_teacher or not have_teacher
    reference = {"teacher": suite.seconds["retrain" if train_teacher else "teacher"],
                 **{key: suite.seconds[key] for key in ("start", "infonce", "distilled")}}
    clock, result = StageClock(reference), DemoResult()
    title = (f"training the teacher ({configs / suite.teacher_recipe}) -> {teacher_dir}" if train_teacher else
             f"evaluating the trained teacher in {teacher_dir} (--retrain-teacher trains it again)")
    clock.run("teacher", title, lambda: _teacher_stage(args, suite, result, train_teacher))
    clock.run("start", f"training the starting student: InfoNCE only, {PRETRAIN_STEPS} steps",
              lambda: _student_stage(args, suite, result, "start", suite.infonce, PRETRAIN_STEPS, None))
    start = result.runs["start"]
    clock.run("infonce", f"training student: InfoNCE only, {STEPS} more steps",
              lambda: _student_stage(args, suite, result, "infonce", suite.infonce, STEPS, start))
    clock.run("distilled", f"training student: {suite.distilled_label}, {STEPS} steps from the same start",
              lambda: _student_stage(args, suite, result, "distilled", suite.distilled, STEPS, start))
    result.seconds = dict(clock.done)
    return result


def next_steps(args: argparse.Namespace, suite: Suite, result: DemoResult) -> list[str]:
    """Where the runs are and the commands to look at them, export the distilled student and search with it."""
    run_dir, distilled = Path(args.run_dir), result.runs["distilled"]
    export_dir, index_dir = Path("exports") / f"{suite.name}-student", Path("indexes") / f"{suite.name}-test"
    return [
        f"runs (TensorBoard logs, config.yaml, checkpoints/) under {run_dir}/:",
        *(f"  {key:<10} {path}" for key, path in result.runs.items()),
        f"look at the training curves:   tensorboard --logdir {run_dir}",
        f"export the distilled student:  python -m distill export --ckpt {distilled} --out {export_dir}",
        f"index the test captions:       python -m distill index --student {export_dir} --data {suite.data} "
        f"--split test --out {index_dir}",
        f"search them with a test image: python -m distill search --index {index_dir} -k 5 --image "
        f"{result.example_image} --rerank-with {args.teacher_dir}",
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m distill demo", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="grid", choices=sorted(SUITES),
                        help="grid (default): five shapes in a 3x3 grid and a teacher whose dual-encoder half has "
                             "the student's towers, so its lead is cross-attention's; row: three shapes in a row and "
                             "the wider row teacher")
    parser.add_argument("--configs", default="configs/demo", help="folder of the demo recipes")
    parser.add_argument("--teacher-dir", default=None, help="teacher weights folder (default: the suite's)")
    parser.add_argument("--retrain-teacher", action="store_true", help="train the teacher even if its weights exist")
    parser.add_argument("--run-dir", default="runs/demo", help="TensorBoard logs and checkpoints")
    parser.add_argument("--markdown", default=None, help="also write the table to this markdown file")
    parser.add_argument("--smoke", action="store_true", help="a few steps on tiny data (a wiring check, not a result)")
    parser.add_argument("override", nargs="*", help="extra LightningCLI overrides applied to every run")
    return parser


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    suite = SUITES[args.suite]
    args.teacher_dir = args.teacher_dir or suite.teacher_dir
    start = time.perf_counter()
    result = run_demo(args)
    total = time.perf_counter() - start
    print_table(result.rows, title=f"Shapes test split ({suite.name}): Recall@K (%)")
    times = ", ".join(f"{key} {format_seconds(value)}" for key, value in result.seconds.items())
    print(f"[demo] finished in {format_seconds(total)} ({times})")
    for line in next_steps(args, suite, result):
        print(line)
    if args.markdown:
        command = ("python -m distill demo " + " ".join(argv)).strip()
        notes = [f"Wall time on this machine: {total / 60:.1f} min ("
                 + ", ".join(f"{key} {value:.0f} s" for key, value in result.seconds.items()) + ")."]
        section = f"## Demo: teacher vs students (shapes {suite.name} test split)\n\n" + format_markdown_table(
            result.rows, command=command, extra=notes)
        update_markdown_section(args.markdown, "demo" if suite.name == "row" else f"demo-{suite.name}", section)
        print(f"[demo] wrote {args.markdown}")
