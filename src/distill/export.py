"""Student-only export: safetensors weights, a rebuildable config, the tokenizer, ONNX towers, a card.

``python -m distill export --ckpt runs/x/version_0/checkpoints/last.ckpt --out exports/x`` rebuilds
the student from the recipe the run was trained with (``--config``, by default the ``config.yaml``
LightningCLI wrote into the run's log folder), loads the checkpoint's ``student.*`` weights and
writes into ``--out`` (each file atomically):

* ``model.safetensors``: the student's state dict (never the teacher's);
* ``student_config.json``: the student's ``class_path``/``init_args`` plus the input spec of each
  tower, so :func:`load_student` rebuilds it without the recipe;
* the tokenizer files (``save_pretrained`` of the data module's tokenizer), when there is one;
* ``tower_a.onnx`` / ``tower_b.onnx``: one graph per tower (dynamic batch; dynamic sequence for text);
* ``README.md``: a model card (teacher, losses and weights, data, measured test recall).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

from distill.io import atomic_write_bytes, atomic_write_json, read_json
from distill.students.weights import read_student_checkpoint

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "student_config.json"
CARD_NAME = "README.md"
ONNX_NAMES = {"a": "tower_a.onnx", "b": "tower_b.onnx"}
RUN_CONFIG_NAME = "config.yaml"
DEFAULT_IMAGE_SIZE = 224
DEFAULT_MAX_LENGTH = 32
DEFAULT_OPSET = 17
FILE_MODE = 0o644


# ---------------------------------------------------------------------------- safe, atomic files
def safe_join(out_dir: str | os.PathLike[str], name: str) -> Path:
    """``out_dir / name``, refusing names that resolve outside ``out_dir`` (``..``, absolute, links)."""
    root = Path(out_dir).resolve()
    if not name or Path(name).is_absolute():
        raise ValueError(f"refusing to write '{name}': export file names must be relative to '{root}'")
    target = (root / name).resolve()
    if root not in target.parents:
        raise ValueError(f"refusing to write '{name}': it resolves to '{target}', outside the export folder '{root}'")
    return target


@contextmanager
def _atomic_target(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------- recipes
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


def read_recipe(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> RecipeSpec:
    """Parse a recipe or a run's saved ``config.yaml`` without building any model or data module.

    ``overrides`` are LightningCLI-style ``--key value`` arguments applied after the file.
    """
    from distill.cli import DistillCLI, RecipeError, one_line

    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"recipe '{source}' does not exist: pass --config <the recipe used for training>")

    class _ParseOnly(DistillCLI):
        def add_arguments_to_parser(self, parser: Any) -> None:
            super().add_arguments_to_parser(parser)
            # Keys LightningCLI writes into a run's config.yaml that the run=False parser lacks.
            for key in ("--ckpt_path", "--weights_only"):
                try:
                    parser.add_argument(key, type=str | bool | None, default=None)
                except Exception:  # already defined by a future DistillCLI
                    pass

        def instantiate_classes(self) -> None:
            pass

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
            cli = _ParseOnly(args=["--config", str(source), *overrides, "--seed_everything", "false"], run=False)
    except RecipeError:
        raise
    except Exception as error:  # jsonargparse raises several types; report them in one line
        raise ValueError(f"could not parse recipe '{source}': {one_line(error)}") from error
    config = cli.config
    model_args = _as_dict(config["model"]).get("init_args", {})
    if "student" not in model_args:
        raise ValueError(f"recipe '{source}' has no model.init_args.student: export needs a distillation recipe")
    losses = {name: _as_dict(loss) for name, loss in (model_args.get("losses") or {}).items()}
    return RecipeSpec(
        student=_as_dict(model_args["student"]),
        teacher=_as_dict(model_args["teacher"]) if model_args.get("teacher") else None,
        losses=losses,
        loss_weights={name: float(w) for name, w in (model_args.get("loss_weights") or {}).items()},
        data=_as_dict(config["data"]) if config.get("data") else None,
        source=source,
        student_init=str(model_args["student_init"]) if model_args.get("student_init") else None,
    )


def _as_dict(value: Any) -> Any:
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, Mapping):
        return {key: _as_dict(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_dict(item) for item in value]
    return value


def instantiate(spec: Mapping[str, Any], base: type = nn.Module) -> Any:
    """Build an object from a ``{"class_path": ..., "init_args": {...}}`` dict (nested specs too)."""
    from jsonargparse import ArgumentParser

    if "class_path" not in spec:
        raise ValueError(f"expected a class_path/init_args spec, got keys {sorted(spec)}")
    parser = ArgumentParser(exit_on_error=False, default_env=False)
    parser.add_argument("--obj", type=base)
    try:
        config = parser.parse_object({"obj": dict(spec)})
        return parser.instantiate_classes(config).obj
    except Exception as error:
        from distill.cli import one_line

        raise ValueError(f"could not build {spec['class_path']}: {one_line(error)}") from error


def find_run_config(ckpt_path: str | os.PathLike[str], levels: int = 3) -> Path:
    """The ``config.yaml`` LightningCLI saved in the log folder holding ``ckpt_path`` (searching up)."""
    folder = Path(ckpt_path).resolve().parent
    for candidate in [folder, *folder.parents][: levels + 1]:
        if (candidate / RUN_CONFIG_NAME).is_file():
            return candidate / RUN_CONFIG_NAME
    raise FileNotFoundError(
        f"no {RUN_CONFIG_NAME} found next to or above '{ckpt_path}': pass --config <the recipe used for training>"
    )


# ---------------------------------------------------------------------------- student helpers
def self_contained_spec(spec: Mapping[str, Any], module: nn.Module) -> dict[str, Any]:
    """Rewrite a student spec so rebuilding it needs no download or external file.

    timm towers get ``pretrained: false`` / ``checkpoint_path: null``; a class built from a Hugging
    Face ``pretrained`` name that also accepts ``config`` gets the loaded model's config instead.
    The exported weights replace what either would have loaded.
    """
    args = dict(spec.get("init_args") or {})
    for key, value in args.items():
        child = getattr(module, key, None)
        if isinstance(value, Mapping) and "class_path" in value and isinstance(child, nn.Module):
            args[key] = self_contained_spec(value, child)
    if args.get("pretrained") is True:
        args["pretrained"] = False
    if args.get("checkpoint_path"):
        args["checkpoint_path"] = None
    hf_model = _hf_model(module)
    if isinstance(args.get("pretrained"), str) and hf_model is not None and _accepts(spec["class_path"], "config"):
        hf_config = hf_model.config.to_diff_dict()
        for key in ("transformers_version", "_name_or_path", "architectures"):
            hf_config.pop(key, None)
        hf_config["model_type"] = hf_model.config.model_type
        args["pretrained"], args["config"] = None, hf_config
    return {"class_path": spec["class_path"], "init_args": args}


def _hf_model(module: nn.Module) -> nn.Module | None:
    """The outermost ``transformers.PreTrainedModel`` inside ``module`` (itself included), if any."""
    from transformers import PreTrainedModel

    return next((inner for inner in module.modules() if isinstance(inner, PreTrainedModel)), None)


def _accepts(class_path: str, argument: str) -> bool:
    import importlib
    import inspect

    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return False
    return argument in inspect.signature(cls).parameters


def _tower(student: nn.Module, side: str) -> nn.Module | None:
    tower = getattr(student, f"tower_{side}", None)
    return getattr(student, "tower_a", None) if tower is None and side == "b" else tower  # shared encoder


def tower_modality(student: nn.Module, side: str) -> str:
    """``"image"`` or ``"text"``: what ``student.encode_<side>`` reads."""
    from distill.students import TimmImageTower, TransformersTextTower

    tower = _tower(student, side)
    modality = getattr(tower, "modality", None)
    if modality in ("image", "text"):
        return modality
    if isinstance(tower, TimmImageTower):
        return "image"
    if isinstance(tower, TransformersTextTower):
        return "text"
    if tower is None and hasattr(getattr(student, "model", None), "get_image_features"):
        return "image" if side == "a" else "text"  # a CLIP-style model: images are a, captions b
    raise ValueError(
        f"cannot tell whether {type(student).__name__}.encode_{side} reads images or text: give its tower class a "
        "`modality = 'image' | 'text'` attribute"
    )


def text_vocab_size(student: nn.Module, side: str) -> int:
    """Vocabulary size of the text model behind ``student.encode_<side>``."""
    tower = _tower(student, side)
    size = getattr(tower, "vocab_size", None)
    if size is None:
        config = getattr(_hf_model(tower if tower is not None else student), "config", None)
        config = getattr(config, "text_config", config)
        size = getattr(config, "vocab_size", None)
    if size is None:
        raise ValueError(f"cannot find the vocabulary size of {type(student).__name__}.encode_{side}")
    return int(size)


def embedding_kind(student: nn.Module) -> str:
    from distill.students.sparse import SparseDualEncoder

    return "sparse" if isinstance(student, SparseDualEncoder) else "dense"


def load_checkpoint_student(ckpt_path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``student.*`` weights (prefix stripped) and the rest of a Lightning checkpoint (no pickled code)."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    return read_student_checkpoint(path, option="checkpoint")


# ---------------------------------------------------------------------------- ONNX
class _ImageTower(nn.Module):
    def __init__(self, student: nn.Module, side: str) -> None:
        super().__init__()
        self.student, self.side = student, side

    def forward(self, pixel_values: Tensor) -> Tensor:
        return getattr(self.student, f"encode_{self.side}")({"pixel_values": pixel_values})


class _TextTower(nn.Module):
    def __init__(self, student: nn.Module, side: str) -> None:
        super().__init__()
        self.student, self.side = student, side

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return getattr(self.student, f"encode_{self.side}")({"input_ids": input_ids, "attention_mask": attention_mask})


def sample_inputs(spec: Mapping[str, Any], batch: int = 2) -> dict[str, Tensor]:
    """Example inputs of a tower spec (as written in ``student_config.json``), for tracing and tests."""
    generator = torch.Generator().manual_seed(0)
    if spec["modality"] == "image":
        size = int(spec["image_size"])
        return {"pixel_values": torch.randn(batch, 3, size, size, generator=generator)}
    length = min(8, int(spec["max_length"]))
    ids = torch.randint(0, int(spec["vocab_size"]), (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[-1, length // 2:] = 0  # a padded row, so the traced graph keeps the attention mask
    return {"input_ids": ids, "attention_mask": mask}


def export_onnx(student: nn.Module, side: str, spec: Mapping[str, Any], path: Path, opset: int = DEFAULT_OPSET) -> None:
    """Trace ``student.encode_<side>`` into an ONNX graph at ``path`` (atomically).

    Inputs: ``pixel_values [batch, 3, H, W]`` or ``input_ids, attention_mask [batch, sequence]``;
    output ``embedding [batch, D]``. Uses the TorchScript exporter (``dynamo=False``).
    """
    image = spec["modality"] == "image"
    wrapper = (_ImageTower if image else _TextTower)(student, side).eval()
    example = sample_inputs(spec, batch=2)
    names = list(example)
    axes = {name: {0: "batch"} if image else {0: "batch", 1: "sequence"} for name in names}
    axes["embedding"] = {0: "batch"}
    with _atomic_target(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, tuple(example[name] for name in names), str(tmp), input_names=names,
            output_names=["embedding"], dynamic_axes=axes, opset_version=opset, dynamo=False,
        )


# ---------------------------------------------------------------------------- model card
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
        "Load with `distill.load_student(folder)`; the ONNX graphs `tower_a.onnx` / `tower_b.onnx` take the same",
        "inputs (see `student_config.json`).", "",
        "## Teacher", "",
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


# ---------------------------------------------------------------------------- export
@dataclass
class ExportResult:
    out_dir: Path
    files: list[str]
    metrics: dict[str, float]


@dataclass
class _Source:
    """What an export reads: the student, the module around it, the recipe, and the run's results."""

    student: nn.Module
    module: nn.Module | None = None
    recipe: RecipeSpec | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    training: dict[str, int] = field(default_factory=dict)


