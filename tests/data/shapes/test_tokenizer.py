"""Word-level tokenizer for the shapes captions."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from distill.data.shapes import generate_corpus, templates_for, vocabulary
from distill.data.shapes.tokenizer import SPECIAL_TOKENS, build_shapes_tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_shapes_tokenizer()


def _captions(num_objects: int) -> list[str]:
    corpus = generate_corpus(
        seed=0, num_train=30, num_val=5, num_test=5,
        num_objects=num_objects, captions_per_image=len(templates_for(num_objects)),
    )
    return [caption for item in corpus.items() for caption in item.captions]


def test_special_token_ids(tokenizer: PreTrainedTokenizerFast) -> None:
    assert [tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert tokenizer.pad_token_id == 0
    assert (tokenizer.unk_token, tokenizer.cls_token, tokenizer.sep_token, tokenizer.mask_token) == (
        "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    )
    assert len(tokenizer) == len(SPECIAL_TOKENS) + len(vocabulary())


@pytest.mark.parametrize("num_objects", [2, 3, 4])
def test_round_trip_of_every_caption(tokenizer: PreTrainedTokenizerFast, num_objects: int) -> None:
    for caption in _captions(num_objects):
        ids = tokenizer(caption)["input_ids"]
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
        assert tokenizer.unk_token_id not in ids
        assert len(ids) <= 32
        assert tokenizer.decode(ids, skip_special_tokens=True) == caption


def test_unknown_words_map_to_unk(tokenizer: PreTrainedTokenizerFast) -> None:
    ids = tokenizer("a Small ORANGE hexagon")["input_ids"]
    unk = tokenizer.unk_token_id
    assert ids[1:3] == tokenizer("a small")["input_ids"][1:3]
    assert ids[3:5] == [unk, unk]
    assert tokenizer("")["input_ids"] == [tokenizer.cls_token_id, tokenizer.sep_token_id]


def test_batch_padding_uses_pad_id(tokenizer: PreTrainedTokenizerFast) -> None:
    encoded = tokenizer(["a small red circle", "a small red circle left of a large blue square"], padding=True)
    assert encoded["input_ids"][0][-1] == 0
    assert encoded["attention_mask"][0][-1] == 0
    assert all(encoded["attention_mask"][1])


def test_save_and_load_round_trip(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    tokenizer.save_pretrained(tmp_path)
    for loaded in (PreTrainedTokenizerFast.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)):
        assert loaded.get_vocab() == tokenizer.get_vocab()
        assert loaded.all_special_ids == tokenizer.all_special_ids
        assert loaded.pad_token_id == 0 and loaded.mask_token_id == tokenizer.mask_token_id
        for caption in _captions(3)[:20] + ["an unseen word"]:
            assert loaded(caption)["input_ids"] == tokenizer(caption)["input_ids"]
            assert loaded.decode(loaded(caption)["input_ids"], skip_special_tokens=True) == tokenizer.decode(
                tokenizer(caption)["input_ids"], skip_special_tokens=True
            )
