"""Teacher and student forward shapes, persistence, and freezing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distill.teachers import ShapesCrossEncoder, is_frozen
from tests.helpers import TINY_TEACHER


def _inputs(batch: int = 3, length: int = 7, image_size: int = 32):
    a = {"pixel_values": torch.randn(batch, 3, image_size, image_size)}
    ids = torch.randint(5, 60, (batch, length))
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0
    return a, {"input_ids": ids, "attention_mask": mask}


def test_teacher_shapes_and_pair_scoring(tiny_teacher: ShapesCrossEncoder) -> None:
    tiny_teacher.eval()
    a, b = _inputs()
    assert tiny_teacher.score(a, b).shape == (3,)
    assert tiny_teacher.embed_a(a).shape == (3, 16)
    assert torch.allclose(tiny_teacher.embed_b(b).norm(dim=-1), torch.ones(3), atol=1e-5)
    a_index, b_index = torch.tensor([0, 0, 2, 1]), torch.tensor([1, 2, 2, 0])
    pairs = tiny_teacher.score_pairs(a, b, a_index, b_index)
    gathered = tiny_teacher.score({"pixel_values": a["pixel_values"][a_index]},
                                  {k: v[b_index] for k, v in b.items()})
    assert torch.allclose(pairs, gathered, atol=1e-5)


def test_teacher_score_depends_on_both_sides(tiny_teacher: ShapesCrossEncoder) -> None:
    tiny_teacher.eval()
    a, b = _inputs()
    base = tiny_teacher.score(a, b)
    swapped_image = tiny_teacher.score({"pixel_values": a["pixel_values"].flip(0)}, b)
    swapped_text = tiny_teacher.score(a, {k: v.flip(0) for k, v in b.items()})
    assert not torch.allclose(base, swapped_image)
    assert not torch.allclose(base, swapped_text)


def test_teacher_save_load_round_trip(tmp_path: Path, tiny_teacher: ShapesCrossEncoder) -> None:
    tiny_teacher.eval()
    folder = tiny_teacher.save_pretrained(tmp_path / "t")
    loaded = ShapesCrossEncoder(weights=str(folder)).eval()
    assert loaded.config == tiny_teacher.config
    a, b = _inputs()
    assert torch.equal(loaded.score(a, b), tiny_teacher.score(a, b))
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]


def test_teacher_missing_weights_message(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no config.json.*shapes-teacher.yaml"):
        ShapesCrossEncoder(weights=str(tmp_path / "nowhere"))


def test_teacher_freeze(tiny_teacher: ShapesCrossEncoder) -> None:
    tiny_teacher.freeze()
    assert is_frozen(tiny_teacher) and not tiny_teacher.training


def test_teacher_rejects_wrong_image_size_and_vocab() -> None:
    teacher = ShapesCrossEncoder(**TINY_TEACHER)
    a, b = _inputs(image_size=64)
    with pytest.raises(ValueError, match="expects 32x32 images"):
        teacher.score(a, b)
    a, b = _inputs()
    b["input_ids"][0, 0] = 99
    with pytest.raises(ValueError, match="outside the teacher's vocabulary"):
        teacher.score(a, b)


def test_student_shapes_and_temperature(tiny_student) -> None:
    a, b = _inputs()
    emb_a, emb_b = tiny_student(a, b)
    assert emb_a.shape == emb_b.shape == (3, 16)
    assert torch.allclose(emb_a.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert tiny_student.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert tiny_student.log_inv_temperature.requires_grad


def test_student_mean_pooling_ignores_padding() -> None:
    from distill.students import TransformersTextTower

    tower = TransformersTextTower(config=dict(model_type="bert", vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                              num_attention_heads=2, intermediate_size=32), pooling="mean").eval()
    ids = torch.tensor([[2, 7, 8, 3]])
    padded = torch.tensor([[2, 7, 8, 3, 0, 0]])
    short = tower({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    long = tower({"input_ids": padded, "attention_mask": (padded != 0).long()})
    assert torch.allclose(short, long, atol=1e-5)


def test_text_tower_needs_exactly_one_source() -> None:
    from distill.students import TransformersTextTower

    with pytest.raises(ValueError, match="exactly one"):
        TransformersTextTower()
    with pytest.raises(ValueError, match="model_type"):
        TransformersTextTower(config={"hidden_size": 8})
