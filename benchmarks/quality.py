"""Quality benchmark: every distillation loss on the shapes benchmark, same budget, several seeds.

    python benchmarks/quality.py                       # row split: all recipes x 3 seeds, writes docs/benchmarks.md
    python benchmarks/quality.py --suite grid          # the 3x3-grid split and its size-matched teacher
    python benchmarks/quality.py --recipes infonce cprd --seeds 0 --max-steps 50   # a quick look
    python benchmarks/quality.py --pretrain-steps 0    # every run from the preset's random initialisation
    python benchmarks/quality.py --recipes cprd --seeds 0 --tag T0.1 \
        --override=--model.init_args.losses.cprd.init_args.temperature=0.1   # one setting of a sweep

A suite is a family of recipes in ``configs/demo`` (``grid-<recipe>.yaml`` for the grid split and its matched
teacher, ``shapes-<recipe>.yaml`` for the original row split), its teacher weights, results folder and
section of docs/benchmarks.md. ``--tag`` names a run made with extra ``--override`` settings: its results
are kept apart from the untagged runs and listed, with the full command, in the sweep table of the report.

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

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from distill.cli.recipe import DistillCLI  # noqa: E402
from distill.io import atomic_write_json  # noqa: E402
from distill.cli.report import COLUMNS, HEADERS, format_markdown_table, mean_std_rows, print_table, update_markdown_section  # noqa: E402

SUITES = {  # recipe prefix, teacher weights, results folder, markdown section
    "row": ("shapes", "artifacts/shapes-teacher", "runs/quality", "quality"),
    "grid": ("grid", "artifacts/shapes-grid-teacher", "runs/quality-grid", "quality-grid"),
}
RECIPES = {
    "infonce": "InfoNCE only",
    "kl": "+ logit KL",
    "margin-mse": "+ MarginMSE",
    "cosine": "+ cosine embedding",
    "dcd": "+ DCD",
    "cprd": "+ CPRD",
    "cprd-kl": "+ CPRD + logit KL",
    "cached-cprd": "+ CPRD, teacher cache",
    "cached-cprd-kl": "+ CPRD + logit KL, teacher cache",
    # Sparse (SPLADE/LexLIP-style) students: students/shapes-sparse.yaml
    "sparse-infonce": "sparse student: InfoNCE + FLOPS",
    "sparse-kl": "sparse student: + logit KL",
    # Late-interaction (FILIP) students: students/shapes-late-interaction.yaml
    "late-infonce": "late-interaction student: InfoNCE only",
    "late-cprd-kl": "late-interaction student: + CPRD + logit KL",
    "late-cached-cprd-kl": "late-interaction student: + CPRD + logit KL, teacher cache",
}
DENSE_RECIPES = ["infonce", "kl", "margin-mse", "cosine", "dcd", "cprd", "cprd-kl", "cached-cprd", "cached-cprd-kl"]
CACHED_RECIPES = {"cached-cprd", "cached-cprd-kl", "late-cached-cprd-kl"}  # they read caches/grid-cprd-k8 (headers)
TWO_STAGE_NAMES = {"cprd": "CPRD"}
SPARSE_RECIPES = ["sparse-infonce", "sparse-kl"]
LATE_RECIPES = ["late-infonce", "late-cprd-kl", "late-cached-cprd-kl"]


def starting_recipe(recipe: str) -> str:
    """The InfoNCE recipe that trains ``recipe``'s starting student (same student preset)."""
    return "sparse-infonce" if recipe in SPARSE_RECIPES else "late-infonce" if recipe in LATE_RECIPES else "infonce"


def recipe_path(recipe: str, args: argparse.Namespace) -> Path:
    """``configs/demo/<suite prefix>-<recipe>.yaml``."""
    return REPO / "configs" / "demo" / f"{SUITES[args.suite][0]}-{recipe}.yaml"


def run_name(recipe: str, seed: int, args: argparse.Namespace) -> str:
    start = f"-from{args.pretrain_steps}s{args.pretrain_seed}" if args.pretrain_steps else ""
    tag = f"-{args.tag}" if args.tag else ""
    return f"{recipe}{tag}-seed{seed}-steps{args.max_steps}{start}"


