"""Word-level tokenizer over the closed vocabulary of the shapes captions."""

from __future__ import annotations

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from distill.data.shapes import vocabulary

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
CLS_TOKEN = "[CLS]"
SEP_TOKEN = "[SEP]"
MASK_TOKEN = "[MASK]"
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN)
"""Special tokens; their ids are their positions (``[PAD]`` is 0)."""

DEFAULT_MAX_LENGTH = 32


def shapes_vocab() -> dict[str, int]:
    """Token -> id: special tokens first, then every caption word in :func:`vocabulary` order (the row
    layout's words sorted, then the grid layout's new words sorted: ids of earlier words never move)."""
    tokens = SPECIAL_TOKENS + tuple(word for word in vocabulary() if word not in SPECIAL_TOKENS)
    return {token: index for index, token in enumerate(tokens)}


def _backend(vocab: dict[str, int]) -> Tokenizer:
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{CLS_TOKEN} $A {SEP_TOKEN}",
        pair=f"{CLS_TOKEN} $A {SEP_TOKEN} $B:1 {SEP_TOKEN}:1",
        special_tokens=[(CLS_TOKEN, vocab[CLS_TOKEN]), (SEP_TOKEN, vocab[SEP_TOKEN])],
    )
    return backend


def build_shapes_tokenizer(model_max_length: int = DEFAULT_MAX_LENGTH) -> PreTrainedTokenizerFast:
    """Tokenizer for shapes captions: ``[CLS] words [SEP]``; unknown words map to ``[UNK]``.

    Saves and loads with ``save_pretrained`` / ``from_pretrained(local_dir)``.
    """
    return PreTrainedTokenizerFast(
        tokenizer_object=_backend(shapes_vocab()),
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        cls_token=CLS_TOKEN,
        sep_token=SEP_TOKEN,
        mask_token=MASK_TOKEN,
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
