"""Input checks shared by the Hugging Face teacher adapters.

A teacher that is handed the student's preprocessing instead of its own (wrong image size,
another tokenizer) would score garbage silently; these checks turn that into an error that says
which data-module field to set.
"""

from __future__ import annotations

from torch import Tensor

from distill.inputs import Inputs


def require_keys(teacher: str, side: str, inputs: Inputs, keys: tuple[str, ...], fix: str) -> None:
    """Raise ``ValueError`` naming the missing keys of ``inputs`` and how to provide them."""
    missing = [key for key in keys if key not in inputs]
    if missing:
        raise ValueError(
            f"{teacher} reads {list(keys)} from the batch's '{side}' inputs, but they hold "
            f"{sorted(inputs)}: {fix}"
        )


def check_image_size(teacher: str, pixel_values: Tensor, expected: int, fix: str) -> None:
    """``pixel_values [N, 3, H, W]`` must be ``expected`` x ``expected``."""
    if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
        raise ValueError(f"{teacher} expects pixel_values [N, 3, H, W], got {tuple(pixel_values.shape)}")
    if tuple(pixel_values.shape[-2:]) != (expected, expected):
        raise ValueError(
            f"{teacher} expects {expected}x{expected} images, got {tuple(pixel_values.shape[-2:])}: "
            f"the batch carries another model's preprocessing; {fix}"
        )


def check_token_ids(teacher: str, input_ids: Tensor, vocab_size: int, max_positions: int | None, fix: str) -> None:
    """Token ids must lie in the teacher's vocabulary and fit its position embeddings."""
    if input_ids.numel() and int(input_ids.max()) >= vocab_size:
        raise ValueError(
            f"token id {int(input_ids.max())} is outside {teacher}'s vocabulary of {vocab_size}: the text was "
            f"tokenised with another tokenizer; {fix}"
        )
    if max_positions is not None and input_ids.shape[-1] > max_positions:
        raise ValueError(
            f"{teacher} reads at most {max_positions} tokens, got sequences of {input_ids.shape[-1]}: "
            "lower the data module's teacher max_length"
        )


def trim_padding(input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Drop trailing all-padding columns of right-padded ``[N, L]`` ids and mask."""
    if attention_mask.numel() == 0:
        return input_ids, attention_mask
    length = max(int(attention_mask.sum(1).max()), 1)
    return input_ids[:, :length], attention_mask[:, :length]