def _from_checkpoint(ckpt_path: str | os.PathLike[str], config: str | os.PathLike[str] | None,
                     overrides: Sequence[str]) -> _Source:
    try:
        run_config: Path | None = find_run_config(ckpt_path)
    except FileNotFoundError:
        if config is None:
            raise
        run_config = None
    config_path = Path(config) if config is not None else run_config
    assert config_path is not None
    recipe = read_recipe(config_path, overrides)
    weights, info = load_checkpoint_student(ckpt_path)
    student = instantiate(recipe.student)
    missing, unexpected = student.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint '{ckpt_path}' does not match the student of '{config_path}': missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}; pass --config <the recipe used for training>"
        )
    training = {key: int(info[key]) for key in ("epoch", "global_step") if isinstance(info.get(key), int)}
    metrics = run_metrics(run_config.parent) if run_config is not None else {}
    return _Source(student, None, recipe, metrics, training)


def _from_module(source: nn.Module, config: str | os.PathLike[str] | None, overrides: Sequence[str]) -> _Source:
    student = getattr(source, "student", None)
    module = source if isinstance(student, nn.Module) else None
    student = student if module is not None else source
    recipe = read_recipe(config, overrides) if config is not None else None
    results = getattr(module, "test_results", None) or {}
    metrics = {f"test/{key}" if group == "student" else f"test/{group}/{key}": float(value)
               for group, values in results.items() for key, value in values.items()}
    return _Source(student, module, recipe, metrics)


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


