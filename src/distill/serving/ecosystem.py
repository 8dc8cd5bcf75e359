"""Export layouts the ecosystem's own loaders read: sentence-transformers and transformers.

The student's weights are written once, in the layout of the tool that serves it, and
``student_config.json`` records where each of the student's tensors lives (``weights``: a list of
``{"file", "prefix"}``; a tensor ``k`` of ``file`` is the student's ``prefix + k``), so that
:func:`~distill.serving.loading.load_student` rebuilds the same student from the same files.

=========================================== ===========================================================
student                                     layout
=========================================== ===========================================================
``TextDualEncoder``, shared encoder          sentence-transformers: the encoder's ``config.json`` +
                                            ``model.safetensors`` at the top, ``modules.json`` =
                                            Transformer, ``1_Pooling`` (mean or CLS), ``2_Normalize``
``TextDualEncoder``, separate towers         sentence-transformers ``Router`` (v5+): ``query_*`` modules
                                            encode queries (tower a), ``document_*`` passages (tower b)
``SparseDualEncoder`` (MLM text tower b)     sentence-transformers ``SparseEncoder`` (v5+) of the text
                                            side: ``MLMTransformer`` + ``SpladePooling`` (max,
                                            ``log(1 + relu)``), ``max_active_dims = top_k_b``
``CLIPDualEncoder``                          a ``transformers.CLIPModel`` folder (+ image processor)
anything else                               distill's own: the whole student in ``model.safetensors``
=========================================== ===========================================================

Tensors the ecosystem layout does not hold (a temperature, a sparse student's image tower) go to
``student.safetensors``. A layout is written only when the saved names map back onto the student's
tensors one to one; otherwise the export falls back to distill's own layout and says why.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from distill.io import atomic_write_json

WEIGHTS_NAME = "model.safetensors"
REST_NAME = "student.safetensors"
ST_VERSION = {"sentence_transformers": "5.0.0"}

__all__ = ["Layout", "REST_NAME", "describe", "timm_configs", "write_layout"]


@dataclass
class Layout:
    """What :func:`write_layout` wrote: the layout's name, where each tensor lives, the files, a load hint."""

    name: str
    weights: list[dict[str, str]]
    files: list[str] = field(default_factory=list)
    note: str = ""


@dataclass
class _Part:
    """One Hugging Face model of the student, saved with ``save_pretrained`` into ``folder``."""

    model: nn.Module
    prefix: str
    folder: str = ""
    tokenizer: bool = False


