"""Quality benchmark: every distillation loss on the shapes benchmark, same budget, several seeds.

    python benchmarks/quality.py                       # all recipes x 3 seeds, writes docs/benchmarks.md
    python benchmarks/quality.py --recipes infonce cprd --seeds 0 --max-steps 50   # a quick look
    python benchmarks/quality.py --pretrain-steps 0    # every run from the preset's random initialisation

Protocol (the CPRD and DCD papers distil into pre-trained CLIP students, and SPLADE into a pre-trained
MLM, not random ones): a starting student is first trained once with InfoNCE alone for
``--pretrain-steps`` steps (seed ``--pretrain-seed``); every run then starts from that checkpoint
(``model.init_args.student_init``) and trains with one recipe of ``configs/demo`` for the same
``--max-steps``, so the rows differ only in their losses and seeds. The dense recipes start from the
dense student trained by ``shapes-infonce.yaml``, the sparse ones from the sparse student trained by
``shapes-sparse-infonce.yaml``. With ``--pretrain-steps 0`` every run starts from scratch instead.

Each finished run is saved as JSON under ``--results-dir`` (the starting checkpoint too); a run
whose file exists is not trained again, so an interrupted benchmark resumes, and several processes
can share the work (e.g. one per core with ``--recipes``); ``--report-only`` builds the table from
the saved runs. Rows are mean ± sd over seeds of test Recall@K. The teacher's own ranking (ITC
top-16 re-ranked by ITM), the starting student and the two-stage row (CPRD student top-16 re-ranked
by the teacher) are reported next to them, with the share of the student-teacher RSUM gap each
loss recovers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from distill.cli.recipe import DistillCLI  # noqa: E402
from distill.io import atomic_write_json  # noqa: E402
from distill.cli.report import COLUMNS, format_markdown_table, mean_std_rows, print_table, update_markdown_section  # noqa: E402

RECIPES = {
    "infonce": "InfoNCE only",
    "kl": "+ logit KL",
    "margin-mse": "+ MarginMSE",
    "cosine": "+ cosine embedding",
    "dcd": "+ DCD",
    "cprd": "+ CPRD",
    # Sparse (SPLADE/LexLIP-style) students: students/shapes-sparse.yaml
    "sparse-infonce": "sparse student: InfoNCE + FLOPS",
    "sparse-kl": "sparse student: + logit KL",
}
DENSE_RECIPES = ["infonce", "kl", "margin-mse", "cosine", "dcd", "cprd"]
SPARSE_RECIPES = ["sparse-infonce", "sparse-kl"]


def starting_recipe(recipe: str) -> str:
    """The InfoNCE recipe that trains ``recipe``'s starting student (same student preset)."""
    return "sparse-infonce" if recipe in SPARSE_RECIPES else "infonce"


def run_name(recipe: str, seed: int, args: argparse.Namespace) -> str:
    start = f"-from{args.pretrain_steps}s{args.pretrain_seed}" if args.pretrain_steps else ""
    return f"{recipe}-seed{seed}-steps{args.max_steps}{start}"


def training_overrides(recipe: str, seed: int, steps: int, name: str, args: argparse.Namespace) -> list[str]:
    return [
        "fit", "--config", str(REPO / "configs" / "demo" / f"shapes-{recipe}.yaml"),
        f"--seed_everything={seed}", f"--trainer.max_steps={steps}", "--trainer.max_epochs=-1",
        "--trainer.logger=lightning.pytorch.loggers.TensorBoardLogger",
        f"--trainer.logger.init_args.save_dir={args.run_dir}", f"--trainer.logger.init_args.name=quality-{name}",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--trainer.val_check_interval={steps}", "--trainer.check_val_every_n_epoch=null",  # steps, across epochs
    ]


def pretrain(recipe: str, args: argparse.Namespace, results_dir: Path) -> tuple[Path | None, dict[str, float] | None]:
    """A shared starting student: ``recipe`` (an InfoNCE recipe) for ``--pretrain-steps`` steps, trained once and saved."""
    if not args.pretrain_steps:
        return None, None
    name = f"pretrain-{recipe}-seed{args.pretrain_seed}-steps{args.pretrain_steps}"
    checkpoint, saved = results_dir / f"{name}.ckpt", results_dir / f"{name}.json"
    if not (checkpoint.is_file() and saved.is_file()):
        if args.report_only:
            return None, None
        print(f"[quality] starting student: {recipe}, {args.pretrain_steps} steps, seed {args.pretrain_seed}", flush=True)
        run_start = time.perf_counter()
        cli = DistillCLI(args=training_overrides(recipe, args.pretrain_seed, args.pretrain_steps, name, args)
                         + list(args.override))
        cli.trainer.save_checkpoint(checkpoint)  # atomic (AtomicCheckpointIO)
        cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
        atomic_write_json(saved, {**cli.model.test_results, "seconds": {"train_and_test": time.perf_counter() - run_start}})
    return checkpoint, json.loads(saved.read_text())["student"]