def export_student(
    source: str | os.PathLike[str] | nn.Module,
    out_dir: str | os.PathLike[str],
    config: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    student_spec: Mapping[str, Any] | None = None,
    datamodule: Any = None,
    metrics: Mapping[str, float] | None = None,
    onnx: bool = True,
    opset: int = DEFAULT_OPSET,
    image_size: int | None = None,
    top_k_a: int | None = None,
    top_k_b: int | None = None,
) -> ExportResult:
    """Write the student (never the teacher) into ``out_dir``; see the module docstring for the files.

    ``source`` is a checkpoint path, a ``DistillationModule`` or a bare student. The student's spec
    comes from ``student_spec``, else the recipe ``config`` (+ ``overrides``), else, for a checkpoint,
    the run's ``config.yaml``. ``metrics`` (e.g. ``{"test/rsum": 250.1}``) go into the card; else the
    module's ``test_results`` or the run's logged ``test/*`` scalars. ``top_k_a/b`` set a sparse
    student's pruning in the exported config and graphs (the passed-in student is left unchanged).
    """
    out = Path(out_dir)
    found = (_from_module(source, config, overrides) if isinstance(source, nn.Module)
             else _from_checkpoint(source, config, overrides))
    student, recipe = found.student, found.recipe
    spec = dict(student_spec) if student_spec is not None else (recipe.student if recipe else None)
    if spec is None:
        raise ValueError("export_student needs the student's class_path/init_args: pass config= or student_spec=")
    spec = self_contained_spec(spec, student)
    top_k = {"top_k_a": top_k_a, "top_k_b": top_k_b}
    spec["init_args"].update({name: int(k) for name, k in top_k.items() if k is not None})
    if datamodule is None and recipe is not None and recipe.data is not None:
        import lightning as L

        datamodule = instantiate(recipe.data, L.LightningDataModule)
    tokenizer = getattr(datamodule, "tokenizer", None)
    with _serving_mode(student, top_k):
        student_config = _student_config(student, spec, datamodule, tokenizer, image_size)
        files = _write_export(out, student, student_config, tokenizer, onnx, opset)

    teacher = teacher_description(recipe.teacher if recipe else None, getattr(found.module, "teacher", None))
    losses = None
    if found.module is not None and hasattr(found.module, "losses"):
        losses = {name: f"{type(loss).__module__}.{type(loss).__qualname__}"
                  for name, loss in found.module.losses.items()}
        if recipe is None:
            recipe = RecipeSpec(student=spec, loss_weights=dict(getattr(found.module, "loss_weights", {})))
    card_metrics = dict(metrics) if metrics is not None else found.metrics
    card = model_card(student_config, recipe, teacher, card_metrics, losses, found.training)
    atomic_write_bytes(safe_join(out, CARD_NAME), card.encode())
    files.append(CARD_NAME)
    for name in files:
        os.chmod(safe_join(out, name), FILE_MODE)  # temporary files are created private (0600)
    return ExportResult(out, sorted(files), card_metrics)


