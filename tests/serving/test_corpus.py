"""Encoding a corpus for an index prints progress lines when the output is not a terminal."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from distill.serving.index.corpus import TOKENS_PER_FORWARD, encode_texts
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


class MeanBert(nn.Module):
    """A tiny BERT, masked mean over its tokens; records each forward's (rows, width, longest row)."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        from transformers import BertModel

        self.bert = BertModel.from_pretrained(folder).eval()
        self.forwards: list[tuple[int, int, int]] = []

    def encode_b(self, inputs: dict[str, Tensor]) -> Tensor:
        mask = inputs["attention_mask"]
        self.forwards.append((mask.shape[0], mask.shape[1], int(mask.sum(1).max())))
        hidden = self.bert(**inputs).last_hidden_state
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)


def test_chunks_are_sorted_by_length_and_come_back_in_order(tmp_path: Path, tiny_models) -> None:
    from tests.helpers import WORDS

    tokenizer = bert_tokenizer(tmp_path, model_max_length=64)
    texts = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(1 + (11 * i) % 70)) for i in range(320)]
    student = MeanBert(tiny_models.bert)
    chunks = list(encode_texts(student, tokenizer, texts, "b", 60, chunk_size=256))
    assert [tuple(chunk.shape) for chunk in chunks] == [(256, 32), (64, 32)]
    assert all(chunk.dtype == torch.float32 for chunk in chunks)
    forwards, student.forwards = student.forwards, []
    # the first chunk (256 rows, up to 60 tokens) needs more than one forward of TOKENS_PER_FORWARD tokens, each
    # padded to its own longest row, longest rows first
    assert len(forwards) > 2 and sum(rows for rows, _, _ in forwards) == len(texts)
    assert all(width == longest and rows * width <= TOKENS_PER_FORWARD for rows, width, longest in forwards)
    done = [sum(rows for rows, _, _ in forwards[:end]) for end in range(len(forwards) + 1)]
    first_chunk = forwards[:done.index(256)]
    assert len(first_chunk) > 1
    assert [width for _, width, _ in first_chunk] == sorted((width for _, width, _ in first_chunk), reverse=True)
    with torch.no_grad():  # each text alone, unpadded: the reference
        alone = torch.cat([student.encode_b({key: value for key, value in tokenizer(
            [text], truncation=True, max_length=60, return_tensors="pt").items() if key != "token_type_ids"})
            for text in texts])
    assert torch.allclose(torch.cat(chunks), alone, atol=1e-5)
