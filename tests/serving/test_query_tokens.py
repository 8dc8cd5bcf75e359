"""A text query with no token the student knows is refused in one line, not answered with confident hits."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.errors import InputError
from distill.serving.index.query_tokens import check_query_tokens
from tests.helpers import bert_tokenizer


@pytest.mark.parametrize(("query", "found"), [
    ("\u200b\u200b", "nothing"), ("\U0001f600\U0001f600", "unknown or special tokens only"),
    ("\x01\x02\x7f", "nothing"), ("[SEP] [CLS]", "unknown or special tokens only"),
])
def test_a_query_without_known_tokens_is_refused(tmp_path: Path, query: str, found: str) -> None:
    tokenizer = bert_tokenizer(tmp_path)
    with pytest.raises(InputError, match=rf"--query '.*' has no token the student knows \(it tokenizes to "
                                         rf"({found})"):
        check_query_tokens(tokenizer, query)


def test_a_query_with_one_known_word_is_answered(tmp_path: Path) -> None:
    tokenizer = bert_tokenizer(tmp_path)
    check_query_tokens(tokenizer, "red \U0001f600\u200b")
