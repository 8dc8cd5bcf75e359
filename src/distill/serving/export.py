"""Student-only export: safetensors weights, a rebuildable config, the tokenizer, ONNX towers, a card.

:func:`export_student` writes into ``out_dir``:

* the student's weights (never the teacher's), in the layout of the tool that serves it
  (:mod:`distill.serving.ecosystem`): a sentence-transformers folder for text students, a
  ``transformers.CLIPModel`` folder for CLIP students, else distill's own ``model.safetensors``;
* ``student_config.json``: the student's ``class_path``/``init_args``, the input spec of each tower
  (an image tower's preprocessing as trained, :class:`~distill.data.image_preprocessing.ImagePreprocessing`)
  and which file holds which tensors, so :func:`~distill.serving.loading.load_student` rebuilds it
  without the recipe;
* an image tower's preprocessing in its ecosystem's file too: ``preprocessor_config.json``
  (``CLIPImageProcessor``) for a CLIP student, ``tower_<side>/config.json`` (timm's ``pretrained_cfg``)
  for a timm tower;
* the tokenizer files (``save_pretrained`` of the data module's tokenizer), when there is one;
* ``tower_a.onnx`` / ``tower_b.onnx``: one graph per tower (dynamic batch; dynamic sequence for text), or one
  ``encoder.onnx`` that both sides name when the student shares one text encoder;
* ``README.md``: a model card (teacher, losses and weights, data, measured test results, how to load it).

The folder is built in a temporary sibling and put in place in one step (:func:`distill.io.atomic_folder`):
a failed export leaves an earlier export of the same folder untouched, and a second export into the same
folder at the same time is refused. ``python -m distill export --ckpt ...`` (:mod:`distill.cli.export`)
rebuilds the student from a run's checkpoint and recipe and calls this.

A late-interaction student (:class:`~distill.students.LateInteractionEncoder`, token embeddings) is exported in
distill's own layout (no sentence-transformers or PyLate layout is written): ``model.safetensors`` holds the
whole student, ``student_config.json`` records ``embedding = {"kind": "late-interaction", "dim": D,
"similarity": "filip" | "colbert", "query_reduce": "mean" | "sum"}`` (how two token sets are scored, see
:mod:`distill.students.late_interaction`), and each tower's ONNX graph outputs ``tokens [batch, tokens, D]`` and
``mask [batch, tokens]`` (:mod:`distill.serving.onnx`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.data.image_preprocessing import ImagePreprocessing
from distill.errors import InputError
from distill.io import atomic_folder, atomic_write_bytes, atomic_write_json
from distill.serving.card import RecipeSpec, model_card, teacher_description
from distill.serving.ecosystem import describe, timm_configs, write_layout
from distill.serving.loading import CARD_NAME, CONFIG_NAME, FORMAT_VERSION, ONNX_NAMES, SHARED_ONNX_NAME
from distill.serving.onnx import DEFAULT_OPSET, export_onnx, sample_inputs
from distill.serving.student_spec import (embedding_kind, self_contained_spec, shares_encoder, text_vocab_size,
                                          tower_modality)

DEFAULT_MAX_LENGTH = 32

__all__ = ["ExportResult", "TrainingRecord", "export_student", "resolve_preprocessing", "safe_join"]


def safe_join(out_dir: str | os.PathLike[str], name: str) -> Path:
    """``out_dir / name``, refusing names that resolve outside ``out_dir`` (``..``, absolute, links)."""
    root = Path(out_dir).resolve()
    if not name or Path(name).is_absolute():
        raise ValueError(f"refusing to write '{name}': export file names must be relative to '{root}'")
    target = (root / name).resolve()
    if root not in target.parents:
        raise ValueError(f"refusing to write '{name}': it resolves to '{target}', outside the export folder '{root}'")
    return target


@dataclass
class ExportResult:
    out_dir: Path
    files: list[str]
    metrics: dict[str, float]


@dataclass
class TrainingRecord:
    """What the card says of the run: its recipe, test metrics, and the checkpoint's epoch and step."""

    recipe: RecipeSpec | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    training: dict[str, int] = field(default_factory=dict)


