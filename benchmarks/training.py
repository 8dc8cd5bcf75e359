"""Training step cost: InfoNCE alone vs CPRD with a live teacher vs CPRD from the teacher-score cache,
and Lightning's loop vs a plain PyTorch loop doing the same forward/backward.

    OMP_NUM_THREADS=1 python benchmarks/training.py            # ~2 minutes on 2 shared CPU cores
    OMP_NUM_THREADS=1 python benchmarks/training.py --quick    # a few seconds; for smoke tests

Everything runs in this one process, side by side, on the demo models:

* data: :class:`distill.data.ShapesDataModule` with its defaults (64x64 images, 3 objects, 3 captions per
  image, batch 64) except ``num_train`` (``--num-train`` images, to keep rendering and the cache short);
* student: ``students/shapes-dual-encoder.yaml``, freshly initialised (same seed) for every run;
* teacher: :class:`distill.teachers.ShapesCrossEncoder` with the architecture of
  ``configs/demo/shapes-teacher.yaml``, random init (step time does not depend on its weights);
* K = 8 hard negatives per anchor; the cache is built once (``--k 8``) with the student after
  ``cache_warmup_steps`` InfoNCE steps (a random-init student mines the same few hub items for everyone).

Each variant runs ``--rounds`` times for ``--warmup + --steps`` optimizer steps, variants interleaved round by
round so that all see the same background load. A step is measured from one ``on_train_batch_end`` to the
next (data loading, forward, backward, optimizer step and, for Lightning, its hooks and ``self.log``), warm-up
steps excluded; the table gives medians of wall time and of the main thread's CPU time
(``time.thread_time()``; with one torch thread and ``num_workers=0`` all the work runs there). On a shared
machine CPU time is the stable measure, so the ratios and the targets use it. "vs InfoNCE" compares with the
InfoNCE-only run of the same loop. Teacher pairs per step count the pairs passed to ``score_pairs``. Peak RSS
is the kernel's resident-memory high-water mark during each variant (Linux ``VmHWM``, reset before it). The
table goes to stdout and, as markdown with the command, to ``--out`` (default ``docs/benchmarks.md``, where it replaces its own section).
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")  # before numpy / torch load their thread pools

import argparse
import logging
import platform
import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

from distill.cache import CachedCandidatesDataModule
from distill.cache.build import BuildSettings, build_teacher_cache
from distill.data import ShapesDataModule
from distill.instantiate import instantiate
from distill.losses import CPRD, InfoNCE
from distill.evaluation import RecallEvaluator
from distill.training import DistillationModule
from distill.training.candidates import CachedCandidates, InBatchNegatives
from distill.teachers import ShapesCrossEncoder

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "benchmarks.md"
STUDENT_PRESET = REPO / "students" / "shapes-dual-encoder.yaml"
TEACHER_RECIPE = REPO / "configs" / "demo" / "shapes-teacher.yaml"
COLUMNS = ("variant", "loop", "step ms wall", "wall vs InfoNCE", "step ms CPU", "CPU vs InfoNCE",
           "samples/CPU-s", "teacher pairs/step", "cached negatives/anchor", "peak RSS MiB")


@dataclass
class Settings:
    num_train: int = 512
    batch_size: int = 64
    k: int = 8
    steps: int = 8
    warmup: int = 3
    rounds: int = 3
    cache_warmup_steps: int = 40
    extras: int = 2  # cached candidates per anchor and direction that random cached batches bring


QUICK = Settings(num_train=48, batch_size=16, k=4, steps=3, warmup=1, rounds=1, cache_warmup_steps=2)


@dataclass
class Measurement:
    step_seconds: list[float] = field(default_factory=list)
    teacher_pairs: list[int] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    cached_negatives: list[float] = field(default_factory=list)
    peak_rss: int = 0
    start_rss: int = 0


# ---------------------------------------------------------------------------------------------- builders
def demo_teacher() -> ShapesCrossEncoder:
    """The demo teacher's architecture (configs/demo/shapes-teacher.yaml), random init."""
    recipe = yaml.safe_load(TEACHER_RECIPE.read_text())
    args = dict(recipe["model"]["init_args"]["teacher"]["init_args"])
    return ShapesCrossEncoder(**args).freeze()


