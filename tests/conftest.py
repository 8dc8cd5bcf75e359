"""Fixtures: tiny models and data from :mod:`tests.helpers`; CPU only, seeded, no network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tests distil from randomly initialised teachers, which the teacher check at the start of fit would refuse;
# the tests of the check (tests/training/test_teacher_check.py) turn it back on.
os.environ.setdefault("DISTILL_TEACHER_CHECK", "0")

from tests.helpers import (  # noqa: E402  (the offline switches above must come first)
    DENSE_SPEC,
    TINY_DATA,
    TINY_TEACHER,
    TinyModels,
    bert_tokenizer,
    build,
    make_student,
    save_bert,
    save_blip,
    save_clip,
    save_cross_encoder,
    save_vilt,
    write_beir,
    write_image_text_data,
)


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


@pytest.fixture
def tiny_student():
    return make_student()


@pytest.fixture
def tiny_datamodule():
    from distill.data import ShapesDataModule

    dm = ShapesDataModule(**TINY_DATA)
    dm.setup("fit")
    return dm


@pytest.fixture
def dense_export(tmp_path: Path, tiny_datamodule) -> Path:
    """A tiny dense student (seed 0) exported without ONNX to ``tmp_path / "student"``."""
    from distill.serving.export import export_student

    torch.manual_seed(0)
    export_student(build(DENSE_SPEC), tmp_path / "student", student_spec=DENSE_SPEC, datamodule=tiny_datamodule,
                   onnx=False)
    return tmp_path / "student"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("models")
    return TinyModels(blip=save_blip(root / "blip"), vilt=save_vilt(root / "vilt"), clip=save_clip(root / "clip"),
                      bert=save_bert(root / "bert"), cross_encoder=save_cross_encoder(root / "cross-encoder"))


@pytest.fixture
def image_text_data(tmp_path: Path) -> dict[str, Path]:
    return write_image_text_data(tmp_path / "data")


@pytest.fixture
def beir_dir(tmp_path: Path) -> Path:
    return write_beir(tmp_path / "beir")


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    bert_tokenizer(folder, model_max_length=64).save_pretrained(folder)
    return folder


@pytest.fixture
def image_data(tmp_path: Path) -> dict[str, Path]:
    return write_image_text_data(tmp_path / "data", {"train": 4, "val": 2, "test": 2})


@pytest.fixture
def beir_data(tmp_path: Path) -> Path:
    return write_beir(tmp_path / "beir", with_scores=False)
