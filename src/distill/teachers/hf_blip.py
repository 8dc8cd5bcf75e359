"""BLIP image-text matching teacher (``transformers.BlipForImageTextRetrieval``).

BLIP reads an image and a caption together through cross-attention (its ITM head) and also
has unimodal towers with projections (ITC). The ITM head scores pairs; the ITC projections give
this teacher embeddings, so it can rank a whole split by ITC and re-rank the top-k by ITM.

Inputs: ``a = {"pixel_values": [N, 3, S, S]}`` preprocessed by BLIP's image processor
(``S = vision_config.image_size``, CLIP mean/std) and ``b = {"input_ids", "attention_mask": [N, L]}``
from BLIP's tokenizer. When the student preprocesses differently, give the data module
``teacher_processor: <the teacher's folder>`` so batches carry ``teacher_a`` / ``teacher_b``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.pretrained import load_pretrained
from distill.inputs import Inputs
from distill.teachers.base import Teacher
from distill.teachers.hf_checks import check_image_size, check_token_ids, require_keys, trim_padding

SCORES = ("blip", "itm_logit", "itm_prob")
FIX = "set data.init_args.teacher_processor to the teacher's folder so batches carry teacher_a / teacher_b"


class BlipITMTeacher(Teacher):
    """Frozen BLIP ITM teacher.

    Args:
        pretrained: a ``save_pretrained`` folder of ``BlipForImageTextRetrieval`` (e.g. a local copy
            of ``Salesforce/blip-itm-base-coco``), a hub id when online.
        score: ``"blip"`` (default), BLIP's own retrieval ranking score: the ITM head's match logit plus the
            ITC cosine similarity of the pair (``itm_head(...)[:, 1] + image_feat . text_feat``, as in
            BLIP's ``evaluation`` of retrieval); ``"itm_logit"``, the ITM log-odds
            ``logit_match - logit_no_match``; or ``"itm_prob"``, ``softmax(itm)[match]`` in [0, 1].
        add_itc: add the ITC cosine similarity to an ``itm_logit`` / ``itm_prob`` score (``"blip"`` has it).

    ``score(a, b) -> [N]``; ``embed_a(a) -> [N, E]`` and ``embed_b(b) -> [N, E]`` are the
    L2-normalised ITC embeddings (``E = image_text_hidden_size``).
    """

    has_embeddings = True

    def __init__(self, pretrained: str, score: Literal["blip", "itm_logit", "itm_prob"] = "blip",
                 add_itc: bool = False) -> None:
        super().__init__()
        from transformers import BlipForImageTextRetrieval

        if score not in SCORES:
            raise ValueError(f"BlipITMTeacher score must be one of {SCORES}, got {score!r}")
        self.pretrained = pretrained
        self.score_kind = score
        self.add_itc = bool(add_itc) or score == "blip"
        field = "model.init_args.teacher.init_args.pretrained (BlipITMTeacher)"
        self.model = load_pretrained(BlipForImageTextRetrieval, pretrained, field)
        config = self.model.config
        self.image_size = int(config.vision_config.image_size)
        self.vocab_size = int(config.text_config.vocab_size)
        self.max_positions = int(config.text_config.max_position_embeddings)
        self.freeze()

    # ------------------------------------------------------------------ unimodal parts
    def image_tokens(self, a: Inputs) -> Tensor:
        """``pixel_values [N, 3, S, S] -> [N, 1 + P, Dv]`` vision hidden states (position 0: CLS)."""
        require_keys("BlipITMTeacher", "a", a, ("pixel_values",), FIX)
        pixel_values = a["pixel_values"]
        check_image_size("BlipITMTeacher", pixel_values, self.image_size, FIX)
        dtype = next(self.model.vision_model.parameters()).dtype
        return self.model.vision_model(pixel_values=pixel_values.to(dtype)).last_hidden_state

    def _text(self, b: Inputs) -> tuple[Tensor, Tensor]:
        require_keys("BlipITMTeacher", "b", b, ("input_ids", "attention_mask"), FIX)
        input_ids, attention_mask = trim_padding(b["input_ids"], b["attention_mask"])
        check_token_ids("BlipITMTeacher", input_ids, self.vocab_size, self.max_positions, FIX)
        return input_ids, attention_mask

    def embed_a(self, a: Inputs) -> Tensor:
        return F.normalize(self.model.vision_proj(self.image_tokens(a)[:, 0]), dim=-1)

    def embed_b(self, b: Inputs) -> Tensor:
        input_ids, attention_mask = self._text(b)
        hidden = self.model.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(self.model.text_proj(hidden[:, 0]), dim=-1)

    # ------------------------------------------------------------------ ITM
    def itm_logits(self, image_tokens: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """ITM logits ``[N, 2]`` (no-match, match) of aligned ``image_tokens [N, 1+P, Dv]`` and text ``[N, L]``."""
        image_mask = torch.ones(image_tokens.shape[:2], dtype=torch.long, device=image_tokens.device)
        hidden = self.model.text_encoder(
            input_ids=input_ids, attention_mask=attention_mask,
            encoder_hidden_states=image_tokens, encoder_attention_mask=image_mask,
        ).last_hidden_state
        return self.model.itm_head(hidden[:, 0])

    def _reduce(self, logits: Tensor) -> Tensor:
        logits = logits.float()
        if self.score_kind == "itm_prob":
            return logits.softmax(-1)[:, 1]
        if self.score_kind == "blip":
            return logits[:, 1]
        return logits[:, 1] - logits[:, 0]

    @torch.no_grad()
    def score(self, a: Inputs, b: Inputs) -> Tensor:
        n = next(iter(a.values())).shape[0]
        index = torch.arange(n, device=next(iter(a.values())).device)
        return self.score_pairs(a, b, index, index)

    @torch.no_grad()
    def score_pairs(self, a: Inputs, b: Inputs, a_index: Tensor, b_index: Tensor) -> Tensor:
        """Run the vision tower once per distinct image, then the ITM head on the N pairs. ``-> [N]``."""
        require_keys("BlipITMTeacher", "a", a, ("pixel_values",), FIX)
        require_keys("BlipITMTeacher", "b", b, ("input_ids", "attention_mask"), FIX)
        a_unique, a_inverse = a_index.unique(return_inverse=True)
        b_unique, b_inverse = b_index.unique(return_inverse=True)
        tokens = self.image_tokens({"pixel_values": a["pixel_values"][a_unique]})
        input_ids, attention_mask = self._text({k: b[k][b_unique] for k in ("input_ids", "attention_mask")})
        logits = self.itm_logits(tokens[a_inverse], input_ids[b_inverse], attention_mask[b_inverse])
        scores = self._reduce(logits)
        if self.add_itc:
            image_emb = F.normalize(self.model.vision_proj(tokens[:, 0]), dim=-1)
            text_emb = self.embed_b({"input_ids": input_ids, "attention_mask": attention_mask})
            scores = scores + (image_emb[a_inverse] * text_emb[b_inverse]).sum(-1).float()
        return scores

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "pretrained": self.pretrained, "score": self.score_kind, "add_itc": self.add_itc}
