"""Shared fixtures: tiny models and data, CPU only, seeded, no network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]

TINY_TEACHER = dict(vocab_size=64, max_length=32, image_size=32, patch_size=16, width=32, heads=2,
                    image_layers=1, text_layers=1, fusion_layers=1, embed_dim=16, mlp_ratio=2)

TINY_DATA = dict(num_train=48, num_val=8, num_test=8, image_size=32, batch_size=8, eval_batch_size=16)


@pytest.fixture(autouse=True)
def _seed_and_threads() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture
def tiny_teacher():
    from distill.teachers import ShapesCrossEncoder

    return ShapesCrossEncoder(**TINY_TEACHER)


@pytest.fixture
def tiny_teacher_dir(tmp_path: Path, tiny_teacher) -> Path:
    return tiny_teacher.save_pretrained(tmp_path / "teacher")


def make_student(embed_dim: int = 16):
    from distill.students import DualEncoder, TimmImageTower, TransformersTextTower

    image = TimmImageTower("resnet10t")
    text = TransformersTextTower(config=dict(model_type="bert", vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))
    return DualEncoder(image, text, embed_dim=embed_dim)


@pytest.fixture
def tiny_student():
    return make_student()


@pytest.fixture
def tiny_datamodule():
    from distill.data import ShapesDataModule

    dm = ShapesDataModule(**TINY_DATA)
    dm.setup("fit")
    return dm