def demo_student(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return instantiate(yaml.safe_load(STUDENT_PRESET.read_text()))


def make_module(variant: str, teacher: ShapesCrossEncoder, k: int, cache: Path) -> DistillationModule:
    losses: dict[str, Any] = {"infonce": InfoNCE()}
    if variant != "infonce":
        losses["cprd"] = CPRD(temperature=0.05, rule="top_m", top_m=8)
    candidates = (CachedCandidates(str(cache), extra_gradient="nograd" not in variant) if variant in CACHED_VARIANTS
                  else InBatchNegatives())
    return DistillationModule(
        student=demo_student(), teacher=teacher if variant == "live" else None, losses=losses,
        num_hard_negatives=k, candidates=candidates, evaluator=RecallEvaluator(diagnostics=False),
    )


def warmed_student(data: ShapesDataModule, steps: int) -> torch.nn.Module:
    """The demo student after ``steps`` InfoNCE steps: a random-init student's nearest neighbours collapse onto a
    few hub items, which would make the cache's candidates (and the batches built from them) unrealistic."""
    module = make_module("infonce", demo_teacher(), 1, Path("unused"))
    optimizer = module.configure_optimizers()
    module.train()
    loader = data.train_dataloader()
    batches = iter(loader)
    for _ in range(steps):
        batch = next(batches, None)
        if batch is None:
            batches = iter(loader)
            batch = next(batches)
        optimizer.zero_grad(set_to_none=True)
        inputs, _ = module.build_loss_inputs(batch)
        module.losses["infonce"](inputs).backward()
        optimizer.step()
    return module.student


# ---------------------------------------------------------------------------------------------- measuring
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


@contextmanager
def peak_rss(measurement: Measurement) -> Iterator[None]:
    """Peak resident memory while the block runs: the kernel's high-water mark (``VmHWM``), reset on entry by
    writing 5 to ``/proc/self/clear_refs`` (Linux); elsewhere the process-wide ``ru_maxrss``."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        start = _status_kib("VmRSS") * 1024
    except OSError:
        start = None
    try:
        yield
    finally:
        if start is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            measurement.peak_rss, measurement.start_rss = max(measurement.peak_rss, peak), 0
        else:
            peak = _status_kib("VmHWM") * 1024
            if peak > measurement.peak_rss:
                measurement.peak_rss, measurement.start_rss = peak, start


@contextmanager
def counting_teacher_pairs(teacher: ShapesCrossEncoder, counter: list[int]) -> Iterator[None]:
    original = teacher.score_pairs

    def counted(a: Any, b: Any, a_index: torch.Tensor, b_index: torch.Tensor) -> torch.Tensor:
        counter[0] += int(a_index.numel())
        return original(a, b, a_index, b_index)

    teacher.score_pairs = counted  # type: ignore[method-assign]
    try:
        yield
    finally:
        del teacher.score_pairs


class StepTimer(L.Callback):
    """Wall time between consecutive ``on_train_batch_end`` calls, teacher pairs and cache coverage per step."""

    def __init__(self, measurement: Measurement, warmup: int, pairs: list[int]) -> None:
        self.measurement, self.warmup, self.pairs = measurement, warmup, pairs
        self.last: tuple[float, float] | None = None
        self.step = 0

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self.last is None:
            self.last = (time.perf_counter(), time.thread_time())
        self.pairs[0] = 0

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        now = (time.perf_counter(), time.thread_time())
        if self.step >= self.warmup and self.last is not None:
            self.measurement.step_seconds.append(now[0] - self.last[0])
            self.measurement.cpu_seconds.append(now[1] - self.last[1])
            self.measurement.teacher_pairs.append(self.pairs[0])
            coverage = [trainer.callback_metrics.get(f"train/cached_negatives_{d}") for d in ("a2b", "b2a")]
            if all(value is not None for value in coverage):
                self.measurement.cached_negatives.append(statistics.fmean(float(value) for value in coverage))
        self.last = now
        self.step += 1


def run_lightning(module: DistillationModule, datamodule: L.LightningDataModule, settings: Settings,
                  measurement: Measurement, pairs: list[int]) -> None:
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=settings.warmup + settings.steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0,
                        callbacks=[StepTimer(measurement, settings.warmup, pairs)])
    trainer.fit(module, datamodule=datamodule)


def run_plain(module: DistillationModule, datamodule: L.LightningDataModule, settings: Settings,
              measurement: Measurement, pairs: list[int]) -> None:
    """The same forward/backward as ``training_step`` (encode, mine, losses, weighted sum), without Lightning."""
    datamodule.setup("fit")
    optimizer = module.configure_optimizers()
    module.train()
    loader = datamodule.train_dataloader()
    batches = iter(loader)
    last = (time.perf_counter(), time.thread_time())
    for step in range(settings.warmup + settings.steps):
        pairs[0] = 0
        batch = next(batches, None)
        if batch is None:  # a new epoch, as Lightning's loop would start
            batches = iter(loader)
            batch = next(batches)
        optimizer.zero_grad(set_to_none=True)
        inputs, stats = module.build_loss_inputs(batch)
        total = sum(module.loss_weights[name] * loss(inputs) for name, loss in module.losses.items())
        total.backward()
        optimizer.step()
        now = (time.perf_counter(), time.thread_time())
        if step >= settings.warmup:
            measurement.step_seconds.append(now[0] - last[0])
            measurement.cpu_seconds.append(now[1] - last[1])
            measurement.teacher_pairs.append(pairs[0])
            if "cached_negatives_a2b" in stats:
                measurement.cached_negatives.append((stats["cached_negatives_a2b"] + stats["cached_negatives_b2a"]) / 2)
        last = now


def interleaved_wall_ratio(data: L.LightningDataModule, cached_data: L.LightningDataModule,
                           teacher: ShapesCrossEncoder, cache: Path, settings: Settings) -> tuple[float, int]:
    """Median wall time of a cached-CPRD step over that of an InfoNCE step, the two plain loops alternating step
    by step (so that both see the same background load); returns the ratio and the steps per variant."""
    modules = {variant: make_module(variant, teacher, settings.k, cache) for variant in ("infonce", "cached")}
    loaders = {"infonce": data.train_dataloader(), "cached": cached_data.train_dataloader()}
    iterators = {variant: iter(loader) for variant, loader in loaders.items()}
    optimizers = {variant: module.configure_optimizers() for variant, module in modules.items()}
    times: dict[str, list[float]] = {"infonce": [], "cached": []}
    steps = settings.warmup + settings.steps * settings.rounds
    for step in range(steps):
        for variant, module in modules.items():
            started = time.perf_counter()
            batch = next(iterators[variant], None)
            if batch is None:
                iterators[variant] = iter(loaders[variant])
                batch = next(iterators[variant])
            optimizers[variant].zero_grad(set_to_none=True)
            inputs, _ = module.build_loss_inputs(batch)
            total = sum(module.loss_weights[name] * loss(inputs) for name, loss in module.losses.items())
            total.backward()
            optimizers[variant].step()
            if step >= settings.warmup:
                times[variant].append(time.perf_counter() - started)
    return statistics.median(times["cached"]) / statistics.median(times["infonce"]), steps - settings.warmup


# ---------------------------------------------------------------------------------------------- the run
VARIANTS: tuple[tuple[str, str, str], ...] = (
    # (key, variant, loop)
    ("infonce-lightning", "infonce", "Lightning"),
    ("infonce-plain", "infonce", "plain PyTorch"),
    ("live-lightning", "live", "Lightning"),
    ("cached-lightning", "cached", "Lightning"),
    ("cached-plain", "cached", "plain PyTorch"),
    ("grouped-lightning", "grouped", "Lightning"),
    ("cached-nograd-lightning", "cached-nograd", "Lightning"),
    ("cached1-nograd-lightning", "cached1-nograd", "Lightning"),
)
CACHED_VARIANTS = ("cached", "grouped", "cached-nograd", "cached1-nograd")
LABELS = {"infonce": "InfoNCE only", "live": "InfoNCE + CPRD, live teacher",
          "cached": "InfoNCE + CPRD, cached scores, random batches + extras",
          "grouped": "InfoNCE + CPRD, cached scores, grouped batches",
          "cached-nograd": "InfoNCE + CPRD, cached scores, random batches + extras without gradient",
          "cached1-nograd": "InfoNCE + CPRD, cached scores, random batches + 1 extra without gradient"}


def run(settings: Settings, workdir: Path) -> tuple[dict[str, Measurement], dict[str, float]]:
    torch.set_num_threads(1)
    started = time.perf_counter()
    data = ShapesDataModule(num_train=settings.num_train, num_val=8, num_test=8, batch_size=settings.batch_size)
    data.setup("fit")
    teacher = demo_teacher()
    cache = workdir / "cache"
    builder = warmed_student(data, settings.cache_warmup_steps)
    build_started = time.perf_counter()
    build_teacher_cache(builder, teacher, data, cache, BuildSettings(k=settings.k), progress=False)
    build_seconds = time.perf_counter() - build_started
    from distill.cache.format import read_manifest

    manifest = read_manifest(cache)
    cached_pairs = manifest["data"]["num_items"] + settings.k * (manifest["data"]["num_a"] + manifest["data"]["num_b"])
    cached_data = CachedCandidatesDataModule(data, cache_dir=str(cache), candidates_per_anchor=settings.extras)
    cached_data.setup("fit")
    grouped_data = CachedCandidatesDataModule(data, cache_dir=str(cache), batching="grouped")
    grouped_data.setup("fit")
    single_data = CachedCandidatesDataModule(data, cache_dir=str(cache), candidates_per_anchor=1)
    single_data.setup("fit")
    by_variant = {"cached": cached_data, "grouped": grouped_data, "cached-nograd": cached_data,
                  "cached1-nograd": single_data}
    results = {key: Measurement() for key, _, _ in VARIANTS}
    for _ in range(settings.rounds):
        for key, variant, loop in VARIANTS:
            module = make_module(variant, teacher, settings.k, cache)
            datamodule = by_variant.get(variant, data)
            pairs = [0]
            runner: Callable[..., None] = run_lightning if loop == "Lightning" else run_plain
            with counting_teacher_pairs(teacher, pairs), peak_rss(results[key]), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                runner(module, datamodule, settings, results[key], pairs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interleaved, interleaved_steps = interleaved_wall_ratio(data, cached_data, teacher, cache, settings)
    context = {"build_seconds": build_seconds, "cached_pairs": float(cached_pairs),
               "interleaved_ratio": interleaved, "interleaved_steps": float(interleaved_steps),
               "total_seconds": time.perf_counter() - started,
               "process_peak_rss": float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}
    return results, context


def _medians(results: dict[str, Measurement]) -> tuple[dict[str, float], dict[str, float]]:
    wall = {key: statistics.median(m.step_seconds) for key, m in results.items()}
    cpu = {key: statistics.median(m.cpu_seconds) for key, m in results.items()}
    return wall, cpu


def table(results: dict[str, Measurement], settings: Settings) -> list[list[str]]:
    wall, cpu = _medians(results)
    rows = []
    for key, variant, loop in VARIANTS:
        m = results[key]
        baseline = "infonce-lightning" if loop == "Lightning" else "infonce-plain"
        coverage = f"{statistics.mean(m.cached_negatives):.2f} of {settings.k}" if m.cached_negatives else "-"
        pairs = statistics.mean(m.teacher_pairs) if m.teacher_pairs else 0.0
        rows.append([
            LABELS[variant], loop, f"{wall[key] * 1000:.0f}", f"{wall[key] / wall[baseline]:.2f}x",
            f"{cpu[key] * 1000:.0f}", f"{cpu[key] / cpu[baseline]:.2f}x", f"{settings.batch_size / cpu[key]:.0f}",
            f"{pairs:.0f}", coverage, f"{m.peak_rss / 2**20:.0f} (+{max(m.peak_rss - m.start_rss, 0) / 2**20:.0f})",
        ])
    return rows


def verdicts(results: dict[str, Measurement], settings: Settings, interleaved: float) -> list[str]:
    wall, cpu = _medians(results)

    def ratio(first: str, second: str) -> str:
        return f"{cpu[first] / cpu[second]:.2f}x CPU, {wall[first] / wall[second]:.2f}x wall"

    cached = cpu["cached-lightning"] / cpu["infonce-lightning"]
    cheapest = min(cpu["cached-nograd-lightning"], cpu["cached1-nograd-lightning"]) / cpu["infonce-lightning"]
    grouped = cpu["grouped-lightning"] / cpu["infonce-lightning"]
    loop = cpu["infonce-plain"] / cpu["infonce-lightning"]
    live_pairs = statistics.mean(results["live-lightning"].teacher_pairs)
    b, k = settings.batch_size, settings.k
    return [
        f"- Target: cached CPRD step (random batches, {settings.extras} cached candidates per anchor and direction "
        f"encoded as extra items) <= 1.5x the InfoNCE-only step: {'met' if cached <= 1.5 else 'not met'} "
        f"({ratio('cached-lightning', 'infonce-lightning')}; {interleaved:.2f}x wall with the plain loops "
        "alternating step by step; grouped batches, which encode nothing extra, "
        f"{ratio('grouped-lightning', 'infonce-lightning')}; the live teacher costs "
        f"{ratio('live-lightning', 'infonce-lightning')}).",
        f"- The same target with the extras encoded without gradient (``CachedCandidates(extra_gradient=false)``, one "
        f"forward per extra item): {'met' if cheapest <= 1.5 else 'not met'} ({settings.extras} per anchor and "
        f"direction: {ratio('cached-nograd-lightning', 'infonce-lightning')}; 1 per anchor and direction: "
        f"{ratio('cached1-nograd-lightning', 'infonce-lightning')}).",
        f"- Target: Lightning loop >= 0.9x the plain loop's throughput: {'met' if loop >= 0.9 else 'not met'} "
        f"(InfoNCE: {ratio('infonce-plain', 'infonce-lightning')}; cached CPRD: "
        f"{ratio('cached-plain', 'cached-lightning')}; plain/Lightning step time = Lightning/plain throughput).",
        f"- Target: teacher pairs per step = B*K = {b * k} per direction: the live teacher scored {live_pairs:.0f} "
        f"distinct pairs per step for both directions together: B*K mined negatives per direction plus the B "
        f"positives, at most B*(1+2K) = {b * (1 + 2 * k)} (a pair mined in both directions is scored once), "
        f"against B*B*2 = {2 * b * b} for exhaustive scoring; the cached runs scored none.",
    ]


def render(results: dict[str, Measurement], context: dict[str, float], settings: Settings,
           command: str) -> tuple[str, str]:
    rows = table(results, settings)
    targets = verdicts(results, settings, context["interleaved_ratio"])
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(COLUMNS)]
    text = "\n".join(["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)),
                      *("  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows)])
    steps = sum(len(m.step_seconds) for m in results.values()) // len(results)
    notes = [
        f"- Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs' trainings while this ran "
        f"(wall times are noisy; CPU time, the main thread's ``time.thread_time()`` per step, is what the ratios "
        f"and the targets use); torch {torch.__version__}, {torch.get_num_threads()} thread, Python "
        f"{platform.python_version()}. Wall time above CPU time is time spent descheduled by other jobs, so a wall "
        "ratio below 1.00x does not mean less work.",
        f"- Wall-clock check without the load drift: the plain loops of InfoNCE and cached CPRD alternating step by "
        f"step ({context['interleaved_steps']:.0f} steps each): cached/InfoNCE median wall step = "
        f"{context['interleaved_ratio']:.2f}x.",
        f"- Data: ShapesDataModule defaults (64x64, 3 objects, 3 captions/image) with num_train={settings.num_train}; "
        f"batch B={settings.batch_size}, K={settings.k} hard negatives, {steps} timed steps per variant "
        f"({settings.rounds} interleaved rounds x {settings.steps}, after {settings.warmup} warm-up steps each).",
        "- Student: students/shapes-dual-encoder.yaml; teacher: configs/demo/shapes-teacher.yaml's architecture, "
        "random init; losses InfoNCE + CPRD (top_m 8, temperature 0.05).",
        f"- Cache build (once, before training, mined by the student after {settings.cache_warmup_steps} InfoNCE "
        f"steps): {context['cached_pairs']:,.0f} teacher pairs in {context['build_seconds']:.1f} s wall "
        f"({context['cached_pairs'] / context['build_seconds']:,.0f} pairs/s, student encoding and mining included).",
        "- Cached negatives/anchor: the cached candidates (of K) present among the step's columns, averaged over "
        f"both directions (live mining always has K): with random batches the {settings.extras} each anchor brings "
        "(plus any that the batch holds by chance); grouped batches grow breadth-first over the cached "
        "candidates, so seed items have all of theirs and the other anchors those that joined the batch.",
        f"- Peak RSS: the process's resident-memory high-water mark during each variant (VmHWM, reset before it) and, "
        f"in brackets, its rise over the RSS at the variant's start; process peak "
        f"{context['process_peak_rss'] / 2**20:.0f} MiB. Total benchmark time {context['total_seconds']:.0f} s.",
    ]
    markdown = "\n".join([
        "## Training step cost: InfoNCE vs live-teacher CPRD vs cached CPRD", "", f"Command: `{command}`", "",
        "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS),
        *("| " + " | ".join(r) + " |" for r in rows), "", *notes, "", *targets, "",
    ])
    return text + "\n\n" + "\n".join(targets), markdown


def main(argv: list[str] | None = None) -> None:
    for name in ("lightning.pytorch", "lightning.fabric"):  # one "GPU available" banner per fit is noise here
        logging.getLogger(name).setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
    parser.add_argument("--num-train", type=int, default=None, help="training images (default 512)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant and round")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="markdown file to write")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else Settings()
    if args.num_train is not None:
        settings.num_train = args.num_train
    if args.steps is not None:
        settings.steps = args.steps
    with tempfile.TemporaryDirectory() as workdir:
        results, context = run(settings, Path(workdir))
    command = "OMP_NUM_THREADS=1 python benchmarks/training.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    text, markdown = render(results, context, settings, command)
    print(text)
    from distill.cli.report import update_markdown_section

    update_markdown_section(args.out, "training", markdown)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