@contextmanager
def _serving_mode(student: nn.Module, top_k: Mapping[str, int | None]) -> Iterator[None]:
    """Eval mode and the requested pruning for the duration of the export; restored afterwards."""
    was_training = student.training
    previous = {name: getattr(student, name, None) for name, k in top_k.items() if k is not None}
    for name, k in top_k.items():
        if k is not None:
            if not hasattr(student, name):
                raise ValueError(f"--{name.replace('_', '-')} applies to sparse students; {type(student).__name__} "
                                 f"has no {name}")
            setattr(student, name, int(k))
    student.eval()
    try:
        yield
    finally:
        student.train(was_training)
        for name, value in previous.items():
            setattr(student, name, value)


def _module_record(module: nn.Module | None, record: TrainingRecord, spec: dict[str, Any]) -> dict[str, str] | None:
    """The loss classes of a training module (and its test results into ``record`` when it has none)."""
    if module is None or not hasattr(module, "losses"):
        return None
    if not record.metrics:
        results = getattr(module, "test_results", None) or {}
        record.metrics = {f"test/{key}" if group == "student" else f"test/{group}/{key}": float(value)
                          for group, values in results.items() for key, value in values.items()}
    if record.recipe is None:
        record.recipe = RecipeSpec(student=spec, loss_weights=dict(getattr(module, "loss_weights", {})))
    return {name: f"{type(loss).__module__}.{type(loss).__qualname__}" for name, loss in module.losses.items()}


def export_student(source: nn.Module, out_dir: str | os.PathLike[str], student_spec: Mapping[str, Any] | None = None,
                   datamodule: Any = None, record: TrainingRecord | None = None, onnx: bool = True,
                   opset: int = DEFAULT_OPSET, image_size: int | None = None, top_k_a: int | None = None,
                   top_k_b: int | None = None, image_preprocessing: ImagePreprocessing | None = None) -> ExportResult:
    """Write the student (never the teacher) into ``out_dir``; see the module docstring for the files.

    ``source`` is a :class:`~distill.training.DistillationModule` (its ``student``, losses and test results
    are used) or a bare student. The student's spec is ``student_spec``, else ``record.recipe.student``.
    ``top_k_a/b`` set a sparse student's pruning in the exported config and graphs (the passed-in student
    is left unchanged). An image tower's preprocessing is ``image_preprocessing``, else the data module's
    (``datamodule.image_preprocessing()``), else the tower's ``preprocessing``; when none tells, the export is
    refused.
    """
    inner = getattr(source, "student", None)
    module = source if isinstance(inner, nn.Module) else None
    student = inner if module is not None else source
    record = record or TrainingRecord()
    spec = dict(student_spec) if student_spec is not None else (record.recipe.student if record.recipe else None)
    if spec is None:
        raise ValueError("export_student needs the student's class_path/init_args: pass student_spec= or a record "
                         "with the recipe")
    spec = self_contained_spec(spec, student)
    top_k = {"top_k_a": top_k_a, "top_k_b": top_k_b}
    spec["init_args"].update({name: int(k) for name, k in top_k.items() if k is not None})
    tokenizer = getattr(datamodule, "tokenizer", None) or getattr(datamodule, "student_tokenizer", None)
    losses = _module_record(module, record, spec)
    teacher = teacher_description(record.recipe.teacher if record.recipe else None, getattr(module, "teacher", None))
    with _serving_mode(student, top_k), atomic_folder(out_dir, "export folder", kind="export") as scratch:
        student_config = _student_config(student, spec, datamodule, tokenizer, image_size, image_preprocessing)
        files = _write_files(scratch, student, student_config, tokenizer, onnx, opset)
        card = model_card(student_config, record.recipe, teacher, record.metrics, losses, record.training)
        atomic_write_bytes(safe_join(scratch, CARD_NAME), card.encode())
        files.append(CARD_NAME)
    return ExportResult(Path(out_dir), sorted(files), dict(record.metrics))


def resolve_preprocessing(student: nn.Module, datamodule: Any, side: str,
                          given: ImagePreprocessing | None = None) -> ImagePreprocessing:
    """How ``student.encode_<side>`` saw its images in training: ``given``, else the data module's
    ``image_preprocessing()``, else the tower's ``preprocessing``; never a default."""
    if given is not None:
        return given
    hook = getattr(datamodule, "image_preprocessing", None)
    if callable(hook):
        return hook()
    tower = getattr(student, f"tower_{side}", None)
    found = getattr(tower, "preprocessing", None)
    if isinstance(found, ImagePreprocessing):
        return found
    source = f"the data module {type(datamodule).__name__} has no image_preprocessing()" if datamodule is not None \
        else "no data module was given"
    raise InputError(f"cannot export {type(student).__name__}: how its tower {side} images were preprocessed in "
                     f"training is unknown ({source}); export with the recipe's data module (`distill export --config "
                     "<recipe>`) or pass image_preprocessing=")