def training_overrides(recipe: str, seed: int, steps: int, name: str, args: argparse.Namespace) -> list[str]:
    return [
        "fit", "--config", str(recipe_path(recipe, args)),
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
    """Train and test one run; returns ``cli.model.test_results`` (student, and teacher / two-stage when asked)."""
    overrides = training_overrides(recipe, seed, args.max_steps, f"{recipe}-s{seed}", args)
    if student_init is not None:
        overrides.append(f"--model.init_args.student_init={student_init}")
    recipe_text = recipe_path(recipe, args).read_text()
    if "cross-encoder.yaml" in recipe_text:  # the recipe has a teacher
        overrides.append(f"--model.init_args.teacher.init_args.weights={args.teacher_dir}")
        # The teacher's own ranking does not depend on the student: evaluate it once.
        evaluate_teacher = recipe == "cprd" and seed == args.seeds[0] and not args.tag
        overrides.append(f"--model.init_args.evaluator.init_args.evaluate_teacher={str(evaluate_teacher).lower()}")
        # Two-stage re-ranking is reported for the CPRD student only (it costs teacher passes).
        two_stage = recipe == "cprd" and not args.tag
        overrides.append(f"--model.init_args.evaluator.init_args.two_stage_k={16 if two_stage else 0}")
    cli = DistillCLI(args=overrides + list(args.override))
    trained = time.perf_counter()
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    results = dict(cli.model.test_results)
    results["cost"] = {"teacher_pairs": float(cli.model.teacher_pairs_scored)}
    if args.suite == "grid":
        results["binding"] = student_binding(cli.model, cli.datamodule)
    results["cost"]["test_seconds"] = time.perf_counter() - trained
    return results


def student_binding(model, data) -> dict[str, float]:
    """% of the first 500 test images whose true caption the student scores above a colour / object swap."""
    from teacher_order import binding_accuracy  # noqa: PLC0415 (a sibling script)

    teacher, model.teacher = model.teacher, None
    try:
        model.eval()
        with torch.no_grad():
            measured = binding_accuracy(model, data, 500)
    finally:
        model.teacher = teacher
    return {kind: measured[kind]["student"] for kind in ("colour", "object") if kind in measured}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="row", choices=sorted(SUITES), help="recipe family (see above)")
    parser.add_argument("--recipes", nargs="+", default=None, choices=list(RECIPES),
                        help="default: every recipe the suite has")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--max-steps", type=int, default=150, help="training steps per run (same for every loss)")
    parser.add_argument("--pretrain-steps", type=int, default=300,
                        help="InfoNCE steps of the shared starting student (0: every run starts from scratch)")
    parser.add_argument("--pretrain-seed", type=int, default=0, help="seed of the starting student")
    parser.add_argument("--teacher-dir", default=None, help="default: the suite's teacher weights")
    parser.add_argument("--run-dir", default=str(REPO / "runs"))
    parser.add_argument("--markdown", default=str(REPO / "docs" / "benchmarks.md"))
    parser.add_argument("--results-dir", default=None, help="per-run JSON results (default: the suite's)")
    parser.add_argument("--report-only", action="store_true", help="only build the tables from saved runs")
    parser.add_argument("--tag", default="", help="name of a sweep setting (runs with --override settings)")
    parser.add_argument("--override", action="append", default=[],
                        help="an extra LightningCLI override for every run, e.g. --override=--data.init_args.batch_size=32")
    args = parser.parse_args()
    prefix, teacher_dir, results_dir, _ = SUITES[args.suite]
    args.teacher_dir = args.teacher_dir or str(REPO / teacher_dir)
    args.results_dir = args.results_dir or str(REPO / results_dir)
    if args.recipes is None:
        args.recipes = [r for r in DENSE_RECIPES + SPARSE_RECIPES + LATE_RECIPES
                        if (REPO / "configs" / "demo" / f"{prefix}-{r}.yaml").is_file()]
    if args.tag and args.report_only:
        parser.error("--tag names runs to train; --report-only reads every tagged run in --results-dir")
    return args


def collect(args: argparse.Namespace, results_dir: Path, starts: dict) -> dict[str, dict]:
    """Train (or read) every recipe x seed run; returns the per-recipe results, teacher rows and timings."""
    found: dict[str, dict] = {"student": {}, "teacher": [], "teacher_itc": [], "two_stage": {}, "seconds": {},
                              "binding": {}, "pairs": {}}
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
                print(f"[quality] {recipe}{' ' + args.tag if args.tag else ''} seed {seed}", flush=True)
                run_start = time.perf_counter()
                results = run_recipe(recipe, seed, args, student_init)
                results["seconds"] = {"train_and_test": time.perf_counter() - run_start}
                results["run"] = {"recipe": recipe, "seed": seed, "tag": args.tag, "command": command_of(args, recipe, seed)}
                atomic_write_json(saved, results)
            found["student"].setdefault(RECIPES[recipe], []).append(results["student"])
            timings.append(results["seconds"]["train_and_test"])
            if "binding" in results:
                found["binding"].setdefault(RECIPES[recipe], []).append(results["binding"])
            if "cost" in results:
                found["pairs"].setdefault(RECIPES[recipe], []).append(results["cost"]["teacher_pairs"])
            for key in ("teacher", "teacher_itc"):
                if key in results and not found[key]:
                    found[key].append(results[key])
            if "two_stage" in results:
                found["two_stage"].setdefault(recipe, []).append(results["two_stage"])
        if timings:
            found["seconds"][recipe] = statistics.fmean(timings)
    return found


