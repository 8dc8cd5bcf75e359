"""Encoding a corpus for an index prints progress lines when the output is not a terminal."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from distill.serving.index.corpus import encode_texts
from tests.helpers import LogLines, bert_tokenizer


class Zeros(nn.Module):
    def encode_b(self, inputs: dict[str, Tensor]) -> Tensor:
        return torch.zeros(inputs["input_ids"].shape[0], 4)


def test_encoding_logs_done_total_rate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTILL_PROGRESS_SECONDS", "0")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    handler, logger = LogLines(), logging.getLogger("distill.progress")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        chunks = list(encode_texts(Zeros(), bert_tokenizer(tmp_path), ["a red circle"] * 10, "b", 16, chunk_size=4,
                                   progress=True))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert [len(chunk) for chunk in chunks] == [4, 4, 2]
    assert [line.split(" | ")[0] for line in handler.lines] == [
        "encoding b: 4/10 texts (40%)", "encoding b: 8/10 texts (80%)", "encoding b: 10/10 texts (100%)"]
    assert all("texts/s" in line for line in handler.lines)
