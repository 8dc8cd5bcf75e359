"""ViLT retrieval teacher (``transformers.ViltForImageAndTextRetrieval``).

ViLT is a single-stream transformer over caption tokens and image patches; its retrieval head
gives one logit per (image, caption) pair. It has no unimodal towers, so it exposes no embeddings.

Inputs: ``a = {"pixel_values": [N, 3, H, W], "pixel_mask": [N, H, W] (optional, all ones if absent)}``
from ViLT's image processor and ``b = {"input_ids", "attention_mask": [N, L]}`` from its tokenizer
(``L <= max_position_embeddings``, 40 for the released checkpoints). Give the data module
``teacher_processor: <the teacher's folder>`` so batches carry ``teacher_a`` / ``teacher_b``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from distill.pretrained import load_pretrained
from distill.inputs import Inputs
from distill.teachers.base import Teacher
from distill.teachers.hf_checks import check_token_ids, require_keys, trim_padding

FIX = "set data.init_args.teacher_processor to the teacher's folder so batches carry teacher_a / teacher_b"


class ViltRetrievalTeacher(Teacher):
    """Frozen ViLT image-text retrieval teacher: ``score(a, b) -> [N]``, the retrieval logit.

    Args:
        pretrained: a ``save_pretrained`` folder of ``ViltForImageAndTextRetrieval`` (e.g. a local copy
            of ``dandelin/vilt-b32-finetuned-flickr30k`` or ``-coco``), a hub id when online.
    """

    has_embeddings = False

    def __init__(self, pretrained: str) -> None:
        super().__init__()
        from transformers import ViltForImageAndTextRetrieval

        self.pretrained = pretrained
        field = "model.init_args.teacher.init_args.pretrained (ViltRetrievalTeacher)"
        self.model = load_pretrained(ViltForImageAndTextRetrieval, pretrained, field)
        self.vocab_size = int(self.model.config.vocab_size)
        self.max_positions = int(self.model.config.max_position_embeddings)
        self.freeze()

    @torch.no_grad()
    def score(self, a: Inputs, b: Inputs) -> Tensor:
        require_keys("ViltRetrievalTeacher", "a", a, ("pixel_values",), FIX)
        require_keys("ViltRetrievalTeacher", "b", b, ("input_ids", "attention_mask"), FIX)
        pixel_values = a["pixel_values"]
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"ViltRetrievalTeacher expects pixel_values [N, 3, H, W], got {tuple(pixel_values.shape)}")
        pixel_mask = a.get("pixel_mask")
        if pixel_mask is None:
            pixel_mask = torch.ones(pixel_values.shape[0], *pixel_values.shape[-2:], dtype=torch.long,
                                    device=pixel_values.device)
        input_ids, attention_mask = trim_padding(b["input_ids"], b["attention_mask"])
        check_token_ids("ViltRetrievalTeacher", input_ids, self.vocab_size, self.max_positions, FIX)
        dtype = next(self.model.parameters()).dtype
        logits = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=torch.zeros_like(input_ids),
            pixel_values=pixel_values.to(dtype),
            pixel_mask=pixel_mask.long(),
        ).logits
        return logits[:, 0].float()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "pretrained": self.pretrained}