def _student_config(student: nn.Module, spec: dict[str, Any], datamodule: Any, tokenizer: Any,
                    image_size: int | None, preprocessing: ImagePreprocessing | None = None) -> dict[str, Any]:
    towers: dict[str, dict[str, Any]] = {}
    for side in ("a", "b"):
        modality = tower_modality(student, side)
        if modality == "image":
            steps = resolve_preprocessing(student, datamodule, side, preprocessing)
            if image_size is not None and int(image_size) != steps.size:
                raise InputError(f"--image-size {image_size}: the student was trained on {steps.size} px images "
                                 f"({steps.resize} resize); leave --image-size out or set it to {steps.size}")
            towers[side] = {"modality": "image", "inputs": ["pixel_values"], "image_size": steps.size,
                            "pixel_mean": list(steps.mean), "pixel_std": list(steps.std),
                            "preprocessing": steps.to_json()}
        else:
            vocab = text_vocab_size(student, side)
            if tokenizer is not None:
                vocab = min(vocab, len(tokenizer))
            side_length = getattr(datamodule, "query_max_length" if side == "a" else "passage_max_length", None)
            max_length = side_length or getattr(datamodule, "max_length", None) or DEFAULT_MAX_LENGTH
            towers[side] = {"modality": "text", "inputs": ["input_ids", "attention_mask"],
                            "max_length": int(max_length), "vocab_size": vocab}
        towers[side]["onnx"] = SHARED_ONNX_NAME if shares_encoder(student) else ONNX_NAMES[side]
    with torch.no_grad():
        encoded = student.encode_b(sample_inputs(towers["b"], batch=2))
    kind = embedding_kind(student)
    embedding: dict[str, Any] = {"kind": kind, "dim": int(getattr(encoded, "tokens", encoded).shape[-1])}
    if kind == "late-interaction":
        embedding.update(similarity=str(student.similarity), query_reduce=str(student.query_reduce))
    return {"format_version": FORMAT_VERSION, "student": spec, "towers": towers, "embedding": embedding,
            "tokenizer": tokenizer is not None}


def _write_files(out: Path, student: nn.Module, student_config: dict[str, Any], tokenizer: Any, onnx: bool,
                 opset: int) -> list[str]:
    """The weights in the ecosystem layout that fits the student, the config, the tokenizer, the ONNX graphs."""
    files = _save_tokenizer(tokenizer, out) if tokenizer is not None else []
    layout = write_layout(out, student, student_config, tokenizer)
    if student_config["embedding"]["kind"] == "late-interaction":
        layout.note = (f"{type(student).__name__} scores token sets ({student_config['embedding']['similarity']}), "
                       "which neither toolkit's pooled layouts express; distill's own layout is documented in "
                       "docs/deployment.md")
    student_config["weights"] = layout.weights
    student_config["ecosystem"] = describe(layout)
    student_config["onnx"] = bool(onnx)
    atomic_write_json(safe_join(out, CONFIG_NAME), student_config)
    files += [*layout.files, CONFIG_NAME]
    for name, payload in timm_configs(student, student_config).items():
        safe_join(out, name).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(safe_join(out, name), payload)
        files.append(name)
    if onnx:
        for side, spec in student_config["towers"].items():
            if spec["onnx"] not in files:  # a shared encoder: one graph serves both sides
                export_onnx(student, side, spec, safe_join(out, spec["onnx"]), opset)
                files.append(spec["onnx"])
    return files


def _save_tokenizer(tokenizer: Any, out: Path) -> list[str]:
    """``save_pretrained`` into a scratch folder, then move each file into ``out``."""
    with tempfile.TemporaryDirectory(dir=out, prefix=".tokenizer.") as scratch:
        tokenizer.save_pretrained(scratch)
        names = []
        for path in sorted(Path(scratch).rglob("*")):
            if path.is_file():
                name = str(path.relative_to(scratch))
                target = safe_join(out, name)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
                names.append(name)
    return names