def _student_config(student: nn.Module, spec: dict[str, Any], datamodule: Any, tokenizer: Any,
                    image_size: int | None) -> dict[str, Any]:
    from distill.data.batch import PIXEL_MEAN, PIXEL_STD

    towers: dict[str, dict[str, Any]] = {}
    for side in ("a", "b"):
        modality = tower_modality(student, side)
        if modality == "image":
            size = (image_size or getattr(student, "image_size", None) or getattr(datamodule, "image_size", None)
                    or DEFAULT_IMAGE_SIZE)
            towers[side] = {"modality": "image", "inputs": ["pixel_values"], "image_size": int(size),
                            "pixel_mean": _floats(getattr(datamodule, "pixel_mean", PIXEL_MEAN)),
                            "pixel_std": _floats(getattr(datamodule, "pixel_std", PIXEL_STD))}
        else:
            vocab = text_vocab_size(student, side)
            if tokenizer is not None:
                vocab = min(vocab, len(tokenizer))
            max_length = getattr(datamodule, "max_length", None) or DEFAULT_MAX_LENGTH
            towers[side] = {"modality": "text", "inputs": ["input_ids", "attention_mask"],
                            "max_length": int(max_length), "vocab_size": vocab}
        towers[side]["onnx"] = ONNX_NAMES[side]
    with torch.no_grad():
        dim = int(student.encode_b(sample_inputs(towers["b"], batch=2)).shape[-1])
    return {"format_version": FORMAT_VERSION, "student": spec, "towers": towers,
            "embedding": {"kind": embedding_kind(student), "dim": dim}, "tokenizer": tokenizer is not None}


