"""A text query must hold a token the student knows: one that tokenizes to nothing, or to unknown tokens only
(zero-width or control characters, emoji only), would be answered by the embedding of the special tokens
alone, the same confident hits for every such query. It is refused instead, in one line."""

from __future__ import annotations

from typing import Any

from distill.errors import InputError

__all__ = ["check_query_tokens"]


def check_query_tokens(tokenizer: Any, query: str, option: str = "--query") -> None:
    """Refuse ``query`` when ``tokenizer`` gives it no token besides special and unknown ones."""
    ids = list(tokenizer(query, add_special_tokens=False)["input_ids"])
    ignored = set(getattr(tokenizer, "all_special_ids", None) or [])
    unknown = getattr(tokenizer, "unk_token_id", None)
    if unknown is not None:
        ignored.add(unknown)
    if any(token not in ignored for token in ids):
        return
    found = "nothing" if not ids else "unknown or special tokens only"
    raise InputError(f"{option} {ascii(query)[:80]} has no token the student knows (it tokenizes to {found}): "
                     "search with words, as the student was trained on")