def run_recipe(recipe: str, seed: int, args: argparse.Namespace, student_init: Path | None) -> dict[str, dict[str, float]]:
    overrides = training_overrides(recipe, seed, args.max_steps, f"{recipe}-s{seed}", args)
    if student_init is not None:
        overrides.append(f"--model.init_args.student_init={student_init}")
    recipe_text = (REPO / "configs" / "demo" / f"shapes-{recipe}.yaml").read_text()
    if "shapes-cross-encoder.yaml" in recipe_text:  # the recipe has a teacher
        overrides.append(f"--model.init_args.teacher.init_args.weights={args.teacher_dir}")
        # The teacher's own ranking does not depend on the student: evaluate it once.
        evaluate_teacher = recipe == "cprd" and seed == args.seeds[0]
        overrides.append(f"--model.init_args.evaluator.init_args.evaluate_teacher={str(evaluate_teacher).lower()}")
        # Two-stage re-ranking is reported for the CPRD student only (it costs teacher passes).
        overrides.append(f"--model.init_args.evaluator.init_args.two_stage_k={16 if recipe == 'cprd' else 0}")
    cli = DistillCLI(args=overrides + list(args.override))
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    return cli.model.test_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=DENSE_RECIPES + SPARSE_RECIPES, choices=list(RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--max-steps", type=int, default=150, help="training steps per run (same for every loss)")
    parser.add_argument("--pretrain-steps", type=int, default=300,
                        help="InfoNCE steps of the shared starting student (0: every run starts from scratch)")
    parser.add_argument("--pretrain-seed", type=int, default=0, help="seed of the starting student")
    parser.add_argument("--teacher-dir", default=str(REPO / "artifacts" / "shapes-teacher"))
    parser.add_argument("--run-dir", default=str(REPO / "runs"))
    parser.add_argument("--markdown", default=str(REPO / "docs" / "benchmarks.md"))
    parser.add_argument("--results-dir", default=str(REPO / "runs" / "quality"), help="per-run JSON results")
    parser.add_argument("--report-only", action="store_true", help="only build the table from saved runs")
    parser.add_argument("--override", action="append", default=[],
                        help="an extra LightningCLI override for every run, e.g. --override=--data.init_args.batch_size=32")
    args = parser.parse_args()
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)

    student_runs: dict[str, list[dict[str, float]]] = {}
    teacher_runs: list[dict[str, float]] = []
    two_stage_runs: list[dict[str, float]] = []
    seconds: dict[str, float] = {}
    starts = {start: pretrain(start, args, results_dir) for start in dict.fromkeys(map(starting_recipe, args.recipes))}
    for recipe in args.recipes:
        student_init = starts[starting_recipe(recipe)][0]
        timings: list[float] = []
        for seed in args.seeds:
            saved = results_dir / f"{run_name(recipe, seed, args)}.json"
            if saved.is_file():
                results = json.loads(saved.read_text())
            elif args.report_only:
                continue
            else:
                print(f"[quality] {recipe} seed {seed}", flush=True)
                run_start = time.perf_counter()
                results = run_recipe(recipe, seed, args, student_init)
                results["seconds"] = {"train_and_test": time.perf_counter() - run_start}
                atomic_write_json(saved, results)
            student_runs.setdefault(RECIPES[recipe], []).append(results["student"])
            timings.append(results["seconds"]["train_and_test"])
            if "teacher" in results and not teacher_runs:
                teacher_runs.append(results["teacher"])
            if recipe == "cprd" and "two_stage" in results:
                two_stage_runs.append(results["two_stage"])
        if timings:
            seconds[recipe] = statistics.fmean(timings)

    # Dense rows (teacher, starting student, losses, two-stage), then the sparse ones (starting student, losses).
    rows = []
    if teacher_runs:
        rows.append(("teacher (ITC top-16 + ITM re-rank)", {k: f"{teacher_runs[0][k]:.1f}" for k in COLUMNS}))
    for family in (DENSE_RECIPES, SPARSE_RECIPES):
        family_runs = {RECIPES[r]: student_runs[RECIPES[r]] for r in family if RECIPES[r] in student_runs}
        starting_student = starts.get(starting_recipe(family[0]), (None, None))[1]
        if starting_student is not None and family_runs:
            kind = "sparse starting student" if family is SPARSE_RECIPES else "starting student"
            rows.append((f"{kind} (InfoNCE, {args.pretrain_steps} steps)",
                         {k: f"{starting_student[k]:.1f}" for k in COLUMNS}))
        rows.extend(mean_std_rows(family_runs))
        if family is DENSE_RECIPES and two_stage_runs:
            rows.extend(mean_std_rows({"two-stage: CPRD student top-16 re-ranked by teacher": two_stage_runs}))
    print_table(rows, title=f"Shapes test split, {args.max_steps} steps, seeds {args.seeds}")

    pretrained = any(student_init is not None for student_init, _ in starts.values())
    start = (f"each from the same starting student of its kind (InfoNCE alone for {args.pretrain_steps} steps, seed "
             f"{args.pretrain_seed})" if pretrained else "each from the preset's random initialisation")
    notes = [f"Budget: {args.max_steps} training steps per run (batch 64), {start}; seeds {args.seeds} "
             "(the seed sets the batch order and the loss heads' initialisation); same data for every loss.",
             "Mean seconds per run: " + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items()) + "."]
    for name, runs in student_runs.items():
        if runs and "a_nnz" in runs[0]:
            a_nnz = statistics.fmean(r["a_nnz"] for r in runs)
            b_nnz = statistics.fmean(r["b_nnz"] for r in runs)
            notes.append(f"{name}: {a_nnz:.1f} (images) / {b_nnz:.1f} (captions) non-zero weights per test vector.")
    if two_stage_runs:
        pairs, exhaustive = two_stage_runs[0]["teacher_pairs"], two_stage_runs[0]["exhaustive_pairs"]
        notes.append(f"Two-stage re-ranking scores {pairs:,.0f} teacher pairs on the test split (top-16 both ways) "
                     f"instead of {exhaustive:,.0f} for exhaustive teacher scoring ({exhaustive / pairs:.0f}x fewer).")
    sparse_names = {RECIPES[recipe] for recipe in SPARSE_RECIPES}
    baseline = student_runs.get(RECIPES["infonce"])
    if baseline and teacher_runs:
        base = statistics.fmean(r["rsum"] for r in baseline)
        gap = teacher_runs[0]["rsum"] - base
        shares = [f"{name}: {100 * (statistics.fmean(r['rsum'] for r in runs) - base) / gap:+.0f}%"
                  for name, runs in student_runs.items()
                  if name != RECIPES["infonce"] and name not in sparse_names]
        notes.append(f"Share of the RSUM gap (teacher {teacher_runs[0]['rsum']:.1f} - InfoNCE {base:.1f} = {gap:.1f}) "
                     "recovered: " + ", ".join(shares) + ".")
    sparse_base, sparse_kl = student_runs.get(RECIPES["sparse-infonce"]), student_runs.get(RECIPES["sparse-kl"])
    if sparse_base and sparse_kl and len(sparse_base) == len(sparse_kl):
        gains = ", ".join(f"{kl['rsum'] - base['rsum']:+.1f}" for base, kl in zip(sparse_base, sparse_kl))
        notes.append(f"Sparse student, RSUM of logit KL minus InfoNCE alone, seed by seed: {gains}.")
    for note in notes:
        print(note)
    shown = [arg for arg in sys.argv[1:] if arg != "--report-only"]
    command = "python benchmarks/quality.py " + " ".join(shown)
    if args.report_only:
        notes.append("Table built with `--report-only` from the runs saved in `--results-dir` (the runs may have been "
                      "split over several processes with `--recipes`, one per core, OMP_NUM_THREADS=1).")
    if pretrained:
        title, name = "## Loss comparison (quality): distilling into a pre-trained student", "quality"
    else:
        title, name = "## Loss comparison from scratch", "quality-scratch"
    section = title + "\n\n" + format_markdown_table(rows, command=command.strip(), extra=notes)
    update_markdown_section(args.markdown, name, section)
    print(f"[quality] wrote {args.markdown}")


if __name__ == "__main__":
    main()