def _floats(value: Any) -> float | list[float]:
    """A scalar or per-channel normalisation constant as JSON numbers."""
    if isinstance(value, (int, float)):
        return float(value)
    return [float(item) for item in value]


def _write_export(out: Path, student: nn.Module, student_config: dict[str, Any], tokenizer: Any, onnx: bool,
                  opset: int) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    with _atomic_target(safe_join(out, WEIGHTS_NAME)) as tmp:
        save_model(student, str(tmp))  # drops tied aliases (e.g. an MLM decoder tied to the embeddings)
    atomic_write_json(safe_join(out, CONFIG_NAME), student_config)
    files = [WEIGHTS_NAME, CONFIG_NAME]
    if tokenizer is not None:
        files += _save_tokenizer(tokenizer, out)
    if onnx:
        for side, spec in student_config["towers"].items():
            export_onnx(student, side, spec, safe_join(out, spec["onnx"]), opset)
            files.append(spec["onnx"])
    return files


def _save_tokenizer(tokenizer: Any, out: Path) -> list[str]:
    """``save_pretrained`` into a scratch folder, then move each file into ``out`` atomically."""
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


# ---------------------------------------------------------------------------- loading
def read_student_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``student_config.json`` of an export folder, checked for its format version."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"'{folder}' is not a student export: it has no {CONFIG_NAME} (run `distill export`)")
    config = read_json(path)
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"'{path}' has format_version {version!r}; this distill reads {FORMAT_VERSION}")
    return config


def load_student(folder: str | os.PathLike[str]) -> nn.Module:
    """Rebuild an exported student from ``student_config.json`` + ``model.safetensors``; eval mode."""
    config = read_student_config(folder)
    student = instantiate(config["student"])
    path = Path(folder) / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"export '{folder}' has no {WEIGHTS_NAME}")
    missing, unexpected = load_model(student, str(path), strict=False)  # re-ties dropped aliases
    if missing or unexpected:
        raise ValueError(
            f"'{Path(folder) / WEIGHTS_NAME}' does not match {config['student']['class_path']}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return student.eval()


def load_tokenizer(folder: str | os.PathLike[str]) -> Any:
    """The tokenizer saved with an export (``AutoTokenizer.from_pretrained`` of the folder)."""
    config = read_student_config(folder)
    if not config.get("tokenizer"):
        raise FileNotFoundError(f"export '{folder}' was written without a tokenizer (its data module had none)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


# ---------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill export", description=__doc__.split("\n\n")[0],
        epilog="Other --key value arguments override the recipe, as in `distill fit`.",
    )
    parser.add_argument("--ckpt", required=True, help="Lightning checkpoint of a DistillationModule run")
    parser.add_argument("--out", required=True, help="export folder (created; files are replaced atomically)")
    parser.add_argument("--config", help="recipe used for training (default: config.yaml of the run's log folder)")
    parser.add_argument("--metrics", help="JSON file of {metric: value} to put in the model card")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX graphs")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--image-size", type=int, help="image side of the ONNX image graph (default: the data's)")
    parser.add_argument("--top-k-a", type=int, help="sparse students: keep the k largest a-side weights")
    parser.add_argument("--top-k-b", type=int, help="sparse students: keep the k largest b-side weights")
    return parser


def main(argv: list[str]) -> None:
    args, overrides = build_parser().parse_known_args(argv)
    metrics = None
    if args.metrics:
        metrics = read_json(args.metrics)
        if not isinstance(metrics, dict):
            raise SystemExit(f"distill export: '{args.metrics}' must hold a JSON object of metric -> value")
    try:
        result = export_student(args.ckpt, args.out, config=args.config, overrides=overrides, metrics=metrics,
                                onnx=not args.no_onnx, opset=args.opset, image_size=args.image_size,
                                top_k_a=args.top_k_a, top_k_b=args.top_k_b)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"distill export: error: {error}") from None
    print(f"exported the student to {result.out_dir}: {', '.join(result.files)}")

