"""Export: round trip, ONNX parity, no teacher weights, checkpoint + run config, safe file names."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from distill.cli.export import export_checkpoint
from distill.errors import InputError
from distill.serving.export import export_student, safe_join
from distill.serving.loading import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, load_student, load_tokenizer, read_student_config
from distill.serving.onnx import SUPPORTED_OPSETS
from tests.helpers import REPO_ROOT
from tests.helpers import (
    DENSE_SPEC,
    QUIET_TRAINER,
    SPARSE_SPEC,
    TINY_DATA_OVERRIDES,
    TINY_STUDENT_OVERRIDES,
    build,
)


def _batch(datamodule, size: int) -> dict:
    from distill.data import collate_pairs

    dataset = datamodule.dataset("test")
    return collate_pairs([dataset[i] for i in range(size)], datamodule.pad_token_id)


def test_round_trip_gives_identical_embeddings(tmp_path: Path, tiny_datamodule) -> None:
    import distill

    student = build(DENSE_SPEC)
    result = export_student(student, tmp_path / "out", student_spec=DENSE_SPEC, datamodule=tiny_datamodule, onnx=False)
    assert {WEIGHTS_NAME, CONFIG_NAME, CARD_NAME, "tokenizer.json"} <= set(result.files)
    loaded = distill.load_student(tmp_path / "out")
    assert not loaded.training
    batch = _batch(tiny_datamodule, 6)
    with torch.no_grad():
        assert torch.equal(loaded.encode_a(batch["a"]), student.encode_a(batch["a"]))
        assert torch.equal(loaded.encode_b(batch["b"]), student.encode_b(batch["b"]))
    captions = ["a small red circle left of a large blue square", "from left to right : a small green diamond"]
    assert load_tokenizer(tmp_path / "out")(captions)["input_ids"] == tiny_datamodule.tokenizer(captions)["input_ids"]
    config = read_student_config(tmp_path / "out")
    assert config["towers"]["a"]["modality"] == "image" and config["towers"]["a"]["image_size"] == 32
    assert config["towers"]["b"]["modality"] == "text" and config["embedding"] == {"kind": "dense", "dim": 16}
    assert oct(os.stat(tmp_path / "out" / WEIGHTS_NAME).st_mode & 0o777) == oct(0o644)


@pytest.mark.parametrize("spec", [DENSE_SPEC, SPARSE_SPEC], ids=["dense", "sparse-top-k"])
def test_onnx_towers_match_pytorch(tmp_path: Path, tiny_datamodule, spec: dict) -> None:
    ort = pytest.importorskip("onnxruntime", reason="the ONNX parity check needs onnxruntime")

    student = build(spec)
    sparse = spec is SPARSE_SPEC
    out = tmp_path / "out"
    export_student(student, out, student_spec=spec, datamodule=tiny_datamodule,
                   top_k_a=7 if sparse else None, top_k_b=5 if sparse else None)
    if sparse:  # the export prunes; the passed-in student is left as it was
        assert student.top_k_a is None and student.top_k_b is None
        student = load_student(out)
        assert (student.top_k_a, student.top_k_b) == (7, 5)
    session_a = ort.InferenceSession(str(out / "tower_a.onnx"), providers=["CPUExecutionProvider"])
    session_b = ort.InferenceSession(str(out / "tower_b.onnx"), providers=["CPUExecutionProvider"])
    for size in (1, 5):
        batch = _batch(tiny_datamodule, size)  # captions of different lengths: padded rows included
        with torch.no_grad():
            want_a = student.encode_a(batch["a"]).numpy()
            want_b = student.encode_b(batch["b"]).numpy()
        got_a = session_a.run(None, {"pixel_values": batch["a"]["pixel_values"].numpy()})[0]
        got_b = session_b.run(None, {key: value.numpy() for key, value in batch["b"].items()})[0]
        assert got_a.shape == want_a.shape and got_b.shape == want_b.shape
        assert np.abs(got_a - want_a).max() < 1e-4
        assert np.abs(got_b - want_b).max() < 1e-4
        if sparse:
            assert ((got_a > 0).sum(1) <= 7).all() and ((got_b > 0).sum(1) <= 5).all()


def test_checkpoint_export_uses_run_config_and_writes_no_teacher(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    from distill.cli.export import main
    from distill.cli.recipe import DistillCLI

    cli = DistillCLI(args=[
        "fit", "--config", str(REPO_ROOT / "configs/demo/shapes-kl.yaml"), *TINY_STUDENT_OVERRIDES,
        *TINY_DATA_OVERRIDES, *QUIET_TRAINER, "--model.init_args.teacher.init_args.weights", str(tiny_teacher_dir),
        "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
        "--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.logger.init_args.name", "kl",
    ])
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    cli.trainer.logger.finalize("success")
    checkpoint = next((tmp_path / "runs").rglob("*.ckpt"))
    main(["--ckpt", str(checkpoint), "--out", str(tmp_path / "export"), "--no-onnx"])

    with safe_open(str(tmp_path / "export" / WEIGHTS_NAME), framework="pt") as handle:
        keys = set(handle.keys())
    student_keys = set(cli.model.student.state_dict())
    assert keys and keys <= student_keys
    assert not any("teacher" in key for key in keys)
    loaded = load_student(tmp_path / "export")
    for key, value in cli.model.student.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    card = (tmp_path / "export" / CARD_NAME).read_text()
    assert "ShapesCrossEncoder" in card and "distill.losses.LogitKL" in card and "ShapesDataModule" in card
    assert "test/rsum" in card  # the run's logged test recall


def test_export_without_spec_or_recipe_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="student_spec"):
        export_student(build(DENSE_SPEC), tmp_path / "out", onnx=False)
    with pytest.raises(InputError, match="config.yaml"):
        export_checkpoint(tmp_path / "missing.ckpt", tmp_path / "out")
    with pytest.raises(InputError, match="not a student export"):
        load_student(tmp_path)
    assert not (tmp_path / "out").exists()


def test_safe_join_refuses_names_outside_the_export_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(tmp_path)
    assert safe_join(out, "tokenizer/vocab.json") == (out / "tokenizer/vocab.json").resolve()
    for name in ("../evil.json", "/etc/passwd", "a/../../evil", "link/evil", "", "."):
        with pytest.raises(ValueError, match="refusing to write"):
            safe_join(out, name)


def test_model_card_names_the_starting_weights(tmp_path: Path) -> None:
    from distill.cli.recipe import read_recipe
    from distill.serving.card import model_card

    recipe = read_recipe(REPO_ROOT / "configs/demo/shapes-sparse-kl.yaml",
                         ["--model.init_args.student_init", "runs/sparse-infonce/last.ckpt"])
    assert recipe.student_init == "runs/sparse-infonce/last.ckpt"
    config = {"student": recipe.student, "embedding": {"kind": "sparse", "dim": 64},
              "towers": {"a": {"modality": "image"}, "b": {"modality": "text"}}}
    card = model_card(config, recipe, None, {})
    assert "- started from: `runs/sparse-infonce/last.ckpt` (model.init_args.student_init)" in card
    assert "| kl | `distill.losses.LogitKL` | 1 |" in card and "| flops | `distill.losses.FLOPS` | 0.01 |" in card
    assert read_recipe(REPO_ROOT / "configs/demo/shapes-sparse-infonce.yaml").student_init is None


@pytest.mark.parametrize("opset", [SUPPORTED_OPSETS[0], SUPPORTED_OPSETS[-1]])
def test_onnx_exports_at_either_end_of_the_supported_opsets(tmp_path: Path, tiny_datamodule, opset: int) -> None:
    onnx = pytest.importorskip("onnx", reason="reading the graph's opset needs onnx")
    ort = pytest.importorskip("onnxruntime", reason="the ONNX parity check needs onnxruntime")
    student = build(DENSE_SPEC)
    export_student(student, tmp_path / "out", student_spec=DENSE_SPEC, datamodule=tiny_datamodule, opset=opset)
    graph = onnx.load(str(tmp_path / "out" / "tower_b.onnx"))
    assert {entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx")} == {opset}
    batch = _batch(tiny_datamodule, 3)
    session = ort.InferenceSession(str(tmp_path / "out" / "tower_b.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {key: value.numpy() for key, value in batch["b"].items()})[0]
    with torch.no_grad():
        assert np.abs(got - student.encode_b(batch["b"]).numpy()).max() < 1e-4


def test_shared_text_encoder_exports_one_onnx_graph_for_both_sides(tmp_path: Path, tokenizer_dir: Path) -> None:
    ort = pytest.importorskip("onnxruntime", reason="the ONNX parity check needs onnxruntime")
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from tests.helpers import BERT_TINY

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    spec = {"class_path": "distill.students.TextDualEncoder",
            "init_args": {"config": {**BERT_TINY, "vocab_size": len(tokenizer)}, "shared": True}}
    student = build(spec).eval()
    data = SimpleNamespace(tokenizer=tokenizer, query_max_length=8, passage_max_length=24)
    result = export_student(student, tmp_path / "out", student_spec=spec, datamodule=data)
    graphs = sorted(name for name in result.files if name.endswith(".onnx"))
    towers = read_student_config(tmp_path / "out")["towers"]
    assert graphs == ["encoder.onnx"] and towers["a"]["onnx"] == towers["b"]["onnx"] == "encoder.onnx"
    assert "encoder.onnx" in (tmp_path / "out" / CARD_NAME).read_text()
    session = ort.InferenceSession(str(tmp_path / "out" / towers["b"]["onnx"]), providers=["CPUExecutionProvider"])
    loaded = load_student(tmp_path / "out")
    for side, texts, length in (("a", ["who wrote hamlet"], 8),
                                ("b", ["paris is the capital of france", "the nile"], 24)):
        inputs = tokenizer(texts, padding=True, truncation=True, max_length=length, return_tensors="pt")
        feed = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
        with torch.no_grad():
            want = getattr(loaded, f"encode_{side}")(feed).numpy()
        got = session.run(None, {key: value.numpy() for key, value in feed.items()})[0]
        assert np.abs(got - want).max() < 1e-4
