"""The model card of an export: what the student is, how it was distilled, how it scored, how to load it."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from distill.io import read_json

__all__ = ["RecipeSpec", "load_section", "model_card", "run_metrics", "teacher_description"]


@dataclass
class RecipeSpec:
    """The parts of a recipe an export needs, as plain ``class_path``/``init_args`` dicts."""

    student: dict[str, Any]
    teacher: dict[str, Any] | None = None
    losses: dict[str, dict[str, Any]] = field(default_factory=dict)
    loss_weights: dict[str, float] = field(default_factory=dict)
    data: dict[str, Any] | None = None
    source: Path | None = None
    student_init: str | None = None  # the weights training started from (model.init_args.student_init)


def _spec_line(spec: Mapping[str, Any] | None) -> str:
    if not spec:
        return "none"
    args = spec.get("init_args") or {}
    flat = ", ".join(f"{key}={json.dumps(value)}" for key, value in args.items() if not isinstance(value, Mapping))
    return f"`{spec['class_path']}`" + (f" ({flat})" if flat else "")


def teacher_description(spec: Mapping[str, Any] | None, teacher: nn.Module | None = None) -> dict[str, Any] | None:
    """The teacher's ``describe()`` when it is loaded; else its spec plus its weights folder's config."""
    if teacher is not None and hasattr(teacher, "describe"):
        return dict(teacher.describe())
    if not spec:
        return None
    description: dict[str, Any] = {"class": spec["class_path"], **(spec.get("init_args") or {})}
    weights = (spec.get("init_args") or {}).get("weights")
    if isinstance(weights, str) and (Path(weights) / "config.json").is_file():
        try:
            description.update(read_json(Path(weights) / "config.json"))
        except ValueError:
            pass
    return description


def run_metrics(log_dir: str | os.PathLike[str], prefix: str = "test/") -> dict[str, float]:
    """Last value of every scalar starting with ``prefix`` in the TensorBoard logs under ``log_dir``."""
    folder = Path(log_dir)
    if not any(folder.glob("events.out.tfevents.*")):
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: float(accumulator.Scalars(tag)[-1].value)
            for tag in accumulator.Tags().get("scalars", []) if tag.startswith(prefix)}


def load_section(student_config: Mapping[str, Any]) -> list[str]:
    """The card's "Load" section: one way per tool that reads the folder."""
    ecosystem = student_config.get("ecosystem") or {"layout": "distill", "note": ""}
    lines = ["## Load", "", "| tool | how |", "|---|---|",
             "| distill | `distill.load_student(folder)`, `distill.load_tokenizer(folder)` |"]
    if student_config.get("onnx", True):
        graphs = list(dict.fromkeys(tower.get("onnx", f"tower_{side}.onnx")
                                    for side, tower in student_config["towers"].items()))
        which = f" (and `{graphs[1]}`)" if len(graphs) > 1 else " (both sides)"
        lines.append(f"| ONNX Runtime | `onnxruntime.InferenceSession(folder + '/{graphs[0]}')`{which}; "
                     "inputs in `student_config.json` |")
    if ecosystem["layout"] != "distill":
        lines.append(f"| {ecosystem['layout']} | {ecosystem['note']} |")
        return lines + [""]
    reason = ecosystem.get("note") or "this student has no ecosystem layout"
    return lines + ["", f"No sentence-transformers or transformers layout: {reason}.", ""]


LATE_SCORES = {
    "filip": "s(a, b) = 1/2 [mean over a's tokens of their best b token + mean over b's tokens of their best a token]",
    "colbert": "s(q, d) = {reduce} over the query's tokens of their best document token (MaxSim)",
}


def _late_lines(embedding: Mapping[str, Any]) -> list[str]:
    """A late-interaction student's scoring, for the card: each item is a set of token vectors."""
    if embedding.get("kind") != "late-interaction":
        return []
    similarity = str(embedding.get("similarity", "filip"))
    formula = LATE_SCORES.get(similarity, similarity).format(reduce=embedding.get("query_reduce", "mean"))
    return [f"Each item is a set of L2-normalised token vectors (the ONNX graphs output `tokens` and `mask`); two "
            f"items are scored by {similarity}: {formula}, over valid tokens (`mask`) only. Index it with "
            "`distill index` (a multi-vector index, docs/deployment.md).", ""]


def model_card(student_config: Mapping[str, Any], recipe: RecipeSpec | None, teacher: Mapping[str, Any] | None,
               metrics: Mapping[str, float], losses: Mapping[str, str] | None = None,
               training: Mapping[str, int] | None = None) -> str:
    """Markdown model card: what the student is, how it was distilled, and how it scored."""
    student = student_config["student"]
    towers = student_config["towers"]
    lines = [
        f"# {student['class_path'].rsplit('.', 1)[-1]} student", "",
        f"Embeddings: {student_config['embedding']['kind']}, dimension {student_config['embedding']['dim']}. "
        f"Tower a reads {towers['a']['modality']}, tower b reads {towers['b']['modality']}.", "",
        *_late_lines(student_config["embedding"]), *load_section(student_config), "## Teacher", "",
    ]
    if teacher:
        lines.append(f"- class: `{teacher.get('class', '?')}`")
        lines += [f"- {key}: `{json.dumps(value)}`" for key, value in teacher.items() if key != "class"]
    else:
        lines.append("None (trained without a teacher).")
    lines += ["", "## Losses", "", "| loss | class | weight |", "|---|---|---|"]
    names = losses or {name: spec["class_path"] for name, spec in (recipe.losses if recipe else {}).items()}
    weights = recipe.loss_weights if recipe else {}
    for name, cls in names.items():
        lines.append(f"| {name} | `{cls}` | {weights.get(name, 1.0):g} |")
    if not names:
        lines.append("| (unknown) | | |")
    lines += ["", "## Data", "", f"- data module: {_spec_line(recipe.data if recipe else None)}"]
    if recipe and recipe.source:
        lines.append(f"- recipe: `{recipe.source}`")
    if recipe and recipe.student_init:
        lines.append(f"- started from: `{recipe.student_init}` (model.init_args.student_init)")
    if training:
        lines.append("- checkpoint: " + ", ".join(f"{key} {value}" for key, value in training.items()))
    lines += ["", "## Test results", ""]
    finite = {key: value for key, value in metrics.items() if isinstance(value, (int, float)) and math.isfinite(value)}
    if finite:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {key} | {value:.2f} |" for key, value in sorted(finite.items())]
    else:
        lines.append("Not measured: export a run whose logs hold test/* scalars, or pass --metrics <file.json>.")
    return "\n".join(lines) + "\n"