def command_of(args: argparse.Namespace, recipe: str, seed: int) -> str:
    """The command that trains one run alone."""
    parts = ["python benchmarks/quality.py", f"--suite {args.suite}", f"--recipes {recipe}", f"--seeds {seed}"]
    if args.max_steps != 150:
        parts.append(f"--max-steps {args.max_steps}")
    if args.pretrain_steps != 300:
        parts.append(f"--pretrain-steps {args.pretrain_steps}")
    if args.tag:
        parts.append(f"--tag {args.tag}")
    return " ".join(parts + [f"--override={item}" for item in args.override])


def table_rows(args: argparse.Namespace, found: dict, starts: dict) -> list:
    """Teacher rows, then each family's starting student, loss rows (mean ± sd) and two-stage row."""
    rows = []
    if found["teacher"]:
        rows.append(("teacher (ITC top-16 + ITM re-rank)", {k: f"{found['teacher'][0][k]:.1f}" for k in COLUMNS}))
    if found["teacher_itc"]:
        rows.append(("teacher's ITC half alone", {k: f"{found['teacher_itc'][0][k]:.1f}" for k in COLUMNS}))
    for family in (DENSE_RECIPES, SPARSE_RECIPES, LATE_RECIPES):
        family_runs = {RECIPES[r]: found["student"][RECIPES[r]] for r in family if RECIPES[r] in found["student"]}
        starting_student = starts.get(starting_recipe(family[0]), (None, None))[1]
        if starting_student is not None and family_runs:
            kind = {id(SPARSE_RECIPES): "sparse starting student",
                    id(LATE_RECIPES): "late-interaction starting student"}.get(id(family), "starting student")
            rows.append((f"{kind} (InfoNCE, {args.pretrain_steps} steps)",
                         {k: f"{starting_student[k]:.1f}" for k in COLUMNS}))
        rows.extend(mean_std_rows(family_runs))
        if family is DENSE_RECIPES:
            rows.extend(mean_std_rows({f"two-stage: {TWO_STAGE_NAMES[recipe]} student top-16 re-ranked by teacher": runs
                                       for recipe, runs in found["two_stage"].items()}))
    return rows


def table_notes(args: argparse.Namespace, found: dict, pretrained: bool) -> list[str]:
    start = (f"each from the same starting student of its kind (InfoNCE alone for {args.pretrain_steps} steps, seed "
             f"{args.pretrain_seed})" if pretrained else "each from the preset's random initialisation")
    notes = [f"Budget: {args.max_steps} training steps per run (batch 64), {start}; seeds {args.seeds} "
             "(the seed sets the batch order and the loss heads' initialisation); same data for every loss.",
             "Mean seconds per run: " + ", ".join(f"{k} {v:.0f}s" for k, v in found["seconds"].items()) + "."]
    student_runs, teacher_runs = found["student"], found["teacher"]
    two_stage_runs = next(iter(found["two_stage"].values()), [])
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
    return notes


def cache_pairs(recipe: str) -> int:
    """Teacher pairs in the cache a cached recipe reads (scored once, before training), 0 when not built."""
    import yaml

    config = yaml.safe_load((REPO / "configs" / "demo" / f"grid-{recipe}.yaml").read_text())
    manifest = REPO / config["model"]["init_args"]["candidates"]["init_args"]["path"] / "manifest.json"
    if not manifest.is_file():
        return 0
    read = json.loads(manifest.read_text())
    data = read["data"]
    return int(data["num_items"] + read["k"] * (data["num_a"] + data["num_b"]))


