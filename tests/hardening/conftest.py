"""Fixtures of the hardening tests: a word-level tokenizer folder, tiny image-text and BEIR data."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hf.conftest import bert_tokenizer, write_beir, write_image_text_data


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