def write_layout(out: Path, student: nn.Module, config: dict[str, Any], tokenizer: Any) -> Layout:
    """Write the student's weights into ``out`` in the ecosystem layout that fits it (module docstring)."""
    plan = _plan(student, config, tokenizer)
    if isinstance(plan, str):
        return _distill_layout(out, student, plan)
    name, parts, extra, note = plan
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".layout."))
    try:
        weights, files = _save_parts(staging, student, parts, tokenizer)
        mismatch = _check_coverage(student, weights, staging)
        if mismatch:
            shutil.rmtree(staging)
            return _distill_layout(out, student, f"{name} layout skipped: {mismatch}")
        for relative, payload in extra.items():
            atomic_write_json(staging / relative, payload)
            files.append(relative)
        files += _move_all(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Layout(name, weights, sorted(set(files)), note)


# ---------------------------------------------------------------------------- which layout
def _plan(student: nn.Module, config: dict[str, Any], tokenizer: Any) -> str | tuple:
    """``(name, parts, extra json files, load hint)``, or the reason no ecosystem layout fits."""
    from distill.students import CLIPDualEncoder, TextDualEncoder
    from distill.students.sparse import MLMTextTower, SparseDualEncoder

    towers = config["towers"]
    if isinstance(student, CLIPDualEncoder):
        extra = {"preprocessor_config.json": _clip_image_processor(towers["a"])}
        return ("transformers CLIPModel", [_Part(student.model, "model.")], extra,
                "`transformers.CLIPModel.from_pretrained(folder)`; `CLIPProcessor.from_pretrained(folder)` when the tokenizer "
                "was exported")
    if tokenizer is None:
        return "no tokenizer was exported (the data module had none), so no text toolkit can read the folder"
    if isinstance(student, TextDualEncoder):
        if student.tower_b is None:
            return _sentence_transformer(student, towers)
        return _router(student, towers)
    if isinstance(student, SparseDualEncoder) and isinstance(student.tower_b, MLMTextTower):
        return _sparse_encoder(student, towers)
    return (f"{type(student).__name__} has no counterpart in sentence-transformers or transformers (an image tower "
            "with its own projection): load it with distill.load_student or the ONNX graphs")


def _sentence_transformer(student: nn.Module, towers: dict[str, Any]) -> tuple:
    tower = student.tower_a
    extra = {"modules.json": _modules([("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]),
             "config_sentence_transformers.json": _st_config("SentenceTransformer", "cosine"),
             "sentence_bert_config.json": _bert_config(towers["b"]["max_length"], tower.encoder),
             "1_Pooling/config.json": _pooling(tower.width, tower.pooling), "2_Normalize/config.json": {}}
    return ("sentence-transformers", [_Part(tower.encoder, "tower_a.encoder.")], extra,
            "`sentence_transformers.SentenceTransformer(folder)`")


def _router(student: nn.Module, towers: dict[str, Any]) -> tuple:
    extra: dict[str, Any] = {"modules.json": [{"idx": 0, "name": "0", "path": "", "type":
                                               "sentence_transformers.models.Router"}],
                             "config_sentence_transformers.json": _st_config("SentenceTransformer", "cosine")}
    types: dict[str, str] = {}
    structure: dict[str, list[str]] = {}
    parts = []
    for route, side in (("query", "a"), ("document", "b")):
        tower = getattr(student, f"tower_{side}")
        names = [f"{route}_0_Transformer", f"{route}_1_Pooling", f"{route}_2_Normalize"]
        types.update(zip(names, ("sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
                                 "sentence_transformers.models.Normalize")))
        structure[route] = names
        parts.append(_Part(tower.encoder, f"tower_{side}.encoder.", names[0], tokenizer=True))
        extra[f"{names[0]}/sentence_bert_config.json"] = _bert_config(towers[side]["max_length"], tower.encoder)
        extra[f"{names[1]}/config.json"] = _pooling(tower.width, tower.pooling)
        extra[f"{names[2]}/config.json"] = {}
    extra["router_config.json"] = {"types": types, "structure": structure, "parameters": {
        "default_route": "document", "allow_empty_key": True, "route_mappings": {}}}
    return ("sentence-transformers Router", parts, extra,
            "`sentence_transformers.SentenceTransformer(folder)`: `encode_query` (tower a), `encode_document` "
            "(tower b); sentence-transformers 5 or later")


def _sparse_encoder(student: nn.Module, towers: dict[str, Any]) -> tuple:
    config = _st_config("SparseEncoder", "dot")
    if student.top_k_b is not None:
        config["max_active_dims"] = int(student.top_k_b)
    extra = {"modules.json": _modules([("", "MLMTransformer"), ("1_SpladePooling", "SpladePooling")],
                                      "sentence_transformers.sparse_encoder.models."),
             "config_sentence_transformers.json": config,
             "sentence_bert_config.json": _bert_config(towers["b"]["max_length"]),
             "1_SpladePooling/config.json": {"pooling_strategy": "max", "activation_function": "relu",
                                             "word_embedding_dimension": int(student.vocab_size)}}
    return ("sentence-transformers SparseEncoder", [_Part(student.tower_b.encoder, "tower_b.encoder.")], extra,
            "`sentence_transformers.SparseEncoder(folder)` encodes the text side (tower b; sentence-transformers 5 or "
            "later); images need `distill.load_student` or `tower_a.onnx`")


# ---------------------------------------------------------------------------- config files
def _modules(entries: list[tuple[str, str]], package: str = "sentence_transformers.models.") -> list[dict[str, Any]]:
    return [{"idx": i, "name": str(i), "path": path, "type": package + kind} for i, (path, kind) in enumerate(entries)]


def _st_config(model_type: str, similarity: str) -> dict[str, Any]:
    return {"__version__": ST_VERSION, "model_type": model_type, "prompts": {}, "default_prompt_name": None,
            "similarity_fn_name": similarity}


def _bert_config(max_length: int, encoder: nn.Module | None = None) -> dict[str, Any]:
    """``sentence_bert_config.json``; an encoder built without its pooler (BERT-style) is loaded without one."""
    config: dict[str, Any] = {"max_seq_length": int(max_length), "do_lower_case": False}
    if encoder is not None and hasattr(encoder, "pooler") and encoder.pooler is None:
        config["model_args"] = {"add_pooling_layer": False}
    return config


def _pooling(width: int, pooling: str) -> dict[str, Any]:
    return {"word_embedding_dimension": int(width), "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False}


def _clip_image_processor(spec: dict[str, Any]) -> dict[str, Any]:
    """The ``CLIPImageProcessor`` config of the image tower's preprocessing as trained."""
    from distill.data.image_preprocessing import ImagePreprocessing

    return ImagePreprocessing.from_json(spec["preprocessing"], "tower a").clip_processor_config()


def timm_configs(student: nn.Module, config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"tower_<side>/config.json": timm's hub config}`` for each timm image tower: its architecture and the
    ``pretrained_cfg`` of its preprocessing as trained (``timm.data.resolve_data_config(pretrained_cfg=...)``).
    The weights stay where ``weights`` says (``tower_<side>.backbone.*``)."""
    from distill.data.image_preprocessing import ImagePreprocessing
    from distill.students import TimmImageTower

    files = {}
    for side, spec in config["towers"].items():
        tower = getattr(student, f"tower_{side}", None)
        if spec["modality"] != "image" or not isinstance(tower, TimmImageTower):
            continue
        steps = ImagePreprocessing.from_json(spec["preprocessing"], f"tower {side}")
        if steps.processor is not None or steps.resize != "shortest_edge" or not steps.center_crop:
            continue  # a transformers processor or a square resize: timm's eval transform does neither
        architecture = (getattr(tower.backbone, "pretrained_cfg", None) or {}).get("architecture")
        files[f"tower_{side}/config.json"] = {
            "architecture": architecture or type(tower.backbone).__name__, "num_classes": 0,
            "num_features": int(tower.width), "pretrained_cfg": steps.timm_config()}
    return files


# ---------------------------------------------------------------------------- weights
def _save_parts(staging: Path, student: nn.Module, parts: list[_Part],
                tokenizer: Any) -> tuple[list[dict[str, str]], list[str]]:
    """``save_pretrained`` each part (safetensors), then the student's other tensors into ``student.safetensors``."""
    weights, files = [], []
    for part in parts:
        folder = staging / part.folder if part.folder else staging
        part.model.save_pretrained(folder, safe_serialization=True)
        if part.tokenizer and tokenizer is not None:
            tokenizer.save_pretrained(folder)
        names = sorted(path.name for path in folder.glob("*.safetensors"))
        if names != [WEIGHTS_NAME]:
            raise ValueError(f"save_pretrained wrote {names} (sharded?); expected one {WEIGHTS_NAME}")
        weights.append({"file": f"{part.folder}/{WEIGHTS_NAME}" if part.folder else WEIGHTS_NAME,
                        "prefix": part.prefix})
    covered = tuple(part.prefix for part in parts)
    rest = {key: value.detach().contiguous() for key, value in student.state_dict().items()
            if not key.startswith(covered)}
    if rest:
        save_file(rest, str(staging / REST_NAME), metadata={"format": "pt"})
        weights.append({"file": REST_NAME, "prefix": ""})
    return weights, files


def _check_coverage(student: nn.Module, weights: list[dict[str, str]], folder: Path) -> str:
    """``""`` when the saved tensors map onto the student's state dict exactly (tied aliases aside), else why not."""
    expected = student.state_dict()
    seen: set[str] = set()
    for entry in weights:
        with safe_open(str(folder / entry["file"]), framework="pt") as handle:
            for key in handle.keys():
                name = entry["prefix"] + key
                if name not in expected or tuple(handle.get_slice(key).get_shape()) != tuple(expected[name].shape):
                    return f"'{entry['file']}' holds '{key}', which is not the student's '{name}'"
                seen.add(name)
    storage: dict[int, set[str]] = {}
    for key, value in expected.items():
        storage.setdefault(value.untyped_storage().data_ptr(), set()).add(key)
    missing = [key for key in expected if key not in seen
               and not (storage[expected[key].untyped_storage().data_ptr()] & seen)]
    return f"the saved files miss {missing[:3]}" if missing else ""


def _distill_layout(out: Path, student: nn.Module, reason: str) -> Layout:
    from safetensors.torch import save_model

    save_model(student, str(out / WEIGHTS_NAME))  # drops tied aliases (e.g. an MLM decoder's)
    return Layout("distill", [{"file": WEIGHTS_NAME, "prefix": ""}], [WEIGHTS_NAME], reason)


def _move_all(source: Path, target: Path) -> list[str]:
    """Move every file under ``source`` to the same relative place under ``target``; returns their names."""
    names = []
    for path in sorted(source.rglob("*")):
        if path.is_file():
            name = str(path.relative_to(source))
            destination = target / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, destination)
            names.append(name)
    return names


def describe(layout: Layout) -> dict[str, Any]:
    """What ``student_config.json`` records of the layout (besides ``weights``)."""
    return {"layout": layout.name, "note": layout.note}