def study_table(args: argparse.Namespace, found: dict) -> str:
    """Per recipe: RSUM, share of the teacher - InfoNCE gap, binding-swap accuracy, teacher pairs, seconds."""
    if not found["binding"] or not found["teacher"] or RECIPES["infonce"] not in found["student"]:
        return ""
    base = statistics.fmean(r["rsum"] for r in found["student"][RECIPES["infonce"]])
    gap = found["teacher"][0]["rsum"] - base

    def spread(values: list[float]) -> str:
        return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 \
            else f"{values[0]:.1f}"

    lines = ["| recipe | seeds | RSUM | share of the gap | binding: colour swap | binding: object swap | "
             "teacher pairs in training | cache pairs (once) | seconds per run |", "|---" * 9 + "|"]
    for recipe in args.recipes:
        name = RECIPES[recipe]
        runs = found["student"].get(name)
        if not runs:
            continue
        rsum = [r["rsum"] for r in runs]
        binding = found["binding"].get(name, [])
        pairs = found["pairs"].get(name, [0.0])
        cache = f"{cache_pairs(recipe):,}" if recipe in CACHED_RECIPES else "0"
        lines.append(f"| {name} | {len(runs)} | {spread(rsum)} | {100 * (statistics.fmean(rsum) - base) / gap:+.0f}% | "
                     f"{spread([b['colour'] for b in binding]) if binding else '-'} | "
                     f"{spread([b['object'] for b in binding]) if binding else '-'} | "
                     f"{statistics.fmean(pairs):,.0f} | {cache} | {found['seconds'].get(recipe, 0):.0f} |")
    return ("### Cost and binding per recipe\n\nShare of the gap: (RSUM - InfoNCE) / (teacher - InfoNCE), teacher "
            f"{found['teacher'][0]['rsum']:.1f}, InfoNCE {base:.1f}, same steps. Binding: % of the first 500 test "
            "images whose true caption the student scores above the same caption with two cells' colours (or whole "
            "objects) exchanged; 50 is chance, the teacher's own in the binding table of docs/benchmarks.md. Seconds: "
            "training and test of one run on 2 shared CPU cores (noisy).\n\n" + "\n".join(lines) + "\n")


def sweep_table(results_dir: Path) -> str:
    """Every tagged run saved in ``results_dir``: its setting, recipe, seed, recall and command."""
    runs = []
    for path in sorted(results_dir.glob("*.json")):
        saved = json.loads(path.read_text())
        run = saved.get("run", {})
        if run.get("tag"):
            runs.append((run, saved["student"]))
    if not runs:
        return ""
    lines = ["| setting | recipe | seed | " + " | ".join(HEADERS) + " |", "|---" * (len(HEADERS) + 3) + "|"]
    lines += [f"| {run['tag']} | {run['recipe']} | {run['seed']} | " + " | ".join(f"{student[k]:.1f}" for k in COLUMNS)
              + " |" for run, student in runs]
    commands = "\n".join(f"- {run['tag']}, seed {run['seed']}: `{run['command']}`" for run, _ in runs)
    return "### Settings sweep (one run per line)\n\n" + "\n".join(lines) + "\n\nCommands:\n\n" + commands + "\n"


def main() -> None:
    from distill.cli.quiet import configure_output

    configure_output()  # distill's own lines, not Lightning's tips and banners
    args = parse_args()
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    starts = {start: pretrain(start, args, results_dir) for start in dict.fromkeys(map(starting_recipe, args.recipes))}
    found = collect(args, results_dir, starts)
    rows = table_rows(args, found, starts)
    print_table(rows, title=f"Shapes test split ({args.suite}), {args.max_steps} steps, seeds {args.seeds}")
    pretrained = any(student_init is not None for student_init, _ in starts.values())
    notes = table_notes(args, found, pretrained)
    for note in notes:
        print(note)
    if args.tag:
        print("[quality] tagged runs are reported by --report-only (sweep table); docs not written")
        return
    shown = [arg for arg in sys.argv[1:] if arg != "--report-only"]
    command = "python benchmarks/quality.py " + " ".join(shown)
    if args.report_only:
        notes.append("Table built with `--report-only` from the runs saved in `--results-dir` (the runs may have been "
                      "split over several processes with `--recipes`, one per core, OMP_NUM_THREADS=1).")
    section_name = SUITES[args.suite][3] + (f"-{args.max_steps}" if args.max_steps != 150 else "")
    split = "grid split, matched teacher" if args.suite == "grid" else "original row split"
    if pretrained:
        title = f"## Loss comparison (quality, {split}): distilling into a pre-trained student"
    else:
        title, section_name = f"## Loss comparison from scratch ({split})", f"{section_name}-scratch"
    if args.max_steps != 150:
        title += f", {args.max_steps} steps"
    section = title + "\n\n" + format_markdown_table(rows, command=command.strip(), extra=notes)
    study = study_table(args, found)
    if study:
        print(study)
        section += "\n\n" + study
    sweep = sweep_table(results_dir) if pretrained else ""
    update_markdown_section(args.markdown, section_name, section + ("\n\n" + sweep if sweep else ""))
    print(f"[quality] wrote {args.markdown}")


if __name__ == "__main__":
    main()
